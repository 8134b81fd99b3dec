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

import difflib
import warnings
from importlib import metadata
from typing import Any, ClassVar, Protocol, runtime_checkable

from immunity.models import Outcome, Run

#: The options every adapter accepts, with the same meaning and default in each:
#:
#: - ``domain``: the domain of the runs (default: the runtime's);
#: - ``max_rollbacks`` (2): rollbacks carried out automatically in one run (CrewAI: rollbacks
#:   requested; one the kickoff cannot carry out waits for ``guard.resume()``);
#: - ``node_events`` (``"none"``): which framework steps (graph nodes, workflow steps, tasks) are
#:   stored as events: ``"none"``, ``"end"`` (one ``node_end`` per step, with its duration and
#:   error) or ``"all"`` (``node_start`` and ``node_end``).
COMMON_OPTIONS: dict[str, Any] = {"domain": None, "max_rollbacks": 2, "node_events": "none"}
NODE_EVENTS = ("none", "end", "all")
#: old spellings of ``node_events`` values, still accepted with a DeprecationWarning
_OLD_NODE_EVENTS: dict[Any, str] = {True: "end", False: "none", None: "none", "both": "all"}
_VERSIONS: dict[str, str | None] = {}  # framework -> installed version, read once per process


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@runtime_checkable
class Guard(Protocol):
    """What ``immunity.protect(agent)`` returns, the same for every framework.

    - ``run_id``: the immunity run id of the latest run this guard saw (``None`` before the first);
      ``run_ids``: all of them, oldest first. Ids look like ``<framework>-<the framework's own id>``
      (``langgraph-<thread_id>``, ``crewai-<kickoff id>``...), with ``-<n>`` for a later run that
      reuses the same native id.
    - ``set_outcome(run_id, "success" | "failure", reason=...)``: the user's verdict on a run (the
      bandit learns from it; see :mod:`immunity.outcomes`).
    - ``resume(run_id)`` / ``aresume(run_id)``: continue a run that paused, stopped or rolled back,
      through the framework's own resume; returns what the framework's call returns.
    - ``uninstrument()``: detach, restoring exactly what was there (``instrumented`` says whether
      it is attached).
    - ``options``: the options it runs with (see :data:`COMMON_OPTIONS` and
      :meth:`Adapter.accepted_options`).
    - ``runtime``: the :class:`~immunity.runtime.Runtime` (store, runs, configuration).
    """

    name: str
    runtime: Any
    instrumented: bool
    options: dict[str, Any]

    @property
    def run_id(self) -> str | None: ...

    @property
    def run_ids(self) -> list[str]: ...

    def set_outcome(self, run_id: str, outcome: Outcome | str, *, reason: str | None = None) -> Run: ...

    def resume(self, run_id: str | None = None, **kwargs: Any) -> Any: ...

    async def aresume(self, run_id: str | None = None, **kwargs: Any) -> Any: ...

    def instrument(self, target: Any = None) -> None: ...

    def uninstrument(self) -> None: ...


