"""A LangGraph agent protected by immunity with one line.

    .venv/bin/python examples/langgraph_agent.py                 # offline: a scripted model
    .venv/bin/python examples/langgraph_agent.py --store runs.db # keep the run (immunity runs show ...)
    OPENAI_API_KEY=sk-... python examples/langgraph_agent.py     # a real model (pip install langchain-openai;
                                                                 # OPENAI_MODEL picks it, default gpt-4o-mini)

The agent frees disk space on a (simulated, in-memory) server. Its first idea is to delete a whole
log directory. A rule of this project's own (``NoRecursiveDelete``, an immunity verifier: ten lines)
blocks that call before it runs; the model is told why in the tool's result, LangGraph's own way,
and deletes only the old compressed logs instead. Nothing in the agent's code knows about immunity
except the ``immunity.protect(...)`` line.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

import immunity
from immunity import Event, EventKind, Severity, Verdict, hookimpl
from immunity.timeline import render_run
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

TASK = "The server's disk is full. Free some space under /var/log, but keep the current logs."

# ------------------------------------------------------------------------------------- the agent's world
FILES: dict[str, int] = {
    "/var/log/app.log": 120, "/var/log/app.log.1.gz": 900, "/var/log/app.log.2.gz": 850,
    "/var/log/nginx/access.log": 300, "/var/log/nginx/access.log.1.gz": 1200,
}


@tool
def list_files(path: str) -> str:
    """List the files under a directory with their sizes in MB."""
    rows = [f"{name}  {size} MB" for name, size in sorted(FILES.items()) if name.startswith(path)]
    return "\n".join(rows) or f"{path}: no such directory"


@tool
def run_shell(command: str) -> str:
    """Run a shell command on the server (this example only simulates rm)."""
    m = re.fullmatch(r"rm\s+(-\w+\s+)?(.+)", command.strip())
    if not m:
        return f"simulated: {command}"
    removed = [f for f in list(FILES) for pattern in m.group(2).split()
               if f == pattern or f.startswith(pattern.rstrip("/") + "/") or
               (pattern.endswith("*.gz") and f.startswith(pattern[:-4]) and f.endswith(".gz"))]
    freed = sum(FILES.pop(f) for f in dict.fromkeys(removed))
    return f"removed {len(set(removed))} files, freed {freed} MB"


def build_agent(model: Any) -> Any:
    tools = [list_files, run_shell]
    bound = model.bind_tools(tools)

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [bound.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode(tools))
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=InMemorySaver(), name="disk-cleaner")


# ------------------------------------------------------------------------------------- a rule of your own
class NoRecursiveDelete:
    """Block ``rm -r`` / ``rm -rf`` of a whole directory before it runs."""

    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        command = str((event.arguments or {}).get("command", ""))
        if event.kind == EventKind.TOOL_START and re.search(r"\brm\s+-\w*r", command):
            return Verdict(ok=False, block=True, error_class="unsafe_action", severity=Severity.ERROR,
                           plugin="no_recursive_delete", message=f"recursive delete: {command}",
                           hint="[immunity] Blocked: a recursive delete of a whole directory also removes the "
                                "current logs. Delete only the old rotated files (*.gz).")
        return None


# ------------------------------------------------------------------------------------- the model
def scripted_model() -> Any:
    from immunity_langgraph.testing import ScriptedChatModel, tool_call

    def decide(messages: list[Any]) -> Any:
        last = messages[-1]
        if isinstance(last, ToolMessage) and last.content.startswith("removed"):
            return f"Done: {last.content.split(', ')[1]} by deleting the rotated .gz logs; current logs are kept."
        if isinstance(last, ToolMessage) and "Blocked" in last.content:
            return tool_call("run_shell", command="rm /var/log/*.gz /var/log/nginx/*.gz")
        return tool_call("run_shell", command="rm -rf /var/log")  # the risky first idea

    return ScriptedChatModel(script=[tool_call("list_files", path="/var/log"), decide, decide, decide],
                             model_name="scripted")


def real_model() -> Any | None:
    if not os.environ.get("OPENAI_API_KEY"):
        return None
    try:
        from langchain_openai import ChatOpenAI
    except ImportError:
        print("OPENAI_API_KEY is set but langchain-openai is not installed (pip install langchain-openai); "
              "using the scripted model")
        return None
    return ChatOpenAI(model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"), temperature=0)


def main() -> None:
    ap = argparse.ArgumentParser(description="A LangGraph agent protected by immunity")
    ap.add_argument("--store", default=":memory:", help="where immunity keeps runs (default: in memory)")
    args = ap.parse_args()

    model = real_model() or scripted_model()
    graph = build_agent(model)

    guard = immunity.protect(graph, store=args.store, plugins=[NoRecursiveDelete()])   # <- the one line

    try:
        out = graph.invoke({"messages": [("user", TASK)]}, {"configurable": {"thread_id": "cleanup-1"}})
        print("answer:", out["messages"][-1].content)
        left = sorted(FILES)
        print("files left:", ", ".join(left))
        guard.runtime.flush()
        run = guard.runtime.store.get_run("langgraph-cleanup-1")
        print()
        print(render_run(guard.runtime.store, run))
    finally:
        guard.runtime.close()


if __name__ == "__main__":
    main()
