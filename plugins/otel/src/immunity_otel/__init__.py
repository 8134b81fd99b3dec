"""immunity-otel: every run as an OpenTelemetry trace, exported live through the SDK.

Switched on per runtime with ``Runtime(otel={...})`` (or ``Runtime(otel=True)``),
or for every runtime with ``IMMUNITY_OTEL=1``. Options: ``tracer_provider`` (default: the
application's global SDK provider if it set one, else a batching OTLP/HTTP exporter configured by
the standard ``OTEL_EXPORTER_OTLP_*`` variables), ``attach`` (default True: a run started inside an
active span becomes its child), ``max_pending`` (runs waiting for export; default 1000).

The hooks run on the agent's thread and only append to the run's buffer; spans are built and sent
on a background thread when the run ends (see :mod:`immunity_otel.exporter`). Installing the
plugin without switching it on does nothing, and importing it imports no OpenTelemetry module.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Generator
from typing import Any

import pluggy

hookimpl = pluggy.HookimplMarker("immunity")
log = logging.getLogger("immunity.otel")

#: The hooks only append to a list: called on the agent's thread, no worker hop (so the
#: application's active span is visible when a run starts).
immunity_inline = True

#: Exporters by ``id(config)`` (a runtime's configuration is unique to it; removed at unconfigure).
_EXPORTERS: dict[int, Any] = {}
_lock = threading.Lock()

__all__ = ["exporter_for"]


def _options(config: Any) -> dict[str, Any] | None:
    raw = (getattr(config, "options", None) or {}).get("otel")
    if raw is None:
        return {} if os.environ.get("IMMUNITY_OTEL", "").strip().lower() in ("1", "true", "yes") else None
    if raw is False:
        return None
    return dict(raw) if isinstance(raw, dict) else {}


def immunity_active(config: Any) -> bool:
    """Whether this runtime exports (core calls no per-event hook of this plugin otherwise)."""
    return _options(config) is not None


def exporter_for(config: Any) -> Any:
    """The exporter of the runtime with this configuration (``None`` when switched off)."""
    return _EXPORTERS.get(id(config))


@hookimpl
def immunity_configure(config: Any) -> None:
    opts = _options(config)
    if opts is None:
        return
    from immunity_otel.exporter import OtelExporter

    try:
        exporter = OtelExporter(opts.get("tracer_provider"), attach=bool(opts.get("attach", True)),
                                max_pending=int(opts.get("max_pending", 1000)), service_name=opts.get("service_name"))
    except Exception as exc:  # fail open: no export, the agent goes on
        log.error("immunity otel: export switched off: %s", exc)
        return
    with _lock:
        _EXPORTERS[id(config)] = exporter


@hookimpl
def immunity_unconfigure(config: Any) -> None:
    with _lock:
        exporter = _EXPORTERS.pop(id(config), None)
    if exporter is not None:
        exporter.close()


def _exp(session: Any) -> Any:
    runtime = getattr(session, "runtime", None)
    return _EXPORTERS.get(id(getattr(runtime, "config", None))) if _EXPORTERS and runtime is not None else None


@hookimpl
def immunity_observe(event: Any, run: Any, session: Any) -> None:
    exporter = _exp(session)
    if exporter is not None:
        exporter.on_event(event, run)


@hookimpl
def immunity_observe_step(step: Any, run: Any, session: Any) -> None:
    exporter = _exp(session)
    if exporter is not None:
        exporter.on_step(step, run)


def _flatten(results: Any) -> list[Any]:
    out: list[Any] = []
    for r in results or []:
        if isinstance(r, list):
            out.extend(r)
        elif r is not None:
            out.append(r)
    return out


@hookimpl(wrapper=True)
def immunity_verify(run: Any, session: Any) -> Generator[None, Any, Any]:
    results = yield
    exporter = _exp(session)
    if exporter is not None:
        from immunity.models import Verdict

        exporter.on_verdicts([v for v in _flatten(results) if isinstance(v, Verdict)], run)
    return results


@hookimpl(wrapper=True)
def immunity_intervene(run: Any, session: Any) -> Generator[None, Any, Any]:
    result = yield
    exporter = _exp(session)
    if exporter is not None and result is not None:
        exporter.on_intervention(result, run)
    return result


@hookimpl(wrapper=True)
def immunity_recover(run: Any, session: Any) -> Generator[None, Any, Any]:
    result = yield
    exporter = _exp(session)
    if exporter is not None and result is not None:
        exporter.on_recovery(result, run)
    return result
