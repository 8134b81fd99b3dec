"""The closed-loop harness: run trials, judge them from the ground truth, aggregate.

One *trial* is (framework, fault type, seed, arm). The seed fixes the task and its data, where the
fault lands and the agent's coins; the arm is "off" (no immunity) or "on" with a hint-following
probability ``p``. The off arm does not depend on ``p`` (no hints reach the agent), so it runs once
per seed and pairs with every ``p``.

Outcomes, judged from the task's environment and the final answer only:

- ``success``: the task was done right.
- ``caught_failure``: not done right, and the failure is visible: the run raised or ended with no
  answer (``crashed``), immunity stopped it (``stopped``), immunity recorded a failed verdict at or
  after the fault (``flagged``), or the agent said it failed (``admitted``).
- ``silent_corruption``: a wrong answer or end state presented as success, with nothing flagged.

Immunity's verdicts never decide success; they only decide whether a failure counts as caught, and
the verifier's recall and false alarms are measured from the verdicts the store recorded.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from immunity.bench.drivers import bench_drivers
from immunity.bench.stats import mcnemar_exact, paired_bootstrap, wilson
from immunity.bench.tasks import (
    FAULT_TYPES,
    TASKS,
    FaultPlan,
    FaultyTools,
    ScriptedAgent,
    make_task,
    plan_fault,
)

__all__ = ["BenchConfig", "Trial", "aggregate", "run_benchmark", "run_trial"]

log = logging.getLogger("immunity.bench")

SUCCESS, CAUGHT, SILENT = "success", "caught_failure", "silent_corruption"
OUTCOMES = (SUCCESS, CAUGHT, SILENT)

#: Recovery options for the benchmark's runtimes: backoff delays shortened so a trial does not
#: sleep (the scripted tools answer at once); attempts and every other rule are the defaults.
RECOVERY_OPTIONS = {"base_delay": 0.001, "max_delay": 0.01}


@dataclass
class Trial:
    framework: str
    task: str
    fault: str
    seed: int
    arm: str                       # "off" or "on"
    p: float | None                # hint-following probability (on arm)
    plan: str
    outcome: str = ""
    how: str = ""                  # crashed / stopped / flagged / admitted (caught failures)
    answer: str | None = None
    error: str | None = None
    fault_fired: bool = False
    detected: bool | None = None   # on arm: a failed verdict at/after the fault (fault-free: any failed verdict)
    acted: bool | None = None      # on arm: an intervention or recovery at/after the fault
    verdicts: list[str] = field(default_factory=list)
    hints_seen: int = 0
    hints_followed: int = 0
    selector: str = "default"      # on arm: the intervention selector ("default" or "bandit")
    variants: list[str] = field(default_factory=list)  # on arm: the variant of every hint delivered
    order: int = 0                 # position in the run (the bandit's learning curve)
    model_calls: int = 0
    tool_calls: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchConfig:
    # every framework whose driver an installed adapter registers (see immunity.bench.drivers)
    frameworks: Sequence[str] = field(default_factory=lambda: tuple(bench_drivers()))
    faults: Sequence[str] = FAULT_TYPES
    tasks: Sequence[str] = tuple(TASKS)
    seeds: int = 21
    ps: Sequence[float] = (0.0, 0.5, 1.0)
    real: bool = False
    bootstrap_reps: int = 2000
    #: also run every ``p`` with the ``bandit`` selector, one store per ``p`` shared by its trials in run
    #: order, so it learns from the outcomes of the trials before (the user's verdict: the ground truth)
    bandit: bool = False
    #: grammar variants per class put in each bandit store before the first trial (0: none)
    evolve: int = 3
    #: the scripted agent's hint compliance: "content" (depends on the hint's text) or "flat"
    compliance: str = "content"
    #: the bandit arm's ``Config.options["evolution"]`` (traffic, min_trials, confidence; defaults if empty)
    evolution: dict[str, Any] = field(default_factory=dict)


def _immunity_record(rt: Any, since: float | None, before: set[str] | None = None) -> dict[str, Any]:
    """What the runtime recorded about the trial's run(s), read back from its store (runs not in
    ``before``: a store shared by trials holds the earlier trials' runs too)."""
    rt.flush()
    store = rt.store
    verdicts: list[Any] = []
    acted = False
    stopped = False
    run_ids: list[str] = []
    variants: list[str] = []
    for run in store.runs(limit=None):
        if before is not None and run.run_id in before:
            continue
        run_ids.append(run.run_id)
        variants += [iv.variant or "-" for iv in store.interventions(run.run_id) if iv.kind.value == "hint"]
        verdicts.extend(v for v in store.verdicts(run.run_id) if not v.ok)
        if since is not None:
            acted = acted or any(iv.kind.value != "warn" and iv.ts >= since for iv in store.interventions(run.run_id))
            acted = acted or any(rc.ts >= since for rc in store.recoveries(run.run_id))
        stopped = stopped or run.status in ("stopped", "rolling_back")
    after = [v for v in verdicts if since is None or v.ts >= since]
    return {"verdicts": verdicts, "after": after, "acted": acted, "stopped": stopped, "run_ids": run_ids,
            "variants": variants}


