"""immunity for LlamaIndex agents: observe, verify, intervene and recover inside a running
``FunctionAgent`` / ``ReActAgent`` / ``AgentWorkflow``, through LlamaIndex's own extension points.

::

    import immunity
    guard = immunity.protect(agent, domain="support")   # the adapter is found by its module name
    result = await agent.run(user_msg="...")             # your call, unchanged

This module is the plugin registered under the ``immunity`` entry point ``llamaindex``. Importing it
does not import LlamaIndex.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from immunity_llamaindex.adapter import LlamaIndexAdapter

__all__ = ["LlamaIndexAdapter", "immunity_register_adapters", "immunity_register_bench_drivers"]

hookimpl = pluggy.HookimplMarker("immunity")


@hookimpl
def immunity_register_adapters(register: Any) -> None:
    from immunity_llamaindex.adapter import LlamaIndexAdapter

    register("llamaindex", LlamaIndexAdapter)


@hookimpl
def immunity_register_bench_drivers(register: Any) -> None:
    """The closed-loop benchmark's driver for this framework (``immunity bench closed-loop``)."""
    from immunity_llamaindex.bench import LlamaIndexDriver

    register("llamaindex", LlamaIndexDriver)


def __getattr__(name: str) -> Any:
    if name == "LlamaIndexAdapter":
        from immunity_llamaindex.adapter import LlamaIndexAdapter

        return LlamaIndexAdapter
    raise AttributeError(f"module 'immunity_llamaindex' has no attribute {name!r}")
