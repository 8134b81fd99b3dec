import sqlite3
import subprocess
import sys
import time

import pytest
from immunity.errors import StoreError
from immunity.models import ActionType, Checkpoint, Event, Intervention, Run, Step, Verdict
from immunity.runtime import Runtime
from immunity.store import SQLiteStore, migrations
from immunity.testing import FakeRun


def test_round_trip_of_every_table(tmp_path):
    path = str(tmp_path / "s.db")
    store = SQLiteStore(path)
    run = Run(task="t", domain="coding", framework="fake", metadata={"k": [1, 2]})
    store.save("runs", run)
    store.save("events", Event(kind="tool_start", run_id=run.run_id, tool="bash", arguments={"command": "ls"}))
    store.save("steps", Step(run_id=run.run_id, index=0, action_type="SEARCH", tool="bash",
                             arguments={"command": "ls"}, result="a b", data={"x": 1, "_private": 2}))
    store.save("verdicts", Verdict(ok=False, run_id=run.run_id, step=0, error_class="loop", evidence={"n": 3}))
    store.save("interventions", Intervention(run_id=run.run_id, text="hint"))
    store.save("checkpoints", Checkpoint(run_id=run.run_id, step=0, verified=True, ref={"checkpoint_id": "abc"}))
    store.close()

    again = SQLiteStore(path)
    assert again.db.journal_mode == "wal"
    got = again.get_run(run.run_id)
    assert got.task == "t" and got.metadata == {"k": [1, 2]}
    assert again.get_run(run.run_id[:10]).run_id == run.run_id  # unique prefix
    (ev,) = again.events(run.run_id)
    assert ev.tool == "bash" and ev.arguments == {"command": "ls"}
    (st,) = again.steps(run.run_id)
    assert st.action_type is ActionType.SEARCH and st.data == {"x": 1}  # private signal keys are not stored
    assert again.verdicts(run.run_id)[0].evidence == {"n": 3}
    assert again.interventions(run.run_id)[0].text == "hint"
    assert again.checkpoints(run.run_id)[0].ref == {"checkpoint_id": "abc"}
    again.close()


def test_migrations_apply_once(tmp_path):
    path = str(tmp_path / "m.db")
    SQLiteStore(path).close()
    store = SQLiteStore(path)
    assert [m.name for m in migrations.applied(store.db)] == [m.name for m in migrations._migrations]
    store.close()


def test_writes_do_not_block_and_flush_on_close(tmp_path):
    path = str(tmp_path / "w.db")
    rt = Runtime(store=path)
    run = FakeRun(rt)
    for i in range(300):
        run.tool("search", {"q": i}, result=f"r{i}")
    run.end("success")
    rt.close()
    store = SQLiteStore(path)
    assert len(store.steps(run.run.run_id)) == 300
    assert store.get_run(run.run.run_id).outcome.value == "success"
    store.close()


