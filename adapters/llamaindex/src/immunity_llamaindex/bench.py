"""The LlamaIndex benchmark driver (registered through ``immunity_register_bench_drivers``).

``llama_index.core.agent.workflow.FunctionAgent`` with ``FunctionTool`` tools. LlamaIndex is
imported only inside :meth:`LlamaIndexDriver.run`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from immunity.bench.drivers import MAX_TURNS, Driver, RunResult, args_model, call_arguments, python_function
from immunity.bench.tasks import Action, Answer, Observation, ScriptedAgent, Task, ToolSpec

__all__ = ["LlamaIndexDriver"]


class LlamaIndexDriver(Driver):
    """``FunctionAgent`` + ``FunctionTool``, the scripted ``ScriptedLLM``."""

    name = "llamaindex"
    modules = ("llama_index.core",)

    @staticmethod
    def observe(messages: list[Any]) -> Observation:
        from llama_index.core.base.llms.types import ToolCallBlock

        obs = Observation()
        for i, m in enumerate(messages):
            role = getattr(m.role, "value", str(m.role))
            if role == "assistant":
                for block in m.blocks:
                    if isinstance(block, ToolCallBlock):
                        obs.add_call(block.tool_name, call_arguments(block.tool_kwargs), block.tool_call_id)
                for tc in (m.additional_kwargs or {}).get("tool_calls") or []:
                    if isinstance(tc, dict) and "function" in tc:
                        obs.add_call(tc["function"]["name"], call_arguments(tc["function"].get("arguments")), tc.get("id"))
                if m.content:
                    obs.add_text("assistant", m.content, str(i))
            elif role == "tool":
                obs.add_result(m.content or "", (m.additional_kwargs or {}).get("tool_call_id"), i)
            else:
                obs.add_text(role, m.content or "", str(i))
        return obs

    @staticmethod
    def turn(action: Action) -> Any:
        from immunity_llamaindex.testing import tool_call

        if isinstance(action, Answer):
            return action.text
        return tool_call(action.name, dict(action.args))

    def run(self, task: Task, tools: list[tuple[ToolSpec, Callable[..., str]]], agent: ScriptedAgent,
            runtime: Any = None, real: bool = False) -> RunResult:
        from llama_index.core.agent.workflow import FunctionAgent
        from llama_index.core.tools import FunctionTool

        li_tools: list[Any] = [FunctionTool.from_defaults(fn=python_function(spec, fn), name=spec.name,
                                                          description=spec.description, fn_schema=args_model(spec))
                               for spec, fn in tools]
        if real:
            from llama_index.llms.openai import OpenAI  # type: ignore[import-not-found]

            llm: Any = OpenAI(model=os.environ.get("IMMUNITY_BENCH_MODEL", "gpt-4o-mini"))
        else:
            from immunity_llamaindex.testing import ScriptedLLM

            def step(messages: list[Any]) -> Any:
                return self.turn(agent(self.observe(messages)))

            llm = ScriptedLLM([step] * (MAX_TURNS + 20))
        fa = FunctionAgent(name="agent", tools=li_tools, llm=llm, system_prompt=task.system)
        guard = runtime.protect(fa) if runtime is not None else None

        async def go() -> Any:
            return await fa.run(user_msg=task.prompt, max_iterations=MAX_TURNS)

        t0, c0 = time.perf_counter(), time.process_time()
        try:
            out = asyncio.run(go())
        except Exception as exc:
            return RunResult(None, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0, guard)
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - c0
        response = getattr(out, "response", None)
        return RunResult(getattr(response, "content", None) if response is not None else str(out), None, seconds,
                         guard, cpu_seconds=cpu)
