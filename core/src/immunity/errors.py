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
    """The one stop exception of every adapter: raised out of the framework's run call when immunity
    stops a run at a point where the framework cannot end it with an answer (adapters end a run
    cleanly with ``final_answer`` wherever the framework allows). ``reason`` says why, ``run_id``
    names the immunity run (resume it with ``guard.resume(run_id)``)."""

    def __init__(self, message: str, final_answer: str | None = None, *, run_id: str | None = None):
        super().__init__(message)
        self.final_answer = final_answer if final_answer is not None else message
        self.run_id = run_id

    @property
    def reason(self) -> str:
        return str(self.args[0]) if self.args else ""


class PackError(ImmunityError):
    """A pattern pack is invalid, tampered with, or incompatible."""


class StoreError(ImmunityError):
    """The store could not be opened or written."""
