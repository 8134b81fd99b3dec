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
from immunity.models import Outcome

_REPO = re.compile(r"^(?P<repo>.+__.+?)-\d+$")

_NEVER = 10**9


def scoring_config(packs: list[Any] | None = None, *, domain: str | None = None,
                   options: dict[str, Any] | None = None) -> Config:
    """A runtime configuration that observes a replayed run without changing it."""
    return Config(domain=domain, store=None, step_budget_ms=0.0, verifiers=["patterns"], packs=list(packs or []),
                  max_consecutive_failures=_NEVER, observe_only=True,
                  options={"rules": {"block_repeat": _NEVER, "stop_repeat": _NEVER, "tool_breaker": _NEVER},
                           **(options or {})})


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
              runtime: Any = None, on_problem: Callable[[str], None] | None = None) -> list[Any]:
    """Imported runs from trace files (or from a store), problems reported through ``on_problem``."""
    report = on_problem or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    out: list[Any] = []
    if store:
        out.extend(_store_runs(store))
    if paths:
        from immunity.importers import ImportProblem, iter_runs

        for item in iter_runs(list(paths), fmt, runtime=runtime, domain=domain):
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


def collect(items: Iterable[Any], *, split: str = "task", embedder_spec: dict[str, Any] | None = None,
            domain: str | None = None, progress: Callable[[int], None] | None = None) -> tuple[list[RunData], Any]:
    """Replay runs through a runtime with the ``patterns`` verifier in feature mode; returns the
    per-run features and the embedder that embedded them."""
    spec = dict(embedder_spec or {"plugin": "hashing"})
    rt = make_runtime([], domain=domain)
    try:
        embedder = build_embedder(rt.pm, spec)
        mode = signature_mode(embedder)
        out: list[RunData] = []
        for i, item in enumerate(items):
            session = _replay(item, rt, f"collect-{i}")
            scorer = session.state.extras.get("patterns")
            if not isinstance(scorer, RunScorer) and item.steps:
                errs = session.run.metadata.get("plugin_errors") or []
                raise ScoringError(f"the patterns verifier did not run on {item.run.run_id}: "
                                   f"{errs[0]['error'] if errs else 'not registered'}")
            views = scorer.views if isinstance(scorer, RunScorer) else []
            run = item.run
            n = len(views)
            dim = int(embedder.dimension)
            out.append(RunData(
                run_id=run.run_id,
                task_key=task_key(run),
                group=group_of(run, split),
                outcome=outcome_label(run),
                numeric=np.stack([v.numeric for v in views]) if n else np.zeros((0, N_FEATURES)),
                signals=np.asarray([[v.signals[s] for s in SIGNAL_NAMES] for v in views], float).reshape(
                    n, len(SIGNAL_NAMES)),
                actions=[v.action_type for v in views],
                tools=[s.tool for s in session.state.steps[:n]] if n else [],
                sig_vecs=embed_signatures(embedder, mode, [v.signature for v in views]) if n
                else np.zeros((0, dim), np.float32),
                task_vec=embed_task(embedder, run.task),
                failure_step=run.failure_step,
                source=run.source,
                extra=[v.extra for v in views],
                agent=run.agent,
            ))
            if progress:
                progress(i + 1)
        return out, (embedder, spec, mode)
    finally:
        rt.close()


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
        PackMatcher([resolve_pack(p, registry) for p in packs], rt.pm, index=opts.get("index"),
                    embedder_options=opts.get("embedder_options"))  # refuse a bad pack before any run
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
