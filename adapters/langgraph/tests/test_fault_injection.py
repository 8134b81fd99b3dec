"""Fault injection through LangGraph's real runtime: a plugin that raises, hangs or returns garbage
in each hook leaves the graph's answer unchanged, is recorded, and costs at most its budget."""

from __future__ import annotations

from typing import Any

import pytest
from immunity.testing.faults import CASES, case_id, check_faults
from immunity_langgraph.testing import ScriptedChatModel, tool_call


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_a_faulty_plugin_changes_nothing_but_the_record(case: tuple[str, tuple[str, ...]], tool_graph: Any,
                                                        weather_tools: Any) -> None:
    def drive(rt: Any) -> Any:
        model = ScriptedChatModel(script=[tool_call("get_weather", city="Oslo"), "Sunny in Oslo."])
        graph = tool_graph(model, weather_tools)
        rt.protect(graph)
        out = graph.invoke({"messages": [("user", "weather in Oslo?")]})
        return [(type(m).__name__, m.content) for m in out["messages"]]

    mode, hooks = case
    clean, faulty = check_faults(drive, mode, hooks)
    assert clean.answer[-1] == ("AIMessage", "Sunny in Oslo.")
