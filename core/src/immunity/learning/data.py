"""Reading runs (trace files through the importers, or a store) and replaying them through a live
runtime: to collect the per-step features learning needs, and to score runs with a pack.

Both go through the same path as a live run: ``Runtime.start_run`` then
:func:`immunity.importers.replay.replay`, with the ``patterns`` verifier switched on. Scoring
runs observe-only (``Config.observe_only``: every verdict is recorded, no intervention or recovery
acts and no step is blocked, since a replayed run already happened), keeps the rules from asking
for blocks and stops at all, and turns off the per-step time budget (so a loaded machine cannot
skip the verifier and change the scores).
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from immunity.config import Config
from immunity.errors import ImmunityError
from immunity.learning.features import N_FEATURES, SIGNAL_NAMES
from immunity.learning.learn import RunData
from immunity.learning.matcher import (
    PackMatcher,
    RunScorer,
    StepScore,
    build_embedder,
    embed_signatures,
    embed_task,
    signature_mode,
)
from immunity.learning.packs import resolve_pack
from immunity.learning.parallel import pmap
from immunity.models import Outcome
from immunity.state import RunState

_REPO = re.compile(r"^(?P<repo>.+__.+?)-\d+$")

_NEVER = 10**9


def scoring_config(packs: list[Any] | None = None, *, domain: str | None = None,
                   options: dict[str, Any] | None = None) -> Config:
    """A runtime configuration that observes a replayed run without changing it (every step is
    matched: the packs and their index are loaded before the first step, never in the background)."""
    opts = dict(options or {})
    opts["patterns"] = {"wait": True, **(opts.get("patterns") or {})}
    return Config(domain=domain, store=None, step_budget_ms=0.0, verifiers=["patterns"], packs=list(packs or []),
                  max_consecutive_failures=_NEVER, observe_only=True,
                  options={"rules": {"block_repeat": _NEVER, "stop_repeat": _NEVER, "tool_breaker": _NEVER}, **opts})


def make_runtime(packs: list[Any] | None = None, *, domain: str | None = None,
                 options: dict[str, Any] | None = None, plugins: list[Any] | None = None) -> Any:
    from immunity.runtime import Runtime

    return Runtime(config=scoring_config(packs, domain=domain, options=options), plugins=list(plugins or []))


def task_key(run: Any) -> str:
    if run.task_id:
        return str(run.task_id)
    if run.task:
        return "task:" + hashlib.sha256(run.task.encode("utf-8", "replace")).hexdigest()[:16]
    return "run:" + run.run_id


def repo_of(key: str) -> str:
    """SWE-bench style ids (``django__django-11099``): the repository part; anything else: itself."""
    m = _REPO.match(key)
    return m.group("repo") if m else key


#: How runs can be grouped for every split (cross-validation folds, calibration folds).
SPLITS: tuple[str, ...] = ("task", "repo", "source", "agent")


def group_of(run: Any, split: str) -> str:
    """The run's group for ``split``: its task, its repository (SWE-bench style ids), the source
    it was read from (``source``: leave-one-source-out with as many folds as sources), or the
    agent/model that ran it (``agent``)."""
    key = task_key(run)
    if split == "repo":
        return repo_of(key)
    if split == "source":
        return str(run.source or "-")
    if split == "agent":
        return str(run.agent or run.metadata.get("model") or run.framework or "-")
    return key


def outcome_label(run: Any) -> int | None:
    if run.outcome == Outcome.FAILURE:
        return 1
    if run.outcome == Outcome.SUCCESS:
        return 0
    return None


# ------------------------------------------------------------------------------------------ reading
def read_runs(paths: list[str], fmt: str = "auto", *, store: str | None = None, domain: str | None = None,
              runtime: Any = None, on_problem: Callable[[str], None] | None = None,
              mapping: bool = True) -> list[Any]:
    """Imported runs from trace files (or from a store), problems reported through ``on_problem``.

    ``mapping=False`` leaves the steps' action mapping to :func:`collect`, which does it in its
    worker processes (the same mapping; see ``iter_runs``)."""
    report = on_problem or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    out: list[Any] = []
    if store:
        out.extend(_store_runs(store))
    if paths:
        from immunity.importers import ImportProblem, iter_runs

        for item in iter_runs(list(paths), fmt, runtime=runtime, domain=domain, mapping=mapping):
            if isinstance(item, ImportProblem):
                if item.skipped:
                    report(str(item))
                continue
            out.append(item)
    return out


def _store_runs(path: str) -> Iterator[Any]:

    from immunity.importers import ImportedRun
    from immunity.locations import open_location

    st = open_location(path)
    try:
        for run in st.runs(limit=None):
            steps = st.steps(run.run_id)
            for s in steps:
                s.data.pop("flagged", None)
            yield ImportedRun(run=run, steps=steps, source=path)
    finally:
        st.close()


# ------------------------------------------------------------------------------------------ replay
def _replay(item: Any, rt: Any, run_id: str) -> Any:
    from immunity.importers.replay import replay

    run = item.run
    session = rt.start_run(task=run.task, framework=run.framework, domain=run.domain, run_id=run_id,
                           agent=run.agent, task_id=run.task_id)
    fed = replay(item, session)
    blocked = sum(1 for f in fed if f.blocked)
    if blocked:
        raise ScoringError(f"run {run.run_id}: {blocked} step(s) were blocked while replaying; a scoring runtime "
                           "must only observe (check the plugins' blocking options)")
    session.end()
    rt.sessions.pop(run_id, None)
    return session


def _clip(text: Any, limit: int) -> Any:
    """The runtime's clipping of a step's text (``immunity.runtime._clip``)."""
    if isinstance(text, str) and len(text) > limit:
        return text[:limit] + f"... [{len(text) - limit} more characters]"
    return text


@dataclass
class _Feeder:
    """What the feature pass needs from a runtime: its domains (action mapping of an unclipped
    message, ``judge_result``, ``signals``), looked up once per domain."""

    rt: Any
    cache: dict[str | None, tuple[Any, Any]]
    #: embeds each run's task in the pass (in the workers) when set: the pure-Python hashing
    #: embedder, which is safe to use after a fork and embeds each text on its own
    task_embedder: Any = None

    def domain(self, name: str | None) -> tuple[Any, Any]:
        if name not in self.cache:
            dom = None
            if name:
                try:
                    dom = self.rt.domain(name)
                except Exception:  # an unknown domain: no judge, no signals
                    dom = None
            self.cache[name] = (getattr(dom, "judge_result", None), getattr(dom, "signals", None))
        return self.cache[name]


def feature_pass(item: Any, feeder: _Feeder) -> tuple[RunState, RunScorer]:
    """The features of one imported run, step by step, without the full runtime.

    This does what :func:`_replay` makes the runtime do that the features depend on, and nothing
    else: each imported step becomes the step the runtime would record (the same clipping, the
    action mapping the importer already gave it through the same ``immunity_map_action`` hooks,
    a domain's ``judge_result`` on checks, a side-effecting call answered from the idempotency
    cache, a model message relabelled as the final answer), :meth:`RunState.add_step` folds it in,
    and the ``patterns`` verifier's own :class:`RunScorer` computes the step's view. Verifiers,
    interventions, stores and the other observers are skipped: in a scoring runtime they only
    observe, and none of them changes a step or the state the features read (a test checks that
    both paths give the same features)."""
    from immunity.models import ActionType, Step

    run = item.run
    judge, signal_fn = feeder.domain(run.domain)
    # the importer's mapping is the runtime's when it mapped these steps for this domain; else map
    # each step as ``RunSession._new_step`` does
    reuse = getattr(item, "mapped_for", None) == str(run.domain)
    state = RunState(run_id=run.run_id, task=run.task, domain=run.domain)
    scorer = RunScorer(None, run.task, signal_fn)
    done: dict[str, str] = {}  # call id -> result of a side-effecting call that succeeded
    for src in item.steps:
        data = src.data
        if src.tool:
            step = Step(run_id=run.run_id, index=state.n_steps, tool=src.tool, arguments=src.arguments, text=None,
                        agent=src.agent, tokens=0)
            _map(step, src, feeder, run, None, reuse)
            call_id = data.get("tool_call_id")
            if call_id:
                step.data["tool_call_id"] = call_id
            if step.side_effect and call_id and call_id in done:
                # the runtime answers it from its idempotency cache: no tool_end, no verifier
                step.result, step.data["replayed"] = done[call_id], True
                state.add_step(step)
                continue
            if data.get("blocked"):
                continue
            result = data.get("_raw_result", src.result)
            step.result = _clip(None if result is None else str(result), 4000)
            step.error = _clip(data.get("_raw_error", src.error), 2000)
            step.return_code = src.return_code
            if judge is not None and step.action_type == ActionType.VERIFY and not step.failed:
                try:
                    if judge(step) is False:
                        step.data["check_failed"] = True
                except Exception:  # fail open, as the runtime does
                    pass
            if step.side_effect and not step.failed and call_id:
                done[call_id] = _clip(str(result or ""), 8000)
        else:
            raw = data.get("_raw_text", src.text) or ""
            if data.get("final"):
                last = state.last_step
                if last is not None and last.tool is None and last.data.get("from_model") and \
                        (last.text or "").strip() == _clip(raw, 4000).strip():
                    state.relabel_last(ActionType.DONE)
                    last.data["final"] = True
                    continue  # the step is the one already scored
                step = Step(run_id=run.run_id, index=state.n_steps, action_type=ActionType.DONE, confidence=1.0,
                            tool=None, text=_clip(raw, 4000), agent=src.agent, tokens=0)
                step.data["mapped_by"] = "final_answer"
            else:
                if data.get("from_model") and not raw:
                    continue  # an empty model output makes no step
                step = Step(run_id=run.run_id, index=state.n_steps, tool=None, text=_clip(raw, 4000),
                            agent=src.agent, tokens=0)
                # the importer mapped the clipped text; the runtime maps all of it
                _map(step, src, feeder, run, raw, reuse and "_raw_text" not in data)
                if data.get("from_model"):
                    step.data["from_model"] = True
        state.add_step(step)
        scorer.update(state)
    return state, scorer


def _map(step: Any, src: Any, feeder: _Feeder, run: Any, text: str | None, reuse: bool) -> None:
    """Give ``step`` its action mapping: the imported step's (``reuse``) or the hooks' answer."""
    from immunity.importers.base import apply_mapping

    if reuse and "mapped_by" in src.data:
        step.action_type, step.confidence, step.side_effect = src.action_type, src.confidence, src.side_effect
        step.data["mapped_by"] = src.data["mapped_by"]
        for key in ("needs_verification", "destructive"):
            if src.data.get(key):
                step.data[key] = True
        return
    apply_mapping(step, feeder.rt.map_action(step.tool, step.arguments, text, run))


@dataclass
class _Collected:
    """One run's features before embedding (what a worker process sends back)."""

    run_id: str
    task_key: str
    group: str
    outcome: int | None
    numeric: np.ndarray
    signals: np.ndarray
    actions: list[str]
    tools: list[str | None]
    signatures: list[str]
    task: str | None
    failure_step: int | None
    source: str | None
    extra: list[dict[str, float]]
    agent: str | None
    task_vec: np.ndarray | None = None
    task_embedded: bool = False
    domain: str | None = None


