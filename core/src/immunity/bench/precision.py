"""The precision benchmark: how often immunity's default checks fire on runs that went well.

Every *successful* run of a trace file is replayed, step by step, through a live runtime with the
defaults of its domain (``Runtime(store=None, domain=<the run's domain>)``: the rules verifier, the
domain's checks, the default policy and recovery; not observe-only, so blocks, stops and hints are
decided as they would be for a live agent). A successful run is one whose recorded outcome is a
success (tau-bench ``reward`` 1.0, SWE-bench ``resolved``); the outcome is used only to pick the
runs, never given to the runtime.

For each check (``<plugin>/<error class>``, e.g. ``verifier:rules/loop`` or
``coding:unverified_finish/premature_done``) the report counts the runs in which it:

- **flagged**: recorded at least one failed verdict (any severity);
- **blocked**: had a pending tool call blocked;
- **stopped**: had the run stopped (a stop intervention, or the circuit breaker's abort);
- **hinted**: had a hint sent to the model.

A blocked call is replayed as the runtime records it (not run, its result not fed in), and the
replay goes on with the run's next step, since the real agent went on; a stop ends the replay there,
as it would have ended the live run. Rates carry 95% Wilson intervals. A command the data lost
(a message cut short before its command; the importer marks it ``command_missing``) is replayed as
an unknown command of its own, never as the same call as another lost one.

::

    from immunity.bench.precision import precision_report
    report = precision_report(["trajs.jsonl.gz"])
    print(report.render())
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from immunity.bench.stats import wilson
from immunity.models import InterventionKind, Outcome, RecoveryKind

#: The default ceiling: at most this share of successful runs flagged by any check, and none stopped.
FLAG_BUDGET = 0.05


def check_name(verdict: Any) -> str:
    """``<plugin>/<error class>``: one check of one plugin (the rules verifier emits several classes)."""
    return f"{verdict.plugin or '?'}/{verdict.error_class or '?'}"


@dataclass
class RunPrecision:
    """What the runtime did to one successful run while it was replayed."""

    dataset: str
    run_id: str
    steps: int
    flagged: dict[str, int] = field(default_factory=dict)  # check -> first step it fired at
    blocked: set[str] = field(default_factory=set)
    stopped: set[str] = field(default_factory=set)
    hinted: Counter[str] = field(default_factory=Counter)
    messages: dict[str, str] = field(default_factory=dict)  # check -> its first message (for reading)

    def as_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "run_id": self.run_id, "steps": self.steps, "flagged": self.flagged,
                "blocked": sorted(self.blocked), "stopped": sorted(self.stopped), "hinted": dict(self.hinted),
                "messages": self.messages}


def replay_success(imported: Any, runtime: Any, dataset: str) -> RunPrecision:
    """Replay one imported run through ``runtime`` and record which checks fired and what they did."""
    from immunity.importers.replay import replay

    run = imported.run
    for i, step in enumerate(imported.steps):
        if step.data.get("command_missing") and isinstance(step.arguments, dict):
            # the data lost this command (a message cut short): it is unknown, so it must not count as
            # the same call as another lost one
            step.arguments = {**step.arguments, "command": f"<command lost in the data, step {i}>"}
    session = runtime.start_run(task=run.task, framework=run.framework, domain=run.domain,
                                run_id=f"precision-{run.run_id}", agent=run.agent, task_id=run.task_id,
                                source=run.source)
    out = RunPrecision(dataset, run.run_id, len(imported.steps))
    try:
        fed = replay(imported, session, stop_on_block=False, stop_on_stop=True)
    finally:
        session.end(None)
    for item in fed:
        for d in item.decisions:
            failed = [v for v in d.verdicts if not v.ok]
            for v in failed:
                name = check_name(v)
                if name not in out.flagged:
                    out.flagged[name] = v.step if v.step is not None else -1
                    out.messages[name] = (v.message or "")[:200]
            iv = d.intervention
            if iv is not None:
                name = f"{iv.verdict_plugin or '?'}/{iv.error_class or '?'}"
                if iv.kind == InterventionKind.HINT:
                    out.hinted[name] += 1
                elif iv.kind == InterventionKind.STOP:
                    out.stopped.add(name)
            if d.block:
                blocker = next((v for v in failed if v.block), None)
                out.blocked.add(check_name(blocker) if blocker is not None else
                                (f"{iv.verdict_plugin}/{iv.error_class}" if iv is not None else "?/?"))
            rec = d.recovery
            if rec is not None and rec.kind == RecoveryKind.ABORT:
                name = f"recovery/{rec.kind.value}"
                out.stopped.add(name)
                out.flagged.setdefault(name, item.step.index if item.step.index is not None else -1)
                out.messages.setdefault(name, (rec.reason or "")[:200])
            elif rec is not None and rec.hint and not (iv is not None and iv.kind == InterventionKind.HINT):
                out.hinted[f"recovery/{rec.kind.value}"] += 1
    return out


@dataclass
class PrecisionReport:
    """Per dataset and per check: runs flagged, blocked, stopped, hints sent."""

    runs: list[RunPrecision]
    config: dict[str, Any] = field(default_factory=dict)
    budget: float = FLAG_BUDGET

    def datasets(self) -> list[str]:
        return sorted({r.dataset for r in self.runs})

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for ds in self.datasets():
            runs = [r for r in self.runs if r.dataset == ds]
            n = len(runs)
            checks = sorted({c for r in runs for c in [*r.flagged, *r.blocked, *r.stopped, *r.hinted]})
            per: dict[str, Any] = {}
            for c in checks:
                flagged = sum(1 for r in runs if c in r.flagged)
                per[c] = {"flagged": flagged, "blocked": sum(1 for r in runs if c in r.blocked),
                          "stopped": sum(1 for r in runs if c in r.stopped),
                          "hints": sum(r.hinted.get(c, 0) for r in runs),
                          "runs_hinted": sum(1 for r in runs if r.hinted.get(c)),
                          "flagged_rate": flagged / n if n else 0.0,
                          "flagged_ci95": list(wilson(flagged, n))}
            any_flag = sum(1 for r in runs if r.flagged)
            any_block = sum(1 for r in runs if r.blocked)
            any_stop = sum(1 for r in runs if r.stopped)
            any_hint = sum(1 for r in runs if r.hinted)
            out[ds] = {"runs": n, "steps": sum(r.steps for r in runs),
                       "flagged": any_flag, "flagged_rate": any_flag / n if n else 0.0,
                       "flagged_ci95": list(wilson(any_flag, n)),
                       "blocked": any_block, "stopped": any_stop, "hinted": any_hint,
                       "hints": sum(sum(r.hinted.values()) for r in runs),
                       "within_budget": n > 0 and any_flag / n <= self.budget and any_stop == 0,
                       "checks": per}
        return out

    def within_budget(self) -> bool:
        s = self.summary()
        return bool(s) and all(d["within_budget"] for d in s.values())

    def as_dict(self, *, runs: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"config": self.config, "budget": self.budget, "datasets": self.summary(),
                             "within_budget": self.within_budget()}
        if runs:
            d["runs"] = [r.as_dict() for r in self.runs]
        return d

    def render(self, *, markdown: bool = False) -> str:
        lines: list[str] = []
        for ds, d in self.summary().items():
            lo, hi = d["flagged_ci95"]
            kind = "successful" if self.config.get("outcome", "success") == "success" else self.config["outcome"]
            head = (f"{ds}: {d['runs']} {kind} runs ({d['steps']} steps); flagged by any check "
                    f"{d['flagged']} ({100 * d['flagged_rate']:.1f}%, 95% CI {100 * lo:.1f}-{100 * hi:.1f}), "
                    f"blocked {d['blocked']}, stopped {d['stopped']}, hinted {d['hinted']} ({d['hints']} hints); "
                    f"budget <= {100 * self.budget:.0f}% flagged and 0 stopped: "
                    f"{'met' if d['within_budget'] else 'NOT met'}")
            lines.append(f"**{head}**" if markdown else head)
            if markdown:
                lines += ["", "| check | runs flagged | % (95% CI) | blocked | stopped | hints (runs) |",
                          "|---|---|---|---|---|---|"]
            for c, p in sorted(d["checks"].items(), key=lambda kv: (-kv[1]["flagged"], kv[0])):
                lo, hi = p["flagged_ci95"]
                rate = f"{100 * p['flagged_rate']:.1f} ({100 * lo:.1f}-{100 * hi:.1f})"
                if markdown:
                    lines.append(f"| `{c}` | {p['flagged']} | {rate} | {p['blocked']} | {p['stopped']} | "
                                 f"{p['hints']} ({p['runs_hinted']}) |")
                else:
                    lines.append(f"  {c:<52} flagged {p['flagged']:>4} {rate:>18}  blocked {p['blocked']:>3}  "
                                 f"stopped {p['stopped']:>3}  hints {p['hints']:>4} ({p['runs_hinted']} runs)")
            lines.append("")
        return "\n".join(lines).rstrip() + "\n"


def successful_runs(paths: list[str], fmt: str = "auto", *, runtime: Any = None,
                    problems: list[Any] | None = None, outcome: Outcome = Outcome.SUCCESS) -> Iterable[Any]:
    """The imported runs of ``paths`` whose recorded outcome is a success (or ``outcome``)."""
    from immunity.importers import ImportProblem, iter_runs

    for item in iter_runs(paths, fmt, runtime=runtime):
        if isinstance(item, ImportProblem):
            if problems is not None:
                problems.append(item)
            continue
        if item.run.outcome == outcome:
            yield item


def precision_report(paths: list[str] | dict[str, list[str]], fmt: str = "auto", *, selector: str | None = None,
                     sample: int | None = None, seed: int = 0, options: dict[str, Any] | None = None,
                     progress: Callable[[int], None] | None = None,
                     outcome: Outcome = Outcome.SUCCESS) -> PrecisionReport:
    """Replay the successful runs of ``paths`` (a list, or ``{dataset: [paths]}``) through a fresh
    default runtime each, and report per check. ``sample`` keeps a seeded random sample of that many
    successful runs per dataset (all of them when ``None``). ``outcome=Outcome.FAILURE`` replays the
    failed runs instead: the same counts, read as how often the checks fire where something did go
    wrong (for context; the budget is about successes)."""
    from immunity.runtime import Runtime

    groups = paths if isinstance(paths, dict) else {_dataset_name(p): [p] for p in paths}
    t0 = time.perf_counter()
    results: list[RunPrecision] = []
    problems: list[Any] = []
    reader = Runtime(store=None)
    # one runtime for all runs (as one process protecting many runs would have): the defaults, no store
    # (the per-step time budget is off so that a loaded machine cannot skip a check and change the figures)
    kw: dict[str, Any] = {**dict(options or {}), **({"selector": selector} if selector else {})}
    runtime = Runtime(store=None, step_budget_ms=0.0, **kw)
    selector = runtime.config.selector
    try:
        for ds, ds_paths in groups.items():
            items = list(successful_runs(list(ds_paths), fmt, runtime=reader, problems=problems, outcome=outcome))
            if sample is not None and sample < len(items):
                items = random.Random(seed).sample(items, sample)
            for item in items:
                results.append(replay_success(item, runtime, ds))
                if progress:
                    progress(len(results))
    finally:
        runtime.close()
        reader.close()
    config = {"datasets": {k: list(v) for k, v in groups.items()}, "selector": selector, "sample": sample,
              "options": dict(options or {}),
              "outcome": outcome.value,
              "seed": seed, "problems": len(problems), "seconds": round(time.perf_counter() - t0, 1)}
    return PrecisionReport(results, config)


#: The dev-data layout (``/work/shared/data`` style): dataset name -> file under the folder.
DEV_DATA = {"tau-bench": "tau_bench_airline_gpt4o/gpt-4o-airline.json.gz",
            "swe-bench": "swebench_verified_minisweagent_gemini3pro/trajs.jsonl.gz"}


def dev_datasets(folder: str) -> dict[str, list[str]]:
    """The tau-bench and SWE-bench trace files under a dev-data folder (those that exist)."""
    import os

    return {name: [os.path.join(folder, rel)] for name, rel in DEV_DATA.items()
            if os.path.exists(os.path.join(folder, rel))}


def _dataset_name(path: str) -> str:
    import os

    path = os.path.normpath(path)
    parent = os.path.basename(os.path.dirname(path)) if os.path.isfile(path) else os.path.basename(path)
    return parent or path