def test_nothing_lost_at_normal_exit_without_close(tmp_path):
    path = tmp_path / "exit.db"
    code = f"""
from immunity.runtime import Runtime
from immunity.testing import FakeRun
rt = Runtime(store={str(path)!r})
run = FakeRun(rt, run_id="exit-run")
for i in range(200):
    run.tool("search", {{"q": i}}, result="x" * 1000)
# no close(): the interpreter exits normally
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    store = SQLiteStore(str(path))
    assert len(store.steps("exit-run")) == 200
    store.close()


def test_corrupt_file_is_reported_left_untouched_and_agent_continues(tmp_path, caplog):
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="corrupt.db"):
        SQLiteStore(str(path))
    with caplog.at_level("WARNING"):
        rt = Runtime(store=str(path))
    assert any("corrupt.db" in r.getMessage() for r in caplog.records)
    run = FakeRun(rt)
    assert run.tool("search", {"q": 1}).ok  # the agent goes on, in memory
    rt.close()
    assert path.read_bytes() == b"this is not a database" * 100


def test_locked_database_retries_without_losing_records(tmp_path):
    path = str(tmp_path / "locked.db")
    store = SQLiteStore(path, busy_timeout_ms=50)
    blocker = sqlite3.connect(path)
    blocker.execute("begin exclusive")
    run = Run(task="locked")
    store.save("runs", run)
    time.sleep(0.3)  # the writer hits the lock and keeps the batch
    store.save("runs", Run(task="second"))
    time.sleep(0.2)
    blocker.rollback()
    blocker.close()
    store.flush()
    assert store.get_run(run.run_id) is not None
    assert store.count("runs") == 2
    store.close()


def test_unwritable_records_are_spilled_not_dropped(tmp_path):
    path = str(tmp_path / "spill.db")
    store = SQLiteStore(path, busy_timeout_ms=20)
    blocker = sqlite3.connect(path)
    blocker.execute("begin exclusive")
    store.save("runs", Run(task="spilled", run_id="spill-1"))
    store.close()
    blocker.rollback()
    blocker.close()
    (spill,) = tmp_path.glob("spill.db.spill.*.jsonl")
    assert "spill-1" in spill.read_text()
    again = SQLiteStore(path)  # the next open reads the spill file back and deletes it
    assert again.get_run("spill-1").task == "spilled"
    assert not list(tmp_path.glob("spill.db.spill.*"))
    again.close()


def test_write_run_is_all_or_nothing():
    store = SQLiteStore(":memory:")
    run = Run(task="imported")
    good = [Step(run_id=run.run_id, index=0, tool="a")]
    store.write_run(run, good)
    bad = [Step(run_id=run.run_id, index=0, tool="a"), object()]
    with pytest.raises(StoreError, match="cannot store"):
        store.write_run(run.model_copy(update={"task": "changed"}), bad)  # type: ignore[list-item]
    assert store.get_run(run.run_id).task == "imported"
    assert len(store.steps(run.run_id)) == 1
    store.close()


def test_huge_fields_are_bounded():
    rt = Runtime(store=":memory:")
    run = FakeRun(rt)
    run.tool("cat", {"path": "big"}, result="x" * 1_000_000)
    (step,) = rt.store.steps(run.run.run_id)
    assert len(step.result) < 5000 and "more characters" in step.result
    (ev,) = [e for e in rt.store.events(run.run.run_id) if e.kind == "tool_end"]
    assert len(ev.result) < 9000
    rt.close()


def test_message_history_is_stored_once_with_references_and_clipped(tmp_path):
    path = str(tmp_path / "m.db")
    rt = Runtime(store=path)
    run = rt.start_run(task="chat")
    history = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "u" * 10_000}]
    for i in range(20):  # every model call sends the whole history again
        history.append({"role": "assistant", "content": f"answer {i}"})
        run.model_start(list(history), model="m")
    run.end("success")
    rt.close()
    store = SQLiteStore(path, read_only=True)
    assert store.count("messages") == 22  # each message once, not 20 x the history
    starts = [e for e in store.events(run.run.run_id) if e.kind == "model_start"]
    assert len(starts) == 20 and len(starts[-1].messages) == 22
    assert starts[-1].messages[0] == {"role": "system", "content": "be brief"}
    long = starts[-1].messages[1]
    assert long["clipped"] == 10_000 and len(long["content"]) < 4100 and "more characters" in long["content"]
    store.close()


def test_a_long_run_keeps_a_window_of_steps_and_whole_run_signals():
    from immunity.state import STEP_WINDOW

    rt = Runtime(store=None)
    s = rt.start_run(task="long")
    n = STEP_WINDOW + 500
    for i in range(n):
        s.tool_start("read_file", {"path": f"f{i}.py"}, tool_call_id=f"c{i}")
        s.tool_end("read_file", f"content {i}", tool_call_id=f"c{i}")
    st = s.state
    assert st.n_steps == n and len(list(st.steps)) == STEP_WINDOW
    assert st.steps[-1].index == n - 1 and st.steps[n - 1] is st.steps[-1]
    assert [x.index for x in st.steps[n - 3:]] == [n - 3, n - 2, n - 1]
    assert st.steps[:10] == []  # older steps are in the store, not in memory
    with pytest.raises(IndexError):
        _ = st.steps[0]
    assert st.action_counts.total() == n  # the signals still cover the whole run
    s.end("success")
    rt.close()
