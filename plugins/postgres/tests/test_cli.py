"""The CLI on a PostgreSQL store: import into it, list, export, learn a pack and score from it."""

from __future__ import annotations

import json
import random
from typing import Any

from click.testing import CliRunner
from immunity.cli import build_cli
from immunity.models import Run, Step
from immunity.store import SQLiteStore


def invoke(*args: str, ok: bool = True) -> Any:
    res = CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def _population(n_tasks: int = 12, trials: int = 4) -> list[tuple[Run, list[Step]]]:
    """Failed runs tend to retry a failing test; successful ones pass after an edit (not always)."""
    rng = random.Random(3)
    out = []
    for t in range(n_tasks):
        for k in range(trials):
            fail = (k % 2 == 0) if t % 3 else (k != 3)
            run = Run(run_id=f"run-{t}-{k}", task=f"Fix check {t}", task_id=f"task-{t}", domain="coding",
                      outcome="failure" if fail else "success", framework="synthetic", started_at=1000.0 + t * 10 + k)
            steps = [Step(tool="search_code", arguments={"q": f"check {t}"}, result="m.py: def check"),
                     Step(tool="edit_file", arguments={"path": "m.py", "change": str(k)}, result="edited")]
            if fail if rng.random() < 0.85 else not fail:
                steps += [Step(tool="run_tests", arguments={"t": t}, error="AssertionError", return_code=1)
                          for _ in range(rng.randint(2, 4))]
            else:
                steps.append(Step(tool="run_tests", arguments={"t": t}, result="3 passed", return_code=0))
            steps.append(Step(text="done", data={"final": True}))
            for i, s in enumerate(steps):
                s.index, s.run_id = i, run.run_id
            out.append((run, steps))
    return out


def test_import_runs_export_learn_and_score_on_postgres(pg_dsn, spill_dir, tmp_path):
    lite = str(tmp_path / "src.db")
    src = SQLiteStore(lite, background=False)
    for run, steps in _population():
        src.write_run(run, steps)
    src.close()
    dump = str(tmp_path / "runs.jsonl")
    invoke("export", "--store", lite, "-o", dump)

    res = invoke("import", "--format", "immunity", "--store", pg_dsn, dump)
    assert "imported 48 runs" in res.output and "store: postgresql://" in res.output
    res = invoke("runs", "--store", pg_dsn, "--limit", "100")
    assert len(res.output.strip().splitlines()) == 1 + 48 and "run-11-3" in res.output
    res = invoke("runs", "--store", pg_dsn, "show", "run-5-1")
    assert "Fix check 5" in res.output

    back = str(tmp_path / "back.jsonl")
    invoke("export", "--store", pg_dsn, "-o", back)
    a = [json.loads(line) for line in open(dump, encoding="utf-8")]
    b = [json.loads(line) for line in open(back, encoding="utf-8")]
    assert a == b  # SQLite -> PostgreSQL -> the same records, field by field

    pack = str(tmp_path / "pack.json")
    res = invoke("learn", "--store", pg_dsn, "--folds", "3", "--out", pack)
    assert "threshold" in res.output
    res = invoke("score", "--pack", pack, "--store", pg_dsn)
    assert res.exit_code == 0


def test_a_wrong_dsn_is_one_clear_error(pg_cluster):
    bad = pg_cluster.dsn.rsplit("/", 1)[0] + "/no_such_db"
    res = invoke("runs", "--store", bad, ok=False)
    assert res.exit_code == 1
    assert "cannot open the PostgreSQL store" in res.output and "no_such_db" in res.output
    assert "Traceback" not in res.output
