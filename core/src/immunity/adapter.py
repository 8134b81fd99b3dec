"""The base class of framework adapters.

An adapter attaches to an agent the user already has (one line: ``immunity.protect(agent)``),
translates the framework's native events into :class:`~immunity.models.Event` for a
:class:`~immunity.runtime.RunSession`, and carries out the :class:`~immunity.runtime.Decision` it
gets back (inject hints into the next model call, block a tool call, stop, retry, roll back).

Rules every adapter follows: importing the adapter's module does not import the framework (import
it inside :meth:`instrument`); :meth:`instrument` is idempotent; :meth:`uninstrument` restores exactly
what was there; an error inside the adapter never breaks the user's agent unless the runtime is
fail-closed.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any


class Adapter:
    #: short name, also the entry point's name (``"langgraph"``)
    name: str = ""
    #: the distribution it instruments (``"langgraph"``)
    framework: str = ""
    #: the supported range of the framework, as a version specifier (``">=1.2,<2"``)
    supported: str = ""

    def __init__(self, runtime: Any, **options: Any):
        self.runtime = runtime
        self.options = options
        self.instrumented = False

    @classmethod
    def matches(cls, obj: Any) -> bool:
        """Whether ``obj`` (an agent, graph, crew...) belongs to this adapter's framework. Must not
        import the framework: compare the object's module name instead."""
        module = type(obj).__module__ or ""
        root = cls.framework.replace("-", "_").split("_")[0]
        return module.split(".")[0] == root

    @classmethod
    def framework_version(cls) -> str | None:
        try:
            return metadata.version(cls.framework)
        except metadata.PackageNotFoundError:
            return None

    @classmethod
    def version_supported(cls) -> bool | None:
        """``None`` if the framework is not installed, else whether its version is in range."""
        version = cls.framework_version()
        if version is None:
            return None
        try:
            from packaging.specifiers import SpecifierSet
            from packaging.version import Version
        except ImportError:  # pragma: no cover - packaging is nearly always present
            return True
        return Version(version) in SpecifierSet(cls.supported or ">=0")

    def instrument(self, target: Any = None) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def uninstrument(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __enter__(self) -> Adapter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.uninstrument()