def _collected(item: Any, views: list[Any], steps: Any, split: str) -> _Collected:
    run = item.run
    n = len(views)
    return _Collected(
        run_id=run.run_id, task_key=task_key(run), group=group_of(run, split), outcome=outcome_label(run),
        numeric=np.stack([v.numeric for v in views]) if n else np.zeros((0, N_FEATURES)),
        signals=np.asarray([[v.signals[s] for s in SIGNAL_NAMES] for v in views], float).reshape(n, len(SIGNAL_NAMES)),
        actions=[v.action_type for v in views], tools=[s.tool for s in steps[:n]] if n else [],
        signatures=[v.signature for v in views], task=run.task, failure_step=run.failure_step, source=run.source,
        extra=[v.extra for v in views], agent=run.agent, domain=run.domain)


def _collect_runtime(items: list[Any], split: str, domain: str | None) -> list[_Collected]:
    """The features through the full runtime (``_replay``): the reference the feature pass equals."""
    rt = make_runtime([], domain=domain)
    try:
        out = []
        for i, item in enumerate(items):
            session = _replay(item, rt, f"collect-{i}")
            scorer = session.state.extras.get("patterns")
            if not isinstance(scorer, RunScorer) and item.steps:
                errs = session.run.metadata.get("plugin_errors") or []
                raise ScoringError(f"the patterns verifier did not run on {item.run.run_id}: "
                                   f"{errs[0]['error'] if errs else 'not registered'}")
            views = scorer.views if isinstance(scorer, RunScorer) else []
            out.append(_collected(item, views, session.state.steps, split))
        return out
    finally:
        rt.close()