def run_trial(framework: str, task_name: str, fault: str, seed: int, *, p: float | None, pm: Any = None,
              real: bool = False, selector: str = "default", store: str | None = None,
              compliance: str = "content", evolution: dict[str, Any] | None = None) -> Trial:
    """Run one trial: ``p=None`` is the arm without immunity; a number is the arm with immunity
    and that hint-following probability. ``selector="bandit"`` with ``store`` (a SQLite path shared
    by the bandit's trials) rewards the trial's runs with the judged outcome, as a user marking
    them would (``immunity.outcomes.set_outcome``)."""
    from immunity.runtime import Runtime

    task = make_task(task_name, seed)
    plan: FaultPlan = plan_fault(task, fault, seed)
    faulty = FaultyTools(task, plan)
    agent = ScriptedAgent(task, plan, p if p is not None else 0.0, seed, compliance=compliance)
    tools = [(spec, faulty.wrap(spec)) for spec in task.tools()]
    trial = Trial(framework=framework, task=task_name, fault=fault, seed=seed, arm="off" if p is None else "on",
                  p=p, plan=plan.describe(), selector=selector if p is not None else "default")
    rt = None
    before: set[str] | None = None
    if p is not None:
        options: dict[str, Any] = {k: dict(v) for k, v in task.runtime_options.items()}
        options["recovery"] = dict(RECOVERY_OPTIONS)
        options["selector"] = selector  # explicit: the runtime's default selector is the bandit
        if selector != "default":
            options["seed"] = seed
            if evolution:
                options["evolution"] = dict(evolution)
        rt = Runtime(store=store or ":memory:", domain=task.domain, pm=pm, **options)
        if store is not None:
            before = {r.run_id for r in rt.store.runs(limit=None)}
    t0 = time.perf_counter()
    try:
        result = bench_drivers(pm)[framework]().run(task, tools, agent, runtime=rt, real=real)
        trial.seconds = time.perf_counter() - t0
        fault_time = faulty.fired_at or agent.fault_at
        trial.fault_fired = fault == "none" or fault_time is not None
        record = _immunity_record(rt, fault_time if fault != "none" else 0.0, before) if rt is not None else None
        _judge(trial, task, result, record, fault)
        if rt is not None and record is not None and selector != "default":
            from immunity.outcomes import set_outcome

            verdict = "success" if trial.outcome == SUCCESS else "failure"
            for run_id in record["run_ids"]:
                set_outcome(rt, run_id, verdict, reason="closed-loop ground truth")
    finally:
        if rt is not None:
            rt.close()
    trial.hints_seen, trial.hints_followed = agent.hints_seen, agent.hints_followed
    trial.model_calls, trial.tool_calls = agent.model_calls, len(faulty.executions)
    return trial


