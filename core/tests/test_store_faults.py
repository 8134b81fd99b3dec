"""The store under load and faults: many writers, kill -9, a full disk, unencodable values, a
writer that stops, a full queue. Sizes here are small so the suite stays fast; the full-size
measurements are ``bench/bench_store.py`` (figures in ``docs/store.md``)."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from immunity.models import Run, Step
from immunity.runtime import Runtime
from immunity.store import SQLiteStore

# Worker processes are forked from the test process (everything is imported already), so a
# process starts in milliseconds even on a loaded machine.
FORK = multiprocessing.get_context("fork") if hasattr(os, "fork") else None
needs_fork = pytest.mark.skipif(FORK is None, reason="needs os.fork")


def _runtime_worker(path: str, tag: str, threads: int, runs: int, steps: int, out: Any) -> None:
    rt = Runtime(store=path)

    def work(t: int) -> None:
        for r in range(runs):
            s = rt.start_run(task="load", run_id=f"{tag}-{t}-{r}")
            for i in range(steps):
                s.tool_start("edit_file", {"path": f"f{i}.py", "text": str(i)}, tool_call_id=f"c{i}")
                s.tool_end("edit_file", "ok", tool_call_id=f"c{i}")
            s.end("success")

    ths = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    rt.close()
    out.put((rt.store.path, rt.store.spilled, rt.store.lost))


def _kill_worker(path: str, tag: str, fd: int) -> None:
    store = SQLiteStore(path, durability="run")
    i = 0
    while True:
        run = Run(task="k", run_id=f"{tag}-{i}")
        store.save("runs", run)
        for j in range(5):
            store.save("steps", Step(run_id=run.run_id, index=j, tool="edit", arguments={"j": j}))
        run.ended_at, run.status = time.time(), "finished"
        store.save("runs", run)  # durability="run": on disk when this returns
        os.write(fd, f"{run.run_id}\n".encode())
        i += 1


def _count(path: str, sql: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


@needs_fork
def test_threads_times_processes_into_one_new_file_lose_nothing(tmp_path: Path) -> None:
    # every process opens the same *new* store at the same moment (the migration lock) and then
    # writes from several threads at once (BEGIN IMMEDIATE: busy_timeout applies)
    assert FORK is not None
    path = str(tmp_path / "shared.db")
    procs, threads, runs, steps = 4, 4, 8, 10
    results = FORK.Queue()
    workers = [FORK.Process(target=_runtime_worker, args=(path, f"p{p}", threads, runs, steps, results))
               for p in range(procs)]
    for w in workers:
        w.start()
    got = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=30)
        assert w.exitcode == 0
    for store_path, _spilled, lost in got:
        assert store_path == path, "a runtime fell back to memory"
        assert lost == 0
    n = procs * threads * runs
    assert _count(path, "select count(*) from runs where status = 'finished'") == n
    assert _count(path, "select count(*) from steps") == n * steps
    assert _count(path, "select count(distinct run_id) from events where kind = 'run_end'") == n
    assert not list(tmp_path.glob("shared.db.spill*")), "spilled and never read back"


@needs_fork
def test_kill_9_loop_keeps_the_file_intact_and_every_ended_run(tmp_path: Path) -> None:
    assert FORK is not None
    path = str(tmp_path / "killed.db")
    rng = random.Random(7)
    reported: list[str] = []
    for k in range(10):
        r, w = os.pipe()
        proc = FORK.Process(target=_kill_worker, args=(path, f"k{k}", w))
        proc.start()
        os.close(w)
        with os.fdopen(r, "rb") as fh:
            first = fh.readline()  # it has started writing
            time.sleep(rng.uniform(0.02, 0.2))
            assert proc.pid is not None
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(timeout=30)
            rest = fh.read()
        reported += (first + rest).decode().split()
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
    store = SQLiteStore(path, read_only=True)
    for run_id in reported:  # every run whose end returned is on disk, with its steps
        run = store.get_run(run_id, prefix=False)
        assert run is not None and run.ended_at is not None, run_id
        assert len(store.steps(run_id)) == 5, run_id
    store.close()
    assert len(reported) >= 10


def _fill(store: SQLiteStore, pages: int) -> None:
    with store._lock:
        now = store.db.execute("PRAGMA page_count").fetchone()[0]
        store.db.execute(f"PRAGMA max_page_count = {now + pages}")


def test_disk_full_then_freed_everything_lands(tmp_path: Path) -> None:
    path = str(tmp_path / "full.db")
    store = SQLiteStore(path, durability="batch")
    _fill(store, 4)  # SQLITE_FULL after a few pages, like a disk that fills up
    run = Run(task="full", run_id="full-1")
    store.save("runs", run)
    for i in range(1500):
        store.save("steps", Step(run_id=run.run_id, index=i, tool="edit", text="x" * 400))
    assert store.flush(timeout=2) is False  # cannot land yet; the writer keeps it and retries
    assert store._thread is not None and store._thread.is_alive()
    with store._lock:
        store.db.execute("PRAGMA max_page_count = 1073741823")  # space freed
    assert store.flush(timeout=20) is True
    assert store.count("steps") == 1500
    store.close()


def test_disk_full_at_close_does_not_raise_and_the_next_open_reads_it_back(tmp_path: Path) -> None:
    path = str(tmp_path / "full.db")
    store = SQLiteStore(path, durability="batch", busy_timeout_ms=100)
    _fill(store, 2)
    for i in range(800):
        store.save("steps", Step(run_id="r-full", index=i, tool="edit", text="y" * 400))
    store.close()  # never raises into the caller
    assert list(tmp_path.glob("full.db.spill.*.jsonl"))
    again = SQLiteStore(path)  # max_page_count is per connection: this one has room
    assert again.count("steps") == 800
    assert not list(tmp_path.glob("full.db.spill.*"))
    again.close()


def test_unencodable_values_are_stored_or_reported_and_the_writer_lives(tmp_path: Path) -> None:
    path = str(tmp_path / "odd.db")
    store = SQLiteStore(path)
    cut = "emoji cut in half: \ud83d"
    store.save("runs", Run(task=cut, run_id="odd-1"))
    store.save("steps", Step(run_id="odd-1", index=0, tool="calc", arguments={"n": 2**70}, return_code=2**70))
    store.save("steps", Step(run_id="odd-1", index=1, tool="echo", text=cut, result=cut))
    store.save("plugin_thing", {"run_id": "odd-1", "value": 2**70, "text": cut})
    store.save("runs", Run(task="after", run_id="odd-2"))
    store.flush()
    assert store._thread is not None and store._thread.is_alive()
    assert store.get_run("odd-2") is not None  # later records still land
    run = store.get_run("odd-1")
    assert run is not None and run.task is not None and run.task.startswith("emoji cut in half")
    steps = store.steps("odd-1")
    assert [s.index for s in steps] == [0, 1]
    assert steps[0].return_code is None or str(2**70) in str(steps[0].return_code) or steps[0].data
    assert store.count("plugin_thing") == 1
    store.close()


def test_a_record_that_cannot_become_a_row_is_reported_on_its_run() -> None:
    store = SQLiteStore(":memory:")
    store.save("steps", {"run_id": "bad-1", "idx": 0, "arguments": object()})  # not a column type
    store.save("runs", Run(task="after", run_id="bad-2"))
    store.flush()
    assert store.get_run("bad-2") is not None
    errs = store.plugin_errors("bad-1")
    assert errs and errs[0]["plugin"] == "immunity.store" or store.steps("bad-1")
    store.close()


def test_a_writer_thread_that_stopped_is_restarted() -> None:
    store = SQLiteStore(":memory:")
    assert store._thread is not None
    store._queue.put(None)  # the thread ends as if it had died
    store._thread.join(timeout=5)
    assert not store._thread.is_alive()
    store.save("runs", Run(task="after the restart", run_id="w-1"))
    assert store._thread.is_alive()
    assert store.get_run("w-1") is not None
    store.close()


def test_a_full_queue_spills_in_order_and_reads_back(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    store = SQLiteStore(path, max_queue=5, block_ms=1, busy_timeout_ms=50, durability="batch")
    blocker = sqlite3.connect(path)
    blocker.execute("begin exclusive")  # another process holds the file: the writer cannot write
    run = Run(task="queued", run_id="q-1")
    store.save("runs", run)
    for i in range(300):
        store.save("steps", Step(run_id="q-1", index=i, tool="edit"))
    run.status = "finished"
    store.save("runs", run)  # the newest version of the run must win after the read-back
    assert store.spilled > 0
    assert list(tmp_path.glob("q.db.spill.*.jsonl"))
    blocker.rollback()
    blocker.close()
    assert store.flush(timeout=20)
    assert store.count("steps") == 300
    got = store.get_run("q-1")
    assert got is not None and got.status == "finished"
    assert store.lost == 0
    store.close()
    assert not list(tmp_path.glob("q.db.spill.*"))


def test_durability_run_commits_the_end_before_end_returns(tmp_path: Path) -> None:
    path = str(tmp_path / "d.db")
    rt = Runtime(store=path)
    s = rt.start_run(task="t")
    s.tool_start("edit_file", {"path": "a.py"}, tool_call_id="c1")
    s.tool_end("edit_file", "ok", tool_call_id="c1")
    s.end("success")
    # read from another connection before the runtime flushes or closes anything
    conn = sqlite3.connect(path)
    status, = conn.execute("select status from runs where run_id = ?", [s.run.run_id]).fetchone()
    assert status == "finished"
    assert conn.execute("select count(*) from steps where run_id = ?", [s.run.run_id]).fetchone()[0] == 1
    conn.close()
    rt.close()


def test_read_only_store_reads_and_refuses_a_foreign_database(tmp_path: Path) -> None:
    path = str(tmp_path / "mine.db")
    store = SQLiteStore(path)
    store.save("runs", Run(task="t", run_id="ro-1"))
    store.close()
    ro = SQLiteStore(path, read_only=True)
    assert ro.get_run("ro-1") is not None
    with pytest.raises(Exception, match="read-only"):
        ro.save("runs", Run(task="x"))
    ro.close()
    other = str(tmp_path / "other_app.db")
    conn = sqlite3.connect(other)
    conn.execute("create table customers (id integer primary key)")
    conn.commit()
    conn.close()
    with pytest.raises(Exception, match="not an immunity store"):
        SQLiteStore(other, read_only=True)
    conn = sqlite3.connect(other)
    names = {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}
    conn.close()
    assert names == {"customers"}  # nothing added to the foreign database


def test_hot_path_lookups_never_wait_for_the_writer(tmp_path: Path) -> None:
    # a writer that is stuck (the file locked by another process) must not slow a side-effecting
    # tool call: idempotency keys are answered from memory
    path = str(tmp_path / "hot.db")
    rt = Runtime(store=path)
    s = rt.start_run(task="t")
    rt.store.busy_timeout_s = 5.0
    blocker = sqlite3.connect(path)
    blocker.execute("begin exclusive")
    try:
        t0 = time.perf_counter()
        for i in range(50):
            s.tool_start("edit_file", {"path": f"f{i}.py"}, tool_call_id=f"c{i}")
            s.tool_end("edit_file", "ok", tool_call_id=f"c{i}")
        elapsed = time.perf_counter() - t0
    finally:
        blocker.rollback()
        blocker.close()
    assert elapsed < 2.0, elapsed
    d = s.tool_start("edit_file", {"path": "f1.py"}, tool_call_id="c1")  # the same call again
    assert d.cached_result == "ok"
    s.end("success")
    rt.close()
    # a resume in a new runtime still knows the calls (read once from the store)
    rt2 = Runtime(store=path)
    s2 = rt2.resume_run(s.run.run_id)
    assert s2 is not None
    assert s2.tool_start("edit_file", {"path": "f2.py"}, tool_call_id="c2").cached_result == "ok"
    rt2.close()


def test_concurrent_threads_in_one_process_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    store = SQLiteStore(path, max_queue=50, block_ms=2)

    def work(t: int) -> None:
        for r in range(20):
            store.save("runs", Run(task="t", run_id=f"t{t}-{r}"))
            for i in range(10):
                store.save("steps", Step(run_id=f"t{t}-{r}", index=i, tool="x"))

    ths = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    store.close()
    assert _count(path, "select count(*) from runs") == 120
    assert _count(path, "select count(*) from steps") == 1200
    assert not list(tmp_path.glob("t.db.spill*"))
