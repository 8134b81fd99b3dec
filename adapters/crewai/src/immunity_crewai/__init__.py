"""immunity for CrewAI: observe, verify, intervene and recover inside a running crew.

::

    import immunity
    guard = immunity.protect(crew, domain="support", store="immunity.db")
    crew.kickoff(inputs={...})          # unchanged

This module is the package's plugin (entry point ``crewai`` in group ``immunity``). Importing it
does not import CrewAI: the adapter module imports the framework only when it is switched on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from immunity_crewai.adapter import CrewAIAdapter

hookimpl = pluggy.HookimplMarker("immunity")

__all__ = ["CrewAIAdapter", "hookimpl", "immunity_register_adapters", "immunity_register_bench_drivers"]


@hookimpl
def immunity_register_adapters(register: Any) -> None:
    from immunity_crewai.adapter import CrewAIAdapter

    register("crewai", CrewAIAdapter)


@hookimpl
def immunity_register_bench_drivers(register: Any) -> None:
    """The closed-loop benchmark's driver for this framework (``immunity bench closed-loop``)."""
    from immunity_crewai.bench import CrewAIDriver

    register("crewai", CrewAIDriver)


def __getattr__(name: str) -> Any:
    if name == "CrewAIAdapter":
        from immunity_crewai.adapter import CrewAIAdapter

        return CrewAIAdapter
    raise AttributeError(f"module 'immunity_crewai' has no attribute {name!r}")
