"""Run outcomes: the framework's outcome at the end of a run, the user's verdict (``set_outcome``,
``immunity runs mark``) and the bandit's reward from them, through a real runtime and SQLite store."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from click.testing import CliRunner
from immunity import hookimpl
from immunity.adapter import Guard
from immunity.cli import build_cli
from immunity.models import Event, Outcome, Severity, Verdict
from immunity.outcomes import end_run
from immunity.runtime import Runtime
from immunity.testing import FakeAdapter, FakeRun


class Flag:
    """Flags every completed call of the tool ``flag_me`` (so the bandit picks a hint)."""

    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        if event.kind.value == "tool_end" and event.tool == "flag_me":
            return Verdict(ok=False, error_class="wrong_parameters", severity=Severity.WARNING,
                           message="the argument 'x' does not match the record")
        return None


def rewards(path: Any, run_id: str) -> list[Any]:
    with sqlite3.connect(str(path)) as db:
        return [r[0] for r in db.execute("select reward from bandit_pulls where run_id = ?", [run_id])]


def arm_counts(path: Any) -> tuple[int, int]:
    with sqlite3.connect(str(path)) as db:
        s, f = db.execute("select sum(successes), sum(failures) from bandit_arms where context like 'class=%'"
                          ).fetchone()
    return int(s or 0), int(f or 0)


def bandit_run(rt: Runtime) -> str:
    run = FakeRun(rt, task="fix it", domain="coding")
    run.tool("flag_me", {"x": 1})
    hinted = run.model("ok")
    assert hinted.verdicts == [] and run.state.interventions == 1  # the bandit chose a hint
    run.final("done")
    run.end()  # completed: unknown until someone says
    return run.run.run_id


def test_user_verdict_rewards_the_bandit_live_then_from_the_cli(tmp_path: Any) -> None:
    db = tmp_path / "s.db"
    rt = Runtime(store=str(db), selector="bandit", seed=1, plugins=[Flag()])
    guard = FakeAdapter(rt)
    assert isinstance(guard, Guard) and guard.run_id is None
    run_id = bandit_run(rt)
    guard.saw_run(run_id)
    rt.flush()
    assert rt.store.get_run(run_id).outcome == Outcome.UNKNOWN and rewards(db, run_id) == [None]

    run = guard.set_outcome(run_id, "success", reason="the tests pass")
    rt.flush()
    stored = rt.store.get_run(run_id)
    assert stored.outcome == Outcome.SUCCESS and run is not None
    assert stored.metadata["outcome_reason"] == "the tests pass" and stored.metadata["outcome_source"] == "user"
    assert rewards(db, run_id) == [1] and arm_counts(db) == (1, 0)
    rt.close()

    # later, from the command line: the verdict is corrected and the reward taken back first
    cli = build_cli()
    res = CliRunner().invoke(cli, ["runs", "--store", str(db), "mark", run_id[:12], "failure", "--reason",
                                   "the fix was reverted"])
    assert res.exit_code == 0, res.output
    assert f"{run_id}: failure (the fix was reverted)" in res.output
    assert rewards(db, run_id) == [0] and arm_counts(db) == (0, 1)
    again = Runtime(store=str(db))
    try:
        run2 = again.store.get_run(run_id)
        assert run2.outcome == Outcome.FAILURE and run2.metadata["outcome_reason"] == "the fix was reverted"
    finally:
        again.close()
    missing = CliRunner().invoke(cli, ["runs", "--store", str(db), "mark", "nope", "success"])
    assert missing.exit_code != 0 and "no run 'nope'" in missing.output


def test_set_outcome_on_a_stored_run_of_another_process(tmp_path: Any) -> None:
    db = tmp_path / "s.db"
    with Runtime(store=str(db), selector="bandit", seed=2, plugins=[Flag()]) as rt:
        run_id = bandit_run(rt)
    with Runtime(store=str(db), selector="bandit", seed=2) as rt2:
        guard = FakeAdapter(rt2)
        guard.set_outcome(run_id, "failure", reason="wrong answer")
        rt2.flush()
        assert rt2.store.get_run(run_id).outcome == Outcome.FAILURE
        assert rewards(db, run_id) == [0]
        with pytest.raises(KeyError):
            guard.set_outcome("run_unknown", "success")
        with pytest.raises(ValueError):
            guard.set_outcome(run_id, "great")


def test_a_framework_outcome_never_replaces_the_users_verdict(make_runtime: Any) -> None:
    rt = make_runtime()
    guard = FakeAdapter(rt)
    run = FakeRun(rt, task="t")
    guard.set_outcome(run.run.run_id, "success", reason="checked by hand")  # during the run
    end_run(run.session, "failure", reason="raised TimeoutError")
    assert run.run.outcome == Outcome.SUCCESS and run.run.metadata["outcome_reason"] == "checked by hand"

    other = FakeRun(rt, task="t")
    end_run(other.session, "failure", reason="max iterations reached")
    assert other.run.outcome == Outcome.FAILURE
    assert other.run.metadata == {**other.run.metadata, "outcome_reason": "max iterations reached",
                                  "outcome_source": "framework"}
    guard.set_outcome(other.run.run_id, "success")  # the user knows better
    assert other.run.outcome == Outcome.SUCCESS and "outcome_reason" not in other.run.metadata

    done = FakeRun(rt, task="t")
    end_run(done.session, None, output="an answer")  # completed: not a success by itself
    assert done.run.outcome == Outcome.UNKNOWN and done.session.ended
