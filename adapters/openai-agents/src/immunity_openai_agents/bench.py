"""The OpenAI Agents SDK benchmark driver (registered through ``immunity_register_bench_drivers``).

``agents.Agent`` with ``function_tool`` tools and ``Runner.run_sync`` (``max_turns`` raised). With
the scripted model, traces are kept in the process (no exporter), so nothing is uploaded even when
an API key is set. The SDK is imported only inside :meth:`OpenAIAgentsDriver.run`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from immunity.bench.drivers import MAX_TURNS, Driver, RunResult, call_arguments, python_function, text
from immunity.bench.tasks import Action, Answer, Observation, ScriptedAgent, Task, ToolSpec

__all__ = ["OpenAIAgentsDriver"]

_TRACING_SET = False


class OpenAIAgentsDriver(Driver):
    """``Agent`` + ``function_tool`` + ``Runner.run_sync``, the scripted ``ScriptedModel``."""

    name = "openai_agents"
    modules = ("agents",)

    @staticmethod
    def observe(items: list[dict[str, Any]]) -> Observation:
        obs = Observation()
        for i, item in enumerate(items):
            kind = item.get("type")
            if kind == "function_call":
                obs.add_call(item.get("name", ""), call_arguments(item.get("arguments")), item.get("call_id"))
            elif kind == "function_call_output":
                obs.add_result(text(item.get("output")), item.get("call_id"), i)
            elif "role" in item:
                role = item["role"]
                obs.add_text("assistant" if role == "assistant" else ("system" if role in ("system", "developer")
                                                                      else "user"), text(item.get("content")), str(i))
        return obs

    @staticmethod
    def turn(action: Action) -> Any:
        from immunity_openai_agents.testing import ToolCall

        if isinstance(action, Answer):
            return action.text
        return ToolCall(action.name, dict(action.args))

    def run(self, task: Task, tools: list[tuple[ToolSpec, Callable[..., str]]], agent: ScriptedAgent,
            runtime: Any = None, real: bool = False) -> RunResult:
        global _TRACING_SET
        from agents import Agent, Runner, function_tool

        if not real and not _TRACING_SET:
            from agents import set_trace_processors

            set_trace_processors([])
            _TRACING_SET = True
        oa_tools: list[Any] = [function_tool(python_function(spec, fn), name_override=spec.name,
                                             description_override=spec.description)
                               for spec, fn in tools]
        if real:
            model: Any = os.environ.get("IMMUNITY_BENCH_MODEL", "gpt-4o-mini")
        else:
            from immunity_openai_agents.testing import ScriptedModel

            def step(items: list[dict[str, Any]]) -> Any:
                return self.turn(agent(self.observe(items)))

            model = ScriptedModel([step] * (MAX_TURNS + 20))
        oa = Agent(name="agent", instructions=task.system, tools=oa_tools, model=model)
        guard = runtime.protect(oa) if runtime is not None else None
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            out = Runner.run_sync(oa, task.prompt, max_turns=MAX_TURNS)
        except Exception as exc:
            return RunResult(None, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0, guard)
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - c0
        return RunResult(None if out.final_output is None else str(out.final_output), None, seconds, guard, cpu_seconds=cpu)
