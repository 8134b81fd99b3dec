"""Matching on the hot path: the ``patterns`` verifier.

For each completed step: the step's features (O(1) from the run's signals), one embedding of its
signature, one vector-index search, the predicates of the hits, and the pack's risk model. The
risk goes into ``state.extras["risk"]``; at or above the pack's threshold the verifier returns a
warning verdict whose ``error_class`` is the matched pattern's class and whose hint is the
pattern's suggested intervention. No model call, no network, nothing that reads the outcome.

Switch it on with ``Runtime(verifiers=["patterns"], packs=["my-pack.json"])``. Options
(``Config.options["patterns"]``): ``index`` (the vector index plugin, default ``"brute"``, or
``"hnswlib"`` for large packs), ``embedder_options`` (passed to the embedder's factory).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from immunity import taxonomy as tx
from immunity.errors import PackError
from immunity.learning.features import StepTracker, StepView
from immunity.learning.model import Member, evidence, member_from_dict
from immunity.learning.packs import merge_packs, pattern_ids, pattern_matrix, resolve_pack
from immunity.learning.sequences import SequenceTracker, token
from immunity.learning.signing import is_trusted
from immunity.models import Event, EventKind, PatternPack, Run, Severity, Step, Verdict
from immunity.state import RunState

log = logging.getLogger("immunity.learning")

#: The taxonomy class of an alarm with no specific learned pattern behind it.
LEARNED_RISK = "learned_risk"
tx.register_class(
    LEARNED_RISK,
    "The run so far resembles runs that failed (the learned risk is at or above the pack's threshold) without "
    "one specific failure pattern matching the current step.",
    "immunity learning (population risk model)",
    "Runs that looked like this one so far often failed. Re-read the task, check your assumptions against "
    "the tool outputs, and verify before finishing.",
)

# ------------------------------------------------------------------------------------------ signatures
def signature_mode(embedder: Any) -> str:
    return "features" if callable(getattr(embedder, "embed_features", None)) else "text"


def embed_signatures(embedder: Any, mode: str, signatures: list[str]) -> np.ndarray:
    """Embed step signatures: as a bag of named features when the embedder supports it, else as text."""
    if not signatures:
        return np.zeros((0, int(embedder.dimension)), dtype=np.float32)
    if mode == "features":
        rows = [{tok: 1.0 for tok in s.split()} for s in signatures]
        batch = getattr(embedder, "embed_features_batch", None)
        if callable(batch):
            return np.asarray(batch(rows), dtype=np.float32)
        return np.stack([np.asarray(embedder.embed_features(r), dtype=np.float32) for r in rows])
    return np.asarray(embedder.embed(list(signatures)), dtype=np.float32)


def embed_task(embedder: Any, task: str | None) -> np.ndarray | None:
    if not task or not task.strip():
        return None
    return np.asarray(embedder.embed([task[:4000]]), dtype=np.float32)[0]


def _core_vectors_registered(pm: Any, kind: str, name: str) -> bool:
    return name in pm.registry(kind)


def build_embedder(pm: Any, spec: dict[str, Any]) -> Any:
    """The embedder a pack names (its registered plugin name and options)."""
    from immunity.vectors import get_embedder

    name = str(spec.get("plugin", "hashing"))
    options = dict(spec.get("options") or {})
    if name == "hashing" and not _core_vectors_registered(pm, "embedders", name):
        # core's own embedder, when the plugin manager was built without core's vectors plugin
        from immunity.vectors import HashingEmbedder

        return HashingEmbedder(**options)
    return get_embedder(pm, name, **options)


def build_index(pm: Any, name: str, dimension: int) -> Any:
    from immunity.vectors import get_index

    if name == "brute" and not _core_vectors_registered(pm, "vector_indexes", name):
        from immunity.vectors import BruteForceIndex

        return BruteForceIndex(dimension)
    return get_index(pm, name, dimension)


# ------------------------------------------------------------------------------------------ matcher
class PackMatcher:
    """One or more packs ready to match: their embedder, a vector index over every pattern, and
    each pack's risk model."""

    def __init__(self, packs: list[PatternPack], pm: Any, *, index: str | None = None,
                 embedder_options: dict[str, Any] | None = None):
        if not packs:
            raise PackError("no pattern pack to match against")
        pack = packs[0] if len(packs) == 1 else merge_packs(*packs)
        self.pack = pack
        spec = dict((pack.model or {}).get("embedder") or {"plugin": "hashing"})
        if embedder_options:
            spec["options"] = {**(spec.get("options") or {}), **embedder_options}
        self.embedder = build_embedder(pm, spec)
        from immunity.vectors import check_compatible

        check_compatible(pack.embedder, pack.dimension, self.embedder, pack=pack.name)
        self.mode = str((pack.model or {}).get("signature", signature_mode(self.embedder)))
        vectors = pattern_matrix(pack)
        self.members: list[Member] = [member_from_dict(m, pack.patterns, vectors, pack.dimension)
                                      for m in (pack.model or {}).get("members", [])]
        if not self.members:
            raise PackError(f"pack {pack.name!r} has no risk model (model.members is empty)")
        ids = pattern_ids(pack)
        #: a pattern by id (a pack directory's pattern is parsed the first time it is asked for)
        self.patterns = _PatternsById(pack.patterns, ids)
        self.index = build_index(pm, index or "brute", pack.dimension)
        if ids:
            self.index.add(ids, vectors)
        self.k = sum(m.table.top_k for m in self.members)

    def new_run(self, task: str | None) -> RunScorer:
        return RunScorer(self, task)


