"""``immunity.protect(agent, **options)``: one call for every framework, every option routed.

``protect`` builds a :class:`~immunity.runtime.Runtime` from the runtime's own arguments (``domain``,
``store``, ``selector``, ``plugins``, the :class:`~immunity.config.Config` fields, and ``options``
for plugins) and hands the adapter the options it declares (:meth:`Adapter.accepted_options`). A
keyword that is neither is an error naming what is accepted: nothing is dropped silently.

Protecting an object that a live guard already protects warns and returns that guard: one object,
one guard (two guards would record every step twice, or one of them nothing).
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from dataclasses import fields
from typing import Any

from immunity.config import Config

#: old adapter names still accepted by ``protect(framework=...)`` with a DeprecationWarning
RENAMED_ADAPTERS = {"openai_agents": "openai-agents"}


def runtime_parameters() -> set[str]:
    """The keyword arguments :class:`~immunity.runtime.Runtime` itself understands."""
    from immunity.runtime import Runtime

    params = {p for p, v in inspect.signature(Runtime.__init__).parameters.items()
              if v.kind is inspect.Parameter.KEYWORD_ONLY}
    return params | {f.name for f in fields(Config)}


def check_runtime_options(options: dict[str, Any]) -> None:
    """Reject a free-form runtime option that is a misspelling of a real argument
    (``Runtime(domian="coding")``): it would otherwise be kept as a plugin option and do nothing."""
    known = sorted(runtime_parameters())
    for name in options:
        # 0.8: typos (domian 0.83, stroe 0.8, selecter 0.88) are caught; a plugin's own option that
        # merely shares a word with an argument (llm_verifier vs verifiers, 0.76) is not
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        if close and close[0] != name:
            raise TypeError(f"Runtime() got an unexpected keyword argument {name!r} (did you mean {close[0]!r}?)")


def existing_guard(target: Any) -> Any:
    """The instrumented guard of any live runtime that protects ``target`` (the very object)."""
    if target is None:
        return None
    from immunity.runtime import _LIVE

    for rt in list(_LIVE):
        if getattr(rt, "closed", False):
            continue
        for adapter, tgt in list(rt.adapters_by_target.values()):
            if tgt is target and getattr(adapter, "instrumented", False):
                return adapter
    return None


def warn_protected_twice(target: Any, guard: Any, stacklevel: int = 3) -> None:
    warnings.warn(f"{type(target).__name__} is already protected by {type(guard).__name__} (run ids "
                  f"{guard.run_ids[-3:] if hasattr(guard, 'run_ids') else '?'}); keeping that guard. Call "
                  "guard.uninstrument() first to protect it again with other options.", UserWarning,
                  stacklevel=stacklevel)


def adapter_class(pm: Any, target: Any, framework: str | None) -> Any:
    """The adapter class for ``framework`` (by name) or for ``target`` (by its type)."""
    from immunity.errors import ImmunityError

    adapters = pm.registry("adapters")
    if framework is not None:
        if framework not in adapters and framework in RENAMED_ADAPTERS:
            warnings.warn(f"framework={framework!r} is deprecated: use framework={RENAMED_ADAPTERS[framework]!r}",
                          DeprecationWarning, stacklevel=4)
            framework = RENAMED_ADAPTERS[framework]
        if framework not in adapters:
            raise ImmunityError(f"no adapter named {framework!r}; installed: {sorted(adapters)}")
        return adapters[framework]
    matching = [cls for cls in adapters.values() if target is not None and cls.matches(target)]
    if not matching:
        raise ImmunityError(f"no installed adapter recognises {type(target).__name__}; installed adapters: "
                            f"{sorted(adapters) or 'none'} (pip install immunity-<framework>)")
    return matching[0]


def protect(target: Any = None, *, domain: str | None = None, store: Any = "immunity.db",
            framework: str | None = None, options: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """Attach immunity to an agent, graph or crew you already have and return its guard (see
    :class:`~immunity.adapter.Guard`: ``run_id``, ``set_outcome``, ``resume``, ``uninstrument``;
    ``guard.runtime`` holds the store and the runs)::

        guard = immunity.protect(graph, domain="coding", max_rollbacks=1)
        graph.invoke(...)      # unchanged

    Keyword arguments go to the :class:`~immunity.runtime.Runtime` (``store``, ``selector``,
    ``plugins``, ``fail_closed``, the :class:`~immunity.config.Config` fields...) or to the adapter
    (its options, e.g. ``node_events``, ``max_rollbacks``, ``fallback_model``); plugin options go in
    ``options={...}``. Anything else raises ``TypeError``."""
    existing = existing_guard(target)
    if existing is not None:
        warn_protected_twice(target, existing)
        return existing
    from immunity.runtime import Runtime

    known = runtime_parameters()
    runtime_kw = {k: v for k, v in kwargs.items() if k in known}
    rest = {k: v for k, v in kwargs.items() if k not in known}
    rt = Runtime(domain=domain, store=store, **runtime_kw, **dict(options or {}))
    try:
        cls = adapter_class(rt.pm, target, framework)
        accepted = cls.accepted_options()
        if accepted is not None:
            unknown = sorted(set(rest) - set(accepted))
            if unknown:
                hint = "".join(f" (did you mean {c[0]!r}?)" for u in unknown
                               if (c := difflib.get_close_matches(u, sorted(known | set(accepted)), n=1)))
                raise TypeError(f"protect() got unknown keyword argument(s) {unknown}{hint}: not an option of the "
                                f"{cls.name} adapter ({', '.join(sorted(accepted))}) nor of the runtime "
                                f"(plugin options go in options={{...}})")
        return rt.protect(target, framework=cls.name, **rest)
    except BaseException:
        rt.close()
        raise
