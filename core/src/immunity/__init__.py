"""immunity: an adaptive immune system for AI agents.

Attach it to an agent you already have::

    import immunity
    guard = immunity.protect(graph, domain="coding", store="immunity.db")

Nothing is loaded at import time beyond the models; plugins load when a runtime is created.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from immunity.models import (
    ActionType,
    Checkpoint,
    Event,
    EventKind,
    FailurePattern,
    Intervention,
    InterventionKind,
    Outcome,
    PatternPack,
    Recovery,
    RecoveryKind,
    Run,
    Severity,
    Step,
    Verdict,
)

if TYPE_CHECKING:  # pragma: no cover
    from immunity.adapter import Guard
    from immunity.errors import RunStopped
    from immunity.guard import protect
    from immunity.runtime import Decision, RunSession, Runtime

__all__ = [
    "ActionType", "Checkpoint", "Decision", "Event", "EventKind", "FailurePattern", "Guard", "Intervention",
    "InterventionKind", "Outcome", "PatternPack", "Recovery", "RecoveryKind", "Run", "RunSession", "RunStopped",
    "Runtime", "Severity", "Step", "Verdict", "hookimpl", "protect",
]

import pluggy

hookimpl = pluggy.HookimplMarker("immunity")


def __getattr__(name: str) -> Any:
    if name in ("Runtime", "RunSession", "Decision"):
        from immunity import runtime

        return getattr(runtime, name)
    if name == "protect":
        from immunity.guard import protect

        return protect
    if name == "Guard":
        from immunity.adapter import Guard

        return Guard
    if name == "RunStopped":
        from immunity.errors import RunStopped

        return RunStopped
    raise AttributeError(f"module 'immunity' has no attribute {name!r}")
