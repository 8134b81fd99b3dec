"""The SQLite store under load and faults; each part prints one line of figures.

    python bench/bench_store.py load      [--procs 4 --threads 8 --runs 200 --steps 20]
    python bench/bench_store.py kill      [--kills 10 --durability run|batch]
    python bench/bench_store.py edits     [--runs 50 --steps 40 --repeats 5 --real-tools --prefill N --stages]
    python bench/bench_store.py rows
    python bench/bench_store.py ingest    [--runs 2000 --steps 20]
    python bench/bench_store.py all       # everything at full size (a few minutes on 2 busy cores)

- ``load``: P processes x T threads x R runs x S steps (a model call and an edit per step)
  through real runtimes into one new file: runs / steps on disk vs expected, records spilled
  and never read back, records lost, wall time.
- ``kill``: a writer process is killed with SIGKILL at a random moment, 10 times, on one file:
  ``PRAGMA integrity_check`` after each, runs whose ``end`` had returned but are missing, and the
  loss window (the age, at the kill, of the oldest record that did not reach the disk).
- ``edits``: an edit-heavy coding agent (the coding domain; edits, reads and a test run) with a
  file store vs without a store: seconds per run and the ratio (median of ``repeats``), and the
  added cost of one side-effecting tool call. ``--real-tools``: the same agent whose tools do
  their work (an edit writes the file into a temp folder, a read reads it, a test run is a
  subprocess every 10 steps): the ratio a user would see. ``--prefill N``: into a store that
  already holds N runs (its indexes span many pages). ``--stages``: CPU per run with stores that
  stop at each stage (queued then dropped, rows built but not written, written by the run's end
  without a writer thread, the store as it is): where the added time goes.
- ``rows``: CPU per record of building the rows of 100 edit-heavy runs, from the records' fields
  with the prefilter vs walking every string through the redactor.
- ``ingest``: live events per second through the runtime into a file store with edits in the
  workload, and how many were lost; the same through a runtime without a store (the ceiling the
  runtime's own checks set); then the same events saved straight into the store (what the store
  alone sustains).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from immunity.models import Run, Step
from immunity.runtime import Runtime
from immunity.store import SQLiteStore

FORK = multiprocessing.get_context("fork")


def _count(path: str, sql: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------ load
def _agent(s: Any, steps: int) -> None:
    for i in range(steps):
        s.model_start([{"role": "user", "content": "fix the bug"}], model="m")
        s.model_end(None, tool_calls=[{"name": "edit_file", "arguments": {"path": f"f{i}.py"}}],
                    usage={"input_tokens": 50, "output_tokens": 5})
        s.tool_start("edit_file", {"path": f"f{i % 7}.py", "text": f"v{i}"}, tool_call_id=f"c{i}")
        s.tool_end("edit_file", "ok", tool_call_id=f"c{i}")


def _load_worker(path: str, tag: str, threads: int, runs: int, steps: int, out: Any) -> None:
    rt = Runtime(store=path)

    def work(t: int) -> None:
        for r in range(runs):
            s = rt.start_run(task="load", run_id=f"{tag}-{t}-{r}")
            _agent(s, steps)
            s.end("success")

    ths = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    rt.close()
    out.put((rt.store.path, rt.store.spilled, rt.store.lost))


def bench_load(procs: int, threads: int, runs: int, steps: int) -> None:
    folder = tempfile.mkdtemp()
    path = str(Path(folder) / "load.db")
    results = FORK.Queue()
    t0 = time.perf_counter()
    workers = [FORK.Process(target=_load_worker, args=(path, f"p{p}", threads, runs, steps, results))
               for p in range(procs)]
    for w in workers:
        w.start()
    got = [results.get(timeout=3600) for _ in workers]
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    n = procs * threads * runs
    on_disk = _count(path, "select count(*) from runs where status = 'finished'")
    steps_on_disk = _count(path, "select count(*) from steps")
    memory = sum(1 for p, _, _ in got if p != path)
    unread = len(list(Path(folder).glob("load.db.spill*")))
    print(f"load: {procs} procs x {threads} threads x {runs} runs x {steps} steps into one new file: "
          f"runs {on_disk}/{n}, steps {steps_on_disk}/{n * steps}, lost {n - on_disk}, "
          f"spilled {sum(s for _, s, _ in got)} (spill files left unread: {unread}), store lost "
          f"{sum(x for _, _, x in got)}, runtimes fell back to memory {memory}, {wall:.1f} s")


# ------------------------------------------------------------------------------------------ kill
def _kill_worker(path: str, tag: str, durability: str, fd: int) -> None:
    store = SQLiteStore(path, durability=durability)
    i = 0
    while True:
        run = Run(task="k", run_id=f"{tag}-{i}")
        store.save("runs", run)
        for j in range(5):
            store.save("steps", Step(run_id=run.run_id, index=j, tool="edit", arguments={"j": j}))
            os.write(fd, f"S {run.run_id} {j} {time.time()!r}\n".encode())
        run.ended_at, run.status = time.time(), "finished"
        store.save("runs", run)
        os.write(fd, f"E {run.run_id} {time.time()!r}\n".encode())
        i += 1


def bench_kill(kills: int, durability: str) -> None:
    path = str(Path(tempfile.mkdtemp()) / "killed.db")
    rng = random.Random(1)
    ok = 0
    ended_lost = 0
    windows: list[float] = []
    saved = 0
    for k in range(kills):
        r, w = os.pipe()
        proc = FORK.Process(target=_kill_worker, args=(path, f"k{k}", durability, w))
        proc.start()
        os.close(w)
        with os.fdopen(r, "rb") as fh:
            fh.readline()
            time.sleep(rng.uniform(0.05, 0.5))
            t_kill = time.time()
            assert proc.pid is not None
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
            lines = fh.read().decode().splitlines()
        conn = sqlite3.connect(path)
        ok += conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored_steps = {(a, b) for a, b in conn.execute("select run_id, idx from steps")}
        ended = {a for (a,) in conn.execute("select run_id from runs where ended_at is not null")}
        conn.close()
        lost_ts = []
        for ln in lines:
            parts = ln.split()
            if parts[0] == "S":
                saved += 1
                if (parts[1], int(parts[2])) not in stored_steps:
                    lost_ts.append(float(parts[3]))
            elif parts[0] == "E" and parts[1] not in ended:
                ended_lost += 1
        windows.append(t_kill - min(lost_ts) if lost_ts else 0.0)
    print(f"kill -9 x{kills} (durability={durability}): integrity_check ok {ok}/{kills}, ended runs lost "
          f"{ended_lost}, steps saved {saved}, loss window max {max(windows) * 1000:.0f} ms / median "
          f"{statistics.median(windows) * 1000:.0f} ms (age at the kill of the oldest step not on disk)")


# ------------------------------------------------------------------------------------------ edits
def _coding_run(rt: Runtime, steps: int, r: int) -> None:
    s = rt.start_run(task="fix the failing test", framework="bench", domain="coding")
    for i in range(steps):
        if i % 10 == 9:
            s.tool_start("bash", {"command": "pytest -q"}, tool_call_id=f"t{i}")
            s.tool_end("bash", "3 passed", return_code=0, tool_call_id=f"t{i}")
        elif i % 3 == 0:
            s.tool_start("read_file", {"path": f"src/m{i % 5}.py"}, tool_call_id=f"r{i}")
            s.tool_end("read_file", "def f():\n    return 1\n" * 20, tool_call_id=f"r{i}")
        else:
            s.tool_start("edit_file", {"path": f"src/m{i % 5}.py", "old": "return 1", "new": f"return {r}{i}"},
                         tool_call_id=f"e{i}")
            s.tool_end("edit_file", "edited", tool_call_id=f"e{i}")
    s.end("success")


def _real_tools_run(rt: Runtime, steps: int, r: int, folder: Path) -> None:
    """The same agent whose tools do their work: an edit writes the file, a read reads it, and
    every tenth step runs the tests in a subprocess."""
    s = rt.start_run(task="fix the failing test", framework="bench", domain="coding")
    for i in range(steps):
        path = folder / f"m{i % 5}.py"
        if i % 10 == 9:
            s.tool_start("bash", {"command": "pytest -q"}, tool_call_id=f"t{i}")
            out = subprocess.run([sys.executable, "-c", "print('3 passed')"], capture_output=True, text=True)
            s.tool_end("bash", out.stdout, return_code=out.returncode, tool_call_id=f"t{i}")
        elif i % 3 == 0:
            s.tool_start("read_file", {"path": str(path)}, tool_call_id=f"r{i}")
            text = path.read_text() if path.exists() else ""
            s.tool_end("read_file", text, tool_call_id=f"r{i}")
        else:
            s.tool_start("edit_file", {"path": str(path), "old": "return 1", "new": f"return {r}{i}"},
                         tool_call_id=f"e{i}")
            path.write_text("def f():\n    return 1\n" * 19 + f"def g():\n    return {r}{i}\n")
            s.tool_end("edit_file", "edited", tool_call_id=f"e{i}")
    s.end("success")


def _time_agent(store: str | None, runs: int, steps: int, durability: str = "run",
                real_tools: bool = False) -> tuple[float, float]:
    """Wall and CPU seconds (of the whole process: the agent's thread and the store's writer) per run."""
    rt = Runtime(store=SQLiteStore(store, durability=durability) if store else None, domain="coding")
    work = Path(tempfile.mkdtemp())

    def run(r: int) -> None:
        if real_tools:
            _real_tools_run(rt, steps, r, work)
        else:
            _coding_run(rt, steps, r)

    run(-1)  # warm up (imports, caches)
    t0, c0 = time.perf_counter(), time.process_time()
    for r in range(runs):
        run(r)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    rt.close()
    return dt / runs, cpu / runs


def _side_effect_cost(store: str | None, n: int = 2000) -> float:
    rt = Runtime(store=store, domain="coding")
    s = rt.start_run(task="t", domain="coding")
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        s.tool_start("edit_file", {"path": f"a{i}.py", "new": "x"}, tool_call_id=f"e{i}")
        s.tool_end("edit_file", "edited", tool_call_id=f"e{i}")
        times.append(time.perf_counter() - t0)
    s.end("success")
    rt.close()
    return statistics.median(times)


def bench_edits(runs: int, steps: int, repeats: int, durability: str = "run", real_tools: bool = False,
                prefill: int = 0) -> None:
    folder = Path(tempfile.mkdtemp())
    with_store, without = [], []
    template = None
    if prefill:  # a store that already holds ``prefill`` runs of the same agent (copied for each repeat)
        template = folder / "prefilled.db"
        rt = Runtime(store=SQLiteStore(str(template)), domain="coding")
        for r in range(prefill):
            _coding_run(rt, steps, r)
        rt.close()
        with sqlite3.connect(template) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    load0 = os.getloadavg()[0]
    for k in range(repeats):  # interleaved, so both sides see the same load
        without.append(_time_agent(None, runs, steps, real_tools=real_tools))
        db = folder / f"edits{k}.db"
        if template is not None:
            shutil.copyfile(template, db)
        with_store.append(_time_agent(str(db), runs, steps, durability, real_tools))
    ratio = statistics.median(w[0] / o[0] for w, o in zip(with_store, without, strict=True))
    cpu_ratio = statistics.median(w[1] / o[1] for w, o in zip(with_store, without, strict=True))
    if real_tools:
        print(f"edits --real-tools ({runs} runs x {steps} steps, median of {repeats}, durability={durability}; "
              f"tools write and read files, a test subprocess every 10 steps): "
              f"{statistics.median(w for w, _ in with_store) * 1000:.1f} ms/run with a file store vs "
              f"{statistics.median(w for w, _ in without) * 1000:.1f} ms/run without: ratio {ratio:.2f} wall, "
              f"{cpu_ratio:.2f} CPU of the process ({statistics.median(c for _, c in with_store) * 1000:.1f} vs "
              f"{statistics.median(c for _, c in without) * 1000:.1f} ms CPU/run); load average "
              f"{load0:.1f} -> {os.getloadavg()[0]:.1f}")
        return
    call_file = _side_effect_cost(str(folder / "calls.db"))
    call_none = _side_effect_cost(None)
    held = f", the store already holding {prefill} runs" if prefill else ""
    print(f"edit-heavy coding agent ({runs} runs x {steps} steps, median of {repeats}, durability={durability}{held}): "
          f"{statistics.median(w for w, _ in with_store) * 1000:.1f} ms/run with a file store vs "
          f"{statistics.median(w for w, _ in without) * 1000:.1f} ms/run without: ratio {ratio:.2f} wall, "
          f"{cpu_ratio:.2f} CPU ({statistics.median(c for _, c in with_store) * 1000:.1f} vs "
          f"{statistics.median(c for _, c in without) * 1000:.1f} ms CPU/run); "
          f"one side-effecting tool call (start+end) median {call_file * 1000:.3f} ms with the store vs "
          f"{call_none * 1000:.3f} ms without (+{(call_file - call_none) * 1000:.3f} ms); load average "
          f"{load0:.1f} -> {os.getloadavg()[0]:.1f}")


class _NoThread:
    def is_alive(self) -> bool:
        return True

    def join(self, timeout: float | None = None) -> None:
        pass


class _CallerWrites(SQLiteStore):
    """No writer thread: everything queued is written by the flush at the run's end."""

    def _start_writer(self) -> None:
        self._thread = _NoThread()  # type: ignore[assignment]


