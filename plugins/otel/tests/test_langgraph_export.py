"""Live export from a real LangGraph agent (a StateGraph with a ToolNode, driven by a scripted chat
model, offline) called inside the application's own request span: the run's trace hangs under that
span, with the model calls and the tool call as GenAI spans."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langgraph")
pytest.importorskip("immunity_langgraph")


def test_a_langgraph_run_inside_an_app_span(make_runtime: Any, memory_provider: Any) -> None:
    from immunity_langgraph.demo import build_graph
    from immunity_langgraph.testing import ScriptedChatModel, tool_call
    from immunity_otel import exporter_for
    from langchain_core.tools import tool
    from langgraph.checkpoint.memory import InMemorySaver

    provider, memory = memory_provider

    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return f"Sunny, 21C in {city}"

    rt = make_runtime(otel={"tracer_provider": provider})
    model = ScriptedChatModel(script=[tool_call("get_weather", city="Paris"), "It is sunny in Paris."],
                              model_name="scripted-weather")
    graph = build_graph(model, [get_weather], InMemorySaver())
    rt.protect(graph)
    tracer = provider.get_tracer("my-app")
    with tracer.start_as_current_span("POST /chat") as app_span:
        out = graph.invoke({"messages": [("user", "Weather in Paris?")]}, {"configurable": {"thread_id": "t-9"}})
    assert out["messages"][-1].content == "It is sunny in Paris."
    assert exporter_for(rt.config).flush()

    spans = memory.get_finished_spans()
    root = next(s for s in spans if s.name.startswith("invoke_agent"))
    assert root.parent is not None and root.parent.span_id == app_span.get_span_context().span_id
    assert root.attributes["immunity.run_id"] == "langgraph-t-9" and root.attributes["immunity.framework"] == "langgraph"
    assert {s.context.trace_id for s in spans} == {app_span.get_span_context().trace_id}
    (tool_span,) = [s for s in spans if s.attributes.get("gen_ai.operation.name") == "execute_tool"]
    assert tool_span.attributes["gen_ai.tool.name"] == "get_weather"
    assert tool_span.attributes["gen_ai.tool.call.result"] == "Sunny, 21C in Paris"
    calls = [s for s in spans if s.attributes.get("immunity.kind") == "model_call"]
    assert len(calls) == 2 and {s.attributes["gen_ai.request.model"] for s in calls} == {"scripted-weather"}
    assert all(s.attributes["gen_ai.usage.output_tokens"] > 0 for s in calls)
