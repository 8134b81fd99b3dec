"""Distance of a run's action sequence to runs of similar tasks that succeeded (and that failed).

At learn time a pack keeps every labelled training run's action sequence in compact form: one
token per step (``ACTION_TYPE:tool``) as an index into a vocabulary, cut at :data:`MAX_LEN`
steps, the run's true length, its outcome and its task (an index into the task prior's task
keys, whose vectors the pack already holds). Data only: lists of integers and strings.

Live, the first step picks, by task-description similarity, the ``k`` nearest successful and the
``k`` nearest failed reference runs (one matrix-vector product). Each later step updates, for each
reference, the size of the multiset intersection between this run's prefix and the reference's
prefix of the same length, over step tokens and pairs of consecutive tokens. The update is O(1)
per reference: a counter moves by one when the new token is one the other side already had more
of. Distance = 1 - intersection / the larger of the two prefix sizes.

The features (:data:`SEQUENCE_NAMES`) are the mean distance to the successful references, to the
failed ones, their difference, and the share of each group that had already ended by this step.
Nothing reads this run's outcome or length; at learn time a run never uses references of its own
group (task or repository), as a held-out run would not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SEQUENCE_NAMES: tuple[str, ...] = ("seq_dist_success", "seq_dist_failure", "seq_dist_contrast",
                                   "seq_success_ended", "seq_failure_ended")
#: Steps of a reference run kept (a live run longer than this is compared with these prefixes).
MAX_LEN = 100
#: Reference runs per outcome.
K = 5
#: The features before any reference is known (no similar run: no distance evidence).
NEUTRAL = np.asarray([1.0, 1.0, 0.0, 0.0, 0.0])


def _int(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise TypeError(f"expected an integer, got {type(x).__name__}")
    return x


def token(action: str, tool: str | None) -> str:
    return f"{action}:{tool or '-'}"


@dataclass
class SequenceRefs:
    """Compact action sequences of labelled runs (see the module docstring)."""

    vocab: list[str]
    seqs: list[list[int]]
    lengths: np.ndarray  # (R,) int, the full run lengths
    outcomes: np.ndarray  # (R,) int, 1 failed, 0 succeeded
    tasks: np.ndarray  # (R,) int, index into the task prior's keys (-1: no task vector)
    groups: list[str] = field(default_factory=list)  # learn time only, never saved
    k: int = K
    _ids: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._ids = {t: i for i, t in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.seqs)

    def ids(self, tokens: Sequence[str]) -> list[int]:
        return [self._ids.get(t, -1) for t in tokens]

    def nearest(self, task_sims: np.ndarray | None, exclude: str | None = None) -> tuple[list[int], list[int]]:
        """The ``k`` nearest successful and failed references by task similarity (``task_sims``:
        the similarity of this run's task to each of the prior's tasks; None ranks by order)."""
        n = len(self.seqs)
        if n == 0:
            return [], []
        sims = np.full(n, -2.0)
        if task_sims is not None and len(task_sims):
            ok = self.tasks >= 0
            sims[ok] = task_sims[self.tasks[ok]]
        if exclude is not None and self.groups:
            sims = np.where(np.asarray([g == exclude for g in self.groups]), -np.inf, sims)
        order = np.argsort(-sims, kind="stable")
        succ: list[int] = []
        fail: list[int] = []
        for i in order:
            if not np.isfinite(sims[i]):
                break
            (fail if self.outcomes[i] == 1 else succ).append(int(i))
            if len(succ) >= self.k and len(fail) >= self.k:
                break
        return succ[: self.k], fail[: self.k]

    def as_dict(self) -> dict[str, Any]:
        return {"vocab": list(self.vocab), "seqs": [list(map(int, s)) for s in self.seqs],
                "lengths": [int(x) for x in self.lengths], "outcomes": [int(x) for x in self.outcomes],
                "tasks": [int(x) for x in self.tasks], "k": int(self.k), "max_len": MAX_LEN}

    @classmethod
    def from_dict(cls, d: dict[str, Any], n_tasks: int) -> SequenceRefs:
        from immunity.errors import PackError

        try:
            if not all(isinstance(v, str) for v in d.get("vocab") or []):
                raise TypeError("vocabulary entries must be texts")
            vocab = list(d.get("vocab") or [])
            seqs = [[_int(x) for x in s] for s in d.get("seqs") or []]
            lengths, outcomes, tasks = (np.asarray([_int(x) for x in d.get(k) or []], dtype=np.int64)
                                        for k in ("lengths", "outcomes", "tasks"))
        except (TypeError, ValueError) as exc:
            raise PackError(f"the pack's sequence references are malformed: {exc}") from None
        if not len(seqs) == len(lengths) == len(outcomes) == len(tasks):
            raise PackError("the pack's sequence references have columns of different lengths")
        if any(x < 0 or x >= len(vocab) for s in seqs for x in s):
            raise PackError("the pack's sequence references point at tokens their vocabulary does not hold")
        if len(tasks) and (tasks.min() < -1 or tasks.max() >= n_tasks):
            raise PackError("the pack's sequence references point at tasks the task prior does not hold")
        if len(outcomes) and not set(outcomes.tolist()) <= {0, 1}:
            raise PackError("the pack's sequence references hold outcomes other than 0 and 1")
        return cls(vocab=vocab, seqs=seqs, lengths=lengths, outcomes=outcomes, tasks=tasks,
                   k=max(1, _k(d.get("k", K))))


def _k(x: Any) -> int:
    from immunity.errors import PackError

    if isinstance(x, bool) or not isinstance(x, int) or not 1 <= x <= 1000:
        raise PackError(f"the pack's sequence references have an implausible k {x!r}")
    return x


def build_refs(runs: Sequence[Any], task_keys: Sequence[str], k: int = K) -> SequenceRefs:
    """References from labelled runs (objects with ``actions``, ``tools``, ``outcome``, ``task_key``
    and ``group``); ``task_keys`` are the task prior's keys, in its order."""
    vocab: dict[str, int] = {}
    seqs, lengths, outcomes, tasks, groups = [], [], [], [], []
    where = {key: i for i, key in enumerate(task_keys)}
    for r in runs:
        if r.outcome is None or r.n == 0:
            continue
        toks = [token(a, t) for a, t in zip(r.actions[:MAX_LEN], r.tools[:MAX_LEN], strict=True)]
        seqs.append([vocab.setdefault(t, len(vocab)) for t in toks])
        lengths.append(r.n)
        outcomes.append(int(r.outcome))
        tasks.append(where.get(r.task_key, -1))
        groups.append(r.group)
    return SequenceRefs(vocab=list(vocab), seqs=seqs, lengths=np.asarray(lengths, np.int64),
                        outcomes=np.asarray(outcomes, np.int64), tasks=np.asarray(tasks, np.int64),
                        groups=groups, k=k)