class _PatternsById:
    """``{pattern_id: FailurePattern}`` over a pack's patterns, without building every pattern."""

    def __init__(self, patterns: Any, ids: list[str]):
        self._patterns = patterns
        self._rows = {pid: i for i, pid in enumerate(ids)}

    def get(self, pattern_id: str, default: Any = None) -> Any:
        row = self._rows.get(pattern_id)
        return default if row is None else self._patterns[row]

    def __getitem__(self, pattern_id: str) -> Any:
        return self._patterns[self._rows[pattern_id]]

    def __contains__(self, pattern_id: object) -> bool:
        return pattern_id in self._rows

    def __len__(self) -> int:
        return len(self._rows)


@dataclass
class StepScore:
    """The risk after one step."""

    step: int
    risk: float
    alarm: bool
    action_type: str
    patterns: list[str] = field(default_factory=list)
    error_class: str | None = None
    member_risks: list[float] = field(default_factory=list)
    #: the step itself failed (an error or a failed check), as the runtime recorded it
    failed: bool = False

    def row(self, run_id: str) -> dict[str, Any]:
        return {"run_id": run_id, "step": self.step, "risk": round(self.risk, 6), "alarm": self.alarm,
                "patterns": self.patterns, "action_type": self.action_type, "error_class": self.error_class,
                "failed": self.failed}


class RunScorer:
    """Per-run matching state (kept in ``state.extras["patterns"]``)."""

    def _carry(self, i: int, action: str, current: StepView) -> None:
        if self.matcher is None:
            prev = self.views[-1] if self.views else current
            self.views.append(StepView(step=i, action_type=action, numeric=prev.numeric, signals=dict(prev.signals),
                                       signature=prev.signature, extra=dict(prev.extra)))
            return
        prev_s = self.scores[-1] if self.scores else None
        self.scores.append(StepScore(step=i, risk=prev_s.risk if prev_s else 0.0, alarm=False, action_type=action,
                                     member_risks=list(prev_s.member_risks) if prev_s else []))

    def __init__(self, matcher: PackMatcher | None, task: str | None, domain_fn: Any = None):
        self.matcher = matcher
        self.task = task
        self.tracker = StepTracker(domain_fn=domain_fn)
        self.last = -1
        self.views: list[StepView] = []
        self.scores: list[StepScore] = []
        self.priors: list[float] | None = None
        self.so_far: list[float] = [0.0] * (len(matcher.members) if matcher else 0)
        self.seq: list[SequenceTracker | None] = []

    def update(self, state: RunState) -> StepScore | StepView | None:
        """Score the state's latest step once (a step seen again, e.g. relabelled as the final
        answer, keeps the score it got when it completed)."""
        k = state.n_steps - 1
        if k <= self.last or k < 0:
            return None
        view = self.tracker.update(state)
        for i in range(self.last + 1, k):
            # a step no hook saw (a side-effecting call answered from the idempotency cache): it
            # carries the previous step's figures, so step indices stay aligned with the run's steps
            self._carry(i, state.steps[i].action_type.value, view)
        first = self.last + 1
        self.last = k
        m = self.matcher
        if m is None:
            self.views.append(view)
            return view
        if self.priors is None:
            tvec = embed_task(m.embedder, self.task if self.task is not None else state.task)
            self.priors = [mem.prior.prior(tvec) for mem in m.members]
            self.seq = [_sequence_tracker(mem, tvec) for mem in m.members]
        seq_now: list[np.ndarray | None] = []
        for tr in self.seq:
            feats = None
            if tr is not None:
                for s in state.steps[first:k + 1]:  # every step, the carried ones too, as learning saw them
                    feats = tr.update(tr.refs.ids([token(s.action_type.value, s.tool)])[0])
            seq_now.append(feats)
        vec = embed_signatures(m.embedder, m.mode, [view.signature])[0]
        hits = m.index.search(vec, m.k) if len(m.index) else []
        cands: list[tuple[bool, float, str, str]] = []
        risk, alarm, matched_ids = 0.0, False, []
        member_risks: list[float] = []
        for j, mem in enumerate(m.members):
            pos = [(mem.table.position[pid], s) for pid, s in hits if pid in mem.table.position]
            pos.sort(key=lambda h: -h[1])
            matched = mem.table.matched(pos[: mem.table.top_k], view.signals, view.action_type)
            e_now, n_now, best_pos = evidence(mem.table, matched)
            self.so_far[j] = max(self.so_far[j], e_now)
            x = mem.inputs(view.numeric, e_now, self.so_far[j], n_now, self.priors[j], view.extra, seq_now[j])
            r = float(mem.predict(x[None, :])[0])
            member_risks.append(r)
            fired = r >= mem.threshold
            alarm = alarm or fired
            for i, _s in sorted(matched, key=lambda h: -mem.table.weights[h[0]]):
                if mem.table.ids[i] not in matched_ids:
                    matched_ids.append(mem.table.ids[i])
            if best_pos is not None:
                cands.append((fired, r, mem.table.ids[best_pos], mem.table.classes[best_pos]))
            risk = max(risk, r)
        best = max(cands) if cands else None
        if best is not None and best[2] in matched_ids:  # the best pattern first
            matched_ids.remove(best[2])
            matched_ids.insert(0, best[2])
        cls = best[3] if best is not None else (LEARNED_RISK if alarm else None)
        score = StepScore(step=k, risk=risk, alarm=alarm, action_type=view.action_type, patterns=matched_ids,
                          error_class=cls, member_risks=member_risks, failed=bool(view.signals.get("last_failed")))
        self.scores.append(score)
        return score


