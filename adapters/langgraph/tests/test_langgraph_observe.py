"""Observe: run, node, model and tool events through the real LangGraph runtime, sync and async,
with the run's identity kept across LangGraph's worker threads and asyncio tasks."""

from __future__ import annotations

import warnings
from typing import Annotated, Any

import pytest
from immunity.models import ActionType, EventKind
from immunity_langgraph.testing import ScriptedChatModel, tool_call
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import InjectedState, create_react_agent
from langgraph.types import Command


def _script() -> list[Any]:
    return [tool_call("get_weather", city="Paris"), "It is sunny and 21C in Paris."]


def _check_run(rt: Any, run_id: str, calls: Any) -> None:
    rt.flush()
    store = rt.store
    run = store.get_run(run_id)
    assert run is not None and run.framework == "langgraph" and run.status == "finished"
    assert run.task == "Weather in Paris?"
    assert run.final_answer == "It is sunny and 21C in Paris."
    events = store.events(run_id)
    kinds = [e.kind for e in events]
    assert kinds[0] == EventKind.RUN_START and kinds[-1] == EventKind.RUN_END
    assert kinds.count(EventKind.MODEL_START) == 2 and kinds.count(EventKind.MODEL_END) == 2
    assert kinds.count(EventKind.TOOL_START) == 1 and kinds.count(EventKind.TOOL_END) == 1
    assert EventKind.FINAL_ANSWER in kinds
    nodes = [(e.node, e.data["step"]) for e in events if e.kind == EventKind.NODE_END]
    assert nodes == [("agent", 1), ("tools", 2), ("agent", 3)]
    assert all(e.data["duration_ms"] >= 0 for e in events if e.kind == EventKind.NODE_END)
    first_model = next(e for e in events if e.kind == EventKind.MODEL_START)
    assert first_model.messages == [{"role": "user", "content": "Weather in Paris?"}]
    assert first_model.model == "scripted-weather"
    ends = [e for e in events if e.kind == EventKind.MODEL_END]
    assert ends[0].data["tool_calls"][0]["name"] == "get_weather"
    assert ends[0].data["tool_calls"][0]["arguments"] == {"city": "Paris"}
    assert ends[0].usage is not None and ends[0].usage["total_tokens"] == ends[0].usage["input_tokens"] + 5
    assert ends[0].model == "scripted-weather"
    tool_start = next(e for e in events if e.kind == EventKind.TOOL_START)
    tool_end = next(e for e in events if e.kind == EventKind.TOOL_END)
    assert tool_start.tool == "get_weather" and tool_start.arguments == {"city": "Paris"}
    assert tool_start.tool_call_id == ends[0].data["tool_calls"][0]["id"] == tool_end.tool_call_id
    assert tool_end.result == "Sunny, 21C in Paris" and tool_end.error is None
    steps = store.steps(run_id)
    assert [(s.tool, s.action_type) for s in steps] == [("get_weather", ActionType.SEARCH), (None, ActionType.DONE)]
    assert run.tokens == sum(e.usage["total_tokens"] for e in ends)
    assert calls.log == [("get_weather", {"city": "Paris"})]


def test_stategraph_toolnode_invoke(make_runtime: Any, tool_graph: Any, weather_tools: Any, calls: Any) -> None:
    rt = make_runtime()
    model = ScriptedChatModel(script=_script(), model_name="scripted-weather")
    graph = tool_graph(model, weather_tools, InMemorySaver())
    rt.protect(graph, node_events="end")
    out = graph.invoke({"messages": [("user", "Weather in Paris?")]}, {"configurable": {"thread_id": "t-1"}})
    assert out["messages"][-1].content == "It is sunny and 21C in Paris."
    _check_run(rt, "langgraph-t-1", calls)  # the thread id gives a deterministic run id
    checkpoints = rt.store.checkpoints("langgraph-t-1")
    assert [c.ref["next"] for c in checkpoints] == ["agent", "tools", "agent"]
    assert [c.ref["step"] for c in checkpoints] == [0, 1, 2]
    assert [c.verified for c in checkpoints] == [True, False, True]  # unverified: a tool call not yet checked


def test_create_react_agent_ainvoke(make_runtime: Any, react_agent: Any, weather_tools: Any, calls: Any) -> None:
    rt = make_runtime()
    model = ScriptedChatModel(script=_script(), model_name="scripted-weather")
    graph = react_agent(model, weather_tools)
    rt.protect(graph, node_events="end")

    import asyncio

    out = asyncio.run(graph.ainvoke({"messages": [("user", "Weather in Paris?")]}))
    assert out["messages"][-1].content == "It is sunny and 21C in Paris."
    rt.flush()
    (run,) = rt.store.runs()
    _check_run(rt, run.run_id, calls)


