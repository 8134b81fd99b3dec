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


def _immunity_record(rt: Any, since: float | None) -> dict[str, Any]:
    """What the runtime recorded about the trial's run(s), read back from its store."""
    rt.flush()
    store = rt.store
    verdicts: list[Any] = []
    acted = False
    stopped = False
    for run in store.runs(limit=None):
        verdicts.extend(v for v in store.verdicts(run.run_id) if not v.ok)
        if since is not None:
            acted = acted or any(iv.kind.value != "warn" and iv.ts >= since for iv in store.interventions(run.run_id))
            acted = acted or any(rc.ts >= since for rc in store.recoveries(run.run_id))
        stopped = stopped or run.status in ("stopped", "rolling_back")
    after = [v for v in verdicts if since is None or v.ts >= since]
    return {"verdicts": verdicts, "after": after, "acted": acted, "stopped": stopped}


def run_trial(framework: str, task_name: str, fault: str, seed: int, *, p: float | None, pm: Any = None,
              real: bool = False) -> Trial:
    """Run one trial: ``p=None`` is the arm without immunity; a number is the arm with immunity
    and that hint-following probability."""
    from immunity.runtime import Runtime

    task = make_task(task_name, seed)
    plan: FaultPlan = plan_fault(task, fault, seed)
    faulty = FaultyTools(task, plan)
    agent = ScriptedAgent(task, plan, p if p is not None else 0.0, seed)
    tools = [(spec, faulty.wrap(spec)) for spec in task.tools()]
    trial = Trial(framework=framework, task=task_name, fault=fault, seed=seed, arm="off" if p is None else "on",
                  p=p, plan=plan.describe())
    rt = None
    if p is not None:
        options: dict[str, Any] = {k: dict(v) for k, v in task.runtime_options.items()}
        options["recovery"] = dict(RECOVERY_OPTIONS)
        rt = Runtime(store=":memory:", domain=task.domain, pm=pm, **options)
    t0 = time.perf_counter()
    try:
        result = bench_drivers(pm)[framework]().run(task, tools, agent, runtime=rt, real=real)
        trial.seconds = time.perf_counter() - t0
        fault_time = faulty.fired_at or agent.fault_at
        trial.fault_fired = fault == "none" or fault_time is not None
        record = _immunity_record(rt, fault_time if fault != "none" else 0.0) if rt is not None else None
    finally:
        if rt is not None:
            rt.close()
    trial.answer, trial.error = result.answer, result.error
    trial.hints_seen, trial.hints_followed = agent.hints_seen, agent.hints_followed
    trial.model_calls, trial.tool_calls = agent.model_calls, len(faulty.executions)
    flagged = stopped = False
    if record is not None:
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
    return trial


def trial_plan(cfg: BenchConfig) -> list[tuple[str, str, str, int, float | None]]:
    """Every trial the configuration asks for, in run order: (framework, task, fault, seed, p)."""
    out: list[tuple[str, str, str, int, float | None]] = []
    for fw in cfg.frameworks:
        for fault in cfg.faults:
            for seed in range(cfg.seeds):
                task = cfg.tasks[seed % len(cfg.tasks)]
                for p in (None, *cfg.ps):
                    out.append((fw, task, fault, seed, p))
    return out


def run_benchmark(cfg: BenchConfig, *, progress: Callable[[int, int, Trial], None] | None = None) -> list[Trial]:
    """Run every trial of ``cfg`` (one process, one trial at a time)."""
    from immunity.plugins import get_plugin_manager

    pm = get_plugin_manager()
    drivers = bench_drivers(pm)
    missing = [fw for fw in cfg.frameworks if fw not in drivers or not drivers[fw].available()]
    if missing:
        raise RuntimeError(f"framework(s) not available: {missing} (installed drivers: "
                           f"{[n for n, d in drivers.items() if d.available()]})")
    plan = trial_plan(cfg)
    trials: list[Trial] = []
    for i, (fw, task, fault, seed, p) in enumerate(plan):
        trial = run_trial(fw, task, fault, seed, p=p, pm=pm, real=cfg.real)
        trials.append(trial)
        if progress is not None:
            progress(i + 1, len(plan), trial)
    return trials


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
            on = [t for t in trials if t.arm == "on" and t.p == p and select(t)]
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
    return {"ps": ps, "frameworks": frameworks, "faults": faults, "cells": cells}
