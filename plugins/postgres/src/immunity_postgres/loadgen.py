"""A writer process for the durability checks (tests and ``bench/bench_store.py``): runs made
through the real runtime into a store, and a manifest of what was made, to count what landed.

    python -m immunity_postgres.loadgen DSN --runs 500 --steps 4 --tag w3 --manifest w3.json

Each run is a model call and ``steps`` tool calls, then the end with an outcome. The manifest (JSON)
names every run id and how many steps each has; it is written after the runtime closed, so every
record had been handed to the store.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def write_runs(location: str, runs: int, steps: int, tag: str, *, pause_s: float = 0.0,
               store_options: dict[str, Any] | None = None) -> dict[str, Any]:
    from immunity.runtime import Runtime
    from immunity.testing import FakeRun

    store: Any = location
    if store_options and location.startswith(("postgresql://", "postgres://")):
        from immunity_postgres.store import PostgresStore

        store = PostgresStore(location, **store_options)
    made: dict[str, int] = {}
    t0 = time.perf_counter()
    rt = Runtime(store=store, domain="coding")
    try:
        for i in range(runs):
            run = FakeRun(rt, task=f"task {i} of {tag}", framework="loadgen", agent=tag)
            run.model("let me look")
            for k in range(steps):
                run.tool("read_file", {"path": f"src/m{k}.py"}, result=f"contents {i}.{k}")
            run.session.end("success" if i % 3 else "failure")
            made[run.run.run_id] = steps
            if pause_s:
                time.sleep(pause_s)
    finally:
        rt.close()
    seconds = time.perf_counter() - t0
    return {"tag": tag, "runs": made, "seconds": seconds, "spilled": getattr(rt.store, "spilled", 0),
            "replayed": getattr(rt.store, "replayed", 0)}


def count_landed(location: str, manifests: list[dict[str, Any]]) -> dict[str, int]:
    """How many of the manifests' runs and steps are in the store, and how many are missing."""
    import psycopg

    want_runs = {rid: n for m in manifests for rid, n in m["runs"].items()}
    with psycopg.connect(location) as conn:
        have_runs = {r[0]: r[1] for r in conn.execute(
            "select run_id, status from runs where run_id = any(%s)", [list(want_runs)]).fetchall()}
        have_steps: dict[str, int] = dict(conn.execute("select run_id, count(*) from steps where run_id = any(%s) group by run_id",
                                       [list(want_runs)]).fetchall())
        ended = sum(1 for s in have_runs.values() if s == "finished")
    missing_runs = sum(1 for rid in want_runs if rid not in have_runs)
    missing_steps = sum(max(0, n - have_steps.get(rid, 0)) for rid, n in want_runs.items())
    return {"runs": len(want_runs), "landed": len(have_runs), "ended": ended, "lost_runs": missing_runs,
            "steps": sum(want_runs.values()), "lost_steps": missing_steps}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("location")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--tag", default="w")
    ap.add_argument("--pause", type=float, default=0.0, help="Seconds to sleep between runs.")
    ap.add_argument("--queue-max", type=int, default=None, help="The store's in-memory bound.")
    ap.add_argument("--close-timeout", type=float, default=None,
                    help="Seconds the store waits at close for a server that is down before spilling.")
    ap.add_argument("--manifest", required=True)
    args = ap.parse_args(argv)
    opts: dict[str, Any] = {}
    if args.queue_max:
        opts["queue_max"] = args.queue_max
    if args.close_timeout is not None:
        opts["close_timeout"] = args.close_timeout
    out = write_runs(args.location, args.runs, args.steps, args.tag, pause_s=args.pause, store_options=opts or None)
    with open(args.manifest, "w", encoding="utf-8") as fh:
        json.dump(out, fh)


if __name__ == "__main__":  # pragma: no cover
    main()
