"""The plugin manager: built-in defaults first, then installed plugins from entry points.

Nothing is loaded at import time: :func:`get_plugin_manager` builds a new manager each call.

Environment switches:

- ``IMMUNITY_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points (built-ins only).
- ``IMMUNITY_DISABLE_PLUGINS=a,b``: skip these entry points (deny-list).
- ``IMMUNITY_LOAD_PLUGINS=a,b``: load only these entry points (allow-list; works with autoload off).
- ``IMMUNITY_TRACE_PLUGINS=1``: log every hook call and its result to the ``immunity.trace`` logger.
- ``IMMUNITY_STRICT_PLUGINS=1``: a plugin that fails to load raises instead of being skipped.

Every hook is called through :meth:`PluginManager.call`, which goes through pluggy's own call path
with each implementation isolated (see :mod:`immunity.hookcall`).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from immunity import hookspecs
from immunity.errors import PluginCollisionError, PluginError
from immunity.hookcall import (
    PER_EVENT_HOOKS,
    CallPolicy,
    current_plugin,
    current_policy,
    guard,
    runs_inline,
    with_policy,
)

log = logging.getLogger("immunity.plugins")
trace_log = logging.getLogger("immunity.trace")

ENTRY_POINT_GROUP = "immunity"

#: Core's own defaults, registered first, on the same hooks as everyone else.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "immunity.defaults.store",
    "immunity.defaults.actions",
    "immunity.defaults.rules",
    "immunity.defaults.vectors",
    "immunity.defaults.policy",
    "immunity.defaults.commands",
)

#: Optional built-ins that other parts of core add (importers, learning); a missing one is skipped.
OPTIONAL_BUILTINS: tuple[str, ...] = (
    "immunity.importers.plugin",
    "immunity.learning.plugin",
    "immunity.interventions.plugin",
    "immunity.bench.plugin",
    "immunity.operate",
    "immunity.chaos.plugin",
)


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [p.strip() for p in raw.split(",") if p.strip()]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class PluginInfo:
    """What ``immunity plugins`` reports about one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    entry_point: str | None = None
    hooks: list[str] = field(default_factory=list)
    builtin: bool = False
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "entry_point": self.entry_point,
            "hooks": self.hooks,
            "builtin": self.builtin,
            "error": self.error,
        }


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus load reports and named registries."""

    def __init__(self) -> None:
        super().__init__(ENTRY_POINT_GROUP)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._registries: dict[str, dict[str, tuple[str, Any]]] = {}
        #: what a hook call does when no runtime gave it a policy (registries, the CLI)
        self.default_policy = CallPolicy(self)
        #: (hook, event kind, domain, inactive plugins) -> (the hook caller that reaches the
        #: implementations concerned, whether the call can be skipped: nothing to call and no call
        #: monitoring, the built-ins to call directly (firstresult, ((guard, argument names), ...))
        #: when only built-ins remain, else ``None``)
        self._callers: dict[tuple[str, Any, Any, frozenset[str]], tuple[Any, bool, Any]] = {}
        self._monitored = False

    # -- calling hooks ---------------------------------------------------------------------------
    def call(self, hook_name: str, policy: CallPolicy | None = None, **kwargs: Any) -> Any:
        """Call a hook through pluggy (wrappers, ``firstresult``, tracing) with every
        implementation isolated under ``policy`` (see :mod:`immunity.hookcall`): a list of the
        non-``None`` results, or the first one for a ``firstresult`` hook. Always keyword arguments.

        A call that passes an ``event`` reaches only the implementations whose declared
        ``immunity_kinds`` include the event's kind, and one that passes a ``run`` only those whose
        declared ``immunity_domains`` include the run's domain (see :func:`declared`); an
        implementation that declares neither gets every call. A per-event hook skips the plugins
        the policy names ``inactive`` (those whose ``immunity_active(config)`` said no).

        When only core's built-ins remain for a per-event call (no wrapper, no third-party
        implementation, no call monitoring such as ``IMMUNITY_TRACE_PLUGINS``), they are called
        directly in pluggy's order, through the same guards: the result is the one pluggy gives."""
        event, run = kwargs.get("event"), kwargs.get("run")
        inactive = _NONE if policy is None else policy.inactive
        key = (hook_name, None if event is None else getattr(event, "kind", None),
               None if run is None else getattr(run, "domain", None) or "", inactive)
        entry = self._callers.get(key)
        if entry is None:
            self.caller_for(*key)
            entry = self._callers[key]
        caller, nothing, direct = entry
        if nothing:  # no implementation to call and no one monitoring calls: what pluggy would return
            return None if caller.spec is not None and caller.spec.opts.get("firstresult") else []
        if direct is not None:
            try:
                calls = [(fn, [kwargs[a] for a in names]) for fn, names in direct[1]]
            except KeyError:  # a missing argument: pluggy's own call reports it
                calls = None
            if calls is not None:
                if policy is None or current_policy() is policy:
                    return _call_direct(direct[0], calls)
                return with_policy(policy, lambda: _call_direct(direct[0], calls))
        if policy is None or current_policy() is policy:
            return caller(**kwargs)
        return with_policy(policy, lambda: caller(**kwargs))

    def caller_for(self, hook_name: str, kind: str | None, domain: str | None,
                   inactive: frozenset[str] = frozenset()) -> Any:
        """The hook caller of ``hook_name`` for an event of ``kind`` in a run of ``domain`` (``None``:
        the call has no event / no run, so that declaration does not apply; ``""``: a run with no
        domain): pluggy's own caller, or a subset of it (:meth:`pluggy.PluginManager.subset_hook_caller`)
        without the implementations that declared other kinds or domains, nor (per-event hooks)
        those of the ``inactive`` plugins. Cached until a plugin is registered or unregistered."""
        key = (hook_name, kind, domain, inactive)
        entry = self._callers.get(key)
        if entry is None:
            orig = getattr(self.hook, hook_name)
            impls = orig.get_hookimpls()
            per_event = hook_name in PER_EVENT_HOOKS
            drop = [impl.plugin for impl in impls if not _accepts(impl.function, kind, domain)
                    or (per_event and impl.plugin_name in inactive)]
            caller = self.subset_hook_caller(hook_name, drop) if drop else orig
            kept = [impl for impl in impls if impl.plugin not in drop]
            direct = None
            if per_event and kept and not self._monitored and all(
                    self.is_builtin(impl.plugin_name) and not (impl.wrapper or impl.hookwrapper) for impl in kept):
                firstresult = bool(caller.spec is not None and caller.spec.opts.get("firstresult"))
                # pluggy calls the last registered (tryfirst last in the list) first
                direct = (firstresult, tuple((impl.function, tuple(impl.argnames)) for impl in reversed(kept)))
            if len(self._callers) > 4096:  # unbounded domain names: keep memory bounded
                self._callers.clear()
            entry = self._callers[key] = (caller, len(drop) == len(impls) and not self._monitored, direct)
        return entry[0]

    def add_hookcall_monitoring(self, before: Any, after: Any) -> Any:
        """pluggy's call monitoring (``enable_tracing`` uses it): from now on every hook call goes
        to pluggy, even one with no implementation to call, so the monitor sees it."""
        self._monitored = True
        self._callers.clear()
        return super().add_hookcall_monitoring(before, after)

    @staticmethod
    def is_builtin(name: str | None) -> bool:
        """Core's own defaults: called inline and never skipped by the step budget."""
        return name in BUILTIN_PLUGINS or name in OPTIONAL_BUILTINS

    def _guard(self, plugin: Any) -> None:
        """Put the isolating guard around each hook implementation of ``plugin`` (once)."""
        name = self.get_name(plugin)
        builtin = self.is_builtin(name)
        for caller in self.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin or getattr(impl.function, "__immunity_guarded__", False):
                    continue
                inline = runs_inline(plugin, impl.function, impl.plugin_name, builtin)
                fn = guard(self, caller.name, impl.plugin_name, impl.function, inline=inline,
                           exempt=bool(getattr(plugin, "immunity_budget_exempt", False)),
                           wrapper=bool(impl.wrapper or impl.hookwrapper))
                fn.__immunity_guarded__ = True  # type: ignore[attr-defined]
                fn.immunity_kinds = declared(plugin, impl.function, "immunity_kinds")  # type: ignore[attr-defined]
                fn.immunity_domains = declared(plugin, impl.function, "immunity_domains")  # type: ignore[attr-defined]
                # pluggy calls ``impl.function``; its argument names were read from the original
                object.__setattr__(impl, "function", fn)

    # -- reporting ---------------------------------------------------------------------------
    def plugin_infos(self) -> list[PluginInfo]:
        for name, info in self.infos.items():
            plugin = self.get_plugin(name)
            if plugin is not None:
                info.hooks = sorted(h.name for h in self.get_hookcallers(plugin) or [])
        return list(self.infos.values())

    def failed(self) -> list[PluginInfo]:
        return [i for i in self.infos.values() if i.error]

    # -- registries ----------------------------------------------------------------------------
    def registry(self, kind: str) -> dict[str, Any]:
        """Collect ``immunity_register_<kind>`` into ``{name: obj}`` (cached).

        Each plugin's implementation is called on its own, so a collision can name both plugins
        and one broken registration does not hide the others.
        """
        if kind not in self._registries:
            self._registries[kind] = self._collect(kind)
        return {name: obj for name, (_, obj) in self._registries[kind].items()}

    def lookup(self, kind: str, name: str) -> Any:
        """One registered object (or ``None``) without copying the registry: for the per-step path."""
        if kind not in self._registries:
            self._registries[kind] = self._collect(kind)
        entry = self._registries[kind].get(name)
        return entry[1] if entry else None

    def registry_owner(self, kind: str, name: str) -> str | None:
        self.registry(kind)
        entry = self._registries[kind].get(name)
        return entry[0] if entry else None

    def _collect(self, kind: str) -> dict[str, tuple[str, Any]]:
        found: dict[str, tuple[str, Any]] = {}
        order = {name: i for i, (name, _) in enumerate(self.list_name_plugin())}

        def register(name: str, obj: Any) -> None:
            owner = current_plugin() or "?"
            if name in found and found[name][0] != owner:
                # name the plugin registered first as the first (pluggy calls the newest first)
                first, second = sorted((found[name][0], owner), key=lambda n: order.get(n, len(order)))
                raise PluginCollisionError(kind.rstrip("s"), name, first, second)
            found[name] = (owner, obj)

        # a broken registration is reported (``immunity plugins`` shows it; a runtime also stores
        # it) and the others go on; a collision names both plugins and raises
        self.call(f"immunity_register_{kind}", register=register)
        return found

    def invalidate(self) -> None:
        self._registries.clear()
        self._callers.clear()

    def register(self, plugin: Any, name: str | None = None) -> str | None:  # type: ignore[override]
        existing = self.get_plugin(name) if name else None
        if existing is not None and existing is not plugin:
            first = self.infos.get(name or "")
            raise PluginCollisionError("plugin", name or "?", (first.entry_point if first else None) or name or "?",
                                       getattr(plugin, "__name__", repr(plugin)))
        result = super().register(plugin, name)
        self._guard(plugin)
        self.invalidate()
        return result

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:  # type: ignore[override]
        result = super().unregister(plugin, name)
        self.invalidate()
        return result


