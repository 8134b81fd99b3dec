"""Imports never overwrite silently, and one bad record (or file) never stops the rest."""

from __future__ import annotations

import gzip
import json
import os
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from immunity.cli import build_cli
from immunity.importers import import_paths
from immunity.importers.immunity_format import export_runs
from immunity.runtime import Runtime
from immunity.store import SQLiteStore
from immunity.testing import FakeRun

from .conftest import tau_records


def chat(rid: str, n: int = 2) -> dict:
    msgs = [{"role": "user", "content": "do the thing"}]
    for i in range(n):
        msgs.append({"role": "assistant", "content": f"step {i}"})
    return {"id": rid, "outcome": "success", "messages": msgs}


def live_run(db: Path, steps: int = 3) -> str:
    rt = Runtime(store=str(db))
    run = FakeRun(rt, task="live")
    for i in range(steps):
        run.tool("search", {"q": i}, result=f"r{i}")
    run.end("success")
    rt.close()
    return run.run.run_id


def steps_of(db: Path, rid: str) -> int:
    store = SQLiteStore(str(db), background=False)
    try:
        return len(store.steps(rid))
    finally:
        store.close()


def test_a_record_with_a_live_runs_id_is_a_conflict_not_an_overwrite(tmp_path):
    db = tmp_path / "s.db"
    rid = live_run(db)
    src = tmp_path / "chat.jsonl"
    src.write_text(json.dumps(chat(rid, 1)) + "\n" + json.dumps(chat("other")) + "\n")
    report = import_paths([str(src)], "chat", str(db))
    assert (report.runs, report.conflicts) == (1, 1) and steps_of(db, rid) == 3
    assert "conflicts: 1" in report.summary() and "line 1" in str(report.problems[0])

    report = import_paths([str(src)], "chat", str(db), on_conflict="rename")
    assert report.runs == 2 and steps_of(db, rid) == 3  # both under new ids; nothing stored was touched
    renamed = [p for p in report.problems if "imported as" in p.message]
    assert len(renamed) == 2 and steps_of(db, renamed[0].message.split("'")[-2]) == 1

    res = CliRunner().invoke(build_cli(), ["import", "--format", "chat", "--store", str(db), "--on-conflict",
                                           "replace", str(src)])
    assert res.exit_code == 0, res.output
    assert steps_of(db, rid) == 1  # asked for explicitly

    res = CliRunner().invoke(build_cli(), ["import", "--store", str(db), "--on-conflict", "merge", str(src)])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_same_basename_in_two_folders_are_two_runs(tmp_path):
    db = tmp_path / "s.db"
    for model in ("modelA", "modelB"):
        (tmp_path / model).mkdir()
        (tmp_path / model / "results.json").write_text(json.dumps(tau_records()))
    report = import_paths([str(tmp_path / "modelA"), str(tmp_path / "modelB")], "auto", str(db))
    assert report.runs == 2 * len(tau_records()) and report.conflicts == 0


def test_reimporting_an_old_export_keeps_the_run_that_went_on(tmp_path):
    db = tmp_path / "s.db"
    rt = Runtime(store=str(db))
    run = FakeRun(rt, task="long")
    run.tool("search", {"q": 0}, result="r")
    rt.flush()
    old = tmp_path / "old.jsonl"
    export_runs(rt.store, str(old))
    for i in range(5):
        run.tool("search", {"q": i + 1}, result="r")
    run.end("success")
    rt.close()
    assert steps_of(db, run.run.run_id) == 6
    res = CliRunner().invoke(build_cli(), ["import", "--store", str(db), str(old)])
    assert res.exit_code == 0 and "conflicts: 1" in res.output, res.output
    assert steps_of(db, run.run.run_id) == 6


def test_one_bad_record_is_reported_with_its_line_and_the_rest_continue(tmp_path):
    db = tmp_path / "s.db"
    src = tmp_path / "chat.jsonl"
    deep = "[" * 10_000 + "]" * 10_000
    src.write_text("\n".join([json.dumps(chat("a")), '{"id": "deep", "messages": ' + deep + "}",
                              json.dumps({"id": "b", "messages": [{"role": "user", "content": {"x": [1]}}]}),
                              json.dumps(chat("c"))]) + "\n")
    report = import_paths([str(src)], "chat", str(db))
    assert report.runs >= 2 and any(p.record.startswith("line 2") for p in report.problems)

    rt = Runtime(store=str(db))
    FakeRun(rt, task="t").end("success")
    rt.close()
    exp = tmp_path / "exp.jsonl"
    store = SQLiteStore(str(db), background=False)
    export_runs(store, str(exp))
    store.close()
    good = exp.read_text().splitlines()
    bad_type = json.loads(good[0])
    bad_type["run"] = ["not", "an", "object"]
    wrong_steps = json.loads(good[0])
    wrong_steps["steps"] = "nope"
    exp.write_text("\n".join([json.dumps(bad_type), json.dumps(wrong_steps), *good]) + "\n")
    db2 = tmp_path / "s2.db"
    report = import_paths([str(exp)], "immunity", str(db2))
    assert report.runs == len(good)
    assert [p.record.split(" ")[0:2] for p in report.problems if p.skipped] == [["line", "1"], ["line", "2"]]


def test_a_cut_gzip_list_keeps_its_complete_records(tmp_path):
    data = gzip.compress(json.dumps(tau_records()).encode())
    src = tmp_path / "cut.json.gz"
    src.write_bytes(data[: int(len(data) * 0.8)])
    report = import_paths([str(src)], "tau-bench", str(tmp_path / "s.db"))
    assert 1 <= report.runs < len(tau_records())
    assert any("cut" in p.message for p in report.problems)
    lines = tmp_path / "cut.jsonl.gz"
    lines.write_bytes(gzip.compress(("\n".join(json.dumps(r) for r in tau_records()) + "\n").encode())[:-30])
    report = import_paths([str(lines)], "tau-bench", str(tmp_path / "s2.db"))
    assert report.runs >= 1 and any("cut" in p.message for p in report.problems)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_in_an_import_folder_does_not_hang(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "runs.jsonl").write_text(json.dumps(chat("a")) + "\n")
    os.mkfifo(folder / "pipe.jsonl")
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(r=import_paths([str(folder)], "auto", str(tmp_path / "s.db"))),
                         daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "the import blocked on a FIFO"
    assert out["r"].runs == 1
    report = import_paths([str(folder / "pipe.jsonl")], "chat", str(tmp_path / "s.db"))
    assert report.runs == 0 and "not a regular file" in report.problems[0].message
