"""The false-alarm budget, pinned: ``immunity bench precision`` replays successful runs through the
default runtime of their domain (the real coding and support domains, the rules verifier, the
default policy) and no default check may flag more than 5% of them or stop any.

The dev data is not in the repository, so the CI test builds small trace files in the two real
formats (mini-swe-agent JSON Lines, tau-bench JSON), with the things good runs do that the checks
used to mistake for trouble: ``grep`` finding nothing, two different commands failing with status 1,
a test re-run after each fix, a file read page by page, documentation edited after the tests passed,
a file put back with ``git checkout``, scratch files written after ``cd``. The same code path on
failing runs must still flag them, so the budget is not met by switching checks off. A second test
runs on the real dev data when ``/work/shared/data`` exists (a sample; marked slow).
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from immunity.bench.precision import FLAG_BUDGET, dev_datasets, precision_report
from immunity.cli import build_cli
from immunity.models import Outcome

pytest.importorskip("immunity_coding")
pytest.importorskip("immunity_support")

DEV_DATA = os.environ.get("IMMUNITY_DEV_DATA", "/work/shared/data")
SUBMIT = "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git add -A && git diff --cached"


def _mini(instance: str, resolved: bool, steps: list[tuple[str, int | None, str]]) -> dict[str, Any]:
    """A mini-swe-agent 1.x run: each step is (bash command, return code, output)."""
    messages: list[dict[str, str]] = [
        {"role": "system", "content": "You are a helpful assistant that can interact with a computer."},
        {"role": "user", "content": f"<pr_description>\nFix the bug in {instance}.\n</pr_description>"},
    ]
    for command, rc, output in steps:
        messages.append({"role": "assistant", "content": f"THOUGHT: next.\n\n```bash\n{command}\n```"})
        if rc is None:  # the submission: the answer is the patch
            messages.append({"role": "user", "content": output})
        else:
            messages.append({"role": "user", "content": f"<returncode>{rc}</returncode>\n<output>\n{output}\n</output>"})
    return {"instance_id": instance, "resolved": resolved, "exit_status": "Submitted", "messages": messages}


TRACEBACK = ("Traceback (most recent call last):\n  File \"/testbed/reproduce.py\", line {n}, in <module>\n"
             "    from pkg.core import parse\nImportError: cannot import name 'parse' from 'pkg.core' "
             "(/testbed/pkg/core.py)")
FAILED_TEST = ("============================= test session starts ==============================\n"
               "collected 12 items\n\ntests/test_core.py ...F........\n\nFAILED tests/test_core.py::test_parse_empty"
               " - AssertionError: assert None == []\n========================= 1 failed, 11 passed in {t}s "
               "=========================")
PASSED_TEST = "collected 12 items\n\ntests/test_core.py ............\n\n============ 12 passed in 0.31s ============"


def good_coding_runs() -> list[dict[str, Any]]:
    return [
        # explores with grep (nothing found twice: status 1), two different failures, fixes, re-tests after
        # each edit, reads a file page by page, edits the docs after the tests pass, cleans up, submits
        _mini("pkg__pkg-101", True, [
            ("grep -rn 'def parse' pkg/", 1, ""),
            ("grep -rn 'parse(' docs/", 1, ""),
            ("ls pkg", 0, "__init__.py\ncore.py\nutil.py"),
            ("sed -n '1,40p' pkg/core.py", 0, "import re\n\ndef tokenize(text):\n    return text.split()"),
            ("sed -n '40,80p' pkg/core.py", 0, "def _parse(tokens):\n    if not tokens:\n        return None"),
            ("sed -n '80,120p' pkg/core.py", 0, "def render(tree):\n    return str(tree)"),
            ("cat <<'EOF' > reproduce.py\nfrom pkg.core import parse\nprint(parse(''))\nEOF", 0, ""),
            ("python reproduce.py", 1, TRACEBACK.format(n=1)),
            ("git apply fix.patch", 1, "error: can't open patch 'fix.patch': No such file or directory"),
            ("pytest tests/test_core.py", 1, FAILED_TEST.format(t="0.41")),
            ("sed -i 's/return None/return []/' pkg/core.py", 0, ""),
            ("pytest tests/test_core.py", 1, FAILED_TEST.format(t="0.38")),
            ("sed -i 's/^def _parse/def parse/' pkg/core.py", 0, ""),
            ("pytest tests/test_core.py", 0, PASSED_TEST),
            ("python reproduce.py", 0, "[]"),
            ("sed -i 's/returns None/returns an empty list/' docs/api.rst", 0, ""),
            ("git checkout tests/test_util.py", 0, "Updated 1 path from the index"),
            ("rm reproduce.py", 0, ""),
            (SUBMIT, None, "diff --git a/pkg/core.py b/pkg/core.py\n-        return None\n+        return []"),
        ]),
        # makes its scratch project after ``cd``, a test file run fails on an error already there at
        # the start, checks with ``diff`` (status 1: they differ), fixes and verifies
        _mini("pkg__pkg-202", True, [
            ("mkdir -p scratch && cd scratch && cat <<'EOF' > conf.py\nextensions = []\nEOF", 0, ""),
            ("cd scratch && cat <<'EOF' > run.py\nimport pkg\nprint(pkg.render(1))\nEOF", 0, ""),
            ("cd scratch && python run.py", 1, "Traceback (most recent call last):\n  File \"run.py\", line 2\n"
                                              "TypeError: render() takes 0 positional arguments but 1 was given"),
            ("diff pkg/util.py pkg/util_old.py", 1, "3c3\n< x = 1\n---\n> x = 2"),
            ("sed -i 's/def render():/def render(tree):/' pkg/util.py", 0, ""),
            ("cd scratch && python run.py", 0, "1"),
            ("pytest tests/test_util.py", 0, "collected 4 items\n\ntests/test_util.py ....\n\n==== 4 passed in 0.1s ===="),
            ("rm -rf scratch", 0, ""),
            (SUBMIT, None, "diff --git a/pkg/util.py b/pkg/util.py"),
        ]),
        # a short, clean run
        _mini("pkg__pkg-303", True, [
            ("grep -n 'timeout' pkg/net.py", 0, "12:    timeout = 10"),
            ("sed -i 's/timeout = 10/timeout = 30/' pkg/net.py", 0, ""),
            ("python -m pytest tests/test_net.py -q", 0, "3 passed in 0.2s"),
            (SUBMIT, None, "diff --git a/pkg/net.py b/pkg/net.py"),
        ]),
    ]


def bad_coding_runs() -> list[dict[str, Any]]:
    return [
        # the same failing command, unchanged, again and again
        _mini("pkg__pkg-404", False, [
            ("python reproduce.py", 1, TRACEBACK.format(n=3)),
            ("python reproduce.py", 1, TRACEBACK.format(n=3)),
            ("python reproduce.py", 1, TRACEBACK.format(n=3)),
            (SUBMIT, None, ""),
        ]),
        # edits the source and submits without a test run ever passing
        _mini("pkg__pkg-505", False, [
            ("pytest tests/test_core.py", 1, FAILED_TEST.format(t="0.5")),
            ("sed -i 's/return None/return 0/' pkg/core.py", 0, ""),
            (SUBMIT, None, "diff --git a/pkg/core.py b/pkg/core.py"),
        ]),
    ]


def _tau(task_id: int, reward: float, turns: list[dict[str, Any]]) -> dict[str, Any]:
    traj = [{"role": "system", "content": "# Airline Agent Policy\nBe helpful."}, *turns]
    return {"task_id": task_id, "trial": 0, "reward": reward, "info": {"task": {"user_id": "mia_li_3668", "actions": []}},
            "traj": traj}


def _call(i: int, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]}


def _result(i: int, name: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": f"call_{i}", "name": name, "content": content}


def good_support_runs() -> list[dict[str, Any]]:
    return [
        _tau(1, 1.0, [
            {"role": "user", "content": "Hi, what is the status of my reservation? I am mia_li_3668."},
            _call(1, "get_user_details", {"user_id": "mia_li_3668"}),
            _result(1, "get_user_details", json.dumps({"name": "Mia Li", "reservations": ["NO6JO3", "AIXC49"]})),
            _call(2, "get_reservation_details", {"reservation_id": "N06JO3"}),
            _result(2, "get_reservation_details", "Error: reservation not found"),
            _call(3, "get_reservation_details", {"reservation_id": "NO6JO3"}),
            _result(3, "get_reservation_details", json.dumps({"reservation_id": "NO6JO3", "status": "confirmed"})),
            {"role": "assistant", "content": "Your reservation NO6JO3 is confirmed."},
            {"role": "user", "content": "Thanks! ###STOP###"},
        ]),
    ]


def _write(tmp_path: Path) -> dict[str, list[str]]:
    swe = tmp_path / "trajs.jsonl.gz"
    with gzip.open(swe, "wt", encoding="utf-8") as fh:
        for rec in good_coding_runs() + bad_coding_runs():
            fh.write(json.dumps(rec) + "\n")
    tau = tmp_path / "airline.json.gz"
    with gzip.open(tau, "wt", encoding="utf-8") as fh:
        json.dump(good_support_runs(), fh)
    return {"swe-bench": [str(swe)], "tau-bench": [str(tau)]}


def test_successful_runs_stay_within_the_false_alarm_budget(tmp_path: Path) -> None:
    groups = _write(tmp_path)
    report = precision_report(groups)
    assert report.config["selector"] == "bandit"  # the runtime's default selector, as users get it
    summary = report.summary()
    assert summary["swe-bench"]["runs"] == len(good_coding_runs())
    assert summary["tau-bench"]["runs"] == len(good_support_runs())
    for ds, d in summary.items():
        assert d["stopped"] == 0, (ds, d)
        assert d["flagged"] / d["runs"] <= FLAG_BUDGET, (ds, {r.run_id: r.messages for r in report.runs if r.flagged})
    assert report.within_budget()
    # the failed calls of those runs still got their ordinary retry hints: the runtime was live
    assert summary["swe-bench"]["hints"] > 0


def test_the_same_path_still_flags_runs_that_went_wrong(tmp_path: Path) -> None:
    groups = _write(tmp_path)
    report = precision_report({"swe-bench": groups["swe-bench"]}, outcome=Outcome.FAILURE)
    flagged = {r.run_id: set(r.flagged) for r in report.runs}
    assert len(flagged) == 2 and all(flagged.values()), flagged
    checks = set().union(*flagged.values())
    assert "verifier:rules/repeated_tool_error" in checks and "coding:unverified_finish/premature_done" in checks
    # the repeated error's hint quotes the error as the program printed it
    repeated = next(r for r in report.runs if "verifier:rules/repeated_tool_error" in r.flagged)
    assert "ImportError: cannot import name 'parse' from 'pkg.core'" in repeated.messages[
        "verifier:rules/repeated_tool_error"]


def test_bench_precision_command(tmp_path: Path) -> None:
    groups = _write(tmp_path)
    out = tmp_path / "precision.json"
    res = CliRunner().invoke(build_cli(), ["bench", "precision", *groups["swe-bench"], *groups["tau-bench"],
                                           "--markdown", "--check", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "| check | runs flagged |" in res.output and "budget <= 5% flagged and 0 stopped: met" in res.output
    saved = json.loads(out.read_text())
    assert saved["within_budget"] is True and len(saved["runs"]) == 4
    # a budget of 0 flags with --check fails when anything is flagged; here nothing is, so it still passes
    res = CliRunner().invoke(build_cli(), ["bench", "precision", *groups["swe-bench"], "--budget", "0", "--check"])
    assert res.exit_code == 0, res.output


@pytest.mark.slow
@pytest.mark.skipif(not dev_datasets(DEV_DATA), reason="the shared dev data is not on this machine")
def test_dev_data_sample_within_budget() -> None:
    report = precision_report(dev_datasets(DEV_DATA), sample=60, seed=1)
    for ds, d in report.summary().items():
        assert d["stopped"] == 0, ds
        # a sample of 60: the full sets are measured by `immunity bench precision --data` (docs/benchmark.md);
        # allow the sampling error of a 5% rate on 60 runs (its 95% upper bound is about 14%)
        assert d["flagged"] <= 8, (ds, d["flagged"])
