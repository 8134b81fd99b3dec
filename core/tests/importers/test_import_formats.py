import gzip
import json

from immunity.importers import ImportedRun, ImportProblem, detect_format, importers, iter_runs
from immunity.importers.tau_bench import FAILURE_STEP_RULE
from immunity.models import ActionType, Outcome


def runs_of(items):
    return [i for i in items if isinstance(i, ImportedRun)]


def problems_of(items):
    return [i for i in items if isinstance(i, ImportProblem)]


# -------------------------------------------------------------------------------- tau-bench


def test_tau_bench_steps_outcomes_and_derived_failure_step(tau_file, runtime):
    items = list(iter_runs([str(tau_file)], "tau-bench", runtime=runtime, domain="test-support"))
    assert problems_of(items) == []
    ok, wrong, missing = runs_of(items)
    assert [r.run.outcome for r in (ok, wrong, missing)] == [Outcome.SUCCESS, Outcome.FAILURE, Outcome.FAILURE]
    assert ok.run.task == "Hi, I need help with reservation 1." and ok.run.task_id == "1"
    assert ok.run.domain == "test-support" and ok.run.source == "tau-bench"
    assert ok.record == "record 1 (task_id=1, trial=0)"
    assert ok.run.metadata["instruction"].startswith("You are mia_li_3668")
    assert ok.run.metadata["expected_actions"][0]["name"] == "update_reservation_flights"
    assert ok.run.failure_step is None
    # assistant text -> message step; each tool call with its result -> tool step; the customer's
    # turns after the first (the task) -> message steps of agent "user"
    assert [(s.tool, s.agent) for s in wrong.steps] == [
        (None, None), (None, "user"), ("get_user_details", None), ("think", None),
        ("update_reservation_flights", None), ("update_reservation_flights", None), (None, None), (None, "user")]
    assert [s.action_type for s in wrong.steps if s.agent != "user"] == [
        ActionType.RESPOND, ActionType.SEARCH, ActionType.PLAN, ActionType.EDIT, ActionType.EDIT, ActionType.RESPOND]
    assert wrong.steps[1].text == "It is mia_li_3668." and wrong.steps[-1].text == "No, thanks. ###STOP###"
    failed_call = wrong.steps[4]
    assert failed_call.error == "Error: not enough balance in payment method" and failed_call.failed
    assert failed_call.arguments["cabin"] == "business"
    # the first state-changing call that matches no ground-truth action (business != economy)
    assert wrong.run.failure_step == 4
    assert wrong.run.metadata["failure_step_rule"] == FAILURE_STEP_RULE
    # a failure whose calls all match (here: the expected cancel never happened) has no derived step
    assert missing.run.failure_step is None and missing.run.metadata["failure_step_derived"] is False
    assert missing.steps[3].action_type == ActionType.ESCALATE


def test_tau_bench_default_domain_is_support(tau_file):
    items = runs_of(iter_runs([str(tau_file)], "tau-bench"))
    assert {r.run.domain for r in items} == {"support"}


def test_tau_bench_truncated_file_keeps_complete_records(tmp_path, runtime, tau_data):
    text = json.dumps(tau_data, indent=1)
    cut = text[: text.index('"task_id": 2') + 40]  # inside the third record
    path = tmp_path / "cut.json"
    path.write_text(cut)
    items = list(iter_runs([str(path)], "tau-bench", runtime=runtime, domain="test-support"))
    assert len(runs_of(items)) == 2
    (problem,) = problems_of(items)
    assert problem.record == "record 3" and "truncated JSON" in problem.message and problem.skipped


# -------------------------------------------------------------------------------- mini-swe-agent


def check_mini_steps(steps):
    kinds = [(s.tool, s.action_type, s.return_code) for s in steps]
    assert kinds == [
        ("bash", ActionType.SEARCH, 0),
        ("bash", ActionType.VERIFY, 1),
        (None, ActionType.RESPOND, None),
        ("bash", ActionType.EXECUTE, None),
        ("bash", ActionType.EDIT, 0),
        ("bash", ActionType.DONE, None),
    ]
    grep, tests, fmt, server, sed, submit = steps
    assert grep.arguments == {"command": "grep -rn range_sum src"}
    assert grep.result == "src/m.py:3:def range_sum(n):" and grep.error is None
    assert grep.data["thought"] == "Find the function first."
    assert tests.failed and tests.error == tests.result == "FAILED tests/test_m.py::test_sum - assert 5 == 6"
    assert fmt.text.startswith("THOUGHT: Two things") and fmt.data["format_error"].startswith("Please always")
    assert server.data["timeout"] is True and server.error.startswith("The last command") and server.failed
    assert sed.arguments == {"command": "sed -i 's/range(n)/range(n + 1)/' src/m.py"}
    assert sed.data["command_truncated"] is True
    assert submit.data["submitted"] is True and submit.result.startswith("diff --git a/src/m.py")


def test_mini_swe_agent_jsonl(mini_file, runtime):
    items = list(iter_runs([str(mini_file)], "mini-swe-agent", runtime=runtime, domain="test-coding"))
    assert problems_of(items) == []
    one, two = runs_of(items)
    assert one.run.outcome == Outcome.FAILURE and two.run.outcome == Outcome.SUCCESS
    assert one.run.task.startswith("Consider the following PR description:\nrange_sum(n) leaves out n")
    assert one.run.task_id == "demo__demo-1" and one.run.metadata["exit_status"] == "Submitted"
    assert one.record == "line 1 (instance_id=demo__demo-1)"
    check_mini_steps(one.steps)
    assert [s.action_type for s in two.steps] == [ActionType.VERIFY, ActionType.DONE]


