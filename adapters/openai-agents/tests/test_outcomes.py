"""Run outcomes from the SDK's own signals (an exception, ``max_turns``, a guardrail tripwire, a stop)
and the user's verdict (``guard.set_outcome``) rewarding the bandit, through the real SDK runner."""

from __future__ import annotations

from typing import Any

import pytest
from agents import (
    Agent,
    GuardrailFunctionOutput,
    MaxTurnsExceeded,
    OutputGuardrailTripwireTriggered,
    Runner,
    function_tool,
    output_guardrail,
)
from immunity import Event, EventKind, Intervention, InterventionKind, Outcome, Severity, Verdict, hookimpl
from immunity.testing import FlagAndStop, stored_run
from immunity_openai_agents.testing import ScriptedModel, call


@function_tool
def lookup(key: str) -> str:
    """Look up the value stored under a key."""
    return f"value-of-{key}"


@function_tool
def delete_records(table: str) -> str:
    """Delete every record of a table."""
    return f"deleted {table}"


def Flag() -> FlagAndStop:  # flags every lookup result, stops before delete_records
    return FlagAndStop("lookup")




def test_completed_run_is_unknown_until_the_user_says(make_runtime: Any) -> None:
    rt = make_runtime(Flag(), selector="bandit", seed=1)
    agent = Agent(name="support", model=ScriptedModel([call("lookup", key="a"), "It is value-of-a."]), tools=[lookup])
    guard = rt.protect(agent)
    Runner.run_sync(agent, "What is a?")
    run_id = guard.run_id
    assert run_id is not None and guard.run_ids == [run_id]
    assert stored_run(rt, run_id).outcome == Outcome.UNKNOWN
    guard.set_outcome(run_id, "success", reason="right value")
    assert stored_run(rt, run_id).outcome == Outcome.SUCCESS
    pulls = rt.store.db.execute("select reward from bandit_pulls where run_id = ?", [run_id]).fetchall()
    assert pulls and all(r[0] == 1 for r in pulls)


def test_exception_and_max_turns_are_failures(make_runtime: Any) -> None:
    rt = make_runtime()
    agent = Agent(name="support", model=ScriptedModel([]), tools=[lookup])  # the model raises: empty script
    guard = rt.protect(agent)
    with pytest.raises(Exception, match="script"):
        Runner.run_sync(agent, "What is a?")
    run = stored_run(rt, guard.run_id)
    assert run.outcome == Outcome.FAILURE and run.metadata["outcome_reason"].startswith("raised ")

    agent2 = Agent(name="looper", model=ScriptedModel([call("lookup", key=f"k{i}") for i in range(9)]), tools=[lookup])
    guard2 = rt.protect(agent2)
    with pytest.raises(MaxTurnsExceeded):
        Runner.run_sync(agent2, "What is a?", max_turns=2)
    run = stored_run(rt, guard2.run_id)
    assert run.outcome == Outcome.FAILURE and run.metadata["outcome_reason"].startswith("max turns reached")


def test_guardrail_tripwire_is_a_failure(make_runtime: Any) -> None:
    @output_guardrail
    async def no_secrets(ctx: Any, agent: Any, output: Any) -> GuardrailFunctionOutput:
        return GuardrailFunctionOutput(output_info="secret", tripwire_triggered="secret" in str(output))

    rt = make_runtime()
    agent = Agent(name="support", model=ScriptedModel(["the secret is 42"]), output_guardrails=[no_secrets])
    guard = rt.protect(agent)
    with pytest.raises(OutputGuardrailTripwireTriggered):
        Runner.run_sync(agent, "Tell me the secret")
    run = stored_run(rt, guard.run_id)
    assert run.outcome == Outcome.FAILURE
    assert run.metadata["outcome_reason"] == "guardrail tripped (OutputGuardrailTripwireTriggered: no_secrets)"


def test_stop_is_a_failure(make_runtime: Any) -> None:
    rt = make_runtime(Flag())
    agent = Agent(name="support", model=ScriptedModel([call("delete_records", table="users"), "never"]),
                  tools=[delete_records])
    guard = rt.protect(agent)
    result = Runner.run_sync(agent, "wipe users")
    assert "deleting records ends this run" in str(result.final_output)
    run = stored_run(rt, guard.run_id)
    assert run.outcome == Outcome.FAILURE and run.metadata["outcome_reason"].startswith("stopped by immunity")


