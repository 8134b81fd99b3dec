"""Fixtures for the importer tests: small, realistic trace files in every format (written by the
tests themselves), and a runtime with two test-only domains so mappings are known exactly."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest
from immunity.domain import Domain, Rule
from immunity.runtime import Runtime

hookimpl = pluggy.HookimplMarker("immunity")

SUPPORT = Domain(name="test-support", rules=[
    Rule(tool=r"(get|search|list)_.*", action="SEARCH"),
    Rule(tool="book_reservation", action="EDIT", side_effect=True),
    Rule(tool="cancel_reservation", action="EDIT", side_effect=True, destructive=True),
    Rule(tool="update_reservation_flights", action="EDIT", side_effect=True),
    Rule(tool="transfer_to_human_agents", action="ESCALATE"),
    Rule(tool="think", action="PLAN"),
    Rule(tool="calculate", action="EXECUTE"),
])

CODING = Domain(name="test-coding", rules=[
    Rule(tool="bash", action="DONE", when=r"COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"),
    Rule(tool="bash", action="VERIFY", when=r"\bpytest\b"),
    Rule(tool="bash", action="EDIT", when=r"\bsed -i\b|cat <<|\bpatch\b", side_effect=True),
    Rule(tool="bash", action="SEARCH", when=r"^\s*(ls|cat|grep|find|head|tail)\b"),
    Rule(tool="bash", action="EXECUTE"),
    Rule(tool="edit", action="EDIT", side_effect=True),
    Rule(tool=r"open|find_file|search_dir|search_file", action="SEARCH"),
    Rule(tool="submit", action="DONE"),
])


class DomainsPlugin:
    """A plugin registering the two test domains."""

    @hookimpl
    def immunity_register_domains(self, register: Any) -> None:
        register("test-support", SUPPORT)
        register("test-coding", CODING)


@pytest.fixture
def runtime() -> Iterator[Runtime]:
    rt = Runtime(store=None, plugins=[DomainsPlugin()])
    try:
        yield rt
    finally:
        rt.close()


# ---------------------------------------------------------------------------------------------
# chat
# ---------------------------------------------------------------------------------------------

BIG_OUTPUT = "x" * (5 * 1024 * 1024)


def chat_lines() -> list[bytes]:
    """Ten lines: six runs that import (three with warnings) and four that cannot be read."""
    good = {
        "id": "chat-1", "task_id": "cancel-trip", "outcome": "failure", "domain": "test-support", "failure_step": 3,
        "messages": [
            {"role": "system", "content": "You are an airline agent. Follow the policy."},
            {"role": "user", "content": "Please cancel my reservation ABC123. I am user mia_li_3668."},
            {"role": "assistant", "content": "Let me look up your profile and reservation.", "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_user_details", "arguments": "{\"user_id\": \"mia_li_3668\"}"}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "get_reservation_details", "arguments": "{\"reservation_id\": \"ABC123\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_2", "name": "get_reservation_details",
             "content": "{\"reservation_id\": \"ABC123\", \"cabin\": \"economy\", \"insurance\": \"no\"}"},
            {"role": "tool", "tool_call_id": "call_1", "name": "get_user_details",
             "content": "{\"name\": \"Mia Li\", \"membership\": \"gold\"}"},
            {"role": "assistant", "content": "Your economy booking has no insurance. Shall I cancel it?"},
            {"role": "user", "content": "Yes."},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_3", "type": "function",
                 "function": {"name": "cancel_reservation", "arguments": {"reservation_id": "ABC123"}}}]},
            {"role": "tool", "tool_call_id": "call_3", "is_error": True,
             "content": "Error: economy reservations without insurance cannot be cancelled"},
            {"role": "assistant", "content": "Your reservation has been cancelled."},
        ],
    }
    multi = {
        "id": "chat-2", "outcome": "success", "domain": "test-coding", "task": "Make the tests pass",
        "messages": [
            {"role": "user", "content": "Make the tests pass"},
            {"role": "assistant", "name": "planner", "content": "Plan: run the tests, then fix the failure."},
            {"role": "assistant", "name": "coder", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "bash", "arguments": "{\"command\": \"pytest -q\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "return_code": 1, "content": "1 failed, 3 passed"},
            {"role": "assistant", "name": "reviewer", "content": "The failing test is test_sum; fix range_sum."},
        ],
    }
    truncated = b'{"id": "chat-3", "outcome": "success", "messages": [{"role": "user", "content": "hi"'
    unknown_role = {"id": "chat-4", "outcome": "unknown", "messages": [
        {"role": "user", "content": "Summarise the report"},
        {"role": "critic", "content": "This is not a role the format knows"},
        {"role": "assistant", "content": "Here is the summary."}]}
    orphan = {"id": "chat-5", "outcome": "failure", "messages": [
        {"role": "user", "content": "Look up order 7"},
        {"role": "tool", "tool_call_id": "call_zz", "content": "a result nobody asked for"},
        {"role": "assistant", "content": "I could not find it."}]}
    huge = {"id": "chat-6", "outcome": "success", "domain": "test-coding", "messages": [
        {"role": "user", "content": "Show me the log"},
        {"role": "assistant", "tool_calls": [{"id": "h1", "type": "function",
                                               "function": {"name": "bash", "arguments": "{\"command\": \"cat big.log\"}"}}]},
        {"role": "tool", "tool_call_id": "h1", "content": BIG_OUTPUT, "return_code": 0}]}
    bad_bytes = (b'{"id": "chat-7", "outcome": "success", "messages": [{"role": "user", "content": "caf\xe9 \xff"}, '
                 b'{"role": "assistant", "content": "Done."}]}')
    return [
        json.dumps(good).encode(),
        json.dumps(multi).encode(),
        truncated,
        json.dumps(unknown_role).encode(),
        json.dumps(orphan).encode(),
        json.dumps(huge).encode(),
        bad_bytes,
        b"[1, 2]",
        json.dumps({"outcome": "success", "messages": []}).encode(),
        json.dumps({"id": "chat-10", "outcome": "maybe", "messages": []}).encode(),
    ]


@pytest.fixture
def chat_file(tmp_path: Path) -> Path:
    path = tmp_path / "runs.jsonl"
    path.write_bytes(b"\n".join(chat_lines()) + b"\n")
    return path


# ---------------------------------------------------------------------------------------------
# tau-bench
# ---------------------------------------------------------------------------------------------


def tau_record(task_id: int, trial: int, reward: float, calls: list[tuple[str, dict[str, Any], str]],
               expected: list[dict[str, Any]]) -> dict[str, Any]:
    traj: list[dict[str, Any]] = [
        {"role": "system", "content": "# Airline Agent Policy\nThe current time is 2024-05-15 15:00:00 EST."},
        {"role": "user", "content": f"Hi, I need help with reservation {task_id}."},
        {"content": "Could you give me your user id?", "role": "assistant"},
        {"role": "user", "content": "It is mia_li_3668."},
    ]
    for i, (name, args, result) in enumerate(calls):
        cid = f"call_{task_id}_{trial}_{i}"
        traj.append({"content": None, "role": "assistant", "tool_calls": [
            {"function": {"arguments": json.dumps(args), "name": name}, "id": cid, "type": "function"}]})
        traj.append({"role": "tool", "tool_call_id": cid, "name": name, "content": result})
    traj.append({"content": "Is there anything else I can help with?", "role": "assistant"})
    traj.append({"role": "user", "content": "No, thanks. ###STOP###"})
    return {"task_id": task_id, "trial": trial, "reward": reward, "traj": traj,
            "info": {"task": {"user_id": "mia_li_3668", "actions": expected, "outputs": [],
                              "instruction": "You are mia_li_3668. You want to change your flight."},
                     "source": "user", "reward_info": {"reward": reward, "info": {"r_actions": reward}}}}


def tau_records() -> list[dict[str, Any]]:
    change = {"name": "update_reservation_flights",
              "kwargs": {"reservation_id": "R1", "cabin": "economy", "flights": [{"flight_number": "HAT001"}]}}
    ok = tau_record(1, 0, 1.0, [
        ("get_user_details", {"user_id": "mia_li_3668"}, "{\"reservations\": [\"R1\"]}"),
        ("update_reservation_flights", change["kwargs"], "{\"reservation_id\": \"R1\"}"),
    ], [change])
    wrong = tau_record(1, 1, 0.0, [
        ("get_user_details", {"user_id": "mia_li_3668"}, "{\"reservations\": [\"R1\"]}"),
        ("think", {"thought": "The user wants business."}, ""),
        ("update_reservation_flights", {**change["kwargs"], "cabin": "business"},
         "Error: not enough balance in payment method"),
        ("update_reservation_flights", {**change["kwargs"], "cabin": "business"}, "{\"reservation_id\": \"R1\"}"),
    ], [change])
    missing = tau_record(2, 0, 0.0, [
        ("get_reservation_details", {"reservation_id": "R2"}, "{\"reservation_id\": \"R2\"}"),
        ("transfer_to_human_agents", {"summary": "wants a refund"}, "Transfer successful"),
    ], [{"name": "cancel_reservation", "kwargs": {"reservation_id": "R2"}}])
    return [ok, wrong, missing]


@pytest.fixture
def tau_data() -> list[dict[str, Any]]:
    return tau_records()


@pytest.fixture
def tau_file(tmp_path: Path) -> Path:
    path = tmp_path / "gpt-4o-airline.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        json.dump(tau_records(), fh, indent=1)
    return path


# ---------------------------------------------------------------------------------------------
# mini-swe-agent, swe-agent, who-and-when
# ---------------------------------------------------------------------------------------------

FORMAT_ERROR = ("Please always provide EXACTLY ONE action in triple backticks, found 2 actions.\n\n"
                "Please format your action in triple backticks as shown in <response_example>.")


def mini_messages() -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a helpful assistant that can interact with a computer shell."},
        {"role": "user", "content": "<pr_description>\nConsider the following PR description:\nrange_sum(n) "
                                    "leaves out n\n</pr_description>\n\n<instructions>\n# Task Instructions\n..."},
        {"role": "assistant", "content": "THOUGHT: Find the function first.\n\n```bash\ngrep -rn range_sum src\n```"},
        {"role": "user", "content": "<returncode>0</returncode>\n<output>\nsrc/m.py:3:def range_sum(n):\n</output>"},
        {"role": "assistant", "content": "THOUGHT: Run the tests to see the failure.\n\n```bash\npytest -x tests\n```"},
        {"role": "user", "content": "<returncode>1</returncode>\n<output>\nFAILED tests/test_m.py::test_sum - "
                                    "assert 5 == 6\n</output>"},
        {"role": "assistant", "content": "THOUGHT: Two things to try.\n\n```bash\nls\n```\nthen\n```bash\npwd\n```"},
        {"role": "user", "content": FORMAT_ERROR},
        {"role": "assistant", "content": "THOUGHT: Start the server.\n\n```bash\npython -m http.server\n```"},
        {"role": "user", "content": "The last command <command>python -m http.server</command> timed out and has "
                                    "been killed.\nThe output of the command was:\n <output>\n\n</output>\n"
                                    "Please try another command and make sure to avoid those requiring interactive input."},
        {"role": "assistant", "content": "THOUGHT: Fix the bound.\n\n```bash\nsed -i 's/range(n)/range(n + 1)/' src/m.py"},
        {"role": "user", "content": "<returncode>0</returncode>\n<output>\n</output>"},
        {"role": "assistant", "content": "THOUGHT: Submit.\n\n```bash\necho COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && "
                                         "git add -A && git diff --cached\n```"},
        {"role": "user", "content": "diff --git a/src/m.py b/src/m.py\n-    return sum(range(n))\n+    return sum(range(n + 1))\n"},
    ]


@pytest.fixture
def mini_file(tmp_path: Path) -> Path:
    path = tmp_path / "trajs.jsonl.gz"
    short = [mini_messages()[i] for i in (0, 1, 4, 5, 12, 13)]
    rows = [
        {"instance_id": "demo__demo-1", "resolved": False, "exit_status": "Submitted", "messages": mini_messages()},
        {"instance_id": "demo__demo-2", "resolved": True, "exit_status": "Submitted", "messages": short},
    ]
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    return path


@pytest.fixture
def mini_traj_file(tmp_path: Path) -> Path:
    path = tmp_path / "demo__demo-3.traj.json"
    path.write_text(json.dumps({
        "info": {"exit_status": "Submitted", "submission": "diff --git a/src/m.py b/src/m.py\n",
                 "model_stats": {"instance_cost": 0.12, "api_calls": 6}, "mini_version": "1.15.0"},
        "messages": mini_messages(),
        "trajectory_format": "mini-swe-agent-1",
    }, indent=2))
    return path


@pytest.fixture
def swe_agent_file(tmp_path: Path) -> Path:
    path = tmp_path / "demo__demo-4.traj"
    issue = ("We're currently solving the following issue within our repository. Here's the issue text:\n"
             "ISSUE:\nrange_sum(n) leaves out n\n\nINSTRUCTIONS:\nNow, you're going to solve this issue.")
    step = {"response": "", "state": "{\"open_file\": \"n/a\"}", "execution_time": 0.2}
    path.write_text(json.dumps({
        "environment": "swe_main",
        "trajectory": [
            {**step, "thought": "Find the file.", "action": "find_file \"m.py\"\n",
             "observation": "Found 1 matches for \"m.py\":\n/demo/src/m.py"},
            {**step, "thought": "Open it.", "action": "open src/m.py", "observation": "[File: /demo/src/m.py]\n3:def "
                                                                                     "range_sum(n):"},
            {**step, "thought": "Fix the bound.", "action": "edit 4:4\n    return sum(range(n + 1))\nend_of_edit",
             "observation": "File updated."},
            {**step, "thought": "Check it.", "action": "python -c 'from src.m import range_sum; print(range_sum(3))'",
             "observation": "6"},
            {**step, "thought": "", "action": "", "response": "I think this is fixed.", "observation": ""},
            {**step, "thought": "Done.", "action": "submit", "observation": "diff --git a/src/m.py b/src/m.py"},
        ],
        "history": [{"role": "system", "content": "SETTING: You are an autonomous programmer."},
                    {"role": "user", "content": issue}],
        "info": {"exit_status": "submitted", "submission": "diff --git a/src/m.py b/src/m.py",
                 "model_stats": {"instance_cost": 0.3}},
    }, indent=2))
    return path


@pytest.fixture
def who_file(tmp_path: Path) -> Path:
    path = tmp_path / "traces.jsonl"
    rows = [
        {"is_correct": False, "question": "How many clients get the sunset awning design?",
         "question_ID": "q-1", "level": "2", "mistake_agent": "Excel_Expert", "mistake_step": "1",
         "mistake_reason": "The code ignored addresses with letters.",
         "system_prompt": {"Excel_Expert": "## Your role\nExcel_Expert"}, "file": "1.json",
         "history": [
             {"content": "You are given: (1) a task and advises from your manager...", "role": "assistant",
              "name": "Excel_Expert"},
             {"content": "```python\nimport pandas as pd\nprint(len(df))\n```", "role": "user", "name": "Excel_Expert"},
             {"content": "exitcode: 0 (execution succeeded)\nCode output: 4\n", "role": "user",
              "name": "Computer_terminal"},
             {"content": "The result is verified: 4.", "role": "user", "name": "Verification_Expert"},
         ]},
        {"is_correct": False, "question": "Which year was the paper published?", "question_ID": "q-2",
         "level": "1", "mistake_agent": "Research_Expert", "mistake_step": "0", "mistake_reason": "Wrong source.",
         "history": [{"content": "It was published in 2019.", "role": "assistant", "name": "Research_Expert"}]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, bytes | str], Path]:
    def _write(name: str, data: bytes | str) -> Path:
        p = tmp_path / name
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
        return p

    return _write
