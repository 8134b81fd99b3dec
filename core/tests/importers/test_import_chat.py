import json
import sqlite3
from pathlib import Path

import pytest
from immunity.importers import ImportedRun, ImportProblem, import_paths, iter_runs
from immunity.importers.chat import ChatRecord, chat_schema, schema_path
from immunity.models import ActionType, Outcome
from immunity.store import SQLiteStore


def split(items):
    runs = [i for i in items if isinstance(i, ImportedRun)]
    problems = [i for i in items if isinstance(i, ImportProblem)]
    return runs, problems


def test_chat_steps_outcomes_and_mapping(chat_file, runtime):
    runs, problems = split(list(iter_runs([str(chat_file)], "chat", runtime=runtime)))
    by_id = {r.run.run_id: r for r in runs}
    assert sorted(by_id) == ["chat-1", "chat-2", "chat-4", "chat-5", "chat-6", "chat-7"]

    one = by_id["chat-1"]
    run = one.run
    assert (run.outcome, run.failure_step, run.task_id, run.domain) == (Outcome.FAILURE, 3, "cancel-trip",
                                                                         "test-support")
    assert run.task == "Please cancel my reservation ABC123. I am user mia_li_3668."
    assert run.source == "chat" and run.framework == "chat"
    assert run.metadata["source"]["record"] == "line 1 (id=chat-1)"
    assert run.metadata["system_prompt"].startswith("You are an airline agent")
    # one step per tool call, in call order, each with its own result; one per text message
    assert [(s.index, s.action_type, s.tool) for s in one.steps] == [
        (0, ActionType.SEARCH, "get_user_details"),
        (1, ActionType.SEARCH, "get_reservation_details"),
        (2, ActionType.RESPOND, None),
        (3, ActionType.EDIT, "cancel_reservation"),
        (4, ActionType.RESPOND, None),
    ]
    s0, s1, s2, s3, _ = one.steps
    assert s0.arguments == {"user_id": "mia_li_3668"} and "gold" in s0.result
    assert s1.result.startswith('{"reservation_id": "ABC123"')
    assert s0.data["thought"] == "Let me look up your profile and reservation." and "thought" not in s1.data
    assert s0.data["tool_call_id"] == "call_1" and s0.data["mapped_by"] == "test-support"
    assert s2.text.startswith("Your economy booking") and s2.data["from_model"] is True
    assert s3.arguments == {"reservation_id": "ABC123"} and s3.side_effect and s3.data["destructive"]
    assert s3.failed and s3.error.startswith("Error: economy reservations")
    assert all(a.ts < b.ts for a, b in zip(one.steps, one.steps[1:], strict=False))

    multi = by_id["chat-2"]
    assert [(s.agent, s.tool, s.action_type) for s in multi.steps] == [
        ("planner", None, ActionType.RESPOND), ("coder", "bash", ActionType.VERIFY),
        ("reviewer", None, ActionType.RESPOND)]
    assert multi.steps[1].return_code == 1 and multi.steps[1].error == "1 failed, 3 passed"


def test_chat_bad_input_is_reported_by_record_and_the_rest_imported(chat_file, runtime):
    runs, problems = split(list(iter_runs([str(chat_file)], "chat", runtime=runtime)))
    skipped = {p.record: p.message for p in problems if p.skipped}
    warned = {p.record: p.message for p in problems if not p.skipped}
    assert skipped["line 3"].startswith("truncated JSON")
    assert "expected a JSON object" in skipped["line 8"]
    assert skipped["line 9"] == "no 'id'"
    assert "outcome" in skipped["line 10 (id=chat-10)"]
    assert "unknown role 'critic'" in warned["line 4 (id=chat-4)"]
    assert "answers no earlier call" in warned["line 5 (id=chat-5)"] and "call_zz" in warned["line 5 (id=chat-5)"]
    assert "not UTF-8" in warned["line 7 (id=chat-7)"] and "byte" in warned["line 7 (id=chat-7)"]
    by_id = {r.run.run_id: r for r in runs}
    # the unknown-role message and the orphan result are left out; the rest of each run is kept
    assert [s.text for s in by_id["chat-4"].steps] == ["Here is the summary."]
    assert by_id["chat-4"].run.metadata["import_warnings"][0].startswith("message 1: unknown role")
    assert [s.text for s in by_id["chat-5"].steps] == ["I could not find it."]
    assert by_id["chat-7"].run.task == "caf\ufffd \ufffd"
    # a 5 MB tool output is bounded like a live tool result, with its size kept
    big = by_id["chat-6"].steps[0]
    assert len(big.result) < 4100 and big.result.endswith(f"... [{5 * 1024 * 1024 - 4000} more characters]")
    assert big.data["result_chars"] == 5 * 1024 * 1024


