"""Framework drivers: the same task, tools and scripted agent run through each framework's own
runtime (LangGraph, LlamaIndex, OpenAI Agents SDK, CrewAI).

A driver builds the framework's agent the way a user of that framework would (its prebuilt agent,
its tool type, its defaults), with the adapter package's scripted model whose every turn asks the
:class:`~immunity.bench.tasks.ScriptedAgent` for the next action from what the model was sent.
With a runtime, the agent is protected exactly as a user would: ``runtime.protect(agent)``.

Frameworks are imported only inside :meth:`Driver.run` (core never imports a framework at module
level); :meth:`Driver.available` says whether the framework and its adapter are installed.

Iteration limits are raised (100 model turns) so that the agent's policy, not a framework default,
decides how long a run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from immunity.bench.tasks import Action, Answer, Observation, ScriptedAgent, Task, ToolSpec

__all__ = ["DRIVERS", "Driver", "RunResult", "python_function"]

MAX_TURNS = 100
_TYPES = {"string": str, "number": float, "integer": int}


@dataclass
class RunResult:
    answer: str | None
    error: str | None = None


def python_function(spec: ToolSpec, call: Callable[..., str]) -> Callable[..., str]:
    """A function with the tool's real signature (parameters and annotations), so every framework's
    own schema builder reads it like a hand-written tool."""

    def tool(*args: Any, **kwargs: Any) -> str:
        bound = sig.bind(*args, **kwargs)
        return call(**bound.arguments)

    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=_TYPES[t])
              for n, t in spec.params.items()]
    sig = inspect.Signature(params, return_annotation=str)
    tool.__signature__ = sig  # type: ignore[attr-defined]
    tool.__annotations__ = {**{n: _TYPES[t] for n, t in spec.params.items()}, "return": str}
    tool.__name__ = tool.__qualname__ = spec.name
    tool.__doc__ = spec.description
    return tool


def _args_model(spec: ToolSpec) -> Any:
    from pydantic import create_model

    fields: dict[str, Any] = {n: (_TYPES[t], ...) for n, t in spec.params.items()}
    return create_model(f"{spec.name}_args", **fields)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p if isinstance(p, str) else str(p.get("text", "")) for p in content
                        if isinstance(p, str | dict))
    return "" if content is None else str(content)


class Driver:
    """Runs one trial of a task in one framework."""

    name = "driver"
    modules: tuple[str, ...] = ()

    @classmethod
    def available(cls) -> bool:
        try:
            return all(importlib.util.find_spec(m) is not None for m in cls.modules)
        except ModuleNotFoundError:  # find_spec("a.b") imports "a", which may be missing
            return False

    def run(self, task: Task, tools: list[tuple[ToolSpec, Callable[..., str]]], agent: ScriptedAgent,
            runtime: Any = None, real: bool = False) -> RunResult:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- LangGraph
class LangGraphDriver(Driver):
    """``langgraph.prebuilt.create_react_agent`` with an in-memory checkpointer and a thread id,
    LangGraph's default ``ToolNode`` error handling, ``recursion_limit`` raised."""

    name = "langgraph"
    modules = ("langgraph", "immunity_langgraph")

    @staticmethod
    def observe(messages: list[Any]) -> Observation:
        obs = Observation()
        for i, m in enumerate(messages):
            kind = getattr(m, "type", "")
            if kind == "ai":
                for tc in getattr(m, "tool_calls", None) or []:
                    obs.add_call(tc["name"], tc.get("args") or {}, tc.get("id"))
                if _text(m.content):
                    obs.add_text("assistant", _text(m.content), str(i))
            elif kind == "tool":
                obs.add_result(_text(m.content), getattr(m, "tool_call_id", None), i)
            else:
                obs.add_text("system" if kind == "system" else "user", _text(m.content), str(i))
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
                                                 description=spec.description, args_schema=_args_model(spec))
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
        if runtime is not None:
            runtime.protect(graph)
        config: Any = {"configurable": {"thread_id": f"bench-{id(agent)}"}, "recursion_limit": 2 * MAX_TURNS + 1}
        try:
            out = graph.invoke({"messages": [("user", task.prompt)]}, config)
        except Exception as exc:
            return RunResult(None, f"{type(exc).__name__}: {exc}")
        messages = out.get("messages") or []
        return RunResult(_text(messages[-1].content) if messages else None)