class Adapter:
    #: short name, also the entry point's name (``"langgraph"``)
    name: str = ""
    #: the distribution it instruments (``"langgraph"``)
    framework: str = ""
    #: the supported range of the framework, as a version specifier (``">=1.2,<2"``)
    supported: str = ""
    #: the options this adapter accepts besides :data:`COMMON_OPTIONS`, with their defaults. ``None``
    #: (an adapter written before options were declared): any option is passed through unchecked.
    extra_options: ClassVar[dict[str, Any] | None] = None
    #: ``node_events`` values this adapter accepts besides :data:`NODE_EVENTS`
    extra_node_events: ClassVar[tuple[str, ...]] = ()

    def __init__(self, runtime: Any, **options: Any):
        self.runtime = runtime
        self.options = self.check_options(options)
        self.instrumented = False
        self._run_ids: list[str] = []

    # ------------------------------------------------------------------ options
    @classmethod
    def accepted_options(cls) -> dict[str, Any] | None:
        """Every option name this adapter accepts with its default (``None``: not declared)."""
        if cls.extra_options is None:
            return None
        return {**COMMON_OPTIONS, **cls.extra_options}

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """The options with their defaults filled in and ``node_events`` normalised; an option this
        adapter does not know raises ``TypeError`` (it would otherwise be dropped silently)."""
        accepted = cls.accepted_options()
        if accepted is None:
            return dict(options)
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            hints = "".join(_did_you_mean(u, sorted(accepted)) for u in unknown)
            raise TypeError(f"the {cls.name or cls.__name__} adapter got unknown option(s) {unknown}{hints}; it "
                            f"accepts: {', '.join(sorted(accepted))}")
        out = {**accepted, **options}
        out["node_events"] = cls.node_events_value(out.get("node_events"))
        if isinstance(out.get("max_rollbacks"), bool) or not isinstance(out.get("max_rollbacks"), int) \
                or out["max_rollbacks"] < 0:
            raise TypeError(f"max_rollbacks must be a whole number >= 0, not {out.get('max_rollbacks')!r}")
        return out

    @classmethod
    def node_events_value(cls, value: Any) -> str:
        allowed = (*NODE_EVENTS, *cls.extra_node_events)
        if isinstance(value, str) and value in allowed:
            return value
        if (value is None or isinstance(value, bool | str)) and value in _OLD_NODE_EVENTS:
            new = _OLD_NODE_EVENTS[value]
            if value is not None:
                warnings.warn(f"node_events={value!r} is deprecated: use node_events={new!r}", DeprecationWarning,
                              stacklevel=4)
            return new
        raise ValueError(f"node_events must be one of {', '.join(repr(a) for a in allowed)}, not {value!r}")

    # ------------------------------------------------------------------ the Guard surface
    @property
    def run_ids(self) -> list[str]:
        """The immunity run ids of the runs this guard saw, oldest first (a run continued by a
        resume is listed once)."""
        return self._run_ids

    @run_ids.setter
    def run_ids(self, value: list[str]) -> None:
        self._run_ids = list(value)

    @property
    def run_id(self) -> str | None:
        """The immunity run id of the latest run this guard saw (``None`` before the first)."""
        return self._run_ids[-1] if self._run_ids else None

    def saw_run(self, run_id: str) -> None:
        """Adapters call this when a run starts or continues, so ``run_id`` names it."""
        if run_id in self._run_ids:
            if self._run_ids[-1] == run_id:
                return
            self._run_ids.remove(run_id)
        self._run_ids.append(run_id)

    def set_outcome(self, run_id: str | None, outcome: Outcome | str, *, reason: str | None = None) -> Run:
        """Your verdict on a run: ``"success"`` or ``"failure"`` (``"unknown"`` takes it back), with an
        optional ``reason``. It replaces any outcome the framework reported, is saved to the store,
        and rewards the hints the bandit chose in that run. ``run_id=None`` means the latest run."""
        from immunity.outcomes import set_outcome

        rid = run_id or self.run_id
        if rid is None:
            raise ValueError("this guard has not seen a run yet: pass run_id=")
        return set_outcome(self.runtime, rid, outcome, reason=reason)

    def resume(self, run_id: str | None = None, **kwargs: Any) -> Any:  # pragma: no cover - per framework
        raise NotImplementedError(f"{type(self).__name__} does not implement resume()")

    async def aresume(self, run_id: str | None = None, **kwargs: Any) -> Any:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} does not implement aresume()")

    @classmethod
    def matches(cls, obj: Any) -> bool:
        """Whether ``obj`` (an agent, graph, crew...) belongs to this adapter's framework. Must not
        import the framework: compare the object's module name instead."""
        module = type(obj).__module__ or ""
        root = cls.framework.replace("-", "_").split("_")[0]
        return module.split(".")[0] == root

    @classmethod
    def framework_version(cls) -> str | None:
        """The installed framework's version (``None`` if not installed), looked up once per process:
        reading package metadata takes milliseconds, and every ``protect()`` asks."""
        if cls.framework not in _VERSIONS:
            try:
                _VERSIONS[cls.framework] = metadata.version(cls.framework)
            except metadata.PackageNotFoundError:
                _VERSIONS[cls.framework] = None
        return _VERSIONS[cls.framework]

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