class AskBeforeDelete:
    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        if event.kind == EventKind.TOOL_START and event.tool == "delete_records":
            return Verdict(ok=False, error_class="policy_violation", severity=Severity.WARNING, message="deletes")
        return None

    @hookimpl(tryfirst=True)
    def immunity_intervene(self, event: Event) -> Intervention | None:
        if event.kind == EventKind.TOOL_START and event.tool == "delete_records":
            return Intervention(kind=InterventionKind.ASK_HUMAN, text="Delete every user?")
        return None


@pytest.mark.parametrize("approve", [True, False])
async def test_guard_resume_after_an_approval_pause(make_runtime: Any, approve: bool) -> None:
    rt = make_runtime(AskBeforeDelete())
    model = ScriptedModel([call("delete_records", table="users"), "Done."])
    agent = Agent(name="admin", model=model, tools=[delete_records])
    guard = rt.protect(agent)
    first = await Runner.run(agent, "wipe users")
    assert first.interruptions and stored_run(rt, guard.run_id).status == "interrupted"
    second = await guard.aresume(approve=approve)
    assert second.final_output == "Done." and len(guard.run_ids) == 1
    run = stored_run(rt, guard.run_id)
    assert run.status == "finished" and run.outcome == Outcome.UNKNOWN
    outputs = [s.result or s.error for s in rt.store.steps(guard.run_id) if s.tool == "delete_records"]
    assert ("deleted users" in outputs) is approve


def test_a_tool_shared_by_agents_of_two_guards_is_recorded_once(make_runtime: Any) -> None:
    calls: list[str] = []

    @function_tool
    def fetch(url: str) -> str:
        """Fetch a page."""
        calls.append(url)
        raise TimeoutError("the site did not answer")

    first = Agent(name="first", model=ScriptedModel([call("fetch", url="a"), "gave up"]), tools=[fetch])
    second = Agent(name="second", model=ScriptedModel(["unused"]), tools=[fetch])
    rt1, rt2 = make_runtime(), make_runtime()
    guard1, guard2 = rt1.protect(first), rt2.protect(second)
    Runner.run_sync(first, "get a")
    assert calls == ["a"] and guard2.run_ids == []
    rt1.flush()
    steps = [s for s in rt1.store.steps(guard1.run_id) if s.tool == "fetch"]
    assert len(steps) == 1 and "did not answer" in (steps[0].error or "")


class Flaky(ScriptedModel):
    """A scripted model whose first ``fails`` calls raise a transient provider error."""

    def __init__(self, script: list[Any], fails: int, **kw: Any):
        super().__init__(script, **kw)
        self.fails, self.attempts = fails, 0

    async def get_response(self, *args: Any, **kwargs: Any) -> Any:
        self.attempts += 1
        if self.attempts <= self.fails:
            raise TimeoutError("503 Service Unavailable: overloaded, retry-after: 0")
        return await super().get_response(*args, **kwargs)


def test_model_errors_are_retried_with_backoff_then_fall_back(make_runtime: Any) -> None:
    rt = make_runtime(recovery={"base_delay": 0.0})
    flaky = Flaky(["recovered"], fails=1, name="flaky")
    agent = Agent(name="support", model=flaky)
    guard = rt.protect(agent)
    assert Runner.run_sync(agent, "hi").final_output == "recovered" and flaky.attempts == 2  # retried once
    rt.flush()
    assert [r.kind.value for r in rt.store.recoveries(guard.run_id)] == ["retry"]

    down = Flaky([], fails=99, name="down")
    backup = ScriptedModel(["from the backup"], name="backup")
    agent2 = Agent(name="support2", model=down)
    rt2 = make_runtime(recovery={"base_delay": 0.0})
    guard2 = rt2.protect(agent2, fallback_model=backup)
    assert Runner.run_sync(agent2, "hi").final_output == "from the backup"
    rt2.flush()
    kinds = [r.kind.value for r in rt2.store.recoveries(guard2.run_id)]
    assert kinds[-1] == "fallback" and down.attempts == len(kinds)
    guard2.uninstrument()
    assert agent2.model is down  # uninstrument puts the agent's own model back
