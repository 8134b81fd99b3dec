"""Benchmark drivers: the protocol, and how core finds them (through the plugin manager).

A driver runs one trial of a :class:`~immunity.bench.tasks.Task` through one framework's own
runtime. It builds the framework's agent the way a user of that framework would (its prebuilt
agent, its tool type, its defaults), with the adapter package's scripted model whose every turn asks
the :class:`~immunity.bench.tasks.ScriptedAgent` for the next action from what the model was sent.
With a runtime, the agent is protected exactly as a user would: ``runtime.protect(agent)``.

Drivers live in the adapter packages (a ``bench`` module in each) and are registered by each
adapter's plugin through the ``immunity_register_bench_drivers`` hook, so core imports no adapter:
:func:`bench_drivers` collects them. A third-party adapter registers its own and the closed-loop
benchmark, the chaos fleet and ``bench/bench_overhead.py`` pick it up with no change.

Frameworks are imported only inside :meth:`Driver.run`; :meth:`Driver.available` says whether the
framework is installed. Iteration limits are raised (:data:`MAX_TURNS` model turns) so that the
agent's policy, not a framework default, decides how long a run goes on.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from immunity.bench.tasks import ScriptedAgent, Task, ToolSpec

__all__ = ["MAX_TURNS", "Driver", "RunResult", "args_model", "bench_drivers", "call_arguments", "python_function", "text"]

MAX_TURNS = 100
_TYPES = {"string": str, "number": float, "integer": int}


@dataclass
class RunResult:
    """What one driver run gave: the final answer or the error it raised, the wall time of the
    framework's own run call (building and protecting the agent excluded), and what
    ``runtime.protect`` returned (``None`` without a runtime), so a caller can detach it;
    ``cpu_seconds``: the process's CPU time (every thread) during that call."""

    answer: str | None
    error: str | None = None
    seconds: float = 0.0
    guard: Any = None
    cpu_seconds: float = 0.0


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


def args_model(spec: ToolSpec) -> Any:
    from pydantic import create_model

    fields: dict[str, Any] = {n: (_TYPES[t], ...) for n, t in spec.params.items()}
    return create_model(f"{spec.name}_args", **fields)


def call_arguments(value: Any) -> dict[str, Any]:
    """A tool call's arguments as a dict, whether the framework gives a dict or JSON text (``{}``
    for none or for text that is not a JSON object)."""
    if isinstance(value, dict):
        return value
    try:
        args = json.loads(value or "{}")
    except (TypeError, ValueError):
        return {}
    return args if isinstance(args, dict) else {}


def text(content: Any) -> str:
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
        """Run ``task`` once: build the framework's agent with ``tools`` (``(spec, callable)``
        pairs) and a scripted model whose turns ``agent`` decides (with ``real``, the framework's
        own OpenAI model instead); protect it with ``runtime`` when one is given; never raise (an
        error is returned on the result)."""
        raise NotImplementedError


def bench_drivers(pm: Any = None) -> dict[str, type[Driver]]:
    """Every benchmark driver the installed plugins register (``immunity_register_bench_drivers``),
    by name: ``{"langgraph": LangGraphDriver, ...}``. ``pm`` is a plugin manager (a new one with
    every installed plugin when omitted). Availability of each framework is
    :meth:`Driver.available`."""
    if pm is None:
        from immunity.plugins import get_plugin_manager

        pm = get_plugin_manager()
    return dict(pm.registry("bench_drivers"))


