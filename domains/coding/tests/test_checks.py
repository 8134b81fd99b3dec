"""Each coding check firing on a realistic fake run, and staying quiet on the correct behaviour.

The runtime loads the coding domain through its entry point and stores into a real SQLite store.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from immunity.runtime import Runtime
from immunity.testing import FakeRun

SWE_TASK = ("<pr_description>separability_matrix does not compute separability correctly for nested "
            "CompoundModels</pr_description>\nYour task is specifically to make changes to non-test files in the "
            "current directory in order to fix the issue described in the PR description.")


def make(**options: Any) -> Runtime:
    return Runtime(store=":memory:", domain="coding", **options)


@pytest.fixture
def rt() -> Iterator[Runtime]:
    runtime = make()
    yield runtime
    runtime.close()


def bash(run: FakeRun, command: str, output: str = "", rc: int = 0):
    return run.tool("bash", {"command": command}, result=output, return_code=rc)


def classes(decision: Any, plugin: str | None = None) -> list[str]:
    return [v.error_class for v in decision.verdicts if not v.ok and (plugin is None or v.plugin == plugin)]


# -------------------------------------------------------------------------------- destructive_command


def test_rm_rf_root_is_blocked_and_never_runs(rt: Runtime) -> None:
    run = FakeRun(rt, task=SWE_TASK, domain="coding")
    bash(run, "ls")
    d = bash(run, "cd /testbed && rm -rf /")
    assert d.block
    assert "unsafe_action" in classes(d, "coding:destructive_command")
    assert "rm -rf /" in (d.message or "")
    step = run.state.last_step
    assert step.data.get("blocked") and step.result is None
    run.end("failure")
    stored = rt.store.verdicts(run.run.run_id)
    assert any(v.error_class == "unsafe_action" and v.block for v in stored)


@pytest.mark.parametrize("command", ["git reset --hard HEAD~2", "git push --force origin main", "rm -rf ~/"])
def test_other_destructive_commands_are_blocked(rt: Runtime, command: str) -> None:
    run = FakeRun(rt, domain="coding")
    d = bash(run, command)
    assert d.block and "unsafe_action" in classes(d)


def test_removing_own_scratch_files_is_allowed(rt: Runtime) -> None:
    run = FakeRun(rt, domain="coding")
    bash(run, "mkdir -p testapp && touch testapp/__init__.py")
    d = bash(run, "rm -rf testapp reproduce_issue.py")
    assert not d.block and classes(d, "coding:destructive_command") == []


def test_allow_destructive_turns_the_block_into_a_warning() -> None:
    with make(coding={"allow_destructive": True}) as rt:
        run = FakeRun(rt, domain="coding")
        d = bash(run, "git reset --hard HEAD")
        assert not d.block
        assert "unsafe_action" in classes(d, "coding:destructive_command")


# -------------------------------------------------------------------------------- unverified_finish

SUBMIT = "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git add -A && git diff --cached"


def test_submit_after_an_untested_edit_fires(rt: Runtime) -> None:
    run = FakeRun(rt, task=SWE_TASK, domain="coding")
    bash(run, "grep -n 'def _cstack' astropy/modeling/separable.py", "242:def _cstack(left, right):")
    bash(run, "pytest astropy/modeling/tests/test_separable.py", "12 passed in 0.3s")
    bash(run, "sed -i 's/cright\\[-right.shape\\[0\\]:, -right.shape\\[1\\]:\\] = 1/= right/' "
              "astropy/modeling/separable.py")
    d = bash(run, SUBMIT, "diff --git a/astropy/modeling/separable.py ...")
    assert "premature_done" in classes(d, "coding:unverified_finish")
    v = next(v for v in d.verdicts if v.plugin == "coding:unverified_finish")
    assert v.evidence["edited"] == ["astropy/modeling/separable.py"]
    assert not d.block  # a hint by default


def test_submit_after_a_passing_test_run_is_quiet(rt: Runtime) -> None:
    run = FakeRun(rt, task=SWE_TASK, domain="coding")
    bash(run, "sed -i 's/= 1/= right/' astropy/modeling/separable.py")
    bash(run, "pytest astropy/modeling/tests/test_separable.py", "13 passed in 0.3s")
    bash(run, "rm reproduce_issue.py")  # cleaning up is not an edit to verify
    bash(run, "git checkout pyproject.toml")  # nor is putting back a file it never edited
    d = bash(run, SUBMIT, "diff --git ...")
    assert classes(d, "coding:unverified_finish") == []


def test_a_finishing_touch_after_the_fix_was_verified_is_quiet_unless_strict() -> None:
    for strict, fires in ((False, False), (True, True)):
        with make(coding={"strict_finish": strict}) as rt:
            run = FakeRun(rt, task=SWE_TASK, domain="coding")
            bash(run, "sed -i 's/= 1/= right/' astropy/modeling/separable.py")
            bash(run, "pytest astropy/modeling/tests/test_separable.py", "13 passed in 0.3s")
            bash(run, "sed -i '/print(.DEBUG/d' astropy/modeling/separable.py")  # removes a debug print
            d = bash(run, SUBMIT, "diff --git ...")
            assert ("premature_done" in classes(d, "coding:unverified_finish")) is fires


def test_docs_reverts_and_scratch_files_after_cd_are_not_edits_to_verify() -> None:
    with make(coding={"strict_finish": True}) as rt:
        run = FakeRun(rt, task=SWE_TASK, domain="coding")
        bash(run, "sed -i 's/= 1/= right/' astropy/modeling/separable.py")
        bash(run, "sed -i 's/= 1/= 2/' astropy/modeling/tests/test_separable.py")
        bash(run, "pytest astropy/modeling/tests/test_separable.py", "13 passed in 0.3s")
        bash(run, "sed -i 's/returns None/returns a list/' docs/modeling/index.rst")
        bash(run, "echo '- fixed nested models' >> CHANGES.rst")
        bash(run, "git checkout astropy/modeling/tests/test_separable.py", "Updated 1 path from the index")
        bash(run, "mkdir -p scratch && cd scratch && cat <<'EOF' > conf.py\nx = 1\nEOF")
        bash(run, "cd scratch && cat <<'EOF' > run.py\nprint(1)\nEOF")
        d = bash(run, SUBMIT, "diff --git ...")
        assert classes(d, "coding:unverified_finish") == [], [v.message for v in d.verdicts]


def test_a_test_run_whose_output_shows_failures_does_not_count(rt: Runtime) -> None:
    run = FakeRun(rt, task=SWE_TASK, domain="coding")
    bash(run, "sed -i 's/= 1/= right/' astropy/modeling/separable.py")
    # no return code reported (some tools don't), but the output says it failed
    run.tool("bash", {"command": "pytest astropy/modeling/tests/test_separable.py"},
             result="FAILED astropy/modeling/tests/test_separable.py::test_cstack - AssertionError\n1 failed, 12 passed")
    d = bash(run, SUBMIT)
    assert "premature_done" in classes(d, "coding:unverified_finish")


def test_a_final_answer_after_an_editor_edit_fires(rt: Runtime) -> None:
    run = FakeRun(rt, task="fix the parser", domain="coding")
    run.tool("str_replace_editor", {"command": "str_replace", "path": "src/parser.py", "old_str": "a", "new_str": "b"},
             result="The file src/parser.py has been edited.")
    d = run.final("I fixed the parser.")
    assert "premature_done" in classes(d, "coding:unverified_finish")


def test_block_unverified_finish_blocks_the_submit() -> None:
    with make(coding={"block_unverified_finish": True}) as rt:
        run = FakeRun(rt, domain="coding")
        bash(run, "sed -i 's/x/y/' src/app.py")
        d = bash(run, SUBMIT)
        assert d.block


# -------------------------------------------------------------------------------- out_of_scope_edit


def test_finishing_with_an_existing_test_file_changed_when_told_not_to_fires(rt: Runtime) -> None:
    run = FakeRun(rt, task=SWE_TASK, domain="coding")
    d = bash(run, "sed -i '195s/assertIn/assertNotIn/' tests/migrations/test_loader.py")
    assert classes(d, "coding:out_of_scope_edit") == []  # trying something in a test file is fine...
    bash(run, "pytest tests/migrations/test_loader.py", "3 passed")
    d = bash(run, SUBMIT, "diff --git ...")
    assert "scope_creep" in classes(d, "coding:out_of_scope_edit")  # ...delivering it is not
    v = next(v for v in d.verdicts if v.plugin == "coding:out_of_scope_edit")
    assert v.evidence["paths"] == ["tests/migrations/test_loader.py"] and "git checkout" in (v.hint or "")


def test_a_test_file_put_back_before_finishing_is_quiet(rt: Runtime) -> None:
    run = FakeRun(rt, task=SWE_TASK, domain="coding")
    bash(run, "sed -i '195s/assertIn/assertNotIn/' tests/migrations/test_loader.py")
    bash(run, "pytest tests/migrations/test_loader.py", "3 passed")
    bash(run, "git checkout tests/migrations/test_loader.py", "Updated 1 path from the index")
    d = bash(run, SUBMIT, "diff --git ...")
    assert classes(d, "coding:out_of_scope_edit") == []


def test_editing_installed_packages_fires(rt: Runtime) -> None:
    run = FakeRun(rt, task="fix the bug", domain="coding")
    d = bash(run, "sed -i 's/a/b/' /usr/lib/python3.11/site-packages/requests/models.py")
    v = next(v for v in d.verdicts if v.plugin == "coding:out_of_scope_edit")
    assert v.error_class == "scope_creep" and v.severity == "error"


def test_source_edits_and_own_test_scripts_are_in_scope(rt: Runtime) -> None:
    run = FakeRun(rt, task=SWE_TASK, domain="coding")
    d1 = bash(run, "sed -i 's/a/b/' astropy/modeling/separable.py")
    d2 = bash(run, "cat <<'EOF' > test_nested.py\nfrom astropy.modeling import models\nEOF")
    d3 = bash(run, "rm test_nested.py")
    assert [classes(d, "coding:out_of_scope_edit") for d in (d1, d2, d3)] == [[], [], []]


def test_scope_globs_from_the_options() -> None:
    with make(coding={"scope": ["src/parser/*"], "root": "/repo"}) as rt:
        run = FakeRun(rt, domain="coding")
        ok = run.tool("write_file", {"path": "/repo/src/parser/lex.py", "content": "x"})
        bad = run.tool("write_file", {"path": "/repo/src/render/html.py", "content": "x"})
        outside = run.tool("write_file", {"path": "/etc/hosts", "content": "x"})
        assert classes(ok, "coding:out_of_scope_edit") == []
        assert classes(bad, "coding:out_of_scope_edit") == ["scope_creep"]
        assert classes(outside, "coding:out_of_scope_edit") == ["scope_creep"]


# -------------------------------------------------------------------------------- repeated_failing_command


def test_rerunning_a_failed_test_with_no_change_fires(rt: Runtime) -> None:
    run = FakeRun(rt, domain="coding")
    bash(run, "pytest astropy/table/tests/test_mixin.py", "1 failed, 40 passed", rc=1)
    bash(run, "nl -ba astropy/table/table.py | sed -n '1240,1250p'", "1240 ...")
    d = bash(run, "pytest astropy/table/tests/test_mixin.py", "1 failed, 40 passed", rc=1)
    assert classes(d, "coding:repeated_failing_command") == ["repeated_failing_command"]


def test_rerunning_after_an_edit_is_quiet(rt: Runtime) -> None:
    run = FakeRun(rt, domain="coding")
    bash(run, "python reproduce_issue.py", "Traceback (most recent call last):\nValueError: bad", rc=1)
    bash(run, "sed -i 's/<= 0/< 0/' lib/matplotlib/image.py")
    d = bash(run, "python reproduce_issue.py", "ok")
    assert classes(d, "coding:repeated_failing_command") == []


def test_checks_stay_out_of_other_domains_runs(rt: Runtime) -> None:
    run = FakeRun(rt, domain="support")
    d = bash(run, "git reset --hard")
    assert not d.block and classes(d, "coding:destructive_command") == []


_OUTPUTS = ["", "3 failed, 10 passed in 1.2s", "10 passed in 0.5s", "1 error in 2s", "2 errors", "FAILED tests/x.py::t",
            "ERROR: not found", "ERROR collecting", "FAILED (failures=2)", "Ran 12 tests in 0.1s\n\nOK", "OK",
            "Traceback (most recent call last):\n  File x", "all good", "failed", "passed", "error", "Ran", "OKAY",
            "x\nFAILED \nOK", "errors=1", "no tests ran", "5 Failed", "1 PASSED", "ok", "\nOK\n", "Errors: 3",
            "éé 2 failed ü", "Ran 1 test\nFAILED (errors=1)", "ERROR\nOK", "= 4 passed, 1 warning ="]


@pytest.mark.parametrize("out", _OUTPUTS + [a + "\n" + b for a in _OUTPUTS[:12] for b in _OUTPUTS[12:]])
def test_judging_a_test_run_gives_what_the_plain_expressions_give(out: str) -> None:
    from immunity.models import Step
    from immunity_coding.checks import _FAILED_TESTS, _PASSED_TESTS, test_output_passed

    plain = False if _FAILED_TESTS.search(out) else True if _PASSED_TESTS.search(out) else None
    assert test_output_passed(Step(run_id="r", index=0, tool="bash", result=out)) is plain