@pytest.mark.asyncio
async def test_astream(make_runtime: Any, react_agent: Any, weather_tools: Any, calls: Any) -> None:
    rt = make_runtime()
    graph = react_agent(ScriptedChatModel(script=_script(), model_name="scripted-weather"), weather_tools,
                        InMemorySaver())
    rt.protect(graph, node_events="end")
    chunks = [c async for c in graph.astream({"messages": [("user", "Weather in Paris?")]},
                                             {"configurable": {"thread_id": "a-1"}}, stream_mode="updates")]
    assert [next(iter(c)) for c in chunks] == ["agent", "tools", "agent"]
    _check_run(rt, "langgraph-a-1", calls)


def test_stream_sync(make_runtime: Any, tool_graph: Any, weather_tools: Any, calls: Any) -> None:
    rt = make_runtime()
    graph = tool_graph(ScriptedChatModel(script=_script(), model_name="scripted-weather"), weather_tools)
    rt.protect(graph, node_events="end")
    chunks = list(graph.stream({"messages": [("user", "Weather in Paris?")]}, stream_mode="values"))
    assert chunks[-1]["messages"][-1].content == "It is sunny and 21C in Paris."
    rt.flush()
    (run,) = rt.store.runs()
    _check_run(rt, run.run_id, calls)


def test_new_input_on_a_finished_thread_is_a_new_run(make_runtime: Any, tool_graph: Any, weather_tools: Any) -> None:
    rt = make_runtime()
    model = ScriptedChatModel(script=["first answer", "second answer"])
    graph = tool_graph(model, weather_tools, InMemorySaver())
    rt.protect(graph)
    cfg = {"configurable": {"thread_id": "conv"}}
    graph.invoke({"messages": [("user", "one")]}, cfg)
    graph.invoke({"messages": [("user", "two")]}, cfg)
    rt.flush()
    runs = {r.run_id: r for r in rt.store.runs()}
    assert set(runs) == {"langgraph-conv", "langgraph-conv-2"}
    assert runs["langgraph-conv"].final_answer == "first answer"
    assert runs["langgraph-conv-2"].final_answer == "second answer"
    # the second turn's model saw the whole thread (LangGraph's history), immunity kept them apart
    assert [m["content"] for m in model.seen(1)] == ["one", "first answer", "two"]


def test_unprotected_graph_is_not_observed(make_runtime: Any, tool_graph: Any, weather_tools: Any) -> None:
    rt = make_runtime()
    protected = tool_graph(ScriptedChatModel(script=["a"]), weather_tools)
    plain = tool_graph(ScriptedChatModel(script=["b"]), weather_tools)
    rt.protect(protected)
    plain.invoke({"messages": [("user", "x")]})
    protected.invoke({"messages": [("user", "y")]})
    rt.flush()
    runs = rt.store.runs()
    assert len(runs) == 1 and runs[0].final_answer == "a"


def test_node_start_events_on_request(make_runtime: Any, tool_graph: Any, weather_tools: Any) -> None:
    rt = make_runtime()
    graph = tool_graph(ScriptedChatModel(script=_script()), weather_tools)
    rt.protect(graph, node_events="all")
    graph.invoke({"messages": [("user", "Weather in Paris?")]})
    rt.flush()
    (run,) = rt.store.runs()
    kinds = [(e.kind, e.node) for e in rt.store.events(run.run_id) if e.node]
    assert kinds == [(EventKind.NODE_START, "agent"), (EventKind.NODE_END, "agent"), (EventKind.NODE_START, "tools"),
                     (EventKind.NODE_END, "tools"), (EventKind.NODE_START, "agent"), (EventKind.NODE_END, "agent")]


@pytest.mark.asyncio
async def test_astream_events(make_runtime: Any, react_agent: Any, weather_tools: Any, calls: Any) -> None:
    rt = make_runtime()
    graph = react_agent(ScriptedChatModel(script=_script(), model_name="scripted-weather"), weather_tools)
    rt.protect(graph, node_events="end")
    names = [ev["event"] async for ev in graph.astream_events({"messages": [("user", "Weather in Paris?")]},
                                                               version="v2")]
    assert "on_tool_end" in names and "on_chat_model_end" in names
    rt.flush()
    (run,) = rt.store.runs()
    _check_run(rt, run.run_id, calls)


def test_handoff_between_nodes(make_runtime: Any) -> None:
    from langgraph.graph import END, START, MessagesState, StateGraph
    from langgraph.types import Command

    def triage(state: MessagesState) -> Command:
        return Command(goto="billing", update={"messages": [("ai", "routing to billing")]})

    def billing(state: MessagesState) -> dict[str, Any]:
        return {"messages": [("ai", "refund issued")]}

    builder = StateGraph(MessagesState)
    builder.add_node("triage", triage, destinations=("billing",))
    builder.add_node("billing", billing)
    builder.add_edge(START, "triage")
    builder.add_edge("billing", END)
    graph = builder.compile()
    rt = make_runtime()
    rt.protect(graph)
    graph.invoke({"messages": [("user", "I was charged twice")]})
    rt.flush()
    (run,) = rt.store.runs()
    handoffs = [(e.agent, e.target) for e in rt.store.events(run.run_id) if e.kind == EventKind.HANDOFF]
    assert handoffs == [("triage", "billing")]
    assert [s.action_type for s in rt.store.steps(run.run_id)][0] == ActionType.DELEGATE
    assert run.final_answer == "refund issued"


