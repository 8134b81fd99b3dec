"""The risk model a pack carries, and the arithmetic shared by learning (in batches) and matching
(one step at a time), so that both compute exactly the same numbers.

Risk at step ``k`` of a run is a logistic function of

- the prefix's numeric features (:data:`~immunity.learning.features.FEATURE_NAMES`), standardised;
- pattern evidence: the largest weight of a failure pattern matching this step (vector similarity
  at least ``min_similarity`` *and* the pattern's predicates hold), the largest such weight so far
  in the run, and how many patterns match now;
- the task prior: the failure rate of the most similar training tasks (by the embedding of the task
  description), shrunk towards the base rate, as a log-odds.

Nothing here reads a run's outcome or length; every input is known after step ``k``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from immunity.learning.features import FEATURE_NAMES

EVIDENCE_NAMES: tuple[str, ...] = ("pattern_weight_now", "pattern_weight_so_far", "log_patterns_now", "task_prior_logit")
MODEL_INPUTS: tuple[str, ...] = (*FEATURE_NAMES, *EVIDENCE_NAMES)

_EPS = 1e-6
#: Tolerance of the similarity floor: the index and the batch path compute the same cosine with
#: different float32 rounding, and feature-hashed signatures often sit exactly on round values.
SIM_TOLERANCE = 1e-4


def logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def sigmoid(z: np.ndarray | float) -> Any:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -35, 35)))


# ------------------------------------------------------------------------------------------ predicates
def predicates_hold(predicates: dict[str, Any], signals: dict[str, float], action_type: str) -> bool:
    """A pattern's predicates: ``action_type`` (the step's universal action), ``min`` (signal >=
    value for each named signal), ``max`` (signal <= value), ``steps`` ([first, last] step index)."""
    want = predicates.get("action_type")
    if want and want != action_type:
        return False
    for name, value in (predicates.get("min") or {}).items():
        if signals.get(name, 0.0) < value:
            return False
    for name, value in (predicates.get("max") or {}).items():
        if signals.get(name, 0.0) > value:
            return False
    rng = predicates.get("steps")
    if rng:
        s = signals.get("step", 0.0)
        if s < rng[0] or s > rng[1]:
            return False
    return True


@dataclass
class PatternTable:
    """The patterns of one risk model in arrays."""

    ids: list[str]
    vectors: np.ndarray
    weights: np.ndarray
    classes: list[str]
    predicates: list[dict[str, Any]]
    min_similarity: float = 0.8
    top_k: int = 16
    position: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.position = {pid: i for i, pid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def matched(self, hits: list[tuple[int, float]], signals: dict[str, float], action_type: str) -> list[tuple[int, float]]:
        """The hits (pattern position, similarity) that pass the similarity floor and predicates."""
        return [(i, s) for i, s in hits if s >= self.min_similarity - SIM_TOLERANCE and
                predicates_hold(self.predicates[i], signals, action_type)]

    def top_hits(self, sims: np.ndarray) -> list[tuple[int, float]]:
        """Top-k by similarity for one row of similarities (the batch twin of an index search)."""
        n = len(sims)
        if n == 0:
            return []
        k = min(self.top_k, n)
        idx = np.argpartition(-sims, k - 1)[:k] if k < n else np.arange(n)
        return [(int(i), float(sims[i])) for i in idx]


def evidence(table: PatternTable, matched: list[tuple[int, float]]) -> tuple[float, int, int | None]:
    """(largest matched weight, number matched, position of the best pattern)."""
    if not matched:
        return 0.0, 0, None
    best = max(matched, key=lambda h: (table.weights[h[0]], h[1]))
    return float(table.weights[best[0]]), len(matched), best[0]


# ------------------------------------------------------------------------------------------ task prior
@dataclass
class TaskPrior:
    """Failure rates of training tasks, looked up by task-description similarity."""

    vectors: np.ndarray
    runs: np.ndarray
    failures: np.ndarray
    keys: list[str]
    base_rate: float
    strength: float = 2.0
    min_similarity: float = 0.5
    k: int = 5

    def prior(self, vector: np.ndarray | None, exclude: str | None = None) -> float:
        """Smoothed failure rate of the ``k`` most similar tasks with similarity >= the floor."""
        if vector is None or len(self.keys) == 0 or not np.any(vector):
            return self.base_rate
        sims = self.vectors @ vector
        if exclude is not None:
            sims = sims.copy()
            for i, key in enumerate(self.keys):
                if key == exclude:
                    sims[i] = -1.0
        k = min(self.k, len(sims))
        top = np.argsort(-sims, kind="stable")[:k]
        num = self.strength * self.base_rate
        den = self.strength
        for i in top:
            s = float(sims[i])
            if s < self.min_similarity:
                continue
            num += s * float(self.failures[i])
            den += s * float(self.runs[i])
        return num / den


# ------------------------------------------------------------------------------------------ logistic
@dataclass
class Logistic:
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    def z(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(sigmoid(self.z(x)))

    def as_dict(self) -> dict[str, Any]:
        return {"inputs": list(MODEL_INPUTS), "mean": _floats(self.mean), "scale": _floats(self.scale),
                "coef": _floats(self.coef), "intercept": round(float(self.intercept), 8)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Logistic:
        inputs = list(d.get("inputs") or [])
        if inputs != list(MODEL_INPUTS):
            from immunity.errors import PackError

            raise PackError(f"the pack's risk model reads inputs {inputs[:3]}... ({len(inputs)}), this immunity "
                            f"computes {len(MODEL_INPUTS)} different ones; rebuild the pack with this version")
        return cls(np.asarray(d["mean"], float), np.asarray(d["scale"], float), np.asarray(d["coef"], float),
                   float(d["intercept"]))


def _floats(a: np.ndarray) -> list[float]:
    return [round(float(x), 8) for x in a]


def fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, *, l2: float = 1.0, iters: int = 50) -> Logistic:
    """Weighted L2-regularised logistic regression by Newton's method on standardised inputs."""
    mean = np.average(x, axis=0, weights=w) if len(x) else np.zeros(x.shape[1])
    var = np.average((x - mean) ** 2, axis=0, weights=w) if len(x) else np.ones(x.shape[1])
    scale = np.sqrt(var)
    scale[scale < 1e-6] = 1.0
    xs = (x - mean) / scale
    n, d = xs.shape
    xa = np.hstack([xs, np.ones((n, 1))])
    beta = np.zeros(d + 1)
    wsum = float(w.sum()) or 1.0
    p0 = float(np.clip(np.average(y, weights=w), 1e-3, 1 - 1e-3)) if n else 0.5
    beta[-1] = math.log(p0 / (1 - p0))
    reg = np.full(d + 1, l2 / wsum)
    reg[-1] = 0.0
    for _ in range(iters):
        p = sigmoid(xa @ beta)
        grad = xa.T @ (w * (p - y)) / wsum + reg * beta
        h = (xa * (w * p * (1 - p))[:, None]).T @ xa / wsum + np.diag(reg + 1e-9)
        try:
            step = np.linalg.solve(h, grad)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(h, grad, rcond=None)[0]
        beta -= step
        if float(np.max(np.abs(step))) < 1e-7:
            break
    return Logistic(mean=mean, scale=scale, coef=beta[:-1], intercept=float(beta[-1]))


