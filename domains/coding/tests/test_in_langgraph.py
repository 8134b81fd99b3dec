"""The coding checks in a real LangGraph run (prebuilt ReAct agent, scripted model, offline).

Every check of the domain is driven through ``Runtime(domain="coding").protect(graph)``: the tools
are real (a shell that runs its commands in a temporary repository, a file writer, a submit), the
model is scripted, and each test asserts what really happened: the verdict stored with its error
class, the hint in the model's next call, or a blocked command that never ran. Each check also has a
case where the correct behaviour in the same graph stays quiet.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from immunity.models import Intervention, Step, Verdict
from immunity.runtime import Runtime
from immunity_langgraph.testing import ScriptedChatModel, tool_call
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, tool


@dataclass
class Result:
    """What one protected run left behind: the model (with every call it received) and the store's rows."""

    model: ScriptedChatModel
    verdicts: list[Verdict]
    interventions: list[Intervention]
    steps: list[Step]

    def fired(self, check: str) -> list[str]:
        """The error classes the check ``coding:<check>`` stored for the run."""
        return [v.error_class or "" for v in self.verdicts if v.plugin == f"coding:{check}" and not v.ok]

    def tool_reply(self, call: int) -> ToolMessage:
        """The last tool result in the model's call number ``call``."""
        return [m for m in self.model.calls[call] if isinstance(m, ToolMessage)][-1]

    def hints(self, call: int) -> list[str]:
        """The immunity hints added to the model's call number ``call``."""
        return [str(m.content) for m in self.model.calls[call]
                if isinstance(m, HumanMessage) and str(m.content).startswith("[immunity]")]


def run_agent(tools: list[BaseTool], script: list[Any], task: str, **options: Any) -> Result:
    """Build a prebuilt ReAct agent over ``tools``, protect it, run ``task`` and read the store."""
    from langgraph.prebuilt import create_react_agent

    model = ScriptedChatModel(script=script)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = create_react_agent(model, tools)
    rt = Runtime(store=":memory:", domain="coding", **options)
    try:
        rt.protect(graph)
        graph.invoke({"messages": [("user", task)]})
        rt.flush()
        (run,) = rt.store.runs()
        assert run.domain == "coding"
        assert model.turns_used == len(script)  # the whole script ran: nothing stopped the run early
        return Result(model, rt.store.verdicts(run.run_id), rt.store.interventions(run.run_id),
                      rt.store.steps(run.run_id))
    finally:
        rt.close()


def repo_tools(repo: Path, ran: list[str], submitted: list[str]) -> list[BaseTool]:
    """A shell that really runs commands in ``repo`` (a failing command raises with its output, as a
    non-zero exit), a file writer and a submit."""

    @tool
    def bash(command: str) -> str:
        """Run a shell command in the repository."""
        ran.append(command)
        # No bytecode cache: calc.py is rewritten within the same second at the same size, and a
        # cached .pyc keyed on (mtime, size) would run the old code.
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run(command, shell=True, cwd=repo, capture_output=True, text=True, timeout=120, env=env)
        out = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            raise RuntimeError(f"exit code {proc.returncode}\n{out}")
        return out or "(no output)"

    @tool
    def write_file(path: str, content: str) -> str:
        """Write a file of the repository."""
        target = repo / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        return f"wrote {len(content)} characters to {path}"

    @tool
    def submit() -> str:
        """Submit the change."""
        submitted.append("submit")
        return "submitted"

    return [bash, write_file, submit]


BUGGY = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"
CHECK = "from calc import add\nassert add(2, 3) == 5, add(2, 3)\nprint('ok')\n"