def declared(plugin: Any, function: Any, attr: str) -> frozenset[str] | None:
    """What a hook implementation declared it handles, as a set of strings, or ``None`` (all).

    ``immunity_kinds`` (event kinds, for hooks that receive an ``event``) and ``immunity_domains``
    (run domains, for hooks that receive a ``run``) are read from the hook function, else from the
    object of a bound method (a :class:`~immunity.domain_plugin.DomainPlugin` whose methods a
    module re-exports), else from the plugin object. A string counts as one value."""
    value = getattr(function, attr, None)
    if value is None:  # a bound method re-exported by a module: its object's declaration
        value = getattr(getattr(function, "__self__", None), attr, None)
    if value is None:
        value = getattr(plugin, attr, None)
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    return frozenset(str(getattr(v, "value", v)) for v in value)


_NONE: frozenset[str] = frozenset()


def _call_direct(firstresult: bool, calls: list[tuple[Any, list[Any]]]) -> Any:
    """pluggy's ``_multicall`` for guarded built-ins only (no wrappers): each guard isolates its
    implementation, so nothing here can raise but what the guard lets through (fail-closed,
    Ctrl-C), exactly as through pluggy."""
    if firstresult:
        for fn, args in calls:
            res = fn(*args)
            if res is not None:
                return res
        return None
    results = []
    for fn, args in calls:
        res = fn(*args)
        if res is not None:
            results.append(res)
    return results


