"""What the PostgreSQL store holds up to, on a throwaway local cluster (``TempCluster``).

    python plugins/postgres/bench/bench_store.py [--events 50000] [--procs 8] [--runs 500]
                                                 [--outage 10] [--only ingest,writers,outage]

Prints one line per figure:

- ``ingest``: events per second from one process into PostgreSQL and into SQLite (a file, WAL):
  ``store.save("events", ...)`` for ``--events`` events, timed until ``flush()`` returns (so until
  they are committed), best of 3.
- ``writers``: ``--procs`` processes, each ``--runs`` runs (a model call, 4 tool calls, the end)
  through the real runtime at once; runs and steps that did not land.
- ``outage``: one process writing runs while the server is stopped for ``--outage`` seconds and
  started again; runs and steps that did not land, and how many records went through the spill file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from immunity.models import Event, EventKind
from immunity.store import SQLiteStore
from immunity_postgres.cluster import TempCluster
from immunity_postgres.loadgen import count_landed
from immunity_postgres.store import PostgresStore


def _events(n: int) -> list[Event]:
    out = []
    for i in range(n):
        rid = f"run-{i // 50}"
        if i % 2:
            out.append(Event(kind=EventKind.TOOL_END, run_id=rid, tool="read_file", tool_call_id=f"c{i}",
                             result=f"contents of file {i} " * 4, return_code=0))
        else:
            out.append(Event(kind=EventKind.TOOL_START, run_id=rid, tool="read_file", tool_call_id=f"c{i}",
                             arguments={"path": f"src/module_{i}.py"}))
    return out


def _ingest(store: object, events: list[Event]) -> float:
    t0 = time.perf_counter()
    for ev in events:
        store.save("events", ev)  # type: ignore[attr-defined]
    store.flush()  # type: ignore[attr-defined]
    return len(events) / (time.perf_counter() - t0)


def bench_ingest(dsn: str, n: int) -> None:
    pg, lite = [], []
    for trial in range(3):
        events = _events(n)
        store = PostgresStore(dsn)
        try:
            pg.append(_ingest(store, events))
            got = store.count("events")
        finally:
            store.close()
        assert got >= n * (trial + 1), f"only {got} events landed"
        with tempfile.TemporaryDirectory() as tmp:
            events = _events(n)
            s = SQLiteStore(os.path.join(tmp, "bench.db"))
            try:
                lite.append(_ingest(s, events))
            finally:
                s.close()
    print(f"ingest: {n} events, one process, best of 3: postgres {max(pg):,.0f} events/s "
          f"(runs: {', '.join(f'{x:,.0f}' for x in pg)}); sqlite {max(lite):,.0f} events/s "
          f"(runs: {', '.join(f'{x:,.0f}' for x in lite)})", flush=True)


def _writer(dsn: str, tag: str, tmp: str, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    manifest = os.path.join(tmp, f"{tag}.json")
    proc = subprocess.Popen([sys.executable, "-m", "immunity_postgres.loadgen", dsn, "--tag", tag, "--manifest",
                             manifest, *args], stderr=subprocess.PIPE)
    return proc, manifest


def _collect(proc: subprocess.Popen[bytes], manifest: str) -> dict:
    _out, err = proc.communicate(timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(err.decode(errors="replace")[-3000:])
    with open(manifest, encoding="utf-8") as fh:
        return json.load(fh)


def bench_writers(dsn: str, procs: int, runs: int, tmp: str) -> None:
    t0 = time.perf_counter()
    started = [_writer(dsn, f"w{i}", tmp, "--runs", str(runs), "--steps", "4") for i in range(procs)]
    manifests = [_collect(p, m) for p, m in started]
    wall = time.perf_counter() - t0
    got = count_landed(dsn, manifests)
    print(f"writers: {procs} processes x {runs} runs ({got['steps']} steps) in {wall:.1f} s: landed {got['landed']} "
          f"runs, finished {got['ended']}, lost {got['lost_runs']} runs and {got['lost_steps']} steps", flush=True)


def bench_outage(pg: TempCluster, dsn: str, outage: float, tmp: str) -> None:
    import psycopg

    proc, manifest = _writer(dsn, "outage", tmp, "--runs", "600", "--steps", "4", "--pause", "0.02",
                             "--queue-max", "2000")
    while proc.poll() is None:  # wait until it writes
        with psycopg.connect(dsn) as conn:
            if conn.execute("select count(*) from runs where agent = 'outage'").fetchone()[0] >= 20:
                break
        time.sleep(0.1)
    pg.stop("fast")
    stopped = time.perf_counter()
    time.sleep(outage)
    pg.start()
    down = time.perf_counter() - stopped
    result = _collect(proc, manifest)
    got = count_landed(dsn, [result])
    print(f"outage: server stopped {down:.1f} s during writes of {got['runs']} runs ({got['steps']} steps): lost "
          f"{got['lost_runs']} runs and {got['lost_steps']} steps; finished {got['ended']}; {result['spilled']} "
          f"records went through the spill file, {result['replayed']} replayed", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--outage", type=float, default=10.0)
    ap.add_argument("--only", default="ingest,writers,outage")
    args = ap.parse_args()
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as tmp, TempCluster() as pg:
        os.environ["IMMUNITY_SPILL_DIR"] = os.path.join(tmp, "spill")
        if "ingest" in only:
            bench_ingest(pg.dsn, args.events)
        if "writers" in only:
            bench_writers(pg.dsn, args.procs, args.runs, tmp)
        if "outage" in only:
            bench_outage(pg, pg.dsn, args.outage, tmp)


if __name__ == "__main__":
    main()
