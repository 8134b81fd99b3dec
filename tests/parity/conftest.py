"""Fixtures for the parity tests: CrewAI's process-global hooks and event handlers are cleaned up
after each test (as in the CrewAI adapter's own tests), so one framework's test never sees another's
crew."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def clean_crewai_globals() -> Iterator[None]:
    if importlib.util.find_spec("crewai") is None:
        yield
        return
    from crewai.events import crewai_event_bus
    from crewai.hooks import InterceptionPoint, get_hooks, unregister_hook

    hooks = {p: get_hooks(p) for p in InterceptionPoint}
    sync = dict(crewai_event_bus._sync_handlers)
    yield
    crewai_event_bus.flush()
    for point, before in hooks.items():
        for hook in get_hooks(point):
            if not any(hook is h for h in before):
                unregister_hook(point, hook)
    for event_type, handlers in dict(crewai_event_bus._sync_handlers).items():
        for handler in handlers - sync.get(event_type, frozenset()):
            if (getattr(handler, "__module__", "") or "").startswith("immunity_crewai"):
                crewai_event_bus.off(event_type, handler)