def _sequence_tracker(mem: Member, tvec: np.ndarray | None) -> SequenceTracker | None:
    """The run's distance tracker for one risk model (None when the model has no references)."""
    refs = mem.sequences
    if refs is None:
        return None
    sims = mem.prior.vectors @ tvec if (tvec is not None and len(mem.prior.keys) and np.any(tvec)) else None
    succ, fail = refs.nearest(sims)
    return SequenceTracker(refs, succ, fail)


# ------------------------------------------------------------------------------------------ verifier
class PatternsVerifier:
    """The ``patterns`` verifier: matches each completed step against the configured packs."""

    name = "patterns"

    def __init__(self, config: Any = None, *, runtime: Any = None):
        self.config = config
        #: the plugin manager of the runtime that built this verifier (it resolves pack names,
        #: embedders and indexes); one with the installed plugins when built by hand
        self._pm: Any = getattr(runtime, "pm", None)
        self._runtime = runtime
        opts = dict((getattr(config, "options", None) or {}).get("patterns", {}) or {})
        self.index_name = opts.get("index")
        self.embedder_options = opts.get("embedder_options")
        self._matcher: PackMatcher | None = None
        self._loaded = False
        self._trusted_ids: set[str] = set()

    @property
    def matcher(self) -> PackMatcher | None:
        if not self._loaded:
            self._loaded = True
            refs = list(getattr(self.config, "packs", None) or [])
            if refs:
                pm = self._pm
                if pm is None:
                    from immunity.plugins import get_plugin_manager

                    pm = self._pm = get_plugin_manager()
                registry = pm.registry("pattern_packs")
                packs = [resolve_pack(r, registry) for r in refs]
                self._matcher = PackMatcher(packs, pm, index=self.index_name, embedder_options=self.embedder_options)
                # whose words may reach a prompt: patterns of trusted packs only (an id that an
                # untrusted pack also uses is not trusted: merging keeps one of the two texts)
                trusted = [p for p in packs if is_trusted(p, self.config)]
                untrusted_ids = {pid for p in packs if p not in trusted for pid in pattern_ids(p)}
                self._trusted_ids = {pid for p in trusted for pid in pattern_ids(p)} - untrusted_ids
        return self._matcher

    def _domain_fn(self, domain: str | None) -> Any:
        """The run's domain signal function (``Domain.signals``), if its domain has one."""
        rt = self._runtime
        if rt is None or not domain or not callable(getattr(rt, "domain", None)):
            return None
        try:
            return getattr(rt.domain(domain), "signals", None)
        except Exception:  # an unknown domain has no signals
            return None

    def verify(self, event: Event, step: Step | None, run: Run, state: RunState) -> list[Verdict]:
        if step is None or event.kind == EventKind.TOOL_START:
            return []
        scorer = state.extras.get("patterns")
        if scorer is None:
            scorer = state.extras["patterns"] = RunScorer(self.matcher, run.task, self._domain_fn(run.domain))
        score = scorer.update(state)
        if not isinstance(score, StepScore):
            return []
        state.extras["risk"] = score.risk
        if not score.alarm:
            return []
        matcher = scorer.matcher
        assert matcher is not None
        pattern = matcher.patterns.get(score.patterns[0]) if score.patterns else None
        cls = score.error_class or LEARNED_RISK
        trusted = pattern is not None and pattern.pattern_id in self._trusted_ids
        # an untrusted pack raises the alarm, but its own words never reach a prompt: the class's
        # reviewed template stands in for its hint and description
        hint = (pattern.intervention if trusted and pattern is not None else None) or _class_hint(cls)
        desc = pattern.description if trusted and pattern is not None else \
            f"the run so far resembles runs that failed ({cls})"
        return [Verdict(ok=False, error_class=cls, severity=Severity.WARNING,
                        message=f"failure risk {score.risk:.2f} at step {score.step}: {desc}",
                        hint=hint, evidence={"risk": round(score.risk, 4), "pattern_id": score.patterns[0]
                                             if score.patterns else None, "patterns": score.patterns[:5],
                                             "pack": matcher.pack.name})]


def _class_hint(cls: str) -> str:
    c = tx.get(cls)
    return f"[immunity] {c.hint}" if c else "[immunity] This run resembles runs that failed. Check your last steps."
