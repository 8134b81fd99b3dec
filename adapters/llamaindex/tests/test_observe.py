"""Attach / detach and observation, through real FunctionAgent and ReActAgent runs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from typing import Any

import pytest
from immunity.models import ActionType, EventKind
from immunity_llamaindex.adapter import LlamaIndexAdapter
from immunity_llamaindex.testing import ScriptedLLM, react_action, react_answer, tool_call, tool_calls
from llama_index.core.agent.workflow import FunctionAgent, ReActAgent
from llama_index.core.instrumentation import get_dispatcher


def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"Sunny, 21C in {city}"


async def get_time(city: str) -> str:
    """The local time in a city."""
    return f"12:00 in {city}"


def kinds(rt: Any, run_id: str) -> list[str]:
    rt.flush()
    return [e.kind.value for e in rt.store.events(run_id)]


def test_import_does_not_import_llamaindex() -> None:
    code = ("import sys, immunity_llamaindex, immunity_llamaindex.adapter\n"
            "assert 'llama_index' not in sys.modules, sorted(m for m in sys.modules if m.startswith('llama'))\n"
            "print('clean')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


def test_registered_and_matches(rt: Any) -> None:
    assert rt.pm.registry("adapters")["llamaindex"] is LlamaIndexAdapter
    assert LlamaIndexAdapter.version_supported() is True

    class MyAgent(FunctionAgent):  # a user subclass defined outside llama_index still matches
        pass

    llm = ScriptedLLM([])
    assert LlamaIndexAdapter.matches(FunctionAgent(tools=[get_weather], llm=llm))
    assert LlamaIndexAdapter.matches(MyAgent(tools=[get_weather], llm=llm))
    assert not LlamaIndexAdapter.matches(object())
    with pytest.raises(TypeError):
        rt.protect(llm)  # a model is not something to protect


async def test_every_workflow_step_as_node_events(rt: Any) -> None:
    agent = FunctionAgent(tools=[get_weather], llm=ScriptedLLM([tool_call("get_weather", {"city": "Oslo"}), "ok"]))
    guard = rt.protect(agent, node_events="all")
    handler = agent.run(user_msg="Oslo?")
    await handler
    rt.flush()
    nodes = [e.node for e in rt.store.events(guard.run_id_for(handler)) if e.kind == EventKind.NODE_START]
    assert nodes == ["init_run", "setup_agent", "run_agent_step", "parse_agent_output", "call_tool",
                     "aggregate_tool_results", "setup_agent", "run_agent_step", "parse_agent_output"]
    guard.uninstrument()


@pytest.mark.parametrize("streaming", [False, True])
async def test_function_agent_run_is_observed_and_stored(rt: Any, streaming: bool) -> None:
    llm = ScriptedLLM([tool_call("get_weather", {"city": "Paris"}), "It is sunny in Paris."], model="scripted-4")
    agent = FunctionAgent(name="weather", tools=[get_weather], llm=llm, streaming=streaming,
                          system_prompt="Answer weather questions.")
    guard = rt.protect(agent, node_events="turns")
    handler = agent.run(user_msg="Weather in Paris?")
    result = await handler
    assert str(result) == "It is sunny in Paris."

    run_id = guard.run_id_for(handler)
    assert run_id == f"llamaindex-{handler.run_id}"
    rt.flush()
    run = rt.store.get_run(run_id)
    assert run.framework == "llamaindex" and run.agent == "weather"
    assert run.task == "Weather in Paris?" and run.status == "finished"
    assert run.final_answer == "It is sunny in Paris."
    assert run.tokens > 0 and run.metadata["llamaindex_run_id"] == handler.run_id

    events = rt.store.events(run_id)
    seq = [e.kind for e in events if e.kind not in (EventKind.NODE_START, EventKind.NODE_END)]
    assert seq == [EventKind.RUN_START, EventKind.MODEL_START, EventKind.MODEL_END, EventKind.TOOL_START,
                   EventKind.TOOL_END, EventKind.MODEL_START, EventKind.MODEL_END, EventKind.FINAL_ANSWER,
                   EventKind.RUN_END]
    first_model_end = next(e for e in events if e.kind == EventKind.MODEL_END)
    assert first_model_end.model == "scripted-4" and first_model_end.usage["total_tokens"] > 0
    assert first_model_end.data["tool_calls"][0]["name"] == "get_weather"
    model_start = next(e for e in events if e.kind == EventKind.MODEL_START)
    assert [m["role"] for m in model_start.messages] == ["system", "user"]
    tool_end = next(e for e in events if e.kind == EventKind.TOOL_END)
    assert tool_end.tool == "get_weather" and tool_end.arguments == {"city": "Paris"}
    assert tool_end.result == "Sunny, 21C in Paris" and tool_end.tool_call_id
    nodes = [e.node for e in events if e.kind == EventKind.NODE_START]
    assert nodes == ["run_agent_step", "call_tool", "run_agent_step"]  # turns and tool steps
    assert [e.node for e in events if e.kind == EventKind.NODE_END] == nodes

    steps = rt.store.steps(run_id)
    assert [(s.tool, s.action_type) for s in steps] == [("get_weather", steps[0].action_type), (None, ActionType.DONE)]
    assert steps[0].result == "Sunny, 21C in Paris"
    guard.uninstrument()


async def test_react_agent_tool_calls_are_read_from_text(rt: Any) -> None:
    llm = ScriptedLLM([react_action("get_weather", {"city": "Rome"}), react_answer("Rome is sunny.")])
    agent = ReActAgent(name="react", tools=[get_weather], llm=llm)
    guard = rt.protect(agent)
    handler = agent.run(user_msg="Weather in Rome?")
    assert str(await handler) == "Rome is sunny."
    run_id = guard.run_id_for(handler)
    rt.flush()
    steps = rt.store.steps(run_id)
    assert [s.tool for s in steps] == ["get_weather", None]
    assert steps[0].arguments == {"city": "Rome"} and steps[0].result == "Sunny, 21C in Rome"
    model_end = next(e for e in rt.store.events(run_id) if e.kind == EventKind.MODEL_END)
    assert model_end.data["tool_calls"] == [{"name": "get_weather", "arguments": {"city": "Rome"}, "id": None}]
    assert rt.store.get_run(run_id).final_answer == "Rome is sunny."
    assert not [e for e in rt.store.events(run_id) if e.kind == EventKind.NODE_START]  # default: no node events
    guard.uninstrument()


async def test_parallel_sync_and_async_tools_keep_the_run_identity(rt: Any) -> None:
    """A sync tool runs in a worker thread and an async one on the loop; both are the same run."""
    threads: list[str] = []

    def where(city: str) -> str:
        """Where a city is."""
        threads.append(threading.current_thread().name)
        return f"{city} is in Europe"

    llm = ScriptedLLM([tool_calls([("where", {"city": "Oslo"}), ("get_time", {"city": "Oslo"})]), "Done."])
    agent = FunctionAgent(tools=[where, get_time], llm=llm)
    guard = rt.protect(agent)
    handler = agent.run(user_msg="Oslo?")
    await handler
    assert threads and threads[0] != threading.current_thread().name  # really ran in another thread
    run_id = guard.run_id_for(handler)
    rt.flush()
    tools = sorted((s.tool, s.result) for s in rt.store.steps(run_id) if s.tool)
    assert tools == [("get_time", "12:00 in Oslo"), ("where", "Oslo is in Europe")]
    ids = {e.tool_call_id for e in rt.store.events(run_id) if e.kind == EventKind.TOOL_END}
    assert len(ids) == 2
    guard.uninstrument()


def test_sync_caller_with_asyncio_run(rt: Any) -> None:
    """LlamaIndex agents have no sync run(); a sync program drives them with asyncio.run."""
    llm = ScriptedLLM([tool_call("get_weather", {"city": "Lima"}), "Lima is sunny."])
    agent = FunctionAgent(tools=[get_weather], llm=llm, streaming=False)
    guard = rt.protect(agent)

    async def go() -> Any:
        handler = agent.run(user_msg="Lima?")
        return handler, await handler

    handler, result = asyncio.run(go())
    assert str(result) == "Lima is sunny."
    assert "tool_end" in kinds(rt, guard.run_id_for(handler))
    guard.uninstrument()


async def test_instrument_is_idempotent_and_uninstrument_restores_exactly(rt: Any) -> None:
    root = get_dispatcher()
    span_list, event_list = root.span_handlers, root.event_handlers
    spans_before, events_before = list(span_list), list(event_list)
    llm = ScriptedLLM([tool_call("get_weather", {"city": "Oslo"}), "ok", "again"])
    agent = FunctionAgent(tools=[get_weather], llm=llm)
    tools_before = list(agent.tools)
    dict_before = dict(agent.__dict__)
    cls_attrs = {n: FunctionAgent.__dict__.get(n) for n in ("run", "get_tools", "take_step")}

    guard = rt.protect(agent)
    guard.instrument(agent)  # again: nothing more is added
    assert len(root.span_handlers) == len(spans_before) + 1
    assert len(root.event_handlers) == len(events_before) + 1
    assert {"run", "get_tools", "take_step"} <= set(agent.__dict__)
    await agent.run(user_msg="Oslo?")
    assert len(rt.sessions) == 1

    guard.uninstrument()
    guard.uninstrument()  # twice is fine
    assert root.span_handlers is span_list and root.event_handlers is event_list
    assert len(span_list) == len(spans_before) and all(a is b for a, b in zip(span_list, spans_before, strict=True))
    assert len(event_list) == len(events_before) and all(a is b for a, b in zip(event_list, events_before, strict=True))
    assert agent.__dict__.keys() == dict_before.keys()
    # every field is the same object (the workflow runtime's own "_..." run caches change on any run)
    assert all(agent.__dict__[k] is v for k, v in dict_before.items() if not k.startswith("_"))
    assert all(a is b for a, b in zip(agent.tools, tools_before, strict=True))
    assert {n: FunctionAgent.__dict__.get(n) for n in cls_attrs} == cls_attrs

    await agent.run(user_msg="Oslo again?")  # detached: not observed any more
    assert len(rt.sessions) == 1


async def test_unprotected_agents_are_ignored(rt: Any) -> None:
    protected = FunctionAgent(tools=[get_weather], llm=ScriptedLLM(["a"]))
    other = FunctionAgent(tools=[get_weather], llm=ScriptedLLM([tool_call("get_weather", {"city": "X"}), "b"]))
    guard = rt.protect(protected)
    await other.run(user_msg="hi")
    assert rt.sessions == {}
    await protected.run(user_msg="hi")
    assert len(rt.sessions) == 1
    guard.uninstrument()


def test_demo_catches_and_corrects(rt: Any) -> None:
    run_id = LlamaIndexAdapter.demo(rt)
    rt.flush()
    steps = rt.store.steps(run_id)
    assert [s.arguments for s in steps if s.tool] == [{"city": "Paris", "days": 30}, {"city": "Paris", "days": 7}]
    assert steps[0].error and not steps[1].error
    assert [r.kind.value for r in rt.store.recoveries(run_id)] == ["retry"]
    assert rt.store.get_run(run_id).final_answer.startswith("Paris will be sunny")


async def test_agent_workflow_handoff_is_observed(rt: Any) -> None:
    from llama_index.core.agent.workflow import AgentWorkflow

    triage = FunctionAgent(name="triage", description="Routes questions.", can_handoff_to=["weather"],
                           llm=ScriptedLLM([tool_call("handoff", {"to_agent": "weather", "reason": "weather"})]))
    weather = FunctionAgent(name="weather", description="Answers weather questions.", tools=[get_weather],
                            llm=ScriptedLLM([tool_call("get_weather", {"city": "Oslo"}), "Oslo is sunny."]))
    workflow = AgentWorkflow(agents=[triage, weather], root_agent="triage")
    guard = rt.protect(workflow)
    handler = workflow.run(user_msg="Weather in Oslo?")
    assert str(await handler) == "Oslo is sunny."
    run_id = guard.run_id_for(handler)
    rt.flush()
    handoffs = [e for e in rt.store.events(run_id) if e.kind == EventKind.HANDOFF]
    assert [(e.agent, e.target) for e in handoffs] == [("triage", "weather")]
    steps = rt.store.steps(run_id)
    assert [(s.tool, s.agent) for s in steps if s.tool] == [("handoff", "triage"), ("get_weather", "weather")]
    delegates = [s for s in steps if s.action_type == ActionType.DELEGATE]  # one: the handoff tool's call
    assert [(s.agent, s.tool, s.data.get("target"), (s.arguments or {}).get("reason")) for s in delegates] == [
        ("triage", "handoff", "weather", "weather")]
    assert steps[-1].action_type == ActionType.DONE and steps[-1].agent == "weather"
    guard.uninstrument()
    assert not {"take_step"} & set(triage.__dict__) and "run" not in workflow.__dict__