def test_import_paths_writes_each_run_whole(chat_file, runtime, tmp_path):
    db = str(tmp_path / "imp.db")
    report = import_paths([str(chat_file)], "chat", db, runtime=runtime)
    assert (report.runs, report.success, report.failure, report.unknown) == (6, 3, 2, 1)
    assert report.steps == 5 + 3 + 1 + 1 + 1 + 1
    assert report.skipped == 4 and len(report.problems) == 7
    store = SQLiteStore(db, background=False)
    try:
        assert {r.run_id for r in store.runs(limit=None)} == {"chat-1", "chat-2", "chat-4", "chat-5", "chat-6",
                                                             "chat-7"}
        steps = store.steps("chat-1")
        assert [s.tool for s in steps] == ["get_user_details", "get_reservation_details", None,
                                           "cancel_reservation", None]
        assert store.get_run("chat-1").failure_step == 3
        big = store.steps("chat-6")[0]
        assert "_raw_result" not in big.data and big.data["result_chars"] == 5 * 1024 * 1024
    finally:
        store.close()
    # importing the same file again replaces the runs instead of duplicating them
    import_paths([str(chat_file)], "chat", db, runtime=runtime)
    store = SQLiteStore(db, background=False)
    try:
        assert store.count("runs") == 6 and store.count("steps") == report.steps
    finally:
        store.close()


def test_a_run_that_fails_to_write_leaves_nothing_behind(chat_file, runtime, tmp_path):
    db = str(tmp_path / "imp.db")
    store = SQLiteStore(db, background=False)
    # make SQLite itself fail half-way through chat-1's steps (as a full disk would)
    store.db.execute("CREATE TRIGGER fail_half BEFORE INSERT ON steps WHEN NEW.run_id = 'chat-1' AND NEW.idx = 3 "
                     "BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END")
    report = import_paths([str(chat_file)], "chat", store, runtime=runtime)
    assert report.runs == 5
    failed = [p for p in report.problems if "could not be written" in p.message]
    assert len(failed) == 1 and failed[0].record == "line 1 (id=chat-1)" and "simulated" in failed[0].message
    assert store.get_run("chat-1") is None
    assert store.steps("chat-1") == []
    assert len(store.steps("chat-2")) == 3
    store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from steps where run_id = 'chat-1'").fetchone()[0] == 0


def test_committed_schema_is_the_generated_one():
    path = Path(__file__).resolve().parents[3] / "docs" / "formats" / "chat.schema.json"
    assert Path(schema_path()) == path or not Path(schema_path()).exists()  # installed, not a checkout
    committed = json.loads(path.read_text(encoding="utf-8"))
    assert committed == chat_schema(), "run: python -c 'from immunity.importers.chat import write_schema, " \
                                       "schema_path; write_schema(schema_path())'"


def test_schema_accepts_good_records_and_rejects_bad_ones(chat_file):
    jsonschema = pytest.importorskip("jsonschema")
    schema = chat_schema()
    lines = chat_file.read_bytes().split(b"\n")
    good = json.loads(lines[0])
    jsonschema.validate(good, schema)
    ChatRecord.model_validate(good)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(lines[9]), schema)  # outcome "maybe"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(lines[3]), schema)  # role "critic"


def test_results_without_ids_match_by_name_and_legacy_function_calls():
    from immunity.importers.chat import chat_steps

    parsed = chat_steps([
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"type": "function", "function": {"name": "get_time", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "name": "get_time", "content": "14:00"},
        {"role": "tool", "name": "get_weather", "content": "Sunny"},
        {"role": "assistant", "content": None, "function_call": {"name": "lookup", "arguments": "{not json"}},
        {"role": "function", "content": "found it"},
        {"role": "assistant", "content": [{"type": "text", "text": "Paris: sunny at 14:00."}]},
    ])
    assert [(s.tool, s.arguments, s.result) for s in parsed.steps] == [
        ("get_weather", {"city": "Paris"}, "Sunny"),
        ("get_time", {"city": "Paris"}, "14:00"),
        ("lookup", {"input": "{not json"}, "found it"),
        (None, None, None),
    ]
    assert parsed.steps[3].text == "Paris: sunny at 14:00."
    assert parsed.task == "weather in Paris and Rome?"
    assert parsed.warnings == ["message 4: tool call 0 (lookup): arguments are not valid JSON "
                               "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); "
                               "kept as text"]
