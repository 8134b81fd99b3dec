"""Built-in plugin: map native actions to universal action types through the run's domain, falling
back to a name-and-argument heuristic; run the domain's checks as verifiers."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import pluggy

from immunity.domain import ActionMapping, heuristic_mapping
from immunity.models import Event, Run, Step, Verdict
from immunity.state import RunState

hookimpl = pluggy.HookimplMarker("immunity")


@hookimpl(trylast=True)
def immunity_map_action(tool: str | None, arguments: dict[str, Any] | None, text: str | None, run: Run,
                        domain: Any) -> ActionMapping:
    if domain is not None:
        mapping = domain.map_action(tool, arguments, text)
        if mapping is not None:
            return mapping
    return heuristic_mapping(tool, arguments, text)


@functools.cache
def _wants_config(check: Any) -> bool:
    try:
        params = inspect.signature(check).parameters
    except (TypeError, ValueError):
        return False
    return "config" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _domain(session: Any, run: Run) -> Any:
    if session is None or not run.domain:
        return None
    return session.runtime.domain(run.domain)


@hookimpl
def immunity_verify(event: Event, step: Step | None, run: Run, state: RunState, session: Any) -> list[Verdict]:
    """Run the checks of the run's domain (each isolated: one failing check does not hide others)."""
    domain = _domain(session, run)
    if domain is None or not domain.checks:
        return []
    out: list[Verdict] = []
    config = session.runtime.config
    for check in domain.checks:
        try:
            kwargs = {"event": event, "step": step, "run": run, "state": state}
            if _wants_config(check):
                kwargs["config"] = config
            res = check(**kwargs)
        except Exception as exc:
            session.record_error(f"{domain.name}:{getattr(check, '__name__', 'check')}", "immunity_verify", exc)
            continue
        if res is None:
            continue
        for v in res if isinstance(res, list | tuple) else [res]:
            if isinstance(v, Verdict):
                v.plugin = v.plugin or f"{domain.name}:{getattr(check, '__name__', 'check')}"
                out.append(v)
            else:
                session.record_error(f"{domain.name}:{getattr(check, '__name__', 'check')}", "immunity_verify",
                                     TypeError(f"returned {type(v).__name__}, expected Verdict"))
    return out