def active_plugins_filter(pm: PluginManager, config: Any) -> frozenset[str]:
    """The plugins that are switched off for ``config``: those with an ``immunity_active`` callable
    (on the plugin object) that returns false for it. Their per-event hooks are not called in a
    runtime with this configuration; one whose ``immunity_active`` raises counts as active."""
    off = []
    for name, plugin in pm.list_name_plugin():
        check = getattr(plugin, "immunity_active", None)
        if name is None or not callable(check):
            continue
        try:
            if not check(config):
                off.append(name)
        except Exception as exc:  # fail open: a plugin that cannot say is called
            log.warning("plugin %s: immunity_active failed (%s: %s); its hooks are called", name,
                        type(exc).__name__, exc)
    return frozenset(off)


def _accepts(function: Any, kind: str | None, domain: str | None) -> bool:
    kinds = getattr(function, "immunity_kinds", None)
    if kinds is not None and kind is not None and kind not in kinds:
        return False
    domains = getattr(function, "immunity_domains", None)
    return domains is None or domain is None or domain in domains


def _entry_points() -> Iterator[metadata.EntryPoint]:
    yield from metadata.entry_points(group=ENTRY_POINT_GROUP)


def _load_module(path: str) -> Any:
    return importlib.import_module(path)


def get_plugin_manager(
    *,
    load_entrypoints: bool | None = None,
    strict: bool | None = None,
    extra: list[Any] | None = None,
) -> PluginManager:
    """Build a new plugin manager.

    :param load_entrypoints: load installed plugins (default: yes unless
        ``IMMUNITY_DISABLE_PLUGIN_AUTOLOAD`` is set; an allow-list still loads).
    :param strict: raise on a plugin that fails to load (default: ``IMMUNITY_STRICT_PLUGINS``).
    :param extra: plugin objects (modules, instances) to register after the rest.
    """
    pm = PluginManager()
    strict = _env_flag("IMMUNITY_STRICT_PLUGINS") if strict is None else strict

    for modname in BUILTIN_PLUGINS:
        mod = _load_module(modname)
        pm.register(mod, name=modname)
        pm.infos[modname] = PluginInfo(name=modname, distribution="immunity", version=_version("immunity"),
                                       builtin=True)
    for modname in OPTIONAL_BUILTINS:
        try:
            mod = _load_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name and modname.startswith(exc.name):
                continue
            raise
        pm.register(mod, name=modname)
        pm.infos[modname] = PluginInfo(name=modname, distribution="immunity", version=_version("immunity"),
                                       builtin=True)

    allow = _env_list("IMMUNITY_LOAD_PLUGINS")
    deny = set(_env_list("IMMUNITY_DISABLE_PLUGINS") or [])
    if load_entrypoints is None:
        load_entrypoints = not _env_flag("IMMUNITY_DISABLE_PLUGIN_AUTOLOAD") or allow is not None
    if load_entrypoints:
        _load_entrypoints(pm, allow=allow, deny=deny, strict=strict)

    for plugin in extra or []:
        pm.register(plugin)
        name = pm.get_name(plugin) or repr(plugin)
        pm.infos[name] = PluginInfo(name=name)

    if _env_flag("IMMUNITY_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: trace_log.info(msg.rstrip()))
        pm.enable_tracing()
    return pm


def _version(dist: str | None) -> str | None:
    if not dist:
        return None
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _load_entrypoints(pm: PluginManager, *, allow: list[str] | None, deny: set[str], strict: bool) -> None:
    seen: dict[str, str] = {}
    for ep in _entry_points():
        dist = ep.dist.name if ep.dist is not None else None
        if allow is not None and ep.name not in allow:
            continue
        if ep.name in deny:
            continue
        info = PluginInfo(name=ep.name, distribution=dist, version=_version(dist), entry_point=f"{ep.name} = {ep.value}")
        if ep.name in seen and seen[ep.name] != dist:
            info.error = (f"entry point name {ep.name!r} is used by both {seen[ep.name]!r} and {dist!r}; "
                          f"the second was skipped")
            log.warning(info.error)
            pm.infos[f"{ep.name} ({dist})"] = info
            if strict:
                raise PluginCollisionError("plugin", ep.name, seen[ep.name] or "?", dist or "?")
            continue
        seen[ep.name] = dist or "?"
        pm.infos[ep.name] = info
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
            pm.check_pending()
        except Exception as exc:
            info.error = f"{type(exc).__name__}: {exc}"
            log.warning("could not load immunity plugin %r from %s: %s", ep.name, dist, info.error)
            try:
                if pm.get_plugin(ep.name) is not None:
                    pm.unregister(name=ep.name)
            except Exception:  # pragma: no cover - best effort cleanup
                pass
            if strict:
                raise PluginError(ep.name, info.error) from exc


class _EachPolicy(CallPolicy):
    tag_results = True

    def __init__(self, pm: PluginManager, on_error: Callable[[str, BaseException], None]):
        super().__init__(pm)
        self.on_error = on_error

    def error(self, plugin: str, hook: str, exc: BaseException) -> None:
        self.on_error(plugin, exc)


def call_each(pm: PluginManager, hook_name: str, on_error: Callable[[str, BaseException], None],
              **kwargs: Any) -> list[tuple[str, Any]]:
    """Call a broadcast hook through :meth:`PluginManager.call` with every implementation
    isolated; ``on_error(plugin, exc)`` hears each failure. Returns ``[(plugin, result)]``."""
    return pm.call(hook_name, _EachPolicy(pm, on_error), **kwargs)  # type: ignore[no-any-return]


def build(factory: Any, *args: Any, runtime: Any = None) -> Any:
    """Call a registered factory with ``args``, adding ``runtime=`` when the factory accepts it
    (verifiers and selectors that need the registries or the store ask for it)."""
    import inspect

    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if "runtime" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return factory(*args, runtime=runtime)
    return factory(*args)