def _judge(trial: Trial, task: Any, result: Any, record: dict[str, Any] | None, fault: str) -> None:
    """The trial's outcome from the task's ground truth (and, for a failure, how it was caught)."""
    trial.answer, trial.error = result.answer, result.error
    flagged = stopped = False
    if record is not None:
        trial.variants = list(record["variants"])
        trial.verdicts = sorted({v.error_class or "?" for v in record["verdicts"]})
        trial.detected = bool(record["after"]) if trial.fault_fired else None
        trial.acted = record["acted"] if trial.fault_fired else None
        flagged, stopped = bool(record["after"]) and fault != "none", record["stopped"]
    if result.error is None and not stopped and task.judge(result.answer):
        trial.outcome = SUCCESS
    elif result.error is not None or not result.answer:
        trial.outcome, trial.how = CAUGHT, "crashed"
    elif stopped:
        trial.outcome, trial.how = CAUGHT, "stopped"
    elif flagged:
        trial.outcome, trial.how = CAUGHT, "flagged"
    elif task.admits_failure(result.answer):
        trial.outcome, trial.how = CAUGHT, "admitted"
    else:
        trial.outcome = SILENT


def trial_plan(cfg: BenchConfig) -> list[tuple[str, str, str, int, float | None, str]]:
    """Every trial the configuration asks for, in run order: (framework, task, fault, seed, p,
    selector). Seed-major, so that any stretch of the run mixes frameworks and fault types (the
    bandit learns in this order)."""
    out: list[tuple[str, str, str, int, float | None, str]] = []
    for seed in range(cfg.seeds):
        task = cfg.tasks[seed % len(cfg.tasks)]
        for fw in cfg.frameworks:
            for fault in cfg.faults:
                for p in (None, *cfg.ps):
                    out.append((fw, task, fault, seed, p, "default"))
                if cfg.bandit:
                    out.extend((fw, task, fault, seed, p, "bandit") for p in cfg.ps)
    return out


def run_benchmark(cfg: BenchConfig, *, progress: Callable[[int, int, Trial], None] | None = None,
                  lineage: dict[str, Any] | None = None) -> list[Trial]:
    """Run every trial of ``cfg`` (one process, one trial at a time). ``lineage``, when given, is
    filled with the evolved variants of each bandit store at the end ({p: rows})."""
    from immunity.plugins import get_plugin_manager

    pm = get_plugin_manager()
    drivers = bench_drivers(pm)
    missing = [fw for fw in cfg.frameworks if fw not in drivers or not drivers[fw].available()]
    if missing:
        raise RuntimeError(f"framework(s) not available: {missing} (installed drivers: "
                           f"{[n for n, d in drivers.items() if d.available()]})")
    plan = trial_plan(cfg)
    trials: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="immunity-bench-") as tmp:
        stores = {p: os.path.join(tmp, f"bandit-{p}.db") for p in cfg.ps} if cfg.bandit else {}
        for path in stores.values():
            _seed_store(path, cfg.evolve)
        for i, (fw, task, fault, seed, p, selector) in enumerate(plan):
            trial = run_trial(fw, task, fault, seed, p=p, pm=pm, real=cfg.real, selector=selector,
                              store=stores.get(p) if selector == "bandit" and p is not None else None,
                              compliance=cfg.compliance, evolution=cfg.evolution)
            trial.order = i
            trials.append(trial)
            if progress is not None:
                progress(i + 1, len(plan), trial)
        if lineage is not None:
            for p, path in stores.items():
                lineage[str(p)] = _lineage(path)
    return trials


def _seed_store(path: str, n: int) -> None:
    """A new store for the bandit arm with ``n`` grammar variants per class (offline evolution)."""
    from immunity.interventions.evolution import evolve
    from immunity.store import SQLiteStore

    store = SQLiteStore(path)
    try:
        if n:
            evolve(store, n=n, seed=0, llm=False)
        store.flush()
    finally:
        store.close()


