"""The coding domain's content signals for learned risk models (``Domain.signals``).

O(1) per step: a bounded slice of the step's output and a few counters kept in
``state.extras["signals.coding"]``. The names are fixed (:data:`NAMES`).

- test runner summaries (pytest's ``3 failed, 10 passed``, unittest's ``Ran 12 tests`` /
  ``FAILED (failures=2)`` / ``OK``): the failed and passed counts of the latest test run and
  their trend since the previous one;
- edits never followed by a passing test run (edits since the last all-passing run);
- syntax and indentation errors (an edit that broke the file);
- whether the agent reproduced the problem (a failing run or traceback before its first edit);
- how many different files it has edited.
"""

from __future__ import annotations

import math
import re
from typing import Any

from immunity.learning.signals import bounded
from immunity.models import ActionType, Step

NAMES: tuple[str, ...] = (
    "coding_log_tests_failed",
    "coding_log_tests_passed",
    "coding_test_trend",
    "coding_all_passed",
    "coding_log_test_runs",
    "coding_log_edits_since_pass",
    "coding_syntax_error",
    "coding_reproduced",
    "coding_log_files_edited",
)

_PYTEST = re.compile(r"\b(\d+) (passed|failed|errors?|error)\b")
_RAN = re.compile(r"\bRan (\d+) tests?\b")
_UNITTEST_FAILED = re.compile(r"\bFAILED \((?:failures=(\d+))?(?:, )?(?:errors=(\d+))?")
_UNITTEST_OK = re.compile(r"^OK\b", re.M)
_SYNTAX = re.compile(r"\b(?:SyntaxError|IndentationError|TabError)\b")
_FAILURE_OUTPUT = re.compile(r"Traceback \(most recent call last\)|\bAssertionError\b|\b\d+ failed\b|^FAILED ", re.M)
_EDIT_PATH = re.compile(r"(?:sed -i[^\n]*?|>\s*|cat <<[^\n]*>\s*)([\w./-]+\.\w+)")


# Each expression runs only when the text holds a word it cannot match without (a substring test
# is far cheaper than the search; the results are the same).
def _may_count(output: str) -> bool:
    return "passed" in output or "failed" in output or "error" in output


def runner_counts(output: str) -> tuple[int, int] | None:
    """(failed, passed) from a test runner's summary in ``output``, or None when it has none."""
    failed = passed = 0
    found = False
    for n, word in (_PYTEST.findall(output) if _may_count(output) else ()):
        found = True
        if word == "passed":
            passed += int(n)
        else:
            failed += int(n)
    if found:
        return failed, passed
    ran = _RAN.search(output) if "Ran " in output else None
    if ran:
        total = int(ran.group(1))
        m = _UNITTEST_FAILED.search(output)
        if m:
            failed = int(m.group(1) or 0) + int(m.group(2) or 0)
            return failed, max(total - failed, 0)
        if _UNITTEST_OK.search(output):
            return 0, total
    return None


def _memo(state: Any) -> dict[str, Any]:
    m = state.extras.get("signals.coding")
    if m is None:
        m = state.extras["signals.coding"] = {"failed": None, "passed": 0, "trend": 0.0, "runs": 0,
                                              "edits_since_pass": 0, "edited": 0, "files": set(),
                                              "reproduced": 0.0}
    return m


def signals(step: Step, state: Any) -> dict[str, float]:
    m = _memo(state)
    output = bounded((step.error or "") + "\n" + (step.result or ""))
    act = step.action_type
    if act == ActionType.EDIT:
        m["edited"] += 1
        m["edits_since_pass"] += 1
        cmd = str((step.arguments or {}).get("command") or (step.arguments or {}).get("path") or "")
        for path in _EDIT_PATH.findall(cmd[:2000])[:5]:
            if len(m["files"]) < 1000:
                m["files"].add(path)
        path_arg = (step.arguments or {}).get("path")
        if not _EDIT_PATH.search(cmd[:2000]) and path_arg:
            m["files"].add(str(path_arg)[:200])
    counts = runner_counts(output)
    if counts is not None:
        failed, passed = counts
        prev = m["failed"]
        m["trend"] = 0.0 if prev is None else float((failed > prev) - (failed < prev))
        m["failed"], m["passed"] = failed, passed
        m["runs"] += 1
        if failed == 0 and passed > 0:
            m["edits_since_pass"] = 0
    if m["edited"] == 0 and m["reproduced"] == 0.0 and ("Traceback" in output or "AssertionError" in output or
                                                          "failed" in output or "FAILED " in output) \
            and _FAILURE_OUTPUT.search(output):
        m["reproduced"] = 1.0
    last_failed = m["failed"]
    return {
        "coding_log_tests_failed": math.log1p(last_failed or 0),
        "coding_log_tests_passed": math.log1p(m["passed"]),
        "coding_test_trend": m["trend"],
        "coding_all_passed": float(last_failed == 0 and m["passed"] > 0),
        "coding_log_test_runs": math.log1p(m["runs"]),
        "coding_log_edits_since_pass": math.log1p(m["edits_since_pass"]),
        "coding_syntax_error": 1.0 if "Error" in output and _SYNTAX.search(output) else 0.0,
        "coding_reproduced": m["reproduced"],
        "coding_log_files_edited": math.log1p(len(m["files"])),
    }
