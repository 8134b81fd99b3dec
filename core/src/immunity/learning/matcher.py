"""Matching on the hot path: the ``patterns`` verifier.

For each completed step: the step's features (O(1) from the run's signals), one embedding of its
signature, one vector-index search, the predicates of the hits, and the pack's risk model. The
risk goes into ``state.extras["risk"]``; at or above the pack's threshold the verifier returns a
warning verdict whose ``error_class`` is the matched pattern's class and whose hint is the
pattern's suggested intervention. No model call, no network, nothing that reads the outcome.

Switch it on with ``Runtime(verifiers=["patterns"], packs=["my-pack.json"])``. Options
(``Config.options["patterns"]``): ``index`` (the vector index plugin, default ``"brute"``, or
``"hnswlib"`` for large packs), ``embedder_options`` (passed to the embedder's factory), ``wait``
(load a pack directory and load or build the index at the first step instead of in the
background; steps seen before they are ready are scored as not matched), ``cache_size`` (step
signatures whose nearest patterns are kept, default 4096), ``save_index`` (save a built index
into the pack directory, default true).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from immunity import taxonomy as tx
from immunity.errors import PackError
from immunity.learning.features import StepTracker, StepView
from immunity.learning.model import Member, evidence, member_from_dict
from immunity.learning.packs import (
    load_saved_index,
    merge_packs,
    pack_directory,
    pattern_ids,
    pattern_matrix,
    resolve_pack,
    save_index,
)
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
    each pack's risk model.

    The index is loaded from the pack directory when a saved one fits the pack
    (:func:`~immunity.learning.packs.load_saved_index`), else built (and then saved there when the
    directory is writable, for the next process). Core's brute-force index is ready at once; any
    other index is loaded or built in a background thread unless ``wait`` is true, and until it is
    :attr:`ready` steps are not matched (they are scored as skipped, never blocked on).

    :param cache_size: how many distinct step signatures keep their nearest patterns (an LRU); the
        index does not change while matching, so a signature seen again costs a dict lookup
        instead of an embedding and a search. 0 switches the cache off.
    :param save_index: save a built index into the pack directory (default true).
    """

    def __init__(self, packs: list[PatternPack], pm: Any, *, index: str | None = None,
                 embedder_options: dict[str, Any] | None = None, wait: bool = False, cache_size: int = 4096,
                 save_index: bool = True):
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
        self.index_name = index or "brute"
        self.index = build_index(pm, self.index_name, pack.dimension)
        self.k = sum(m.table.top_k for m in self.members)
        #: where the index came from: "saved" (the pack directory's), "built", "failed", or
        #: "pending" while a background thread loads or builds it
        self.index_source = "pending"
        #: why a saved index was not used, or why building failed
        self.index_problem: str | None = None
        #: steps not matched because the index was not ready yet
        self.skipped = 0
        self._cache: OrderedDict[str, tuple[tuple[str, float], ...]] = OrderedDict()
        self._cache_size = max(int(cache_size), 0)
        self._cache_lock = threading.Lock()
        self._save = save_index
        self._ready = threading.Event()
        if not ids or self.index_name == "brute" or wait:
            self._prepare(ids, vectors)
        else:
            threading.Thread(target=self._prepare, args=(ids, vectors), daemon=True,
                             name=f"immunity-index-{self.index_name}").start()

    def _prepare(self, ids: list[str], vectors: np.ndarray) -> None:
        """Load the saved index, or build it (and save it); never raises: a failed build leaves an
        empty index (nothing matches) and the reason in :attr:`index_problem`."""
        pack, index = self.pack, self.index
        try:
            try:
                if ids and load_saved_index(pack, index):
                    self.index_source = "saved"
                    return
            except PackError as exc:
                self.index_problem = str(exc)
                log.warning("ignoring the saved index of pack %r and building it again: %s", pack.name, exc)
            if ids:
                index.add(ids, vectors)
            self.index_source = "built"
            if ids and self._save and callable(getattr(index, "save", None)) and pack_directory(pack) is not None:
                try:
                    save_index(pack, index)
                except (OSError, PackError, ValueError, RuntimeError) as exc:
                    log.info("could not save the index of pack %r: %s", pack.name, exc)
        except Exception as exc:  # fail open: no matches rather than a broken agent
            self.index_source, self.index_problem = "failed", f"{type(exc).__name__}: {exc}"
            log.error("building the %s index of pack %r failed: %s", self.index_name, pack.name, exc)
        finally:
            self._ready.set()

    @property
    def ready(self) -> bool:
        """The index is loaded or built (steps are matched)."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the index is ready; returns :attr:`ready`."""
        return self._ready.wait(timeout)

    def hits(self, signature: str) -> tuple[tuple[str, float], ...]:
        """The nearest patterns of a step signature: ``((pattern_id, cosine), ...)`` best first."""
        cache = self._cache
        if self._cache_size:
            with self._cache_lock:
                found = cache.get(signature)
                if found is not None:
                    cache.move_to_end(signature)
                    return found
        vec = embed_signatures(self.embedder, self.mode, [signature])[0]
        found = tuple(self.index.search(vec, self.k)) if len(self.index) else ()
        if self._cache_size:
            with self._cache_lock:
                cache[signature] = found
                if len(cache) > self._cache_size:
                    cache.popitem(last=False)
        return found

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
    #: false when the step was not matched because the pack or its index was still loading (the
    #: risk is the previous step's)
    matched: bool = True

    def row(self, run_id: str) -> dict[str, Any]:
        row = {"run_id": run_id, "step": self.step, "risk": round(self.risk, 6), "alarm": self.alarm,
               "patterns": self.patterns, "action_type": self.action_type, "error_class": self.error_class,
               "failed": self.failed}
        if not self.matched:
            row["matched"] = False
        return row