# ------------------------------------------------------------------------------------------ members
@dataclass
class Member:
    """One risk model of a pack (a merged pack has several, each with its own threshold)."""

    name: str
    threshold: float
    table: PatternTable
    logistic: Logistic
    prior: TaskPrior
    baseline_steps: int | None = None

    def inputs(self, numeric: np.ndarray, e_now: float, e_so_far: float, n_now: int, prior: float) -> np.ndarray:
        return np.concatenate([numeric, [e_now, e_so_far, math.log1p(n_now), logit(prior)]])


def member_from_dict(d: dict[str, Any], patterns: list[Any], vectors: np.ndarray, dimension: int) -> Member:
    from immunity.learning.packs import decode_array

    ids = list(d.get("pattern_ids") or [])
    pos = {p.pattern_id: i for i, p in enumerate(patterns)}
    missing = [i for i in ids if i not in pos]
    if missing:
        from immunity.errors import PackError

        raise PackError(f"risk model {d.get('name')!r} names patterns the pack does not hold: {missing[:5]}")
    rows = [pos[i] for i in ids]
    table = PatternTable(
        ids=ids,
        vectors=vectors[rows] if rows else np.zeros((0, dimension), np.float32),
        weights=np.asarray([patterns[r].weight for r in rows], float),
        classes=[patterns[r].error_class for r in rows],
        predicates=[patterns[r].predicates for r in rows],
        min_similarity=float(d.get("min_similarity", 0.8)),
        top_k=int(d.get("top_k", 16)),
    )
    t = d.get("tasks") or {}
    tv = decode_array(t["vectors"], "task vectors") if t.get("vectors") else np.zeros((0, dimension), np.float32)
    prior = TaskPrior(vectors=tv, runs=np.asarray(t.get("runs", []), float),
                      failures=np.asarray(t.get("failures", []), float), keys=list(t.get("keys", [])),
                      base_rate=float(d.get("base_rate", 0.5)), strength=float(t.get("strength", 2.0)),
                      min_similarity=float(t.get("min_similarity", 0.5)), k=int(t.get("k", 5)))
    return Member(name=str(d.get("name", "model")), threshold=float(d["threshold"]), table=table,
                  logistic=Logistic.from_dict(d["logistic"]), prior=prior,
                  baseline_steps=d.get("baseline_steps_threshold"))


def member_to_dict(m: Member, *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from immunity.learning.packs import encode_array

    return {
        "name": m.name,
        "threshold": round(float(m.threshold), 8),
        "pattern_ids": list(m.table.ids),
        "min_similarity": m.table.min_similarity,
        "top_k": m.table.top_k,
        "base_rate": round(float(m.prior.base_rate), 8),
        "tasks": {"vectors": encode_array(m.prior.vectors.reshape(len(m.prior.keys), -1)
                                          if len(m.prior.keys) else np.zeros((0, 0), np.float32)),
                  "runs": [int(x) for x in m.prior.runs], "failures": [int(x) for x in m.prior.failures],
                  "keys": list(m.prior.keys), "strength": m.prior.strength,
                  "min_similarity": m.prior.min_similarity, "k": m.prior.k},
        "logistic": m.logistic.as_dict(),
        "baseline_steps_threshold": m.baseline_steps,
        **(extra or {}),
    }