def _collect_light(items: list[Any], split: str, feeder: _Feeder) -> list[_Collected | str]:
    """Each run's features, or why the run was left out (its steps could not be mapped)."""
    tasks: dict[str | None, np.ndarray | None] = {}
    return [_collect_one(item, split, feeder, tasks) for item in items]


def _collect_one(item: Any, split: str, feeder: _Feeder,
                 tasks: dict[str | None, np.ndarray | None]) -> _Collected | str:
    """One run's features, or why the run was left out; ``tasks`` holds the task vectors so far."""
    from immunity.importers.base import complete_mapping

    if getattr(item, "unmapped", False):  # read with the mapping left to this pass
        try:
            complete_mapping(item, feeder.rt)
        except Exception as exc:  # a broken record, as ``iter_runs`` reports it
            return f"{item.source}: {item.record or 'record'}: cannot map its steps: {type(exc).__name__}: {exc}"
    state, scorer = feature_pass(item, feeder)
    c = _collected(item, scorer.views, state.steps, split)
    if feeder.task_embedder is not None:
        if c.task not in tasks:
            tasks[c.task] = embed_task(feeder.task_embedder, c.task)
        c.task_vec, c.task_embedded = tasks[c.task], True
    return c


def _light_chunk(shared: dict[str, Any], bounds: tuple[int, int]) -> list[_Collected | str]:
    lo, hi = bounds
    return _collect_light(shared["items"][lo:hi], shared["split"], shared["feeder"])


