"""The coding checks in a real LangGraph run (prebuilt ReAct agent, scripted model, offline)."""

from __future__ import annotations

import warnings

from immunity.runtime import Runtime
from immunity_langgraph.testing import ScriptedChatModel, tool_call
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool


def test_rm_rf_is_blocked_in_a_langgraph_agent_and_the_model_is_told() -> None:
    ran: list[str] = []

    @tool
    def bash(command: str) -> str:
        """Run a shell command in the repository."""
        ran.append(command)
        return "README.md\nsrc\ntests"

    model = ScriptedChatModel(script=[tool_call("bash", command="ls"), tool_call("bash", command="rm -rf /"),
                                      "I will not delete anything."])
    from langgraph.prebuilt import create_react_agent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = create_react_agent(model, [bash])
    rt = Runtime(store=":memory:", domain="coding")
    try:
        rt.protect(graph)
        graph.invoke({"messages": [("user", "Clean up the build artefacts")]})
        assert ran == ["ls"]  # the destructive command never ran
        told = model.calls[2][-1]
        assert isinstance(told, ToolMessage) and "rm -rf /" in told.content and "[immunity]" in told.content
        rt.flush()
        (run,) = rt.store.runs()
        assert run.domain == "coding"
        verdicts = rt.store.verdicts(run.run_id)
        assert any(v.error_class == "unsafe_action" and v.plugin == "coding:destructive_command" for v in verdicts)
    finally:
        rt.close()