def test_static_breakpoint_pauses_the_run_and_resume_finishes_it(make_runtime: Any, tool_graph: Any,
                                                                 weather_tools: Any, calls: Any) -> None:
    rt = make_runtime()
    graph = tool_graph(ScriptedChatModel(script=_script()), weather_tools, InMemorySaver())
    rt.protect(graph)
    cfg = {"configurable": {"thread_id": "bp"}}
    graph.invoke({"messages": [("user", "Weather in Paris?")]}, cfg, interrupt_before=["tools"])
    assert calls.log == [] and rt.session("langgraph-bp").ended is False
    assert rt.session("langgraph-bp").run.status == "paused"
    out = graph.invoke(None, cfg)
    assert out["messages"][-1].content == "It is sunny and 21C in Paris."
    rt.flush()
    (run,) = rt.store.runs()
    assert run.run_id == "langgraph-bp" and run.status == "finished" and run.steps == 2


def test_a_paused_run_is_stored_as_paused_until_it_is_resumed(make_runtime: Any, tool_graph: Any,
                                                               weather_tools: Any, calls: Any) -> None:
    rt = make_runtime()
    graph = tool_graph(ScriptedChatModel(script=_script()), weather_tools, InMemorySaver())
    rt.protect(graph)
    cfg = {"configurable": {"thread_id": "bp2"}}
    graph.invoke({"messages": [("user", "Weather in Paris?")]}, cfg, interrupt_before=["tools"])
    rt.flush()
    stored = rt.store.get_run("langgraph-bp2")
    assert stored.status == "paused" and stored.metadata["paused_because"] == "breakpoint"
    graph.invoke(None, cfg)  # the resume finishes the same run
    rt.flush()
    assert [(r.run_id, r.status) for r in rt.store.runs()] == [("langgraph-bp2", "finished")]


def test_steps_of_subgraph_agents_carry_their_agent(make_runtime: Any, react_agent: Any) -> None:
    """Two create_react_agent agents as nodes of a parent graph, the handoff tool of LangGraph's
    multi-agent docs (Command(goto=..., graph=Command.PARENT)): every model and tool step carries
    the agent (the parent graph's node) it ran in, and the handoff is the researcher's."""
    @tool
    def lookup(key: str) -> str:
        """Look a key up."""
        return f"value-of-{key}"

    @tool("transfer_to_writer", description="Hand the conversation over to writer.")
    def handoff(state: Annotated[MessagesState, InjectedState],
                tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        message = {"role": "tool", "content": "Transferred to writer", "name": "transfer_to_writer",
                   "tool_call_id": tool_call_id}
        return Command(goto="writer", update={"messages": state["messages"] + [message]}, graph=Command.PARENT)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        researcher = create_react_agent(ScriptedChatModel(script=[tool_call("lookup", key="a"),
                                                                  tool_call("transfer_to_writer")]),
                                        [lookup, handoff], name="researcher")
        writer = create_react_agent(ScriptedChatModel(script=[tool_call("lookup", key="b"), "a and b"]), [lookup],
                                    name="writer")
    graph = (StateGraph(MessagesState).add_node(researcher, destinations=("writer",)).add_node(writer)
             .add_edge(START, "researcher").compile(checkpointer=InMemorySaver()))
    rt = make_runtime()
    guard = rt.protect(graph)
    out = graph.invoke({"messages": [("user", "a and b?")]}, {"configurable": {"thread_id": "two"}})
    assert out["messages"][-1].content == "a and b"
    rt.flush()
    steps = rt.store.steps(guard.run_id)
    assert [(s.agent, s.tool) for s in steps if s.tool == "lookup"] == [("researcher", "lookup"), ("writer", "lookup")]
    assert all(s.agent in ("researcher", "writer") for s in steps), [(s.agent, s.tool) for s in steps]
    handoffs = [e for e in rt.store.events(guard.run_id) if e.kind == EventKind.HANDOFF]
    assert [(e.agent, e.target) for e in handoffs] == [("researcher", "writer")]
    # one DELEGATE step: the handoff tool's own call, carrying the target
    delegates = [(s.agent, s.tool, s.data.get("target")) for s in steps if s.action_type == ActionType.DELEGATE]
    assert delegates == [("researcher", "transfer_to_writer", "writer")]
    assert steps[-1].agent == "writer"