def _collect_all(items: list[Any], split: str, domain: str | None, jobs: int, replay: str,
                 report: Callable[[str], None], task_embedder: Any = None) -> list[_Collected]:
    if replay == "runtime":
        from immunity.importers.base import complete_mapping

        rt = make_runtime([], domain=domain)
        try:
            for item in items:
                complete_mapping(item, rt)
        finally:
            rt.close()
        return _collect_runtime(items, split, domain)
    rt = make_runtime([], domain=domain)
    try:
        feeder = _Feeder(rt, {}, task_embedder)
        for name in {it.run.domain for it in items}:
            feeder.domain(name)  # looked up once here, before the workers fork
        if jobs <= 1 or len(items) < 2 * jobs:
            got = _collect_light(items, split, feeder)
        else:
            # contiguous chunks, several per worker (runs differ in length), results kept in input order
            n_chunks = min(len(items), jobs * 4)
            bounds = [(len(items) * c // n_chunks, len(items) * (c + 1) // n_chunks) for c in range(n_chunks)]
            parts = pmap(_light_chunk, bounds, shared={"items": items, "split": split, "feeder": feeder}, jobs=jobs)
            got = [c for part in parts for c in part]
    finally:
        rt.close()
    out = []
    for c in got:
        if isinstance(c, str):
            report(c)
        else:
            out.append(c)
    return out


def collect(items: Iterable[Any], *, split: str = "task", embedder_spec: dict[str, Any] | None = None,
            domain: str | None = None, progress: Callable[[int], None] | None = None, jobs: int = 1,
            replay: str = "light", on_problem: Callable[[str], None] | None = None) -> tuple[list[RunData], Any]:
    """The per-run features learning needs, and the embedder that embedded them.

    ``replay="light"`` (the default) computes them with :func:`feature_pass`; ``"runtime"`` replays
    every run through a full runtime with the ``patterns`` verifier (the same features, slower).
    ``jobs`` > 1 computes them in that many forked processes (the same results, in input order);
    signatures and tasks are embedded here, in one batch."""
    if replay not in ("light", "runtime"):
        raise ValueError(f"unknown replay {replay!r}: light or runtime")
    items = list(items)
    spec = dict(embedder_spec or {"plugin": "hashing"})
    report = on_problem or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    embedder, hashing = _embedder(spec, domain)
    collected = _collect_all(items, split, domain, max(1, int(jobs)), replay, report,
                             embedder if hashing else None)
    return _embedded(collected, embedder, spec, progress)


def collect_by_domain(items: Iterable[Any], *, split: str = "task", embedder_spec: dict[str, Any] | None = None,
                      jobs: int = 1, on_problem: Callable[[str], None] | None = None
                      ) -> dict[str | None, tuple[list[RunData], Any]]:
    """:func:`collect` for runs of several domains at once, split by each run's own domain: one
    feature pass (one set of worker processes for every domain, so a small domain does not wait
    for a large one), then each domain's signatures and tasks embedded on their own. Each
    domain's result is what ``collect(its runs, domain=that domain)`` gives."""
    items = list(items)
    spec = dict(embedder_spec or {"plugin": "hashing"})
    report = on_problem or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    embedder, hashing = _embedder(spec, None)
    collected = _collect_all(items, split, None, max(1, int(jobs)), "light", report, embedder if hashing else None)
    by: dict[str | None, list[_Collected]] = {it.run.domain: [] for it in items}
    for c in collected:
        by.setdefault(c.domain, []).append(c)
    return {d: _embedded(cs, embedder, spec, None) for d, cs in by.items()}


@dataclass
class FileFeatures:
    """What :func:`read_features` read: every run's features in reading order (before embedding),
    and how many runs of other domains ``domain`` left out."""

    collected: list[_Collected]
    left_out: dict[str, int]
    embedder: Any
    spec: dict[str, Any]

    def domains(self) -> dict[str | None, int]:
        """Runs per domain, in order of first appearance."""
        out: dict[str | None, int] = {}
        for c in self.collected:
            out[c.domain] = out.get(c.domain, 0) + 1
        return out

    def embedded(self, domain: str | None = None, *, every_domain: bool = False) -> tuple[list[RunData], Any]:
        """The runs of ``domain`` (of every domain with ``every_domain``), embedded as
        :func:`collect` embeds them."""
        cs = self.collected if every_domain else [c for c in self.collected if c.domain == domain]
        return _embedded(cs, self.embedder, self.spec, None)


def read_features(paths: list[str], fmt: str = "auto", *, domain: str | None = None, split: str = "task",
                  embedder_spec: dict[str, Any] | None = None, jobs: int = 1,
                  on_problem: Callable[[str], None] | None = None) -> FileFeatures:
    """Read trace files and compute every run's features in one pass of ``jobs`` processes.

    Each process reads its own share of every file's records (see
    :class:`~immunity.importers.base.Share`), maps their steps and runs :func:`feature_pass`, so
    reading is not serial and only the features come back (this process never holds the imported
    steps). The result is what ``collect(read_runs(paths, fmt, domain=domain, mapping=False))``
    gives, run for run and in the same order. With ``domain``, runs of other domains (by the
    record's own domain, else ``domain``) are left out and counted. Problems are reported through
    ``on_problem``, each once."""
    spec = dict(embedder_spec or {"plugin": "hashing"})
    report = on_problem or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    jobs = max(1, int(jobs))
    rt = make_runtime([], domain=domain)
    try:
        embedder, hashing = _embedder(spec, domain, rt)
        feeder = _Feeder(rt, {}, embedder if hashing else None)
        registry = rt.pm.registry("importers")
        if fmt != "auto" and fmt not in registry:
            raise ValueError(f"unknown import format {fmt!r}; installed: {', '.join(sorted(registry))}")
        # every domain looked up here, before the workers fork (a registration hook's time limit
        # does not hold in a forked process)
        for name in [None, domain, *rt.pm.registry("domains")]:
            feeder.domain(name)
        shared = {"paths": list(paths), "fmt": fmt, "domain": domain, "split": split, "feeder": feeder, "of": jobs}
        parts = pmap(_read_share, list(range(jobs)), shared=shared, jobs=jobs)
    finally:
        rt.close()
    got = sorted((row for part in parts for row in part), key=lambda row: row[0])
    collected: list[_Collected] = []
    left_out: dict[str, int] = {}
    said: set[str] = set()
    for _key, what in got:
        if isinstance(what, _Collected):
            collected.append(what)
        elif isinstance(what, tuple):  # ("domain", name): a run of another domain
            left_out[what[1]] = left_out.get(what[1], 0) + 1
        elif what not in said:  # a problem with a whole file may come from every share
            said.add(what)
            report(what)
    return FileFeatures(collected, left_out, embedder, spec)


def _read_share(shared: dict[str, Any], part: int) -> list[tuple[tuple[int, int, int], Any]]:
    """One share of :func:`read_features`: (where in the files, features | problem | other domain)."""
    from immunity.importers import ImportProblem, Share, iter_runs

    share = Share(part, shared["of"])
    domain, split, feeder = shared["domain"], shared["split"], shared["feeder"]
    tasks: dict[str | None, np.ndarray | None] = {}
    out: list[tuple[tuple[int, int, int], Any]] = []
    for seq, item in enumerate(iter_runs(shared["paths"], shared["fmt"], runtime=feeder.rt, domain=domain,
                                         mapping=False, share=share)):
        key = (share.file, share.last, seq)
        if isinstance(item, ImportProblem):
            if item.skipped:
                out.append((key, str(item)))
        elif domain and (item.run.domain or domain) != domain:
            out.append((key, ("domain", str(item.run.domain))))
        else:
            out.append((key, _collect_one(item, split, feeder, tasks)))
    return out


def _embedder(spec: dict[str, Any], domain: str | None, rt: Any = None) -> tuple[Any, bool]:
    """The embedder ``spec`` names, and whether it is core's hashing one; built with ``rt``'s plugins
    (else a runtime of its own, closed after)."""
    own = rt is None
    rt = make_runtime([], domain=domain) if own else rt
    try:
        embedder = build_embedder(rt.pm, spec)
    finally:
        if own:
            rt.close()
    return embedder, type(embedder).__module__ == "immunity.vectors" and spec.get("plugin") == "hashing"


def _embedded(collected: list[_Collected], embedder: Any, spec: dict[str, Any],
              progress: Callable[[int], None] | None) -> tuple[list[RunData], Any]:
    mode = signature_mode(embedder)
    dim = int(embedder.dimension)
    # signatures repeat a lot (the same action with the same features): each distinct one is
    # embedded once (an embedder embeds each row on its own, so the vectors are the same)
    uniq: dict[str, int] = {}
    rows = [uniq.setdefault(s, len(uniq)) for c in collected for s in c.signatures]
    vecs = embed_signatures(embedder, mode, list(uniq)) if uniq else np.zeros((0, dim), np.float32)
    all_vecs = vecs[np.asarray(rows, dtype=np.intp)] if rows else np.zeros((0, dim), np.float32)
    task_vecs: dict[str | None, np.ndarray | None] = {}
    for c in collected:  # runs of the same task share its vector (embedded once)
        if c.task_embedded:
            task_vecs.setdefault(c.task, c.task_vec)
        elif c.task not in task_vecs:
            task_vecs[c.task] = embed_task(embedder, c.task)
    out: list[RunData] = []
    at = 0
    for i, c in enumerate(collected):
        n = len(c.signatures)
        out.append(RunData(
            run_id=c.run_id, task_key=c.task_key, group=c.group, outcome=c.outcome, numeric=c.numeric,
            signals=c.signals, actions=c.actions, tools=c.tools, sig_vecs=all_vecs[at:at + n],
            task_vec=task_vecs[c.task], failure_step=c.failure_step, source=c.source, extra=c.extra,
            agent=c.agent))
        at += n
        if progress:
            progress(i + 1)
    return out, (embedder, spec, mode)


def _why_not(item: Any, session: Any, scores: list[StepScore]) -> str | None:
    """Why a replayed run has fewer scores than imported steps (None when it has them all)."""
    n_in, n_scored = len(item.steps), len(scores)
    if n_scored >= n_in:
        return None
    n_state = session.state.n_steps
    errs = [e.get("error") for e in (session.run.metadata.get("plugin_errors") or [])]
    if n_state < n_in:
        return (f"scored {n_scored} of {n_in} steps: the runtime recorded {n_state} steps (a blocked call or a "
                f"step the replay could not feed)" + (f"; plugin error: {errs[0]}" if errs else ""))
    return f"scored {n_scored} of {n_in} steps" + (f"; plugin error: {errs[0]}" if errs else "")


class ScoringError(ImmunityError):
    """The patterns verifier failed while scoring a run."""


@dataclass
class ScoredRun:
    run_id: str
    scores: list[StepScore]
    #: imported steps, and why fewer were scored (None when every imported step has a score)
    steps: int = 0
    why_not: str | None = None


def score_items(items: Iterable[Any], packs: list[Any], *, domain: str | None = None,
                options: dict[str, Any] | None = None, plugins: list[Any] | None = None) -> Iterator[ScoredRun]:
    """Replay each run through a runtime with the ``patterns`` verifier matching ``packs`` and yield
    the risk after every step. Only the run's task, domain, framework and steps are given to the
    runtime: never its outcome."""
    rt = make_runtime(packs, domain=domain, options=options, plugins=plugins)
    try:
        registry = rt.pm.registry("pattern_packs")
        opts = dict((options or {}).get("patterns", {}) or {})
        # refuse a bad pack before any run (with the brute-force index: the runtime's own matcher
        # builds the configured one)
        PackMatcher([resolve_pack(p, registry) for p in packs], rt.pm, embedder_options=opts.get("embedder_options"))
        for i, item in enumerate(items):
            session = _replay(item, rt, f"score-{i}")
            scorer = session.state.extras.get("patterns")
            scores = [s for s in (scorer.scores if isinstance(scorer, RunScorer) else [])]
            for err in session.run.metadata.get("plugin_errors") or []:
                if "patterns" in err.get("plugin", "") or "patterns" in err.get("error", ""):
                    raise ScoringError(f"scoring run {item.run.run_id} failed in the patterns verifier: "
                                       f"{err['error']}")
            yield ScoredRun(item.run.run_id, scores, len(item.steps), _why_not(item, session, scores))
    finally:
        rt.close()