# ---------------------------------------------------------------------------------------------- LlamaIndex
class LlamaIndexDriver(Driver):
    """``llama_index.core.agent.workflow.FunctionAgent`` with ``FunctionTool`` tools."""

    name = "llamaindex"
    modules = ("llama_index.core", "immunity_llamaindex")

    @staticmethod
    def observe(messages: list[Any]) -> Observation:
        from llama_index.core.base.llms.types import ToolCallBlock

        obs = Observation()
        for i, m in enumerate(messages):
            role = getattr(m.role, "value", str(m.role))
            if role == "assistant":
                for block in m.blocks:
                    if isinstance(block, ToolCallBlock):
                        args = block.tool_kwargs if isinstance(block.tool_kwargs, dict) else \
                            json.loads(block.tool_kwargs or "{}")
                        obs.add_call(block.tool_name, args, block.tool_call_id)
                for tc in (m.additional_kwargs or {}).get("tool_calls") or []:
                    if isinstance(tc, dict) and "function" in tc:
                        obs.add_call(tc["function"]["name"], json.loads(tc["function"].get("arguments") or "{}"),
                                     tc.get("id"))
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
                                               description=spec.description, fn_schema=_args_model(spec))
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
        if runtime is not None:
            runtime.protect(fa)

        async def go() -> Any:
            return await fa.run(user_msg=task.prompt, max_iterations=MAX_TURNS)

        try:
            out = asyncio.run(go())
        except Exception as exc:
            return RunResult(None, f"{type(exc).__name__}: {exc}")
        response = getattr(out, "response", None)
        return RunResult(getattr(response, "content", None) if response is not None else str(out))


# ---------------------------------------------------------------------------------------------- OpenAI Agents
_TRACING_SET = False


class OpenAIAgentsDriver(Driver):
    """``agents.Agent`` with ``function_tool`` tools and ``Runner.run_sync`` (``max_turns`` raised).
    With the scripted model, traces are kept in the process (no exporter), so nothing is uploaded
    even when an API key is set."""

    name = "openai_agents"
    modules = ("agents", "immunity_openai_agents")

    @staticmethod
    def observe(items: list[dict[str, Any]]) -> Observation:
        obs = Observation()
        for i, item in enumerate(items):
            kind = item.get("type")
            if kind == "function_call":
                try:
                    args = json.loads(item.get("arguments") or "{}")
                except ValueError:
                    args = {}
                obs.add_call(item.get("name", ""), args, item.get("call_id"))
            elif kind == "function_call_output":
                obs.add_result(_text(item.get("output")), item.get("call_id"), i)
            elif "role" in item:
                role = item["role"]
                obs.add_text("assistant" if role == "assistant" else ("system" if role in ("system", "developer")
                                                                      else "user"), _text(item.get("content")), str(i))
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
        if runtime is not None:
            runtime.protect(oa)
        try:
            out = Runner.run_sync(oa, task.prompt, max_turns=MAX_TURNS)
        except Exception as exc:
            return RunResult(None, f"{type(exc).__name__}: {exc}")
        return RunResult(None if out.final_output is None else str(out.final_output))


# ---------------------------------------------------------------------------------------------- CrewAI
def _crewai_env() -> None:
    # no telemetry, tracing, version check or first-run prompt; CrewAI's own files go to a temp dir
    for key, value in (("CREWAI_DISABLE_TELEMETRY", "true"), ("OTEL_SDK_DISABLED", "true"),
                       ("CREWAI_TRACING_ENABLED", "false"), ("CREWAI_DISABLE_VERSION_CHECK", "true"),
                       ("CREWAI_TESTING", "true")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("CREWAI_STORAGE_DIR", tempfile.mkdtemp(prefix="immunity-bench-crewai-"))


class CrewAIDriver(Driver):
    """A one-agent, one-task ``Crew`` with ``BaseTool`` tools (``max_iter`` raised)."""

    name = "crewai"
    modules = ("crewai", "immunity_crewai")

    @staticmethod
    def observe(messages: list[dict[str, Any]]) -> Observation:
        obs = Observation()
        for i, m in enumerate(messages):
            role = m.get("role")
            if role == "assistant":
                for tc in m.get("tool_calls") or []:
                    fn = tc.get("function") or {}
                    try:
                        args = json.loads(fn.get("arguments") or "{}")
                    except ValueError:
                        args = {}
                    obs.add_call(fn.get("name", ""), args, tc.get("id"))
                if _text(m.get("content")):
                    obs.add_text("assistant", _text(m.get("content")), str(i))
            elif role == "tool":
                obs.add_result(_text(m.get("content")), m.get("tool_call_id"), i)
            else:
                obs.add_text("system" if role == "system" else "user", _text(m.get("content")), str(i))
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

        schema = _args_model(spec)

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
        if runtime is not None:
            runtime.protect(crew)
        try:
            # CrewAI prints event-bus warnings to the console when a run fails; keep the report clean
            with contextlib.redirect_stdout(io.StringIO()):
                out = crew.kickoff()
        except Exception as exc:
            return RunResult(None, f"{type(exc).__name__}: {exc}")
        return RunResult(getattr(out, "raw", None) or str(out))


DRIVERS: dict[str, type[Driver]] = {d.name: d for d in (LangGraphDriver, LlamaIndexDriver, OpenAIAgentsDriver,
                                                         CrewAIDriver)}