def make_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text(BUGGY)
    (repo / "tests" / "test_calc.py").write_text("from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    (repo / "check_fix.py").write_text(CHECK)
    return repo


# --------------------------------------------------------------------------- destructive_command


def test_rm_rf_is_blocked_in_a_langgraph_agent_and_the_model_is_told() -> None:
    ran: list[str] = []

    @tool
    def bash(command: str) -> str:
        """Run a shell command in the repository."""
        ran.append(command)  # never executes anything: this test is about a command that must not run
        return "README.md\nsrc\ntests"

    result = run_agent([bash], [tool_call("bash", command="ls"), tool_call("bash", command="rm -rf /"),
                                "I will not delete anything."], "Clean up the build artefacts")
    assert ran == ["ls"]  # the destructive command never ran
    told = result.model.calls[2][-1]
    assert isinstance(told, ToolMessage) and "rm -rf /" in told.content and "[immunity]" in told.content
    assert result.fired("destructive_command") == ["unsafe_action"]


def test_removing_a_build_directory_runs(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    (repo / "build" / "lib").mkdir(parents=True)
    ran: list[str] = []
    result = run_agent(repo_tools(repo, ran, []), [tool_call("bash", command="rm -rf build"), "Removed build/."],
                       "Clean up the build artefacts")
    assert ran == ["rm -rf build"] and not (repo / "build").exists()
    assert result.fired("destructive_command") == []
    assert "[immunity]" not in str(result.model.calls[1][-1].content)


# ----------------------------------------------------------------------------- unverified_finish


def test_submitting_an_untested_edit_gets_a_hint_then_the_tested_submit_is_quiet(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    ran: list[str] = []
    submitted: list[str] = []
    result = run_agent(repo_tools(repo, ran, submitted), [
        tool_call("write_file", path="calc.py", content=FIXED),
        tool_call("submit"),                                         # the edit was never checked
        tool_call("bash", command="python check_fix.py"),
        tool_call("submit"),
        "Fixed add().",
    ], "add(2, 3) returns -1; fix it.")
    assert result.fired("unverified_finish") == ["premature_done"]  # once: the second submit followed a check
    assert result.hints(1) == []
    (hint,) = result.hints(2)  # the call right after the first submit
    assert "Do not submit yet" in hint
    assert not any("Do not submit yet" in h for call in (3, 4) for h in result.hints(call))
    assert submitted == ["submit", "submit"]  # a hint, not a block (block_unverified_finish is off)
    assert ran == ["python check_fix.py"]


def test_block_unverified_finish_stops_the_submit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    submitted: list[str] = []
    result = run_agent(repo_tools(repo, [], submitted), [
        tool_call("write_file", path="calc.py", content=FIXED),
        tool_call("submit"),
        "I will run the checks first.",
    ], "add(2, 3) returns -1; fix it.", coding={"block_unverified_finish": True})
    assert submitted == []
    told = result.model.calls[2][-1]
    assert isinstance(told, ToolMessage) and "Do not submit yet" in str(told.content)
    assert any(v.plugin == "coding:unverified_finish" and v.block for v in result.verdicts)


def test_submitting_after_a_passing_check_is_quiet(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    ran: list[str] = []
    result = run_agent(repo_tools(repo, ran, []), [
        tool_call("write_file", path="calc.py", content=FIXED),
        tool_call("bash", command="python check_fix.py"),
        tool_call("submit"),
        "Fixed add().",
    ], "add(2, 3) returns -1; fix it.")
    assert ran == ["python check_fix.py"]
    assert result.fired("unverified_finish") == []
    assert all(result.hints(call) == [] for call in range(4))


# ----------------------------------------------------------------------------- out_of_scope_edit


TASK_NON_TEST = "add(2, 3) returns -1. Make the minimal change to non-test files to fix it."


def test_submitting_with_an_existing_test_file_changed_gets_a_hint(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    extended = ("from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
                "def test_add_negative():\n    assert add(-2, -3) == -5\n")
    result = run_agent(repo_tools(repo, [], []), [
        tool_call("write_file", path="tests/test_calc.py", content=extended),
        tool_call("write_file", path="calc.py", content=FIXED),
        tool_call("bash", command="python -m pytest -q tests"),
        tool_call("submit"),
        "Fixed add().",
    ], TASK_NON_TEST, coding={"root": str(tmp_path / "repo")})
    fired = [v for v in result.verdicts if v.plugin == "coding:out_of_scope_edit"]
    assert fired and all(v.error_class == "scope_creep" for v in fired)
    assert {v.evidence["paths"][0] for v in fired} == {"tests/test_calc.py"}  # calc.py is in scope
    hints = [h for h in result.hints(4) if "tests/test_calc.py" in h]
    assert hints and "an existing test file" in hints[0] and "git checkout tests/test_calc.py" in hints[0]


def test_editing_the_source_file_is_in_scope(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    result = run_agent(repo_tools(repo, [], []), [
        tool_call("write_file", path="calc.py", content=FIXED),
        tool_call("write_file", path="reproduce_bug.py", content="from calc import add\nprint(add(2, 3))\n"),
        tool_call("bash", command="python reproduce_bug.py"),
        "Fixed add().",
    ], TASK_NON_TEST, coding={"root": str(tmp_path / "repo")})
    assert (repo / "calc.py").read_text() == FIXED
    assert result.fired("out_of_scope_edit") == []
    assert all(result.hints(call) == [] for call in range(4))


# ---------------------------------------------------------------------- repeated_failing_command


def test_rerunning_a_failed_check_unchanged_gets_a_hint(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    ran: list[str] = []
    result = run_agent(repo_tools(repo, ran, []), [
        tool_call("bash", command="python check_fix.py"),
        tool_call("bash", command="python check_fix.py"),               # nothing changed since it failed
        tool_call("write_file", path="calc.py", content=FIXED),
        tool_call("bash", command="python check_fix.py"),
        "Fixed add().",
    ], "add(2, 3) returns -1; fix it.")
    assert ran == ["python check_fix.py"] * 3  # a hint, not a block: the re-run still ran (and failed again)
    assert all("AssertionError: -1" in str(result.tool_reply(n).content) for n in (1, 2))
    assert result.fired("repeated_failing_command") == ["repeated_failing_command"]  # not for the run after the edit
    assert any("This exact command failed before" in h for h in result.hints(2))
    assert not any("This exact command failed before" in h for h in result.hints(1) + result.hints(4))


def test_rerunning_a_failed_check_after_an_edit_is_quiet(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    ran: list[str] = []
    result = run_agent(repo_tools(repo, ran, []), [
        tool_call("bash", command="python check_fix.py"),
        tool_call("write_file", path="calc.py", content=FIXED),
        tool_call("bash", command="python check_fix.py"),
        "Fixed add().",
    ], "add(2, 3) returns -1; fix it.")
    assert result.tool_reply(3).content == "ok"
    assert result.fired("repeated_failing_command") == []
    assert not any("This exact command failed before" in h for n in range(4) for h in result.hints(n))

