"""immunity for the OpenAI Agents SDK (``openai-agents``).

Importing this package does not import the SDK; the adapter imports it when an agent is protected::

    import immunity
    guard = immunity.protect(agent, store="immunity.db")   # finds this adapter by the agent's type
"""

from __future__ import annotations

from typing import Any

import pluggy

from immunity_openai_agents.adapter import OpenAIAgentsAdapter

__all__ = ["OpenAIAgentsAdapter", "RunStopped", "immunity_register_adapters", "immunity_register_bench_drivers"]

hookimpl = pluggy.HookimplMarker("immunity")


@hookimpl
def immunity_register_adapters(register: Any) -> None:
    register("openai-agents", OpenAIAgentsAdapter)


@hookimpl
def immunity_register_bench_drivers(register: Any) -> None:
    """The closed-loop benchmark's driver for this framework (``immunity bench closed-loop``)."""
    from immunity_openai_agents.bench import OpenAIAgentsDriver

    register("openai_agents", OpenAIAgentsDriver)


def __getattr__(name: str) -> Any:
    if name == "RunStopped":  # core's one stop exception, kept importable from here
        from immunity.errors import RunStopped

        return RunStopped
    raise AttributeError(f"module 'immunity_openai_agents' has no attribute {name!r}")
