"""Run outcomes from LlamaIndex's own signals (an exception, ``max_iterations``, a stop) and the
user's verdict (``guard.set_outcome``) rewarding the bandit, through LlamaIndex's real runtime."""

from __future__ import annotations

from typing import Any

import pytest
from immunity import Event, EventKind, Outcome, Severity, Verdict, hookimpl
from immunity.testing import FlagAndStop, stored_run
from immunity_llamaindex.testing import ScriptedLLM, tool_call
from llama_index.core.agent.workflow import FunctionAgent


def lookup(key: str) -> str:
    """Look up the value stored under a key."""
    return f"value-of-{key}"


def delete_records(table: str) -> str:
    """Delete every record of a table."""
    return f"deleted {table}"


def Flag() -> FlagAndStop:  # flags every lookup result, stops before delete_records
    return FlagAndStop("lookup")




async def test_completed_run_is_unknown_until_the_user_says(make_runtime: Any) -> None:
    rt = make_runtime(selector="bandit", seed=1, plugins=[Flag()])
    agent = FunctionAgent(tools=[lookup], llm=ScriptedLLM([tool_call("lookup", {"key": "a"}), "It is value-of-a."]))
    guard = rt.protect(agent)
    handler = agent.run(user_msg="What is a?")
    await handler
    run_id = guard.run_id
    assert run_id == guard.run_id_for(handler) and guard.run_ids == [run_id]
    assert stored_run(rt, run_id).outcome == Outcome.UNKNOWN
    guard.set_outcome(run_id, "success", reason="right value")
    assert stored_run(rt, run_id).outcome == Outcome.SUCCESS
    pulls = rt.store.db.execute("select reward from bandit_pulls where run_id = ?", [run_id]).fetchall()
    assert pulls and all(r[0] == 1 for r in pulls)
    guard.uninstrument()


async def test_exception_and_max_iterations_are_failures(make_runtime: Any) -> None:
    rt = make_runtime()
    agent = FunctionAgent(tools=[lookup], llm=ScriptedLLM([]))  # the model raises: its script is empty
    guard = rt.protect(agent)
    with pytest.raises(Exception, match="script"):
        await agent.run(user_msg="What is a?")
    run = stored_run(rt, guard.run_id)
    assert run.outcome == Outcome.FAILURE and run.metadata["outcome_reason"].startswith("raised ")

    agent2 = FunctionAgent(tools=[lookup], llm=ScriptedLLM([tool_call("lookup", {"key": f"k{i}"}) for i in range(9)]))
    guard2 = rt.protect(agent2)
    with pytest.raises(Exception, match="Max iterations"):
        await agent2.run(user_msg="What is a?", max_iterations=2)
    run = stored_run(rt, guard2.run_id)
    assert run.outcome == Outcome.FAILURE and run.metadata["outcome_reason"].startswith("max iterations reached")
    guard.uninstrument()
    guard2.uninstrument()


async def test_stop_is_a_failure(make_runtime: Any) -> None:
    rt = make_runtime(plugins=[Flag()])
    agent = FunctionAgent(tools=[delete_records],
                          llm=ScriptedLLM([tool_call("delete_records", {"table": "users"}), "never"]))
    guard = rt.protect(agent)
    assert str(await agent.run(user_msg="wipe users")) == "deleting records ends this run"
    run = stored_run(rt, guard.run_id)
    assert run.outcome == Outcome.FAILURE and run.metadata["outcome_reason"].startswith("stopped by immunity")
    guard.uninstrument()


class StopOnDeleteFile:
    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        if event.kind == EventKind.TOOL_START and event.tool == "delete_records":
            return Verdict(ok=False, error_class="unsafe_action", severity=Severity.CRITICAL, message="no deletes")
        return None


async def test_guard_resume_after_a_stop_and_the_outcome_follows(make_runtime: Any) -> None:
    rt = make_runtime(plugins=[StopOnDeleteFile()])
    script = [tool_call("lookup", {"key": "a"}), tool_call("delete_records", {"table": "users"}),
              lambda msgs: "a is value-of-a; nothing deleted." if any(
                  "RESUME" in (m.content or "") for m in msgs) else "no hint"]
    agent = FunctionAgent(tools=[lookup, delete_records], llm=ScriptedLLM(script))
    guard = rt.protect(agent, checkpoints="full")
    assert "Stopped by immunity" in str(await agent.run(user_msg="What is a?"))
    run_id = guard.run_id
    assert stored_run(rt, run_id).outcome == Outcome.FAILURE  # stopped

    result = await guard.aresume(hint="[immunity] RESUME: answer from what you read; do not delete.")
    assert str(result) == "a is value-of-a; nothing deleted." and guard.run_ids == [run_id]
    run = stored_run(rt, run_id)
    assert run.status == "finished" and run.outcome == Outcome.UNKNOWN  # the stop no longer holds
    guard.uninstrument()


async def test_model_errors_are_retried_with_backoff_then_fall_back(make_runtime: Any) -> None:
    def overloaded(messages: Any) -> Any:
        raise TimeoutError("503 Service Unavailable: overloaded")

    rt = make_runtime(recovery={"base_delay": 0.0})
    agent = FunctionAgent(tools=[lookup], llm=ScriptedLLM([overloaded, "recovered"]))
    guard = rt.protect(agent)
    assert str(await agent.run(user_msg="What is a?")) == "recovered"
    rt.flush()
    assert [r.kind.value for r in rt.store.recoveries(guard.run_id)] == ["retry"]
    guard.uninstrument()

    rt2 = make_runtime(recovery={"base_delay": 0.0})
    down = ScriptedLLM([overloaded] * 9)
    agent2 = FunctionAgent(tools=[lookup], llm=down)
    guard2 = rt2.protect(agent2, fallback_model=ScriptedLLM(["from the backup"]))
    assert str(await agent2.run(user_msg="What is a?")) == "from the backup"
    rt2.flush()
    assert [r.kind.value for r in rt2.store.recoveries(guard2.run_id)][-1] == "fallback"
    assert agent2.llm is down  # the agent keeps its own model
    guard2.uninstrument()