def _lineage(path: str) -> list[dict[str, Any]]:
    from immunity.interventions.evolution import read_lineage
    from immunity.store import SQLiteStore

    store = SQLiteStore(path)
    try:
        return read_lineage(store.db)
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------- aggregation
def _rate(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": [lo, hi]}


def _arm_stats(trials: list[Trial]) -> dict[str, Any]:
    n = len(trials)
    out: dict[str, Any] = {"n": n}
    for o in OUTCOMES:
        out[o] = _rate(sum(t.outcome == o for t in trials), n)
    hows: dict[str, int] = defaultdict(int)
    for t in trials:
        if t.how:
            hows[t.how] += 1
    out["caught_by"] = dict(sorted(hows.items()))
    out["mean_tool_calls"] = sum(t.tool_calls for t in trials) / n if n else None
    return out


def _paired(on: list[Trial], off: dict[tuple[str, str, int], Trial], outcome: str, reps: int) -> dict[str, Any]:
    pairs = [(t, off[(t.framework, t.fault, t.seed)]) for t in on if (t.framework, t.fault, t.seed) in off]
    a = [1.0 if t.outcome == outcome else 0.0 for t, _ in pairs]
    b = [1.0 if u.outcome == outcome else 0.0 for _, u in pairs]
    mean, lo, hi = paired_bootstrap(a, b, reps=reps, seed=len(pairs))
    only_on = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_off = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    return {"n_pairs": len(pairs), "diff": mean, "ci95": [lo, hi], "only_on": only_on, "only_off": only_off,
            "mcnemar_p": mcnemar_exact(only_on, only_off)}


def _verifier(on: list[Trial]) -> dict[str, Any]:
    faulted = [t for t in on if t.fault != "none" and t.fault_fired]
    clean = [t for t in on if t.fault == "none"]
    return {"recall": _rate(sum(bool(t.detected) for t in faulted), len(faulted)),
            "acted": _rate(sum(bool(t.acted) for t in faulted), len(faulted)),
            "false_alarm": _rate(sum(bool(t.detected) for t in clean), len(clean))}


def aggregate(trials: Iterable[Trial], *, reps: int = 2000) -> dict[str, Any]:
    """Per framework x fault type x p (and pooled over fault types, and over frameworks): outcome
    rates with Wilson 95% intervals, paired differences with a bootstrap interval and McNemar's
    test, and the verifier's measured recall and false-alarm rate."""
    trials = list(trials)
    off = {(t.framework, t.fault, t.seed): t for t in trials if t.arm == "off"}
    ps = sorted({t.p for t in trials if t.p is not None})
    frameworks = list(dict.fromkeys(t.framework for t in trials))
    faults = list(dict.fromkeys(t.fault for t in trials))
    cells: list[dict[str, Any]] = []

    def cell(fw: str, fault: str, select: Callable[[Trial], bool]) -> dict[str, Any]:
        base = [t for t in trials if t.arm == "off" and select(t)]
        entry: dict[str, Any] = {"framework": fw, "fault": fault, "off": _arm_stats(base), "on": {}}
        for p in ps:
            on = [t for t in trials if t.arm == "on" and t.p == p and t.selector == "default" and select(t)]
            entry["on"][str(p)] = {
                **_arm_stats(on),
                "paired_success": _paired(on, off, SUCCESS, reps),
                "paired_silent": _paired(on, off, SILENT, reps),
                "verifier": _verifier(on),
                "hint_follow_rate": (sum(t.hints_followed for t in on) / max(1, sum(t.hints_seen for t in on))),
            }
        return entry

    def where(fw: str, fault: str) -> Callable[[Trial], bool]:
        return lambda t: (fw == "all" or t.framework == fw) and (fault == "all" or t.fault == fault)

    for fw in [*frameworks, "all"]:
        for fault in [*faults, "all"]:
            cells.append(cell(fw, fault, where(fw, fault)))
    out: dict[str, Any] = {"ps": ps, "frameworks": frameworks, "faults": faults, "cells": cells}
    out["felt"] = felt(trials)
    if any(t.selector == "bandit" for t in trials):
        out["bandit"] = bandit_summary(trials, reps=reps)
    return out


# ---------------------------------------------------------------------------------------------- what users feel
def arm_label(t: Trial) -> str:
    return "without" if t.arm == "off" else f"{t.selector}, p={t.p}"


def felt(trials: list[Trial]) -> dict[str, Any]:
    """What users feel, per arm (pooled and per framework), on the *harmful* faults: trials whose
    fault fired and whose paired run without immunity did not succeed. Each such trial is
    ``prevented`` (the user got a correct result), ``flagged`` (immunity recorded a failed verdict
    at or after the fault, and the user still got a wrong or no result) or ``unnoticed``. Also
    ``broken``: fault-free or harmless-fault trials that succeed without immunity and fail with it."""
    off = {(t.framework, t.fault, t.seed): t for t in trials if t.arm == "off"}
    arms: dict[str, list[Trial]] = defaultdict(list)
    for t in trials:
        if t.arm == "on":
            arms[arm_label(t)].append(t)
    out: dict[str, Any] = {}
    for label, ts in arms.items():
        rows: dict[str, Any] = {}
        for fw in ["all", *dict.fromkeys(t.framework for t in ts)]:
            sel = [t for t in ts if fw == "all" or t.framework == fw]
            harmful = [t for t in sel if t.fault != "none" and t.fault_fired and
                       (t.framework, t.fault, t.seed) in off and off[(t.framework, t.fault, t.seed)].outcome != SUCCESS]
            ok_off = [t for t in sel if (t.framework, t.fault, t.seed) in off and
                      off[(t.framework, t.fault, t.seed)].outcome == SUCCESS]
            n = len(harmful)
            prevented = sum(t.outcome == SUCCESS for t in harmful)
            flagged = sum(t.outcome != SUCCESS and bool(t.detected) for t in harmful)
            rows[fw] = {"harmful": n, "prevented": _rate(prevented, n), "flagged": _rate(flagged, n),
                        "unnoticed": _rate(n - prevented - flagged, n),
                        "broken": _rate(sum(t.outcome != SUCCESS for t in ok_off), len(ok_off))}
        out[label] = rows
    return out


def _blocks(n: int, k: int) -> list[tuple[int, int]]:
    k = max(1, min(k, n))
    edges = [round(i * n / k) for i in range(k + 1)]
    return [(edges[i], edges[i + 1]) for i in range(k)]


def bandit_summary(trials: list[Trial], *, reps: int = 2000, blocks: int = 8) -> dict[str, Any]:
    """Per ``p``: the bandit against the default selector on the same (framework, fault, seed)
    (paired success difference), its learning curve (success per block of its trials in run
    order, next to the default selector's on the same trials), and the success of trials whose
    hints were all evolved variants against those whose hints were all hand-written."""
    default = {(t.framework, t.fault, t.seed, t.p): t for t in trials if t.arm == "on" and t.selector == "default"}
    out: dict[str, Any] = {}
    for p in sorted({t.p for t in trials if t.selector == "bandit" and t.p is not None}):
        bt = sorted((t for t in trials if t.selector == "bandit" and t.p == p), key=lambda t: t.order)
        pairs = [(t, default[(t.framework, t.fault, t.seed, p)]) for t in bt
                 if (t.framework, t.fault, t.seed, p) in default]
        a = [1.0 if t.outcome == SUCCESS else 0.0 for t, _ in pairs]
        b = [1.0 if u.outcome == SUCCESS else 0.0 for _, u in pairs]
        mean, lo, hi = paired_bootstrap(a, b, reps=reps, seed=len(pairs))
        only_b = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
        only_d = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
        curve = []
        for start, end in _blocks(len(pairs), blocks):
            chunk = pairs[start:end]
            curve.append({"trials": [start, end], "bandit": _rate(sum(t.outcome == SUCCESS for t, _ in chunk), len(chunk)),
                          "default": _rate(sum(u.outcome == SUCCESS for _, u in chunk), len(chunk))})
        hinted = [t for t in bt if t.variants]
        evolved = [t for t in hinted if all(v.startswith("evolved:") for v in t.variants)]
        hand = [t for t in hinted if not any(v.startswith("evolved:") for v in t.variants)]
        n_hints = sum(len(t.variants) for t in bt)
        out[str(p)] = {
            "n": len(bt),
            "success": _rate(sum(t.outcome == SUCCESS for t in bt), len(bt)),
            "default_success": _rate(sum(u.outcome == SUCCESS for _, u in pairs), len(pairs)),
            "paired_vs_default": {"n_pairs": len(pairs), "diff": mean, "ci95": [lo, hi], "only_bandit": only_b,
                                  "only_default": only_d, "mcnemar_p": mcnemar_exact(only_b, only_d)},
            "learning_curve": curve,
            "hints": n_hints,
            "evolved_hints": sum(v.startswith("evolved:") for t in bt for v in t.variants),
            "evolved_trials": _rate(sum(t.outcome == SUCCESS for t in evolved), len(evolved)),
            "hand_written_trials": _rate(sum(t.outcome == SUCCESS for t in hand), len(hand)),
        }
    return out
