import json

from click.testing import CliRunner
from immunity.cli import build_cli
from immunity.runtime import Runtime
from immunity.testing import FakeRun


def invoke(*args):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def test_plugins_lists_json_with_every_field():
    res = invoke("plugins", "--all")
    assert res.exit_code == 0
    rows = json.loads(res.output)
    assert {"name", "distribution", "version", "entry_point", "hooks", "error"} <= set(rows[0])
    assert any(r["name"] == "immunity.defaults.rules" and "immunity_verify" in r["hooks"] for r in rows)


def test_runs_list_and_show(tmp_path):
    db = str(tmp_path / "r.db")
    rt = Runtime(store=db)
    run = FakeRun(rt, task="make tests pass")
    run.tool("run_tests", {"path": "tests"}, error="1 failed", return_code=1)
    run.tool("run_tests", {"path": "tests"}, error="1 failed", return_code=1)
    run.final("all good")
    run.end("failure")
    rt.close()
    res = invoke("runs", "--store", db)
    assert run.run.run_id in res.output and "failure" in res.output
    header, row = res.output.splitlines()[:2]
    assert header.split() == ["RUN", "FRAMEWORK", "DOMAIN", "OUTCOME", "STATUS", "STEPS", "TASK"]
    assert row.split()[0] == run.run.run_id and row.split()[5] == str(run.run.steps)
    res = invoke("runs", "--store", db, "show", run.run.run_id[:12])
    assert res.exit_code == 0
    out = res.output
    assert "make tests pass" in out and "repeated_tool_error" in out and "premature_done" in out
    assert "> hint" in out and "final answer: all good" in out
    res = CliRunner().invoke(build_cli(), ["runs", "--store", db, "show", "nope"])
    assert res.exit_code != 0 and "no run 'nope'" in res.output


def test_runs_on_missing_store_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(build_cli(), ["runs", "--store", str(tmp_path / "missing.db")])
    assert res.exit_code != 0 and "no store at" in res.output


def test_doctor_reports_adapters_and_plugins(tmp_path, monkeypatch):
    monkeypatch.setenv("IMMUNITY_STORE", str(tmp_path / "none.db"))
    res = CliRunner().invoke(build_cli(), ["doctor"])
    assert "adapters:" in res.output and "domains:" in res.output
    assert res.exit_code in (0, 1)


def test_demo_runs_and_stores(tmp_path):
    db = str(tmp_path / "demo.db")
    res = invoke("demo", "--store", db)
    assert res.exit_code == 0, res.output
    assert "immunity demo on" in res.output and "hint" in res.output
    assert "immunity runs show" in res.output


def test_plugin_commands_are_added_and_a_broken_one_does_not_break_the_cli(monkeypatch):
    import pluggy
    from immunity import plugins as plugins_mod

    hookimpl = pluggy.HookimplMarker("immunity")

    class Cmds:
        @hookimpl
        def immunity_register_commands(self, cli):
            @cli.command(name="hello-test")
            def hello():
                print("hello from a plugin")

    class Broken:
        @hookimpl
        def immunity_register_commands(self, cli):
            raise RuntimeError("cannot add")

    real = plugins_mod.get_plugin_manager

    def fake(**kw):
        return real(extra=[Cmds(), Broken()], **kw)

    monkeypatch.setattr("immunity.cli.get_plugin_manager", fake)
    res = CliRunner().invoke(build_cli(), ["hello-test"])
    assert "hello from a plugin" in res.output


def test_schema_command(tmp_path):
    res = invoke("schema", "Verdict")
    assert json.loads(res.output)["title"] == "Verdict"
    bad = CliRunner().invoke(build_cli(), ["schema", "Nope"])
    assert bad.exit_code != 0 and "unknown model" in bad.output
    res = invoke("schema", "--out-dir", str(tmp_path))
    assert (tmp_path / "Event.schema.json").exists()


def test_read_commands_open_read_only_and_refuse_a_foreign_database(tmp_path):
    import hashlib
    import os
    import sqlite3

    other = tmp_path / "other_app.db"
    conn = sqlite3.connect(other)
    conn.execute("create table customers (id integer primary key, name text)")
    conn.commit()
    conn.close()
    before = hashlib.sha256(other.read_bytes()).hexdigest()
    res = CliRunner().invoke(build_cli(), ["runs", "--store", str(other)])
    assert res.exit_code != 0 and "not an immunity store" in res.output
    assert len(res.output.strip().splitlines()) == 1  # one line, no traceback
    assert hashlib.sha256(other.read_bytes()).hexdigest() == before  # nothing added to it

    db = str(tmp_path / "mine.db")
    rt = Runtime(store=db)
    run = FakeRun(rt, task="listed read-only")
    run.end("success")
    rt.close()
    os.chmod(db, 0o444)  # a store the user may only read
    try:
        size = os.path.getsize(db)
        res = invoke("runs", "--store", db)
        assert res.exit_code == 0 and run.run.run_id in res.output
        res = invoke("runs", "--store", db, "show", run.run.run_id)
        assert res.exit_code == 0 and "listed read-only" in res.output
        assert os.path.getsize(db) == size
    finally:
        os.chmod(db, 0o644)
