"""Exceptions raised by immunity."""

from __future__ import annotations


class ImmunityError(Exception):
    """Base class for immunity's own errors."""


class PluginError(ImmunityError):
    """A plugin failed to load or raised inside a hook (raised only in strict or fail-closed mode)."""

    def __init__(self, plugin: str, message: str):
        super().__init__(f"plugin {plugin!r}: {message}")
        self.plugin = plugin


class PluginCollisionError(ImmunityError):
    """Two plugins registered the same name."""

    def __init__(self, kind: str, name: str, first: str, second: str):
        super().__init__(
            f"{kind} {name!r} is registered by both plugin {first!r} and plugin {second!r}; "
            f"disable one with IMMUNITY_DISABLE_PLUGINS={second}"
        )
        self.kind, self.name, self.first, self.second = kind, name, first, second


class RunStopped(ImmunityError):
    """Raised inside an adapter to end a run cleanly after a stop intervention."""

    def __init__(self, message: str, final_answer: str | None = None):
        super().__init__(message)
        self.final_answer = final_answer if final_answer is not None else message


class PackError(ImmunityError):
    """A pattern pack is invalid, tampered with, or incompatible."""


class StoreError(ImmunityError):
    """The store could not be opened or written."""
