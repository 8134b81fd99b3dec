"""``immunity export`` -> ``immunity import --format immunity`` rebuilds every record field by field;
replaying an imported run through a live session gives the same steps as the import."""

import json

import pluggy
import pytest
from click.testing import CliRunner
from immunity.cli import build_cli
from immunity.importers import ImportedRun, import_paths, iter_runs
from immunity.importers.replay import replay, replay_run
from immunity.models import Verdict
from immunity.runtime import Runtime
from immunity.store import SQLiteStore
from immunity.testing import FakeRun

hookimpl = pluggy.HookimplMarker("immunity")


class Noisy:
    """A plugin that flags a destructive call and breaks in observe once (to get a plugin error)."""

    def __init__(self) -> None:
        self.broke = False

    @hookimpl
    def immunity_verify(self, event, step, run, state):
        if event.tool == "drop_table" and event.kind.value == "tool_start":
            return Verdict(ok=False, error_class="unsafe_action", severity="error", message="drops a table",
                           hint="Do not drop tables.", block=True)
        return None

    @hookimpl
    def immunity_observe(self, event, run):
        if event.kind.value == "tool_end" and not self.broke:
            self.broke = True
            raise RuntimeError("observer failed on purpose")


def invoke(*args):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def everything(store, run_id):
    return {
        "run": store.get_run(run_id).model_dump(mode="json"),
        "steps": [s.model_dump(mode="json") for s in store.steps(run_id)],
        "events": [e.model_dump(mode="json") for e in store.events(run_id)],
        "verdicts": [v.model_dump(mode="json") for v in store.verdicts(run_id)],
        "interventions": [i.model_dump(mode="json") for i in store.interventions(run_id)],
        "recoveries": [r.model_dump(mode="json") for r in store.recoveries(run_id)],
        "checkpoints": [c.model_dump(mode="json") for c in store.checkpoints(run_id)],
        "plugin_errors": [{k: v for k, v in e.items() if k != "id"} for e in store.plugin_errors(run_id)],
    }


def test_export_then_import_is_lossless(tmp_path):
    src = str(tmp_path / "live.db")
    rt = Runtime(store=src, plugins=[Noisy()])
    a = FakeRun(rt, task="make tests pass", domain=None, framework="fake")
    a.model("I will run the tests")
    a.tool("run_tests", {"path": "tests"}, error="1 failed", return_code=1)
    a.session.checkpoint({"thread_id": "t1", "checkpoint_id": "c1"})
    a.tool("run_tests", {"path": "tests"}, error="1 failed", return_code=1)
    a.tool("drop_table", {"name": "users"})
    a.say("Let me look again", agent="helper")
    a.final("all good")
    a.session.end("failure")
    b = FakeRun(rt, task="second run", framework="fake")
    b.tool("search", {"q": "x"}, result="found x")
    b.session.end("success")
    rt.close()

    out = tmp_path / "export.jsonl"
    res = invoke("export", "--store", src, "-o", str(out))
    assert res.exit_code == 0 and "exported 2 runs" in res.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["run"]["task"] for x in lines] == ["make tests pass", "second run"]

    dst = str(tmp_path / "copy.db")
    res = invoke("import", "--format", "immunity", "--store", dst, str(out))
    assert res.exit_code == 0, res.output
    assert "imported 2 runs" in res.output

    s1, s2 = SQLiteStore(src, background=False), SQLiteStore(dst, background=False)
    try:
        for run_id in (a.run.run_id, b.run.run_id):
            before, after = everything(s1, run_id), everything(s2, run_id)
            for table in before:
                assert after[table] == before[table], table
        rich = everything(s1, a.run.run_id)
        # the live run really had something in every table the format carries
        assert all(rich[t] for t in ("steps", "events", "verdicts", "interventions", "recoveries", "checkpoints",
                                     "plugin_errors"))
    finally:
        s1.close()
        s2.close()

    # --run selects by id prefix; auto-detection recognises the format
    one = tmp_path / "one.jsonl"
    assert invoke("export", "--store", src, "--run", b.run.run_id[:10], "-o", str(one)).exit_code == 0
    items = list(iter_runs([str(one)]))
    assert len(items) == 1 and isinstance(items[0], ImportedRun) and items[0].run.run_id == b.run.run_id
    res = CliRunner().invoke(build_cli(), ["export", "--store", src, "--run", "nope", "-o", str(one)])
    assert res.exit_code != 0 and "no run 'nope'" in res.output


def comparable(step):
    return (step.index, step.action_type, step.confidence, step.tool, step.arguments, step.text, step.result,
            step.error, step.return_code, step.agent, step.side_effect, step.data.get("mapped_by"),
            step.data.get("tool_call_id"), bool(step.data.get("destructive")))


@pytest.mark.parametrize("fixture,fmt,domain", [
    ("chat_file", "chat", None),
    ("tau_file", "tau-bench", "test-support"),
    ("mini_file", "mini-swe-agent", "test-coding"),
    ("swe_agent_file", "swe-agent", "test-coding"),
    ("who_file", "who-and-when", "test-support"),
])
def test_replay_gives_the_imported_steps(request, runtime, fixture, fmt, domain):
    path = request.getfixturevalue(fixture)
    imported = [i for i in iter_runs([str(path)], fmt, runtime=runtime, domain=domain) if isinstance(i, ImportedRun)]
    assert imported
    for item in imported:
        session, fed = replay_run(item, runtime)
        assert len(fed) == len(item.steps)
        live = session.state.steps
        assert [comparable(s) for s in live] == [comparable(s) for s in item.steps], item.run.run_id
        assert session.run.domain == item.run.domain and session.run.task == item.run.task


def test_replay_feeds_a_session_started_by_hand(chat_file, runtime):
    item = next(i for i in iter_runs([str(chat_file)], "chat", runtime=runtime) if isinstance(i, ImportedRun))
    session = runtime.start_run(task=item.run.task, domain=item.run.domain, framework="replay")
    fed = replay(item, session, end=True)
    assert session.ended and session.run.outcome == item.run.outcome
    assert [f.step.tool for f in fed] == [s.tool for s in session.state.steps]
    # the replayed 'cancel_reservation' failed, as in the trace
    assert session.state.steps[3].failed and session.state.errors == 1


def test_replayed_big_output_is_bounded_exactly_like_the_import(chat_file, runtime):
    item = next(i for i in iter_runs([str(chat_file)], "chat", runtime=runtime)
                if isinstance(i, ImportedRun) and i.run.run_id == "chat-6")
    session, _ = replay_run(item, runtime)
    assert session.state.steps[0].result == item.steps[0].result
    assert len(item.steps[0].data["_raw_result"]) == 5 * 1024 * 1024


def test_import_paths_counts_unmapped(mini_file, runtime, tmp_path):
    report = import_paths([str(mini_file)], "mini-swe-agent", str(tmp_path / "x.db"), runtime=runtime,
                          domain="test-coding")
    # the format-error message is the only step no test-coding rule maps (the heuristic guessed RESPOND)
    assert report.unmapped == 1 and report.unmapped_tools == {"<message>": 1}
    assert report.steps == 8 and report.runs == 2
    assert 0 < report.unmapped_rate < 0.2
