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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from immunity.learning.features import FEATURE_NAMES
from immunity.learning.sequences import NEUTRAL, SEQUENCE_NAMES, SequenceRefs

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
def model_inputs(extra_names: list[str] | tuple[str, ...] = (), sequence: bool = False) -> list[str]:
    """The names of a risk model's inputs, in order: core features, the domain's signals, evidence,
    and (when the model has sequence references) the sequence distances."""
    return [*FEATURE_NAMES, *extra_names, *EVIDENCE_NAMES, *(SEQUENCE_NAMES if sequence else ())]


def extra_names_of(inputs: list[str]) -> list[str]:
    """The domain-signal names in a model's input list: every name that is not one of core's
    features or evidence inputs. A pack built by an older version reads a subset of today's core
    features, by name, so it keeps working."""
    if not inputs or len(set(inputs)) != len(inputs):
        from immunity.errors import PackError

        raise PackError(f"the pack's risk model names its inputs {inputs[:3]}... ({len(inputs)}) with none or with "
                        f"repeats; rebuild the pack with this version")
    core = set(FEATURE_NAMES) | set(EVIDENCE_NAMES) | set(SEQUENCE_NAMES)
    return [n for n in inputs if n not in core]


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

    def as_dict(self, inputs: list[str] | None = None) -> dict[str, Any]:
        return {"inputs": list(inputs or MODEL_INPUTS), "mean": _floats(self.mean), "scale": _floats(self.scale),
                "coef": _floats(self.coef), "intercept": round(float(self.intercept), 8)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Logistic:
        extra_names_of(list(d.get("inputs") or []))
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
        xw = xa * np.sqrt(w * p * (1 - p))[:, None]
        h = xw.T @ xw / wsum + np.diag(reg + 1e-9)  # X'WX as a symmetric product (half the work)
        try:
            step = np.linalg.solve(h, grad)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(h, grad, rcond=None)[0]
        beta -= step
        if float(np.max(np.abs(step))) < 1e-7:
            break
    return Logistic(mean=mean, scale=scale, coef=beta[:-1], intercept=float(beta[-1]))


# ------------------------------------------------------------------------------------------ trees
@dataclass
class Trees:
    """Gradient-boosted trees held as arrays (one row per tree, padded to the largest tree) and
    evaluated with numpy: every tree descends one level per iteration, all trees at once. A leaf
    points to itself, so a shallow tree simply stays at its leaf. ``x[feature] <= threshold`` goes
    left. The risk is ``sigmoid(baseline + sum of the leaves' values)``. Data only: a pack holds
    these arrays as JSON lists (no pickle)."""

    feature: np.ndarray  # (T, N) int
    threshold: np.ndarray  # (T, N) float
    left: np.ndarray  # (T, N) int
    right: np.ndarray  # (T, N) int
    value: np.ndarray  # (T, N) float
    depth: int
    baseline: float
    _rows: np.ndarray = field(default_factory=lambda: np.zeros(0, int), repr=False)

    def __post_init__(self) -> None:
        self._rows = np.arange(self.feature.shape[0])

    def z(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(x)
        t = self._rows
        if len(t) == 0:
            return np.full(x.shape[0], self.baseline)
        if x.shape[0] == 1:  # the per-step case: one row, every tree at once
            xr = x[0]
            idx = np.zeros(len(t), dtype=np.intp)
            for _ in range(self.depth):
                go = xr[self.feature[t, idx]] <= self.threshold[t, idx]
                idx = np.where(go, self.left[t, idx], self.right[t, idx])
            return np.asarray([self.baseline + float(self.value[t, idx].sum())])
        n = x.shape[0]
        idx = np.zeros((n, len(t)), dtype=np.intp)
        rows = np.arange(n)[:, None]
        tt = t[None, :]
        for _ in range(self.depth):
            f = self.feature[tt, idx]
            go = x[rows, f] <= self.threshold[tt, idx]
            idx = np.where(go, self.left[tt, idx], self.right[tt, idx])
        return self.baseline + self.value[tt, idx].sum(axis=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(sigmoid(self.z(x)))

    def as_dict(self, inputs: list[str] | None = None) -> dict[str, Any]:
        return {"inputs": list(inputs or MODEL_INPUTS), "depth": int(self.depth),
                "baseline": round(float(self.baseline), 8),
                "feature": self.feature.astype(int).tolist(), "threshold": [_floats(r) for r in self.threshold],
                "left": self.left.astype(int).tolist(), "right": self.right.astype(int).tolist(),
                "value": [_floats(r) for r in self.value]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trees:
        from immunity.errors import PackError

        n_in = len(list(d.get("inputs") or []))
        extra_names_of(list(d.get("inputs") or []))
        feature = np.asarray(d.get("feature", []), dtype=np.intp)
        arrays = [np.asarray(d.get(k, []), dtype=float) for k in ("threshold", "value")]
        left, right = (np.asarray(d.get(k, []), dtype=np.intp) for k in ("left", "right"))
        shapes = {a.shape for a in (feature, left, right, *arrays)}
        if len(shapes) != 1 or feature.ndim != 2:
            raise PackError(f"the pack's trees have arrays of different shapes: {sorted(shapes)}")
        n_nodes = feature.shape[1]
        bad = (feature.size and (feature.min() < 0 or feature.max() >= n_in)) or \
            (left.size and (min(left.min(), right.min()) < 0 or max(left.max(), right.max()) >= n_nodes))
        if bad:
            raise PackError("the pack's trees point at inputs or nodes that do not exist")
        if not all(np.all(np.isfinite(a)) for a in arrays):
            raise PackError("the pack's trees hold non-finite numbers")
        depth = int(d.get("depth", 0))
        if not 0 <= depth <= 64:
            raise PackError(f"the pack's trees have an implausible depth {depth}")
        return cls(feature=feature, threshold=arrays[0], left=left, right=right, value=arrays[1], depth=depth,
                   baseline=float(d.get("baseline", 0.0)))


def fit_trees(x: np.ndarray, y: np.ndarray, w: np.ndarray, *, seed: int = 0, max_iter: int = 150,
              learning_rate: float = 0.05, max_depth: int = 3, min_samples_leaf: int = 40,
              l2: float = 1.0) -> Trees:
    """Gradient-boosted trees (scikit-learn's HistGradientBoostingClassifier, the ``learn`` extra),
    exported to arrays. Settings are fixed, not searched: shallow trees, a small learning rate and
    large leaves, because the training sets are a few hundred runs."""
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValueError("gradient-boosted trees need scikit-learn: pip install 'immunity[learn]'") from exc
    clf = HistGradientBoostingClassifier(max_iter=max_iter, learning_rate=learning_rate, max_depth=max_depth,
                                         min_samples_leaf=min_samples_leaf, l2_regularization=l2,
                                         early_stopping=False, random_state=seed)
    clf.fit(x, y.astype(int), sample_weight=w * (len(w) / max(float(w.sum()), 1e-12)))
    return trees_from_sklearn(clf)


def trees_from_sklearn(clf: Any) -> Trees:
    """Arrays of a fitted binary HistGradientBoostingClassifier's trees (numeric splits only)."""
    preds = [p[0] for p in clf._predictors]
    n_nodes = max((len(p.nodes) for p in preds), default=1)
    t = len(preds)
    feature = np.zeros((t, n_nodes), np.intp)
    threshold = np.zeros((t, n_nodes))
    left = np.tile(np.arange(n_nodes), (t, 1))
    right = left.copy()
    value = np.zeros((t, n_nodes))
    depth = 0
    for i, p in enumerate(preds):
        nodes = p.nodes
        for j, node in enumerate(nodes):
            depth = max(depth, int(node["depth"]))
            if node["is_leaf"]:
                value[i, j] = float(node["value"])
                continue
            if "is_categorical" in nodes.dtype.names and node["is_categorical"]:
                raise ValueError("categorical splits are not supported in packs")
            feature[i, j] = int(node["feature_idx"])
            threshold[i, j] = float(node["num_threshold"])
            left[i, j] = int(node["left"])
            right[i, j] = int(node["right"])
    baseline = float(np.asarray(clf._baseline_prediction).ravel()[0])
    return Trees(feature=feature, threshold=threshold, left=left, right=right, value=value, depth=depth,
                 baseline=baseline)


# ------------------------------------------------------------------------------------------ members
@dataclass
class Member:
    """One risk model of a pack (a merged pack has several, each with its own threshold)."""

    name: str
    threshold: float
    table: PatternTable
    logistic: Logistic | None
    prior: TaskPrior
    baseline_steps: int | None = None
    #: the domain signals the model reads (between the core features and the evidence)
    extra_names: list[str] = field(default_factory=list)
    #: gradient-boosted trees, when the pack's model is trees (then ``logistic`` is None)
    trees: Trees | None = None
    #: the names of the model's inputs, in the model's order (default: this version's layout)
    input_names: list[str] | None = None
    #: action sequences of the training runs (:mod:`immunity.learning.sequences`), when learned
    sequences: SequenceRefs | None = None
    _cols: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        names = self.input_names or model_inputs(self.extra_names, self.sequences is not None)
        self.input_names = list(names)
        layout = [*FEATURE_NAMES, *EVIDENCE_NAMES, *SEQUENCE_NAMES, *self.extra_names]
        where = {n: i for i, n in enumerate(layout)}
        missing = [n for n in names if n not in where]
        if missing:
            from immunity.errors import PackError

            raise PackError(f"risk model {self.name!r} reads inputs this immunity does not compute: {missing[:5]}")
        self._cols = np.asarray([where[n] for n in names], dtype=np.intp)

    @property
    def kind(self) -> str:
        return "trees" if self.trees is not None else "logistic"

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.trees is not None:
            return self.trees.predict(x)
        assert self.logistic is not None
        return self.logistic.predict(x)

    def inputs(self, numeric: np.ndarray, e_now: float, e_so_far: float, n_now: int, prior: float,
               extra: dict[str, float] | None = None, seq: np.ndarray | None = None) -> np.ndarray:
        ex = [(extra or {}).get(n, 0.0) for n in self.extra_names]
        full = np.concatenate([numeric, [e_now, e_so_far, math.log1p(n_now), logit(prior)],
                               NEUTRAL if seq is None else seq, ex])
        assert self._cols is not None
        return full[self._cols]


def member_from_dict(d: dict[str, Any], patterns: Sequence[Any], vectors: np.ndarray, dimension: int) -> Member:
    from immunity.learning.packs import PatternRows, _Predicates, decode_array

    ids = list(d.get("pattern_ids") or [])
    # a pack directory's patterns: columns, and predicates read from a pattern's line when used
    lazy: PatternRows | None = patterns if isinstance(patterns, PatternRows) else None
    all_ids = lazy.ids if lazy is not None else [p.pattern_id for p in patterns]
    pos = {pid: i for i, pid in enumerate(all_ids)}
    missing = [i for i in ids if i not in pos]
    if missing:
        from immunity.errors import PackError

        raise PackError(f"risk model {d.get('name')!r} names patterns the pack does not hold: {missing[:5]}")
    rows = [pos[i] for i in ids]
    every = rows == list(range(len(all_ids)))  # every pattern in the pack's order (the usual case)
    if lazy is not None:
        weights = np.asarray(lazy.weights, dtype=np.float64)[rows]
        classes = [lazy.classes[r] for r in rows]
        preds: Any = _Predicates(lazy, None if every else rows)
    else:
        weights = np.asarray([patterns[r].weight for r in rows], float)
        classes = [patterns[r].error_class for r in rows]
        preds = [patterns[r].predicates for r in rows]
    table = PatternTable(
        ids=ids,
        # every pattern in order: the pack's (maybe memory-mapped) matrix itself, no copy
        vectors=(vectors if every else vectors[rows]) if rows else np.zeros((0, dimension), np.float32),
        weights=weights,
        classes=classes,
        predicates=preds,
        min_similarity=float(d.get("min_similarity", 0.8)),
        top_k=int(d.get("top_k", 16)),
    )
    t = d.get("tasks") or {}
    tv = decode_array(t["vectors"], "task vectors") if t.get("vectors") else np.zeros((0, dimension), np.float32)
    prior = TaskPrior(vectors=tv, runs=np.asarray(t.get("runs", []), float),
                      failures=np.asarray(t.get("failures", []), float), keys=list(t.get("keys", [])),
                      base_rate=float(d.get("base_rate", 0.5)), strength=float(t.get("strength", 2.0)),
                      min_similarity=float(t.get("min_similarity", 0.5)), k=int(t.get("k", 5)))
    logistic = Logistic.from_dict(d["logistic"]) if d.get("logistic") else None
    trees = Trees.from_dict(d["trees"]) if d.get("trees") else None
    if logistic is None and trees is None:
        from immunity.errors import PackError

        raise PackError(f"risk model {d.get('name')!r} has neither a logistic model nor trees")
    spec = d.get("trees") or d.get("logistic") or {}
    inputs = list(spec.get("inputs") or [])
    extra = extra_names_of(inputs)
    seqs = SequenceRefs.from_dict(d["sequences"], len(prior.keys)) if d.get("sequences") else None
    if seqs is None and any(n in SEQUENCE_NAMES for n in inputs):
        from immunity.errors import PackError

        raise PackError(f"risk model {d.get('name')!r} reads sequence distances but holds no sequence references")
    return Member(name=str(d.get("name", "model")), threshold=float(d["threshold"]), table=table,
                  logistic=logistic, prior=prior, baseline_steps=d.get("baseline_steps_threshold"),
                  extra_names=extra, trees=trees, input_names=inputs, sequences=seqs)


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
        **({"logistic": m.logistic.as_dict(m.input_names)} if m.logistic is not None else {}),
        **({"trees": m.trees.as_dict(m.input_names)} if m.trees is not None else {}),
        "baseline_steps_threshold": m.baseline_steps,
        **({"sequences": m.sequences.as_dict()} if m.sequences is not None else {}),
        **(extra or {}),
    }