class _RowsOnly(_CallerWrites):
    """Builds every row, writes none."""

    def _commit(self, rows: Any) -> None:
        pass


class _QueueOnly(_CallerWrites):
    """Queues every record, then forgets it."""

    def flush(self, timeout: float = 30.0) -> bool:
        self._queue.items.clear()
        return True


def bench_edit_stages(runs: int, steps: int, repeats: int) -> None:
    """CPU per run of the same agent with stores that stop at each stage: where the added time goes."""
    folder = Path(tempfile.mkdtemp())
    stages: list[tuple[str, Any]] = [
        ("no store", None), ("records queued, then dropped", _QueueOnly), ("rows built, not written", _RowsOnly),
        ("written by the run's end (no writer thread)", _CallerWrites), ("the store as it is", SQLiteStore)]
    cpu: dict[str, list[float]] = {name: [] for name, _ in stages}

    def measure(cls: Any, path: str, out: Any) -> None:
        rt = Runtime(store=cls(path) if cls else None, domain="coding")
        _coding_run(rt, steps, -1)
        if rt.store is not None:
            rt.store.flush()
        c0 = time.process_time()
        for r in range(runs):
            _coding_run(rt, steps, r)
        out.send((time.process_time() - c0) / runs)
        rt.close()

    load0 = os.getloadavg()[0]
    for k in range(repeats):
        for i, (name, cls) in enumerate(stages):
            # each in a process of its own: a stage measured after another in the same process was
            # slowed by what the earlier one left behind
            recv, send = FORK.Pipe(duplex=False)
            proc = FORK.Process(target=measure, args=(cls, str(folder / f"stage{i}-{k}.db"), send))
            proc.start()
            cpu[name].append(recv.recv())
            proc.join()
    base = statistics.median(cpu["no store"])
    parts = [f"{name} {statistics.median(v) * 1000:.2f} ms (+{(statistics.median(v) - base) * 1000:.2f})"
             for name, v in cpu.items()]
    print(f"edit-heavy agent, CPU per run of {steps} steps by stage (median of {repeats}): " + "; ".join(parts)
          + f" (load average {load0:.1f} -> {os.getloadavg()[0]:.1f})")


