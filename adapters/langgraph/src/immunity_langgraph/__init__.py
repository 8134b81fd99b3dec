"""immunity-langgraph: immunity for LangGraph graphs.

::

    import immunity
    immunity.protect(graph, domain="coding", store="immunity.db")   # graph.invoke(...) stays as it is

This module is the ``immunity`` plugin (entry point ``langgraph``). Importing it does not import
LangGraph or langchain-core: the adapter imports them when it is attached.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookimpl = pluggy.HookimplMarker("immunity")

__all__ = ["LangGraphAdapter", "hookimpl", "immunity_register_adapters", "immunity_register_bench_drivers"]


@hookimpl
def immunity_register_adapters(register: Any) -> None:
    from immunity_langgraph.adapter import LangGraphAdapter

    register("langgraph", LangGraphAdapter)


@hookimpl
def immunity_register_bench_drivers(register: Any) -> None:
    """The closed-loop benchmark's driver for this framework (``immunity bench closed-loop``)."""
    from immunity_langgraph.bench import LangGraphDriver

    register("langgraph", LangGraphDriver)


def __getattr__(name: str) -> Any:
    if name == "LangGraphAdapter":
        from immunity_langgraph.adapter import LangGraphAdapter

        return LangGraphAdapter
    raise AttributeError(f"module 'immunity_langgraph' has no attribute {name!r}")
