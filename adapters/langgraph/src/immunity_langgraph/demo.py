"""The offline demo: a coding agent on a real LangGraph graph whose test command keeps failing the
same way. Without help the scripted model would rerun the tests forever; immunity sees the repeated
error, injects a typed hint into the next model call only, the model follows it (edits the file)
and the tests pass.

Run it with ``immunity demo`` (LangGraph is the default) or ``immunity demo --framework langgraph``.
"""

from __future__ import annotations

import uuid
from typing import Any

TASK = "The test suite of the shop project fails. Make it pass."
ERROR = "tests/test_price.py: ImportError: cannot import name 'parse_price' from 'shop.util' (shop/util.py)"


def build_graph(model: Any, tools: list[Any], checkpointer: Any = None) -> Any:
    """A plain tool-calling agent: ``agent`` (the model) <-> ``tools`` (a ToolNode)."""
    from langgraph.graph import END, START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    bound = model.bind_tools(tools)

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [bound.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode(tools))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=checkpointer, name="shop-fixer")


def make_agent() -> tuple[Any, list[Any], Any]:
    """The demo's tools, scripted model and graph (fresh each call)."""
    from langchain_core.messages import ToolMessage
    from langchain_core.tools import tool
    from langgraph.checkpoint.memory import InMemorySaver

    from immunity_langgraph.testing import ScriptedChatModel, tool_call

    files: dict[str, str] = {"shop/util.py": "def format_price(cents):\n    return f'{cents / 100:.2f}'\n"}

    @tool
    def run_tests(path: str = "tests/") -> str:
        """Run the project's tests."""
        if "def parse_price" not in files["shop/util.py"]:
            raise RuntimeError(f"1 error during collection\n{ERROR}")
        return "4 passed in 0.12s"

    @tool
    def edit_file(path: str, text: str) -> str:
        """Append text to a file."""
        files[path] = files.get(path, "") + text
        return f"wrote {len(text)} characters to {path}"

    def turn(messages: list[Any]) -> Any:
        tool_msgs = [m for m in messages if isinstance(m, ToolMessage)]
        last_tool = tool_msgs[-1] if tool_msgs else None
        hints = [str(m.content) for m in messages if m.type == "human" and str(m.content).startswith("[immunity]")]
        if last_tool is not None and "passed" in str(last_tool.content):
            return "The tests pass: shop/util.py was missing parse_price, which I added."
        if last_tool is not None and last_tool.name == "edit_file":
            return tool_call("run_tests", path="tests/")
        if any("Do not retry the same way" in h for h in hints):
            return tool_call("edit_file", path="shop/util.py",
                             text="\ndef parse_price(text):\n    return round(float(text) * 100)\n")
        return tool_call("run_tests", path="tests/")  # a model that keeps retrying the same command

    model = ScriptedChatModel(script=[turn] * 10, model_name="scripted-coder")
    tools = [run_tests, edit_file]
    return model, tools, build_graph(model, tools, InMemorySaver())


def run_demo(runtime: Any, agent: tuple[Any, list[Any], Any] | None = None) -> str:
    """Run the demo agent (or ``agent``, a :func:`make_agent` result) under ``runtime``; returns the run id."""
    _model, _tools, graph = agent or make_agent()
    thread = f"demo-{uuid.uuid4().hex[:8]}"
    adapter = runtime.protect(graph, framework="langgraph")
    try:
        graph.invoke({"messages": [("user", TASK)]}, {"configurable": {"thread_id": thread}})
    finally:
        if hasattr(runtime, "detach"):
            runtime.detach(adapter)
        else:
            adapter.uninstrument()
    return adapter._latest[thread]