# ------------------------------------------------------------------------------------------ rows
def bench_rows(runs: int = 100) -> None:
    """CPU per record of building the rows of ``runs`` edit-heavy runs (what the writer does with
    the interpreter lock held), each record once, with a fresh redactor for each pass (so what it
    remembers of texts found clean helps only as it would in a live process): straight from the
    fields with the prefilter, vs walking every string through the redactor (what every record
    cost before, and what a record that may hold a secret still costs)."""
    from immunity.redact import Redactor
    from immunity.store import _Dumped, _to_row, to_row

    saved: list[tuple[str, Any]] = []

    class Recording(SQLiteStore):
        def save(self, table: str, record: Any) -> None:
            saved.append((table, record))
            super().save(table, record)

    rt = Runtime(store=Recording(str(Path(tempfile.mkdtemp()) / "rows.db"), background=False), domain="coding")
    _coding_run(rt, 40, -1)
    saved.clear()
    for r in range(runs):
        _coding_run(rt, 40, r)

    def walked(red: Redactor, table: str, record: Any) -> Any:
        if isinstance(record, dict):
            return red.value(record, clip=16_000)
        return _to_row(table, _Dumped(record, red), message_refs=True)

    def fast(red: Redactor, table: str, record: Any) -> Any:
        return to_row(table, record, red, message_refs=True)

    def cpu(fn: Any) -> float:
        times = []
        for _ in range(5):
            red = Redactor()
            c0 = time.process_time()
            for table, record in saved:
                fn(red, table, record)
            times.append((time.process_time() - c0) / len(saved))
        return statistics.median(times)

    per_fast, per_walked = cpu(fast), cpu(walked)
    print(f"row building, the {len(saved)} records of {runs} 40-step edit-heavy runs (median of 5 passes): "
          f"{per_fast * 1e6:.1f} us CPU per record from the fields with the prefilter vs {per_walked * 1e6:.1f} us "
          f"walking every string (load average {os.getloadavg()[0]:.1f})")
    rt.close()


