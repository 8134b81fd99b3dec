"""The LangGraph benchmark driver (registered through ``immunity_register_bench_drivers``).

``langgraph.prebuilt.create_react_agent`` with an in-memory checkpointer and a thread id,
LangGraph's default ``ToolNode`` error handling, ``recursion_limit`` raised. LangGraph is imported
only inside :meth:`LangGraphDriver.run`.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from typing import Any

from immunity.bench.drivers import MAX_TURNS, Driver, RunResult, args_model, python_function, text
from immunity.bench.tasks import Action, Answer, Observation, ScriptedAgent, Task, ToolSpec

__all__ = ["LangGraphDriver"]


class LangGraphDriver(Driver):
    """``create_react_agent`` + ``InMemorySaver``, the scripted ``ScriptedChatModel``."""

    name = "langgraph"
    modules = ("langgraph", "langchain_core")

    @staticmethod
    def observe(messages: list[Any]) -> Observation:
        obs = Observation()
        for i, m in enumerate(messages):
            kind = getattr(m, "type", "")
            if kind == "ai":
                for tc in getattr(m, "tool_calls", None) or []:
                    obs.add_call(tc["name"], tc.get("args") or {}, tc.get("id"))
                if text(m.content):
                    obs.add_text("assistant", text(m.content), str(i))
            elif kind == "tool":
                obs.add_result(text(m.content), getattr(m, "tool_call_id", None), i)
            else:
                obs.add_text("system" if kind == "system" else "user", text(m.content), str(i))
        return obs

    @staticmethod
    def turn(action: Action) -> Any:
        if isinstance(action, Answer):
            return action.text
        return {"name": action.name, "args": dict(action.args)}

    def run(self, task: Task, tools: list[tuple[ToolSpec, Callable[..., str]]], agent: ScriptedAgent,
            runtime: Any = None, real: bool = False) -> RunResult:
        from langchain_core.tools import StructuredTool
        from langgraph.checkpoint.memory import InMemorySaver

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from langgraph.prebuilt import create_react_agent

        lc_tools: list[Any] = [StructuredTool.from_function(func=python_function(spec, fn), name=spec.name,
                                                            description=spec.description,
                                                            args_schema=args_model(spec))
                               for spec, fn in tools]
        if real:
            from langchain_openai import ChatOpenAI  # type: ignore[import-not-found]

            model: Any = ChatOpenAI(model=os.environ.get("IMMUNITY_BENCH_MODEL", "gpt-4o-mini"))
        else:
            from immunity_langgraph.testing import ScriptedChatModel

            def step(messages: list[Any]) -> Any:
                return self.turn(agent(self.observe(messages)))

            model = ScriptedChatModel(script=[step] * (MAX_TURNS + 20))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = create_react_agent(model, lc_tools, prompt=task.system, checkpointer=InMemorySaver())
        guard = runtime.protect(graph) if runtime is not None else None
        config: Any = {"configurable": {"thread_id": f"bench-{id(agent)}"}, "recursion_limit": 2 * MAX_TURNS + 1}
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            out = graph.invoke({"messages": [("user", task.prompt)]}, config)
        except Exception as exc:
            return RunResult(None, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0, guard)
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - c0
        messages = out.get("messages") or []
        return RunResult(text(messages[-1].content) if messages else None, None, seconds, guard, cpu_seconds=cpu)
