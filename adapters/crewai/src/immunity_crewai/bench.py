"""The CrewAI benchmark driver (registered through ``immunity_register_bench_drivers``).

A one-agent, one-task ``Crew`` with ``BaseTool`` tools (``max_iter`` raised). CrewAI is imported
only inside :meth:`CrewAIDriver.run`, after its telemetry, tracing and version check are switched
off and its storage directory is pointed at a temporary directory.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from immunity.bench.drivers import MAX_TURNS, Driver, RunResult, args_model, call_arguments, text
from immunity.bench.tasks import Action, Answer, Observation, ScriptedAgent, Task, ToolSpec

__all__ = ["CrewAIDriver"]


def _crewai_env() -> None:
    # no telemetry, tracing, version check or first-run prompt; CrewAI's own files go to a temp dir
    for key, value in (("CREWAI_DISABLE_TELEMETRY", "true"), ("OTEL_SDK_DISABLED", "true"),
                       ("CREWAI_TRACING_ENABLED", "false"), ("CREWAI_DISABLE_VERSION_CHECK", "true"),
                       ("CREWAI_TESTING", "true")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("CREWAI_STORAGE_DIR", tempfile.mkdtemp(prefix="immunity-bench-crewai-"))


class CrewAIDriver(Driver):
    """A one-agent, one-task ``Crew`` with ``BaseTool`` tools, the scripted ``ScriptedLLM``."""

    name = "crewai"
    modules = ("crewai",)

    @staticmethod
    def observe(messages: list[dict[str, Any]]) -> Observation:
        obs = Observation()
        for i, m in enumerate(messages):
            role = m.get("role")
            if role == "assistant":
                for tc in m.get("tool_calls") or []:
                    fn = tc.get("function") or {}
                    obs.add_call(fn.get("name", ""), call_arguments(fn.get("arguments")), tc.get("id"))
                if text(m.get("content")):
                    obs.add_text("assistant", text(m.get("content")), str(i))
            elif role == "tool":
                obs.add_result(text(m.get("content")), m.get("tool_call_id"), i)
            else:
                obs.add_text("system" if role == "system" else "user", text(m.get("content")), str(i))
        return obs

    @staticmethod
    def turn(action: Action) -> Any:
        from immunity_crewai.testing import ToolCall

        if isinstance(action, Answer):
            return action.text
        return ToolCall(action.name, dict(action.args))

    @staticmethod
    def _tool(spec: ToolSpec, fn: Callable[..., str]) -> Any:
        from crewai.tools import BaseTool

        schema = args_model(spec)

        class BenchTool(BaseTool):
            name: str = spec.name
            description: str = spec.description
            args_schema: type = schema

            def _run(self, **kwargs: Any) -> str:
                return fn(**kwargs)

        BenchTool.__name__ = BenchTool.__qualname__ = f"{spec.name}_tool"
        return BenchTool()

    def run(self, task: Task, tools: list[tuple[ToolSpec, Callable[..., str]]], agent: ScriptedAgent,
            runtime: Any = None, real: bool = False) -> RunResult:
        _crewai_env()
        from crewai import Agent, Crew
        from crewai import Task as CrewTask

        if real:
            from crewai import LLM

            llm: Any = LLM(model=os.environ.get("IMMUNITY_BENCH_MODEL", "gpt-4o-mini"))
        else:
            from immunity_crewai.testing import ScriptedLLM

            def step(messages: list[dict[str, Any]]) -> Any:
                return self.turn(agent(self.observe(messages)))

            llm = ScriptedLLM(script=[step] * (MAX_TURNS + 20))
        crew_agent = Agent(role="agent", goal=task.system, backstory=task.system, llm=llm,
                           tools=[self._tool(spec, fn) for spec, fn in tools], max_iter=MAX_TURNS, verbose=False)
        crew_task = CrewTask(description=task.prompt, expected_output="The answer to the request.", agent=crew_agent)
        crew = Crew(agents=[crew_agent], tasks=[crew_task], verbose=False)
        guard = runtime.protect(crew) if runtime is not None else None
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            # CrewAI prints event-bus warnings to the console when a run fails; keep the report clean
            with contextlib.redirect_stdout(io.StringIO()):
                out = crew.kickoff()
        except Exception as exc:
            return RunResult(None, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0, guard)
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - c0
        return RunResult(getattr(out, "raw", None) or str(out), None, seconds, guard, cpu_seconds=cpu)