# ------------------------------------------------------------------------------------------ ingest
def bench_ingest(runs: int, steps: int, store: bool = True) -> None:
    path = str(Path(tempfile.mkdtemp()) / "ingest.db")
    rt = Runtime(store=path if store else None)
    t0, c0 = time.perf_counter(), time.process_time()
    events = 0
    for r in range(runs):
        s = rt.start_run(task="ingest", run_id=f"i-{r}")
        _agent(s, steps)
        s.end("success")
        events += 2 + 4 * steps
    rt.close()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    if not store:
        print(f"the same without a store: {events} events in {dt:.1f} s = {events / dt:,.0f} events/s wall, "
              f"{events / cpu:,.0f} events per CPU-second (load average {os.getloadavg()[0]:.1f})")
        return
    stored = _count(path, "select count(*) from events")
    print(f"live ingest: {events} events ({runs} runs x {steps} steps, an edit per step) in {dt:.1f} s = "
          f"{events / dt:,.0f} events/s wall through the runtime into a file store, {events / cpu:,.0f} events per "
          f"CPU-second of the process (load average {os.getloadavg()[0]:.1f}); stored {stored}, lost {events - stored}")


def bench_store_ingest(runs: int, steps: int) -> None:
    """Events straight into the store (no runtime): what the store alone sustains."""
    from immunity.models import Event, EventKind

    path = str(Path(tempfile.mkdtemp()) / "ingest-store.db")
    store = SQLiteStore(path, durability="batch")
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for r in range(runs):
        rid = f"s-{r}"
        store.save("runs", Run(task="ingest", run_id=rid))
        for i in range(steps):
            store.save("events", Event(kind=EventKind.TOOL_START, run_id=rid, tool="edit_file",
                                       arguments={"path": f"f{i}.py", "new": f"v{i}"}, tool_call_id=f"c{i}"))
            store.save("events", Event(kind=EventKind.TOOL_END, run_id=rid, tool="edit_file", result="edited",
                                       tool_call_id=f"c{i}"))
            store.save("steps", Step(run_id=rid, index=i, tool="edit_file", arguments={"path": f"f{i}.py"},
                                     result="edited", side_effect=True))
            n += 2
    store.flush(timeout=600)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    store.close()
    stored = _count(path, "select count(*) from events")
    print(f"store-only ingest: {n} events (+{runs * steps} steps) saved and committed in {dt:.1f} s = "
          f"{n / dt:,.0f} events/s wall ({(n + runs * steps) / dt:,.0f} records/s), {n / cpu:,.0f} events per CPU-second "
          f"of the process (load average {os.getloadavg()[0]:.1f}); stored {stored}, lost {n - stored}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["load", "kill", "edits", "rows", "ingest", "all"])
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--durability", default=None, choices=["run", "batch"])
    ap.add_argument("--prefill", type=int, default=0, help="edits: runs already in the store before timing")
    ap.add_argument("--stages", action="store_true", help="edits: CPU per run with stores that stop at each stage")
    ap.add_argument("--real-tools", action="store_true", help="edits: tools that write and read files and run "
                    "a test subprocess every 10 steps")
    a = ap.parse_args()
    if a.part in ("load", "all"):
        bench_load(a.procs, a.threads, a.runs or 200, a.steps)
    if a.part in ("kill", "all"):
        for d in [a.durability] if a.durability else ["run", "batch"]:
            bench_kill(a.kills, d)
    if a.part == "edits" and a.stages:
        bench_edit_stages(a.runs or 30, 40 if a.steps == 20 else a.steps, a.repeats)
        return
    if a.part in ("edits", "all"):
        for d in [a.durability] if a.durability else ["run", "batch"]:
            bench_edits(a.runs or 50, 40 if a.steps == 20 else a.steps, a.repeats, d, a.real_tools, a.prefill)
    if a.part in ("rows", "all"):
        bench_rows()
    if a.part in ("ingest", "all"):
        bench_ingest(a.runs or 2000, a.steps)
        bench_ingest(a.runs or 2000, a.steps, store=False)
        bench_store_ingest(a.runs or 2000, a.steps)


if __name__ == "__main__":
    main()
