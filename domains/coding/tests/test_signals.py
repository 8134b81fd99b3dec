"""The coding domain's content signals, computed by a real runtime on a coding run."""

from __future__ import annotations

import pytest
from immunity.runtime import Runtime
from immunity.testing import FakeRun
from immunity_coding.signals import NAMES, runner_counts


def test_test_runner_summaries() -> None:
    assert runner_counts("===== 2 failed, 10 passed in 0.31s =====") == (2, 10)
    assert runner_counts("== 1 failed, 3 passed, 1 error in 2s ==") == (2, 3)
    assert runner_counts("Ran 12 tests in 0.1s\n\nFAILED (failures=2, errors=1)") == (3, 9)
    assert runner_counts("Ran 5 tests in 0.1s\n\nOK") == (0, 5)
    assert runner_counts("hello world") is None


@pytest.fixture
def rt():
    r = Runtime(store=None, domain="coding", verifiers=["patterns"])
    yield r
    r.close()


def _extra(run: FakeRun) -> dict[str, float]:
    return run.state.extras["patterns"].views[-1].extra


def test_signals_follow_tests_and_edits_through_the_runtime(rt: Runtime) -> None:
    run = FakeRun(rt, task="fix the bug", domain="coding")
    run.tool("bash", {"command": "python -m pytest tests/test_x.py"}, result="=== 3 failed, 7 passed in 1s ===",
             return_code=1)
    e = _extra(run)
    assert set(e) == set(NAMES)
    assert e["coding_reproduced"] == 1.0 and e["coding_log_tests_failed"] > 0 and e["coding_all_passed"] == 0.0
    run.tool("bash", {"command": "sed -i 's/a/b/' src/x.py"}, result="", return_code=0)
    run.tool("bash", {"command": "sed -i 's/c/d/' src/y.py"}, result="", return_code=0)
    e = _extra(run)
    assert e["coding_log_edits_since_pass"] > 0 and e["coding_log_files_edited"] > 0.69  # two files
    run.tool("bash", {"command": "python -m pytest tests/test_x.py"}, result="=== 1 failed, 9 passed in 1s ===",
             return_code=1)
    assert _extra(run)["coding_test_trend"] == -1.0  # fewer failures than the previous run
    run.tool("bash", {"command": "python -m pytest tests/test_x.py"}, result="=== 10 passed in 1s ===", return_code=0)
    e = _extra(run)
    assert e["coding_all_passed"] == 1.0 and e["coding_log_edits_since_pass"] == 0.0
    run.tool("bash", {"command": "python src/x.py"}, result="  File \"src/x.py\", line 3\nSyntaxError: invalid syntax",
             return_code=1)
    assert _extra(run)["coding_syntax_error"] == 1.0


def test_the_substring_guards_change_no_signal() -> None:
    """The expressions run only when a word they need is in the text: the same answers as
    running them on every text."""
    import random

    from immunity_coding import signals as sig

    rng = random.Random(3)
    words = ["3 passed", "1 failed", "2 errors", "error", "Ran 4 tests", "FAILED (failures=1)", "OK", "\n",
             "SyntaxError", "TabError", "Traceback (most recent call last)", "AssertionError", "FAILED x", "ok "]
    for _ in range(5_000):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 6)))
        plain = sig._PYTEST.findall(text)
        counts = sig.runner_counts(text)
        if plain:
            assert counts is not None
        elif sig._RAN.search(text) is None:
            assert counts is None
        assert ("Error" in text and sig._SYNTAX.search(text) is not None) == (sig._SYNTAX.search(text) is not None)
        guarded = ("Traceback" in text or "AssertionError" in text or "failed" in text or "FAILED " in text)
        assert guarded or sig._FAILURE_OUTPUT.search(text) is None
