"""A missing or corrupt bandit store: the run goes on, the problem is recorded (plugin_errors, the
run's metadata) and shows in ``immunity doctor`` and ``immunity interventions``."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from immunity import hookimpl
from immunity.cli import build_cli
from immunity.errors import PluginError
from immunity.models import Event, InterventionKind, Severity, Verdict
from immunity.runtime import Runtime
from immunity.testing import FakeRun


class Flag:
    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        if event.kind.value == "tool_end" and event.tool == "flag_me":
            return Verdict(ok=False, error_class="wrong_parameters", severity=Severity.WARNING, message="bad x")
        return None


def _corrupt_values(db: Path) -> None:
    con = sqlite3.connect(db)
    con.execute("create table bandit_arms (context text, variant text, error_class text, successes integer, "
                "failures integer, pulls integer, disabled integer, disabled_reason text, updated float, "
                "primary key (context, variant))")
    con.execute("insert into bandit_arms values ('class=wrong_parameters', 'wrong_parameters/direct', "
                "'wrong_parameters', 'lots', -3, 1, 0, null, 0)")
    con.commit()
    con.close()


def _view_instead_of_table(db: Path) -> None:
    con = sqlite3.connect(db)
    con.execute("create view bandit_arms as select 1 as context, 2 as variant, 3 as error_class, 0 as successes, "
                "0 as failures, 0 as pulls, 0 as disabled, null as disabled_reason")
    con.commit()
    con.close()


def _not_a_database(db: Path) -> None:
    db.write_bytes(b"this is not an sqlite database" * 100)


@pytest.mark.parametrize("corrupt", [_corrupt_values, _view_instead_of_table])
def test_corrupt_bandit_tables_fail_open_and_are_recorded(tmp_path: Path, corrupt: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "runs.db"
    Runtime(store=str(db)).close()  # a normal store first
    corrupt(db)
    rt = Runtime(store=str(db), selector="bandit", plugins=[Flag()], seed=1)
    try:
        run = FakeRun(rt)
        d = run.tool("flag_me", {"x": 1})
        assert d.intervention is not None and d.intervention.kind == InterventionKind.HINT  # still intervenes
        run.end("success")  # the update fails open as well
        assert run.run.status == "finished"
        errs = run.run.metadata["plugin_errors"]
        assert errs and errs[0]["plugin"] == "immunity.interventions" and errs[0]["hook"] == "bandit.load"
        # learning went on in memory for this process
        assert sum(a.successes for a in rt.selector.bandit.arms.values() if a.context.startswith("class=")) >= 1
    finally:
        rt.close()
    con = sqlite3.connect(db)
    rows = con.execute("select plugin, hook, error from plugin_errors").fetchall()
    con.close()
    assert any(r[0] == "immunity.interventions" and r[1] == "bandit.load" for r in rows)
    monkeypatch.setenv("IMMUNITY_STORE", str(db))
    out = CliRunner().invoke(build_cli(), ["doctor"], catch_exceptions=False).output
    assert "immunity.interventions in bandit.load" in out
    out = CliRunner().invoke(build_cli(), ["interventions", "--store", str(db)]).output
    assert "bandit.load" in out or "cannot be read" in out


def test_missing_table_is_created_again(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    rt = Runtime(store=str(db), selector="bandit", plugins=[Flag()], seed=1)
    try:
        run = FakeRun(rt)
        run.tool("flag_me", {"x": 1})
        run.end("success")
        rt.store.flush()
        with rt.store._lock:  # someone drops the table between runs
            rt.store.db.execute("drop table bandit_arms")
        run = FakeRun(rt)
        run.tool("flag_me", {"x": 1})
        run.end("failure")
        assert [e for e in rt.store.plugin_errors() if e["plugin"] == "immunity.interventions"] == []
        rows = rt.store.db.execute("select sum(failures) from bandit_arms where context like 'class=%'").fetchone()
        assert rows[0] == 1  # the table is back, with this run's pull rewarded
        assert run.run.status == "finished"
    finally:
        rt.close()


def test_unreadable_store_file_keeps_the_run_going(tmp_path: Path) -> None:
    db = tmp_path / "broken.db"
    _not_a_database(db)
    rt = Runtime(store=str(db), selector="bandit", plugins=[Flag()], seed=1)  # core falls back to memory
    try:
        run = FakeRun(rt)
        assert run.tool("flag_me", {"x": 1}).intervention.kind == InterventionKind.HINT
        run.end("success")
    finally:
        rt.close()
    assert db.read_bytes().startswith(b"this is not")  # left untouched


def test_fail_closed_raises_on_a_corrupt_bandit_store(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    Runtime(store=str(db)).close()
    _corrupt_values(db)
    rt = Runtime(store=str(db), selector="bandit", plugins=[Flag()], fail_closed=True)
    try:
        with pytest.raises(PluginError, match="bandit.load"):
            FakeRun(rt).tool("flag_me", {"x": 1})
    finally:
        rt.close()
