"""The bandit's posteriors shared through PostgreSQL: processes that record pulls and rewards on
the same arms at the same time lose no counts (each update is atomic increments in a transaction
that runs alone across processes)."""

from __future__ import annotations

import subprocess
import sys

WORKER = """
import sys
from immunity.interventions.bandit import BanditStore, Pull
from immunity_postgres.store import PostgresStore

dsn, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = PostgresStore(dsn)
bandit = BanditStore(store)
bandit.ensure_tables()
for i in range(n):
    run = f"{tag}-{i}"
    ctx = "domain=coding|pos=early" if i % 2 else "domain=coding|pos=late"
    bandit.record_pulls([Pull(f"iv-{run}", run, "v1" if i % 3 else "v2", "loop", ctx, i)], [])
    bandit.reward_run(run, 1 if i % 4 else 0)
store.close()
"""


def test_concurrent_bandit_updates_lose_no_counts(pg_dsn, spill_dir):
    n, procs = 40, 2
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, pg_dsn, f"w{k}", str(n)], stderr=subprocess.PIPE)
               for k in range(procs)]
    for w in workers:
        _out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err.decode(errors="replace")[-2000:]

    from immunity.interventions.bandit import BanditStore, class_key
    from immunity_postgres.store import PostgresStore

    store = PostgresStore(pg_dsn)
    try:
        bandit = BanditStore(store)
        bandit.load()
        arms = bandit.arms
    finally:
        store.close()
    cls = class_key("loop")
    want_pulls = {"v1": procs * sum(1 for i in range(n) if i % 3), "v2": procs * sum(1 for i in range(n) if not i % 3)}
    for v, pulls in want_pulls.items():
        arm = arms[(cls, v)]
        wins = procs * sum(1 for i in range(n) if (i % 3 != 0) == (v == "v1") and i % 4)
        assert (arm.pulls, arm.successes, arm.failures) == (pulls, wins, pulls - wins)
    ctx_pulls = sum(a.pulls for (c, _v), a in arms.items() if c.startswith("domain="))
    assert ctx_pulls == procs * n


def test_interventions_report_reads_the_shared_arms(pg_dsn, spill_dir):
    import json

    from click.testing import CliRunner
    from immunity.cli import build_cli
    from immunity.interventions.bandit import BanditStore, Pull
    from immunity_postgres.store import PostgresStore

    store = PostgresStore(pg_dsn)
    try:
        bandit = BanditStore(store)
        bandit.ensure_tables()
        bandit.record_pulls([Pull("iv-1", "r1", "v1", "loop", "domain=coding|pos=early", 1)], [])
        bandit.reward_run("r1", 1)
    finally:
        store.close()
    res = CliRunner().invoke(build_cli(), ["interventions", "--store", pg_dsn, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    arms = json.loads(res.output)["arms"]
    assert {(a["variant"], a["level"], a["successes"]) for a in arms} == {("v1", "class", 1), ("v1", "context", 1)}
