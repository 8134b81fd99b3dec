"""Error identity: two different failures differ, the same failure repeated matches, and the rules
built on it (repeated errors, loops, no progress, the tool circuit) mean what they say."""

from __future__ import annotations

from immunity.error_identity import benign_exit, error_identity, failing_program, quote_error
from immunity.models import ActionType
from immunity.runtime import Runtime
from immunity.testing import FakeRun

TB = ("Traceback (most recent call last):\n  File \"/tmp/tmp{d}/reproduce.py\", line {n}, in <module>\n"
      "    import h5py\nModuleNotFoundError: No module named 'h5py'")


def sh(command: str) -> dict[str, str]:
    return {"command": command}


def test_program_and_subcommand_of_the_command_that_sets_the_status() -> None:
    assert failing_program("cd /testbed && python reproduce.py --fast") == "python reproduce.py"
    assert failing_program("python -m pytest tests/test_x.py -q") == "python -m pytest tests/test_x.py"
    assert failing_program("python -c 'import x'") == "python -c"
    assert failing_program("git diff --stat") == "git diff"
    assert failing_program("find . -name '*.py' | grep card") == "grep card"
    assert failing_program("FOO=1 timeout 30 pytest tests/a.py") == "pytest tests/a.py"
    assert failing_program("cat <<'EOF' > x.py\nprint(1)\nEOF\npython x.py") == "python x.py"


def test_two_different_failures_with_the_same_status_differ() -> None:
    a = error_identity("bash", sh("python reproduce.py"), "return code 1", TB.format(d="ab12", n=3), 1)
    b = error_identity("bash", sh("git apply fix.patch"), "error: can't open patch 'fix.patch'", None, 1)
    c = error_identity("bash", sh("pytest tests/test_a.py"), "FAILED tests/test_a.py::test_one - assert 1 == 2", None, 1)
    d = error_identity("bash", sh("pytest tests/test_a.py"), "FAILED tests/test_a.py::test_two - assert 1 == 2", None, 1)
    assert a is not None and b is not None and c is not None and d is not None
    assert len({a.key, b.key, c.key, d.key}) == 4
    assert a.error_type == "ModuleNotFoundError" and a.program == "python reproduce.py"
    assert c.tests == ("tests/test_a.py::test_one",)


def test_the_same_failure_repeated_matches() -> None:
    # another temporary directory, another line number, another memory address: the same failure
    a = error_identity("bash", sh("python reproduce.py"), TB.format(d="ab12cd", n=3), None, 1)
    b = error_identity("bash", sh("python reproduce.py"), TB.format(d="ff9900", n=7), None, 1)
    assert a is not None and b is not None and a.key == b.key
    x = error_identity("fetch", {"url": "https://a"}, "Timeout after 30.2s <Conn at 0x7f3a2b1c>", None, None)
    y = error_identity("fetch", {"url": "https://a"}, "Timeout after 31.9s <Conn at 0x7f00aa10>", None, None)
    assert x is not None and y is not None and x.key == y.key


def test_the_original_text_is_kept_for_people_and_hints() -> None:
    a = error_identity("bash", sh("python reproduce.py"), TB.format(d="ab12", n=3), None, 1)
    assert a is not None
    assert a.text == "python reproduce.py: ModuleNotFoundError: No module named 'h5py'"
    quoted = quote_error("Error: x" + "x" * 500)
    assert quoted.startswith("<tool-output>Error: x") and quoted.endswith("...</tool-output>")


def test_status_one_from_search_and_compare_programs_is_an_answer() -> None:
    assert benign_exit(sh("grep -rn 'def parse' pkg/"), 1, "")
    assert benign_exit(sh("pip freeze | grep -i mysql"), 1, "")
    assert benign_exit(sh("diff a.py b.py"), 1, "3c3\n< x\n---\n> y")
    assert not benign_exit(sh("grep -rn x nowhere/"), 2, "grep: nowhere/: No such file or directory")
    assert not benign_exit(sh("grep x missing.txt"), 1, "grep: missing.txt: No such file or directory")
    assert not benign_exit(sh("python reproduce.py"), 1, "")


