"""The operations demo: a fleet of refund agents (LangGraph, scripted model, offline) runs first
normally, then with chaos on; the SLOs burn, alerts fire and are delivered, an incident opens, its
postmortem is written, and the UI shows it all.

    .venv/bin/python examples/chaos_fleet.py --out demo/               # runs, alerts, incident, postmortem
    .venv/bin/python examples/chaos_fleet.py --out demo/ --serve       # ... then: immunity ui on :8001
    .venv/bin/python examples/chaos_fleet.py --out demo/ --webhook http://127.0.0.1:9000/hook

Files in --out: immunity.db (the store), postmortem-<incident>.md, chaos-report.txt.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from immunity import chaos
from immunity.chaos.fleet import run_fleet
from immunity.operate import sync
from immunity.runtime import Runtime
from immunity.slo import format_status, load_slos

HERE = Path(__file__).resolve().parent

#: Heavier than examples/chaos.toml: the point is to burn the budget.
EXPERIMENT = {
    "name": "refund-fleet-chaos", "seed": 11,
    "fault": [
        {"kind": "wrong_output", "target": "tool", "names": ["get_order_details"], "probability": 0.5},
        {"kind": "http_503", "target": "tool", "names": ["refund"], "probability": 0.35, "retry_after_s": 0.01},
        {"kind": "http_429", "target": "tool", "names": ["get_order_details"], "probability": 0.15,
         "retry_after_s": 0.01},
        {"kind": "latency", "target": "tool", "probability": 0.3, "latency_s": 0.01},
        {"kind": "truncate", "target": "tool", "names": ["get_order_details"], "probability": 0.1},
        {"kind": "repeat", "target": "model", "probability": 0.1},
    ],
}


def run_demo(out: str | Path, *, baseline: int = 8, chaotic: int = 16, p: float = 0.7, webhook: str | None = None,
             log: Any = print) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    db = str(out / "immunity.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    rt = Runtime(store=db, domain="support", support={"require_confirmation": False},
                 recovery={"base_delay": 0.001, "max_delay": 0.01})
    try:
        calm = run_fleet(rt, runs=baseline, seed=1, p=p)
        log(f"{baseline} runs without chaos: {sum(r.outcome == 'success' for r in calm)} succeeded")
        with chaos.activate(chaos.Experiment.from_dict(EXPERIMENT)) as c:
            stormy = run_fleet(rt, runs=chaotic, chaos=c, seed=2, p=p)
        rt.flush()
        log(f"{chaotic} runs with chaos: {sum(r.outcome == 'success' for r in stormy)} succeeded, "
            f"{len(c.injections)} faults injected")
        report = chaos.format_report(chaos.survival(c, [rt.store]))
    finally:
        rt.close()
    (out / "chaos-report.txt").write_text(report + "\n", encoding="utf-8")
    log(report)

    from immunity.store import SQLiteStore

    slo_file = str(HERE / "slo.toml")
    store = SQLiteStore(db, background=False)
    try:
        res = _sync_with_webhook(store, slo_file, webhook) if webhook else sync(store, slo_file, min_runs=3)
        log(format_status(res["statuses"]))
        for a in res["fired"]:
            log(f"ALERT [{a.severity}] {a.message}")
        from immunity.incidents import list_incidents, postmortem

        incidents = list_incidents(store)
        written = []
        for inc in incidents:
            if inc["kind"] == "slo" or inc is incidents[0]:
                path = out / f"postmortem-{inc['incident_id']}.md"
                path.write_text(postmortem(store, inc["incident_id"]), encoding="utf-8")
                written.append(str(path))
        for inc in incidents:
            log(f"incident {inc['incident_id']} [{inc['status']}] {inc['title']} ({inc['runs']} runs)")
        log("postmortems: " + ", ".join(written))
    finally:
        store.close()
    return {"store": db, "fired": res["fired"], "incidents": incidents, "postmortems": written,
            "calm": calm, "stormy": stormy}


def _sync_with_webhook(store: Any, slo_file: str, webhook: str) -> dict[str, Any]:
    """Like :func:`sync`, with ``[alerts] webhook`` set from the command line."""
    from immunity import incidents, slo

    f = load_slos(slo_file)
    f.delivery["webhook"] = webhook
    statuses, fired, resolved = slo.check(store, f)
    ids = incidents.add_alerts(store, fired, incidents.GroupingConfig(min_runs=3))
    ids += incidents.scan_verdicts(store, incidents.GroupingConfig(min_runs=3))
    return {"statuses": statuses, "fired": fired, "resolved": resolved, "incidents": ids}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="immunity-demo")
    ap.add_argument("--baseline", type=int, default=8)
    ap.add_argument("--chaotic", type=int, default=16)
    ap.add_argument("--webhook", default=None)
    ap.add_argument("--serve", action="store_true", help="Then serve the UI (immunity ui) on 127.0.0.1:8001.")
    args = ap.parse_args(argv)
    res = run_demo(args.out, baseline=args.baseline, chaotic=args.chaotic, webhook=args.webhook)
    if args.serve:
        from immunity.cli import main as cli

        cli(["ui", "--store", res["store"]])
    else:
        print(f"see it: immunity ui --store {res['store']}  (then open http://127.0.0.1:8001/-/immunity)")


if __name__ == "__main__":
    main(sys.argv[1:])