class SequenceTracker:
    """Per-run distance to the chosen references, one :meth:`update` per step (O(k))."""

    def __init__(self, refs: SequenceRefs, succ: list[int], fail: list[int]):
        self.refs = refs
        self.chosen = [*succ, *fail]
        self.is_fail = [False] * len(succ) + [True] * len(fail)
        self.n_succ, self.n_fail = len(succ), len(fail)
        self.live: dict[Any, int] = {}
        self.ref_counts: list[dict[Any, int]] = [{} for _ in self.chosen]
        self.overlap = [0] * len(self.chosen)
        self.ref_size = [0] * len(self.chosen)
        self.size = 0
        self.step = 0
        self.prev: int | None = None
        #: the chosen references' lengths as Python ints (read on every step)
        self.lengths = [int(refs.lengths[r]) for r in self.chosen]

    def update(self, token_id: int) -> np.ndarray:
        """Fold in this run's next step (a vocabulary index, -1 when unknown); the features after it."""
        self.advance(token_id)
        return self.features()

    def advance(self, token_id: int) -> None:
        """:meth:`update` without computing the features."""
        k = self.step
        keys: list[Any] = [token_id] if self.prev is None else [token_id, (self.prev, token_id)]
        self.prev = token_id
        live = self.live
        for key in keys:
            live[key] = a = live.get(key, 0) + 1
            for j, counts in enumerate(self.ref_counts):
                if a <= counts.get(key, 0):
                    self.overlap[j] += 1
        self.size += len(keys)
        seqs = self.refs.seqs
        for j, r in enumerate(self.chosen):
            seq = seqs[r]
            if k < len(seq):
                u = seq[k]
                counts = self.ref_counts[j]
                for key in ((u,) if k == 0 else (u, (seq[k - 1], u))):
                    counts[key] = b = counts.get(key, 0) + 1
                    if b <= live.get(key, 0):
                        self.overlap[j] += 1
                    self.ref_size[j] += 1
        self.step = k + 1

    def features(self) -> np.ndarray:
        if not self.chosen:
            return NEUTRAL.copy()
        return np.asarray(self.row())

    def row(self) -> list[float]:
        """:meth:`features` as a list of floats (the same arithmetic; no array per step)."""
        if not self.chosen:
            return [float(x) for x in NEUTRAL]
        ds = [0.0, 0.0]
        ended = [0, 0]
        lengths, step, size, overlap, ref_size = self.lengths, self.step, self.size, self.overlap, self.ref_size
        for j, fail in enumerate(self.is_fail):
            f = int(fail)
            ds[f] += 1.0 - overlap[j] / max(size, ref_size[j], 1)
            ended[f] += int(lengths[j] <= step)
        d_s = ds[0] / self.n_succ if self.n_succ else 1.0
        d_f = ds[1] / self.n_fail if self.n_fail else 1.0
        return [d_s, d_f, d_s - d_f, ended[0] / self.n_succ if self.n_succ else 0.0,
                ended[1] / self.n_fail if self.n_fail else 0.0]


def run_features(refs: SequenceRefs, actions: Sequence[str], tools: Sequence[str | None],
                 task_sims: np.ndarray | None, exclude: str | None = None) -> np.ndarray:
    """(n, len(SEQUENCE_NAMES)): the features after every step of one run (learning's batch twin
    of the live tracker; the same arithmetic)."""
    succ, fail = refs.nearest(task_sims, exclude)
    tr = SequenceTracker(refs, succ, fail)
    ids = refs.ids([token(a, t) for a, t in zip(actions, tools, strict=True)])
    rows = []
    for t in ids:
        tr.advance(t)
        rows.append(tr.row())
    return np.asarray(rows, dtype=np.float64).reshape(len(ids), len(SEQUENCE_NAMES))