def test_repeated_error_rule_uses_identity_and_resets_after_a_change() -> None:
    rt = Runtime(store=None)
    try:
        # two different failures, both status 1: not "the same error twice"
        run = FakeRun(rt)
        run.tool("bash", sh("python reproduce.py"), error=TB.format(d="a", n=1), return_code=1)
        d = run.tool("bash", sh("git apply fix.patch"), error="error: can't open patch 'fix.patch'", return_code=1)
        assert not [v for v in d.verdicts if v.error_class == "repeated_tool_error"]
        # grep finding nothing is not a failure at all
        d = run.tool("bash", sh("grep -rn foo ."), error="return code 1", return_code=1)
        d2 = run.tool("bash", sh("grep -rn bar ."), error="return code 1", return_code=1)
        assert not [v for v in d.verdicts + d2.verdicts if not v.ok]
        assert run.state.consecutive_failures == 0 and run.state.steps[-1].data.get("benign_exit")
        # the same failure again with nothing changed: flagged, and the hint quotes the error as printed
        run2 = FakeRun(rt)
        run2.tool("bash", sh("python reproduce.py"), error=TB.format(d="a", n=1), return_code=1)
        d = run2.tool("bash", sh("python reproduce.py"), error=TB.format(d="b", n=2), return_code=1)
        rep = [v for v in d.verdicts if v.error_class == "repeated_tool_error"]
        assert rep and "ModuleNotFoundError: No module named 'h5py'" in (rep[0].hint or "")
        # after an edit, the same failure is a new attempt
        run3 = FakeRun(rt)
        run3.tool("bash", sh("python reproduce.py"), error=TB.format(d="a", n=1), return_code=1)
        run3.tool("edit_file", {"path": "pkg/core.py", "text": "x"}, result="edited")
        assert run3.state.steps[-1].action_type == ActionType.EDIT
        d = run3.tool("bash", sh("python reproduce.py"), error=TB.format(d="a", n=1), return_code=1)
        assert not [v for v in d.verdicts if v.error_class == "repeated_tool_error"]
    finally:
        rt.close()


def test_a_loop_is_the_same_call_with_the_same_result() -> None:
    rt = Runtime(store=None)
    try:
        run = FakeRun(rt)
        ds = [run.tool("get_status", {"job": "j1"}, result=f"progress {10 * i}%") for i in range(5)]
        assert not [v for d in ds for v in d.verdicts if not v.ok]  # it moves: not a loop
        run2 = FakeRun(rt)
        ds = [run2.tool("get_status", {"job": "j1"}, result="progress 10%") for _ in range(3)]
        assert [v.error_class for v in ds[-1].verdicts if not v.ok] == ["loop"]
        blocked = run2.tool("get_status", {"job": "j1"}, result="progress 10%")
        assert blocked.block  # the fourth identical call with the same answer is blocked
    finally:
        rt.close()


def test_no_progress_counts_tool_answers_not_messages_or_edits() -> None:
    rt = Runtime(store=None)
    try:
        run = FakeRun(rt)
        for i in range(8):
            run.model(f"thinking about step {i}")
        for i in range(8):
            run.tool("edit_file", {"path": f"f{i}.py", "text": "x"}, result="")
        assert run.state.steps_without_new_info == 0
        ds = [run.tool("search", {"q": f"q{i}"}, result="no results") for i in range(7)]
        assert any(v.error_class == "no_progress" for d in ds for v in d.verdicts)
    finally:
        rt.close()


def test_the_shell_circuit_opens_for_one_failing_program_not_for_any_failures() -> None:
    rt = Runtime(store=None)
    try:
        run = FakeRun(rt)
        for cmd in ("ls missing", "python a.py", "cat nope.txt", "make build"):
            run.tool("bash", sh(cmd), error=f"{cmd}: failed", return_code=2)
        assert run.state.tool_failures["bash"] == 1
        d = run.tool("bash", sh("echo ok"), result="ok")
        assert not d.block
        run2 = FakeRun(rt)
        for i in range(4):
            run2.tool("fetch", {"url": f"https://x/{i}"}, error="503 Service Unavailable")
        assert run2.state.tool_failures["fetch"] == 4
        assert run2.tool("fetch", {"url": "https://y"}, result="ok").block
    finally:
        rt.close()
