"""The research checks in a real LangGraph run (prebuilt ReAct agent, scripted model, offline)."""

from __future__ import annotations

import warnings

from immunity.runtime import Runtime
from immunity_langgraph.testing import ScriptedChatModel, tool_call
from langchain_core.tools import tool


def test_a_search_loop_gets_a_hint_into_the_next_model_call() -> None:
    @tool
    def web_search(query: str) -> str:
        """Search the web."""
        return "No results found."

    model = ScriptedChatModel(script=[
        tool_call("web_search", query="Akaikai Loop Pearl City sold 2022"),
        tool_call("web_search", query="sold 2022 Akaikai Loop Pearl City"),
        tool_call("web_search", query="Pearl City Akaikai Loop sold 2022"),
        "I could not find the sale price.",
    ])
    from langgraph.prebuilt import create_react_agent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = create_react_agent(model, [web_search])
    rt = Runtime(store=":memory:", domain="research")
    try:
        rt.protect(graph)
        graph.invoke({"messages": [("user", "What did 2072 Akaikai Loop sell for in 2022?")]})
        last_call = [m.content for m in model.calls[3]]
        assert any("[immunity]" in str(c) and "search" in str(c).lower() for c in last_call)
        assert not any("[immunity]" in str(m.content) for m in model.calls[1])  # hints only when due
        rt.flush()
        (run,) = rt.store.runs()
        assert any(v.error_class == "search_loop" for v in rt.store.verdicts(run.run_id))
    finally:
        rt.close()
