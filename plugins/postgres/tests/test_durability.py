"""Many writers, a server that goes away and comes back, a process that closes while it is down:
every run and step lands. Writers are separate processes (``immunity_postgres.loadgen``) driving
the real runtime; the counts are read back from PostgreSQL. (``bench/bench_store.py`` runs the
full-size versions: 8 processes x 500 runs, a 10 s outage.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from immunity_postgres.loadgen import count_landed


def _writer(dsn: str, tag: str, tmp_path, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    manifest = str(tmp_path / f"{tag}.json")
    proc = subprocess.Popen([sys.executable, "-m", "immunity_postgres.loadgen", dsn, "--tag", tag,
                             "--manifest", manifest, *args], stderr=subprocess.PIPE)
    return proc, manifest


def _started(dsn: str, tag: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Wait until the writer's first runs are in the database (it has imported and connected)."""
    import psycopg

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        with psycopg.connect(dsn) as conn:
            ready = conn.execute("select to_regclass('runs') is not null").fetchone()[0]
            if ready and conn.execute("select count(*) from runs where agent = %s", [tag]).fetchone()[0] >= 5:
                return
        time.sleep(0.1)
    raise AssertionError(f"writer {tag} did not start writing")


def _wait(proc: subprocess.Popen[bytes], manifest: str, timeout: float = 60) -> dict:
    _out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    with open(manifest, encoding="utf-8") as fh:
        return json.load(fh)


def test_three_processes_lose_nothing(pg_dsn, spill_dir, tmp_path):
    procs = [_writer(pg_dsn, f"p{i}", tmp_path, "--runs", "40", "--steps", "3") for i in range(3)]
    manifests = [_wait(p, m) for p, m in procs]
    got = count_landed(pg_dsn, manifests)
    assert got == {"runs": 120, "landed": 120, "ended": 120, "lost_runs": 0, "steps": 360, "lost_steps": 0}


def test_server_restart_during_writes_loses_nothing(pg_cluster, pg_dsn, spill_dir, tmp_path):
    # a small in-memory bound, so the outage also goes through the spill file
    # long enough (150 runs, >= 4.5 s) that the restart falls inside the writes on a fast machine too
    proc, manifest = _writer(pg_dsn, "restart", tmp_path, "--runs", "150", "--steps", "3", "--pause", "0.03",
                             "--queue-max", "100")
    _started(pg_dsn, "restart", proc)
    pg_cluster.stop("fast")
    time.sleep(2.5)
    pg_cluster.start()
    result = _wait(proc, manifest)
    assert result["spilled"] > 0 and result["replayed"] == result["spilled"]
    got = count_landed(pg_dsn, [result])
    assert got["lost_runs"] == 0 and got["lost_steps"] == 0 and got["ended"] == 150


def test_closing_while_the_server_is_down_spills_and_the_next_store_replays(pg_cluster, pg_dsn, spill_dir,
                                                                           tmp_path):
    from immunity_postgres.store import PostgresStore

    proc, manifest = _writer(pg_dsn, "down", tmp_path, "--runs", "150", "--steps", "2", "--pause", "0.02",
                             "--close-timeout", "0.5")
    _started(pg_dsn, "down", proc)
    pg_cluster.stop("fast")
    try:
        result = _wait(proc, manifest)  # it finishes its runs and exits with the server still down
    finally:
        pg_cluster.start()
    store = PostgresStore(pg_dsn)  # finds the spill file of a process that is gone and replays it
    try:
        store.flush()
        deadline = time.time() + 20
        while store.replayed == 0 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.2)
        got = count_landed(pg_dsn, [result])
    finally:
        store.close()
    assert store.replayed > 0
    assert got["lost_runs"] == 0 and got["lost_steps"] == 0 and got["ended"] == 150


def test_a_wrong_dsn_is_one_error_at_start_then_the_agent_goes_on(pg_cluster, caplog):
    import logging

    from immunity.runtime import Runtime
    from immunity.testing import FakeRun

    bad = pg_cluster.dsn.rsplit("/", 1)[0] + "/no_such_db"
    with caplog.at_level(logging.WARNING, logger="immunity"):
        rt = Runtime(store=bad)
        run = FakeRun(rt)
        run.tool("search", {"q": "x"}, result="found")
        run.session.end("success")
        rt.close()
    opened = [r for r in caplog.records if "could not open store" in r.getMessage()]
    assert len(opened) == 1 and "no_such_db" in opened[0].getMessage()
    assert run.run.outcome.value == "success"


def test_a_process_that_starts_while_the_server_is_down_keeps_its_runs(pg_cluster, pg_dsn, spill_dir, tmp_path):
    import threading

    from immunity_postgres.store import PostgresStore

    PostgresStore(pg_dsn).close()  # the tables exist; the server then goes away
    pg_cluster.stop("fast")
    lines: list[str] = []
    try:
        proc, manifest = _writer(pg_dsn, "late", tmp_path, "--runs", "40", "--steps", "2", "--pause", "0.05")
        reader = threading.Thread(target=lambda: lines.extend(x.decode(errors="replace") for x in proc.stderr),
                                  daemon=True)
        reader.start()
        deadline = time.time() + 60
        while not any("cannot be reached" in x for x in lines) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert any("cannot be reached" in x for x in lines), "".join(lines)[-2000:]  # it started while down
        time.sleep(1.0)
    finally:
        pg_cluster.start()
    assert proc.wait(timeout=60) == 0, "".join(lines)[-2000:]
    with open(manifest, encoding="utf-8") as fh:
        result = json.load(fh)
    got = count_landed(pg_dsn, [result])
    assert got["lost_runs"] == 0 and got["lost_steps"] == 0 and got["ended"] == 40