class RunScorer:
    """Per-run matching state (kept in ``state.extras["patterns"]``)."""

    def _carry(self, i: int, action: str, current: StepView) -> None:
        if self.matcher is None and self.pending is None:
            prev = self.views[-1] if self.views else current
            self.views.append(StepView(step=i, action_type=action, numeric=prev.numeric, signals=dict(prev.signals),
                                       signature=prev.signature, extra=dict(prev.extra)))
            return
        prev_s = self.scores[-1] if self.scores else None
        self.scores.append(StepScore(step=i, risk=prev_s.risk if prev_s else 0.0, alarm=False, action_type=action,
                                     member_risks=list(prev_s.member_risks) if prev_s else [],
                                     matched=prev_s.matched if prev_s else self.matcher is not None))

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
        #: while the packs load in the background: returns the matcher once it is there
        self.pending: Any = None

    def _skipped(self, k: int, view: StepView, state: RunState) -> StepScore:
        state.extras["patterns_skipped"] = int(state.extras.get("patterns_skipped", 0)) + 1
        prev = self.scores[-1] if self.scores else None
        skipped = StepScore(step=k, risk=prev.risk if prev else 0.0, alarm=False, action_type=view.action_type,
                            member_risks=list(prev.member_risks) if prev else [], matched=False,
                            failed=bool(view.signals.get("last_failed")))
        self.scores.append(skipped)
        return skipped

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
        if self.matcher is None and self.pending is not None:
            m = self.pending()
            if m is None:  # the packs are still loading: this step is not matched
                return self._skipped(k, view, state)
            self.matcher, self.pending = m, None
            self.so_far = [0.0] * len(m.members)
            first = 0  # the sequence trackers see every step of the run, the skipped ones too
        m = self.matcher
        if m is None:
            self.views.append(view)
            return view
        if self.priors is None:
            # the task is embedded only when a member has training tasks to compare it with (a
            # long task of new words costs milliseconds to embed, once per run)
            needed = any(len(mem.prior.keys) for mem in m.members)
            tvec = embed_task(m.embedder, self.task if self.task is not None else state.task) if needed else None
            self.priors = [mem.prior.prior(tvec) for mem in m.members]
            self.seq = [_sequence_tracker(mem, tvec) for mem in m.members]
        seq_now: list[np.ndarray | None] = []
        for tr in self.seq:
            feats = None
            if tr is not None:
                for s in state.steps[first:k + 1]:  # every step, the carried ones too, as learning saw them
                    feats = tr.update(tr.refs.ids([token(s.action_type.value, s.tool)])[0])
            seq_now.append(feats)
        if not m.ready:  # the index is still loading or building: this step is not matched
            m.skipped += 1
            return self._skipped(k, view, state)
        hits = m.hits(view.signature)
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
        #: wait for the index at the first step instead of skipping steps until it is ready
        #: (offline scoring); ``cache_size``: step signatures whose nearest patterns are kept
        self.matcher_options = {k: opts[k] for k in ("wait", "cache_size", "save_index") if k in opts}
        self._matcher: PackMatcher | None = None
        self._loaded = False
        self._trusted_ids: set[str] = set()
        self._load_lock = threading.Lock()
        self._loading: threading.Thread | None = None
        self._load_error: BaseException | None = None
        self._background_done = False

    def _registry(self) -> dict[str, Any]:
        pm = self._pm
        if pm is None:
            from immunity.plugins import get_plugin_manager

            pm = self._pm = get_plugin_manager()
        return dict(pm.registry("pattern_packs"))

    def _in_background(self) -> bool:
        """Load the packs in a background thread: a pack directory (the form of large packs) is
        named and ``wait`` is not set. One-file packs load at the first step, as they are small."""
        if self.matcher_options.get("wait"):
            return False
        refs = list(getattr(self.config, "packs", None) or [])
        if not refs or any(isinstance(r, PatternPack) for r in refs):
            return False
        try:
            registry = self._registry()
            return any(os.path.isdir(str(registry.get(str(r), r))) for r in refs)
        except Exception:  # resolved (and reported) by the load itself
            return False

    def _load_in_background(self) -> None:
        with self._load_lock:
            try:
                self._load()
            except BaseException as exc:  # handed to the next step's verify
                self._load_error = exc
            finally:
                self._background_done = True

    def current_matcher(self) -> PackMatcher | None:
        """The matcher if the packs are loaded; ``None`` while a background load runs (started
        here for a pack directory, see :meth:`_in_background`). A failed background load raises
        its error once, at the next call."""
        if self._loaded and self._loading is None:
            return self._matcher
        if self._loading is None:
            if not self._in_background():
                return self.matcher
            with self._load_lock:
                if self._loading is None:
                    self._loading = threading.Thread(target=self._load_in_background, daemon=True,
                                                     name="immunity-pack-load")
                    self._loading.start()
        if not self._background_done:
            return None
        if self._load_error is not None:
            err, self._load_error = self._load_error, None
            raise err
        return self._matcher

    @property
    def matcher(self) -> PackMatcher | None:
        """The matcher over the configured packs, loaded here if no background load has done it
        (waits for one that is running)."""
        with self._load_lock:
            try:
                return self._load()
            finally:
                self._background_done = True  # loaded here or there: steps are matched from now on

    def _load(self) -> PackMatcher | None:
        if not self._loaded:
            self._loaded = True
            refs = list(getattr(self.config, "packs", None) or [])
            if refs:
                registry = self._registry()
                packs = [resolve_pack(r, registry) for r in refs]
                self._matcher = PackMatcher(packs, self._pm, index=self.index_name, embedder_options=self.embedder_options,
                                            **self.matcher_options)
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
            m = self.current_matcher()
            scorer = state.extras["patterns"] = RunScorer(m, run.task, self._domain_fn(run.domain))
            if m is None and self._loading is not None:
                scorer.pending = self.current_matcher
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
