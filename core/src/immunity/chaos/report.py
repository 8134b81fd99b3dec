"""Which faults the agent and immunity survived.

For every injected fault, the run it landed in (from the store) says:

- **survived**: the run ended with outcome ``success`` (the agent finished the task despite the
  fault); ``failed`` when its outcome is ``failure``; ``unknown`` when nobody set an outcome;
- **detected**: immunity raised a failed verdict in that run at or after the injection;
- **acted**: immunity intervened (a hint, block, stop) or started a recovery at or after it;
- **silent failure**: the run failed and immunity raised nothing after the fault: the case chaos
  is meant to find.

Figures are counts over injections, with the number of distinct runs; nothing is estimated.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def _injections(source: Any) -> list[dict[str, Any]]:
    if isinstance(source, dict):
        return list(source.get("injections", []))
    from dataclasses import asdict

    return [asdict(i) for i in source.injections]


def survival(source: Any, stores: list[Any]) -> dict[str, Any]:
    """Per fault kind (and ``all``): injections, runs, survived / failed / unknown, detected,
    acted, silent failures. ``source`` is a :class:`~immunity.chaos.Chaos` or its ``as_dict()``;
    ``stores`` the stores the runs were written to."""
    injections = _injections(source)
    runs: dict[str, Any] = {}
    after: dict[str, tuple[list[float], list[float]]] = {}
    for store in stores:
        for rid in {i["run_id"] for i in injections if i.get("run_id")}:
            if rid in runs:
                continue
            run = store.get_run(rid)
            if run is None:
                continue
            runs[rid] = run
            verdicts = [v.ts for v in store.verdicts(rid) if not v.ok]
            acts = [iv.ts for iv in store.interventions(rid)] + [rc.ts for rc in store.recoveries(rid)]
            after[rid] = (verdicts, acts)
    rows: dict[str, dict[str, Any]] = defaultdict(lambda: {"injected": 0, "runs": set(), "survived": 0, "failed": 0,
                                                          "unknown": 0, "detected": 0, "acted": 0, "silent": 0})
    for inj in injections:
        for key in (inj["fault"], "all"):
            r = rows[key]
            r["injected"] += 1
            rid = inj.get("run_id")
            run = runs.get(rid or "")
            if run is None:
                r["unknown"] += 1
                continue
            r["runs"].add(rid)
            outcome = run.outcome.value
            r[{"success": "survived", "failure": "failed"}.get(outcome, "unknown")] += 1
            verdicts, acts = after[run.run_id]
            detected = any(t >= inj["ts"] - 1e-3 for t in verdicts)
            r["detected"] += detected
            r["acted"] += any(t >= inj["ts"] - 1e-3 for t in acts)
            r["silent"] += outcome == "failure" and not detected
    order = [k for k in rows if k != "all"] + (["all"] if "all" in rows else [])
    return {"experiment": source.get("experiment") if isinstance(source, dict) else source.experiment.name,
            "faults": {k: {**rows[k], "runs": len(rows[k]["runs"])} for k in order}}


def format_report(result: dict[str, Any]) -> str:
    lines = [f"chaos experiment {result['experiment']}: what the agent and immunity survived",
             f"{'fault':<14} {'injected':>8} {'runs':>5} {'survived':>9} {'failed':>7} {'unknown':>8} "
             f"{'detected':>9} {'acted':>6} {'silent':>7}"]
    for kind, r in result["faults"].items():
        lines.append(f"{kind:<14} {r['injected']:>8} {r['runs']:>5} {r['survived']:>9} {r['failed']:>7} "
                     f"{r['unknown']:>8} {r['detected']:>9} {r['acted']:>6} {r['silent']:>7}")
    if not result["faults"]:
        lines.append("no fault was injected")
    lines.append("survived: the run still succeeded; detected: a failed verdict at/after the fault; acted: an "
                 "intervention or recovery at/after it; silent: failed with nothing detected")
    return "\n".join(lines)