def test_mini_swe_agent_native_traj(mini_traj_file, runtime):
    (run,) = runs_of(iter_runs([str(mini_traj_file)], "auto", runtime=runtime, domain="test-coding"))
    assert run.run.task_id == "demo__demo-3" and run.run.outcome == Outcome.UNKNOWN
    assert run.run.metadata["model_stats"]["api_calls"] == 6 and run.run.source == "mini-swe-agent"
    check_mini_steps(run.steps)


def test_mini_swe_agent_default_domain_is_coding(mini_file):
    assert {r.run.domain for r in runs_of(iter_runs([str(mini_file)], "mini-swe-agent"))} == {"coding"}


# -------------------------------------------------------------------------------- swe-agent


def test_swe_agent_traj(swe_agent_file, runtime):
    (run,) = runs_of(iter_runs([str(swe_agent_file)], "swe-agent", runtime=runtime, domain="test-coding"))
    assert run.run.task_id == "demo__demo-4" and run.run.task == "range_sum(n) leaves out n"
    assert run.run.outcome == Outcome.UNKNOWN and run.run.metadata["exit_status"] == "submitted"
    assert [(s.tool, s.action_type) for s in run.steps] == [
        ("find_file", ActionType.SEARCH), ("open", ActionType.SEARCH), ("edit", ActionType.EDIT),
        ("bash", ActionType.EXECUTE), (None, ActionType.RESPOND), ("submit", ActionType.DONE)]
    edit = run.steps[2]
    assert edit.arguments["command"].startswith("edit 4:4\n") and edit.result == "File updated."
    assert edit.data["thought"] == "Fix the bound." and edit.return_code is None
    assert run.steps[4].text == "I think this is fixed."


# -------------------------------------------------------------------------------- who-and-when


def test_who_and_when(who_file, runtime):
    items = list(iter_runs([str(who_file)], "who-and-when", runtime=runtime))
    assert problems_of(items) == []
    one, two = runs_of(items)
    assert one.run.outcome == Outcome.FAILURE and one.run.failure_step == 1 and two.run.failure_step == 0
    assert one.run.task == "How many clients get the sunset awning design?" and one.run.task_id == "q-1"
    assert one.run.domain == "research"
    assert one.run.metadata["mistake_agent"] == "Excel_Expert"
    assert one.run.metadata["mistake_reason"].startswith("The code ignored")
    assert [(s.index, s.agent, s.tool) for s in one.steps] == [
        (0, "Excel_Expert", None), (1, "Excel_Expert", None), (2, "Computer_terminal", None),
        (3, "Verification_Expert", None)]
    assert one.steps[one.run.failure_step].text.startswith("```python")
    assert one.steps[2].data["role"] == "user"


# -------------------------------------------------------------------------------- detection


def test_auto_detects_every_format(tau_file, mini_file, mini_traj_file, swe_agent_file, who_file, chat_file,
                                   runtime, tmp_path):
    registry = importers(runtime)
    assert detect_format(str(tau_file), registry) == "tau-bench"
    assert detect_format(str(mini_file), registry) == "mini-swe-agent"
    assert detect_format(str(mini_traj_file), registry) == "mini-swe-agent"
    assert detect_format(str(swe_agent_file), registry) == "swe-agent"
    assert detect_format(str(who_file), registry) == "who-and-when"
    assert detect_format(str(chat_file), registry) == "chat"
    other = tmp_path / "notes.txt"
    other.write_text("just some notes\n")
    assert detect_format(str(other), registry) is None
    # a folder of mixed files imports each with its own format
    items = list(iter_runs([str(tmp_path)], "auto", runtime=runtime))
    formats = {r.run.source for r in runs_of(items)}
    assert formats == {"tau-bench", "mini-swe-agent", "swe-agent", "who-and-when", "chat"}


def test_unreadable_files_are_problems_not_crashes(tmp_path, runtime):
    gz = tmp_path / "broken.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"instance_id": "a", "messages": []}\n')[:-12])  # cut gzip stream
    empty = tmp_path / "empty.json"
    empty.write_text("")
    items = list(iter_runs([str(gz), str(empty), str(tmp_path / "missing.jsonl")], "mini-swe-agent",
                           runtime=runtime))
    problems = problems_of(items)
    assert any(p.source == str(tmp_path / "missing.jsonl") and p.message == "no such file" for p in problems)
    assert any(p.source == str(gz) for p in problems)
    assert all(isinstance(i, ImportProblem | ImportedRun) for i in items)


def test_mini_swe_agent_tool_call_runs(write, runtime):
    record = {"instance_id": "demo__demo-5", "resolved": False, "messages": [
        {"role": "system", "content": "You can run bash."},
        {"role": "user", "content": "<pr_description>\nFix the import\n</pr_description>"},
        {"role": "assistant", "content": "Run the tests.", "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "bash", "arguments": "{\"command\": \"pytest -x\"}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "<returncode>1</returncode>\n<output>\nImportError\n</output>"},
    ]}
    path = write("v2.jsonl", json.dumps(record) + "\n")
    (run,) = runs_of(iter_runs([str(path)], "mini-swe-agent", runtime=runtime, domain="test-coding"))
    (step,) = run.steps
    assert run.run.task == "Fix the import"
    assert (step.tool, step.action_type, step.return_code) == ("bash", ActionType.VERIFY, 1)
    assert step.failed and "ImportError" in step.error and step.data["thought"] == "Run the tests."
