import json

from click.testing import CliRunner
from immunity.cli import build_cli
from immunity.store import SQLiteStore


def run_cli(*args):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def test_import_prints_a_summary_with_problems(chat_file, tmp_path):
    db = str(tmp_path / "i.db")
    res = run_cli("import", "--store", db, str(chat_file))
    assert res.exit_code == 0, res.output
    out = res.output
    assert "imported 6 runs, 12 steps" in out and "chat: 6" in out
    assert "outcomes: success 3, failure 2, unknown 1" in out
    assert "unmapped steps:" in out
    assert "problems: 7 (4 records skipped)" in out
    assert f"{chat_file}: line 3: truncated JSON" in out
    assert "line 5 (id=chat-5): message 1: a tool result for tool_call_id 'call_zz'" in out
    store = SQLiteStore(db, background=False)
    assert store.count("runs") == 6
    store.close()


def test_import_json_report_and_domain_option(mini_file, tmp_path):
    db = str(tmp_path / "i.db")
    res = run_cli("import", "--format", "mini-swe-agent", "--domain", "data", "--json", "--store", db,
                  str(mini_file))
    assert res.exit_code == 0
    report = json.loads(res.output)
    assert report["runs"] == 2 and report["steps"] == 8 and report["success"] == 1 and report["failure"] == 1
    assert report["problems"] == [] and report["formats"] == {"mini-swe-agent": 2}
    store = SQLiteStore(db, background=False)
    assert {r.domain for r in store.runs(limit=None)} == {"data"}
    store.close()


def test_import_shows_a_progress_bar_on_request(mini_file, tmp_path):
    runner = CliRunner()
    res = runner.invoke(build_cli(), ["import", "--progress", "--store", str(tmp_path / "i.db"), str(mini_file)])
    assert res.exit_code == 0
    # click draws the bar itself only on a terminal; elsewhere it prints the label once
    assert res.output.startswith("importing")


def test_progress_follows_the_bytes_read(mini_file, chat_file, tmp_path):
    from immunity.importers import import_paths, total_bytes

    seen: list[int] = []
    paths = [str(mini_file), str(chat_file)]
    import_paths(paths, "auto", str(tmp_path / "p.db"), progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == total_bytes(paths) > 5 * 1024 * 1024


def test_import_exits_1_when_nothing_can_be_read(write, tmp_path):
    bad = write("bad.jsonl", b'{"id": "x", "messages": [\n')
    res = CliRunner().invoke(build_cli(), ["import", "--format", "chat", "--store", str(tmp_path / "i.db"), str(bad)])
    assert res.exit_code == 1
    assert "line 1: truncated JSON" in res.output and "nothing could be imported" in res.output
    unknown = write("notes.txt", "hello\n")
    res = CliRunner().invoke(build_cli(), ["import", "--store", str(tmp_path / "i.db"), str(unknown)])
    assert res.exit_code == 1 and "format not recognised" in res.output


def test_import_rejects_an_unknown_format(chat_file, tmp_path):
    res = CliRunner().invoke(build_cli(), ["import", "--format", "xml", "--store", str(tmp_path / "i.db"),
                                           str(chat_file)])
    assert res.exit_code == 2 and "unknown format 'xml'" in res.output


def test_export_needs_an_existing_store(tmp_path):
    res = CliRunner().invoke(build_cli(), ["export", "--store", str(tmp_path / "none.db"), "-o",
                                           str(tmp_path / "o.jsonl")])
    assert res.exit_code != 0 and "no store at" in res.output
