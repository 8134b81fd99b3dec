"""``immunity replay`` (what-if, trying a variant, many runs, --diff) and ``immunity interventions``
through the real CLI, on a store written by real runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from immunity.cli import build_cli
from immunity.interventions.replay import align
from immunity.models import Step
from immunity.runtime import Runtime
from immunity.testing import FakeRun


def invoke(*args: str, code: int = 0) -> Any:
    res = CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res


#: the escalating bandit (its ladder stops the loop); the default bandit keeps to the rules' actions
ESCALATE = 'bandit={"escalate": true}'


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two runs on the same task: one loops on a search (failure), one finds the invoice (success).
    Recorded with immunity in observe-only spirit: a high repeat threshold, so nothing intervened."""
    path = str(tmp_path_factory.mktemp("replay") / "runs.db")
    rt = Runtime(store=path, rules={"repeat": 99, "block_repeat": 99, "stop_repeat": 99})
    try:
        bad = FakeRun(rt, task="find the ACME invoice", run_id="run-loop")
        bad.tool("list_folders", {}, result="inbox, archive")
        for _ in range(5):
            bad.tool("search_invoices", {"q": "ACME"}, result="no invoice found")
        bad.final("I could not find it.")
        bad.end("failure")
        good = FakeRun(rt, task="find the ACME invoice", run_id="run-ok")
        good.tool("list_folders", {}, result="inbox, archive")
        good.tool("search_invoices", {"q": "ACME"}, result="no invoice found")
        good.tool("search_invoices", {"q": "ACME", "folder": "archive"}, result="INV-7 ACME 120 EUR")
        good.final("INV-7, 120 EUR")
        good.end("success")
    finally:
        rt.close()
    return path


def test_replay_shows_what_would_have_been_flagged_and_injected(store: str) -> None:
    out = invoke("replay", "run-loop", "--store", store).output
    assert out.startswith("replay of run-loop (failure): find the ACME invoice")
    assert "flag    loop (verifier:rules): the same search_invoices call ran 3 times in a row" in out
    assert "hint    " in out and "block   " in out
    assert "-> the call would not have run" in out
    assert "0 step(s) flagged" not in out


def test_replay_with_the_bandit_and_a_variant_to_try(store: str) -> None:
    text = "[immunity] Look in the archive folder before searching again."
    out = invoke("replay", "run-loop", "--store", store, "--selector", "bandit", "--variant", f"loop={text}",
                 "--option", "seed=1", "--option", ESCALATE).output
    assert text in out and "[user:loop/" in out
    assert "-> the run would have stopped here" in out and "would not have been reached" in out
    js = json.loads(invoke("replay", "run-loop", "--store", store, "--selector", "bandit", "--variant",
                           f"loop={text}", "--option", ESCALATE, "--json").output)
    (rep,) = js
    kinds = [iv["kind"] for s in rep["steps"] for iv in s["interventions"]]
    assert kinds == ["hint", "block", "stop"] and rep["stop_step"] is not None


def test_replay_writes_nothing(store: str) -> None:
    from immunity.store import SQLiteStore

    before = SQLiteStore(store, background=False)
    n = before.count("runs"), before.count("interventions")
    before.close()
    invoke("replay", "run-loop", "--store", store, "--selector", "bandit")
    after = SQLiteStore(store, background=False)
    assert (after.count("runs"), after.count("interventions")) == n
    after.close()


def test_replay_many_runs_summarises_by_outcome(store: str) -> None:
    out = invoke("replay", "--all", "--store", store, "--selector", "bandit", "--option", ESCALATE).output
    assert "failure: 1 runs, 1 flagged, 1 with an intervention, 1 stopped" in out
    assert "success: 1 runs, 0 flagged, 0 with an intervention, 0 stopped" in out
    js = json.loads(invoke("replay", "--limit", "1", "--store", store, "--json").output)
    assert len(js["runs"]) == 1


def test_diff_shows_where_two_runs_part(store: str) -> None:
    out = invoke("replay", "--diff", "run-loop", "run-ok", "--store", store).output
    assert "A: run-loop (failure" in out and "B: run-ok (success" in out
    assert "the runs part at step 2 of A / step 2 of B" in out
    js = json.loads(invoke("replay", "--diff", "run-loop", "run-ok", "--store", store, "--json").output)
    assert js["diverge_at"] == [2, 2] and js["common"] == 2


def test_errors_are_clear(store: str, tmp_path: Path) -> None:
    assert "no run 'nope'" in invoke("replay", "nope", "--store", store, code=1).output
    assert "--diff needs two run ids" in invoke("replay", "--diff", "run-ok", "--store", store, code=2).output
    assert "no store at" in invoke("replay", "x", "--store", str(tmp_path / "none.db"), code=1).output
    assert "use CLASS=TEXT" in invoke("replay", "run-ok", "--store", store, "--variant", "oops", code=2).output


def test_align_marks_result_changes_and_extra_steps() -> None:
    a = [Step(tool="t", arguments={"x": 1}, result="1"), Step(tool="u", arguments={}, result="ok")]
    b = [Step(tool="t", arguments={"x": 1}, result="2"), Step(tool="u", arguments={}, result="ok"),
         Step(text="done", action_type="DONE")]
    res = align(a, b)
    assert [r["op"] for r in res["rows"]] == ["=", "=", "+"]
    assert res["rows"][0]["same_result"] is False and res["diverge_at"] == (0, 0)


def test_interventions_command_on_an_empty_store(store: str) -> None:
    assert "no intervention statistics" in invoke("interventions", "--store", store).output
