"""Run outcomes from LangGraph's own signals (an exception, the recursion limit, a stop) and the
user's verdict (``guard.set_outcome``) rewarding the bandit, through LangGraph's real runtime."""

from __future__ import annotations

from typing import Any

import pytest
from immunity import Event, EventKind, Intervention, InterventionKind, Outcome, Severity, Verdict, hookimpl
from immunity.testing import FlagAndStop, stored_run
from immunity_langgraph.testing import ScriptedChatModel, tool_call
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.errors import GraphRecursionError


def Flag() -> FlagAndStop:  # flags every get_weather result, stops before delete_records
    return FlagAndStop("get_weather", flag_message="check the city", stop_text="mass deletion requested")




def test_completed_run_is_unknown_until_the_user_says(make_runtime: Any, react_agent: Any,
                                                      weather_tools: Any) -> None:
    rt = make_runtime(selector="bandit", seed=1, plugins=[Flag()])
    model = ScriptedChatModel(script=[tool_call("get_weather", city="Paris"), "Sunny in Paris."])
    graph = react_agent(model, weather_tools, InMemorySaver())
    guard = rt.protect(graph)
    graph.invoke({"messages": [("user", "weather in Paris?")]}, {"configurable": {"thread_id": "t1"}})
    run_id = guard.run_id
    assert run_id is not None and guard.run_ids == [run_id]
    assert stored_run(rt, run_id).outcome == Outcome.UNKNOWN
    guard.set_outcome(run_id, "failure", reason="it rains in Paris")
    run = stored_run(rt, run_id)
    assert run.outcome == Outcome.FAILURE and run.metadata["outcome_source"] == "user"
    pulls = rt.store.db.execute("select reward from bandit_pulls where run_id = ?", [run_id]).fetchall()
    assert pulls and all(r[0] == 0 for r in pulls)


def test_exception_and_recursion_limit_are_failures(make_runtime: Any, tool_graph: Any, weather_tools: Any) -> None:
    rt = make_runtime()
    model = ScriptedChatModel(script=[])  # the model raises: its script is empty
    graph = tool_graph(model, weather_tools)
    guard = rt.protect(graph)
    with pytest.raises(RuntimeError):
        graph.invoke({"messages": [("user", "hi")]})
    run = stored_run(rt, guard.run_id)
    assert run.outcome == Outcome.FAILURE and run.metadata["outcome_reason"].startswith("raised ScriptExhausted")

    model.reset([tool_call("get_weather", city=f"city {i}") for i in range(20)])
    with pytest.raises(GraphRecursionError):
        graph.invoke({"messages": [("user", "hi")]}, {"recursion_limit": 4})
    assert len(guard.run_ids) == 2
    run = stored_run(rt, guard.run_id)
    assert run.outcome == Outcome.FAILURE and run.metadata["outcome_reason"].startswith("recursion limit reached")


def test_stop_is_a_failure(make_runtime: Any, react_agent: Any, weather_tools: Any) -> None:
    rt = make_runtime(plugins=[Flag()])
    model = ScriptedChatModel(script=[tool_call("delete_records", table="users"), "never reached"])
    graph = react_agent(model, weather_tools)
    guard = rt.protect(graph)
    graph.invoke({"messages": [("user", "wipe users")]})
    run = stored_run(rt, guard.run_id)
    assert run.status == "stopped" and run.outcome == Outcome.FAILURE
    assert run.metadata["outcome_reason"] == "stopped by immunity: mass deletion requested"


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


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_guard_resume_answers_the_interrupt(make_runtime: Any, tool_graph: Any, weather_tools: Any, calls: Any,
                                           mode: str) -> None:
    import asyncio

    rt = make_runtime(plugins=[AskBeforeDelete()])
    model = ScriptedChatModel(script=[tool_call("delete_records", table="users"), "done"])
    graph = tool_graph(model, weather_tools, InMemorySaver())
    guard = rt.protect(graph)
    out = graph.invoke({"messages": [("user", "wipe users")]}, {"configurable": {"thread_id": f"ask-{mode}"}})
    assert out["__interrupt__"] and calls.count("delete_records") == 0
    assert guard.run_id == f"langgraph-ask-{mode}"
    out = guard.resume(value="approve") if mode == "sync" else asyncio.run(guard.aresume(value="approve"))
    assert out["messages"][-1].content == "done" and calls.count("delete_records") == 1
    assert guard.run_ids == [f"langgraph-ask-{mode}"] and stored_run(rt, guard.run_id).status == "finished"
