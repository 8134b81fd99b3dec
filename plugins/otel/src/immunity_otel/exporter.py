"""The live exporter: every run as an OpenTelemetry trace, sent through the SDK off the hot path.

While a run goes, the hooks only append to the run's buffer (a copy of each step, the model calls'
events, failed verdicts, interventions, recoveries). When the run ends, the buffer goes to one
background thread that builds the spans (:func:`immunity.importers.otlp.run_spans`, the same spans
``immunity export --format otlp-json`` writes) and emits them with their original times through a
tracer. If the application had an active span when the run started (OpenInference or any other
instrumentation), the run's span is its child, in its trace; otherwise the run starts a trace.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from immunity.importers.otlp import ERROR, OK, run_spans
from immunity.models import Event, EventKind, Intervention, Outcome, Recovery, Run, Step, Verdict

log = logging.getLogger("immunity.otel")

__all__ = ["OtelExporter", "build_tracer_provider"]


def build_tracer_provider(service_name: str | None = None) -> Any:
    """An SDK tracer provider with a batching OTLP/HTTP exporter configured by the standard
    environment variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
    ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_EXPORTER_OTLP_TIMEOUT``, ...; ``OTEL_SERVICE_NAME``)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = service_name or os.environ.get("OTEL_SERVICE_NAME") or "immunity"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


@dataclass
class _Buffer:
    parent: Any = None  # the application's SpanContext when the run started, if any
    steps: list[Step] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    interventions: list[Intervention] = field(default_factory=list)
    recoveries: list[Recovery] = field(default_factory=list)


class OtelExporter:
    """One per runtime. ``tracer_provider``: the provider to emit through (default: the
    application's global SDK provider if it set one, else :func:`build_tracer_provider`).
    ``attach``: make the run a child of the application's active span. ``max_pending``: runs
    waiting for the background thread; past it a run is dropped and counted (:attr:`dropped`)."""

    def __init__(self, tracer_provider: Any = None, *, attach: bool = True, max_pending: int = 1000,
                 service_name: str | None = None):
        from opentelemetry import trace

        self._owns_provider = False
        if tracer_provider is None:
            current = trace.get_tracer_provider()
            if type(current).__module__.startswith("opentelemetry.sdk"):
                tracer_provider = current
            else:
                tracer_provider = build_tracer_provider(service_name)
                self._owns_provider = True
        from importlib.metadata import version

        self.provider = tracer_provider
        self.tracer = tracer_provider.get_tracer("immunity", version("immunity-otel"))
        self.attach = attach
        self._runs: dict[str, _Buffer] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[Run, _Buffer] | None] = queue.Queue(maxsize=max(1, max_pending))
        self.exported = 0
        self.dropped = 0
        self.failed = 0
        self._idle = threading.Condition()
        self._busy = 0
        self._thread = threading.Thread(target=self._work, name="immunity-otel", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ hot path: appends only
    def _buffer(self, run_id: str) -> _Buffer:
        buf = self._runs.get(run_id)
        if buf is None:
            with self._lock:
                buf = self._runs.setdefault(run_id, _Buffer())
        return buf

    def on_event(self, event: Event, run: Run) -> None:
        if event.kind is EventKind.RUN_START:
            buf = self._buffer(run.run_id)
            if self.attach:
                from opentelemetry import trace

                ctx = trace.get_current_span().get_span_context()
                buf.parent = ctx if ctx.is_valid else None
        elif event.kind in (EventKind.MODEL_START, EventKind.MODEL_END):
            self._buffer(run.run_id).events.append(event.model_copy())
        elif event.kind is EventKind.RUN_END:
            with self._lock:
                buf = self._runs.pop(run.run_id, None) or _Buffer()  # type: ignore[arg-type]
            snapshot = run.model_copy(deep=True)
            snapshot.ended_at = snapshot.ended_at or event.ts
            if event.outcome is not None:
                snapshot.outcome = event.outcome
            if snapshot.status == "running":
                snapshot.status = "error" if event.error else "finished"
            self._submit(snapshot, buf)

    def on_step(self, step: Step, run: Run) -> None:
        self._buffer(run.run_id).steps.append(step.model_copy())

    def on_verdicts(self, verdicts: list[Verdict], run: Run) -> None:
        failed = [v.model_copy() for v in verdicts if not v.ok]
        if failed:
            self._buffer(run.run_id).verdicts.extend(failed)

    def on_intervention(self, intervention: Intervention, run: Run) -> None:
        self._buffer(run.run_id).interventions.append(intervention.model_copy())

    def on_recovery(self, recovery: Recovery, run: Run) -> None:
        self._buffer(run.run_id).recoveries.append(recovery.model_copy())

    def _submit(self, run: Run, buf: _Buffer) -> None:
        with self._idle:
            self._busy += 1
        try:
            self._queue.put_nowait((run, buf))
        except queue.Full:
            self.dropped += 1
            self._done()
            log.warning("immunity otel: %d runs waiting for export; run %s not exported", self._queue.maxsize,
                        run.run_id)

    def _done(self) -> None:
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    # ------------------------------------------------------------------ the background thread
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            run, buf = item
            try:
                self.emit(run, buf)
                self.exported += 1
            except Exception as exc:  # an exporter problem never reaches the agent
                self.failed += 1
                log.warning("immunity otel: run %s could not be exported: %s", run.run_id, exc)
            finally:
                self._done()

    def emit(self, run: Run, buf: _Buffer) -> None:
        """Build the run's spans and send them through the tracer, with their original times."""
        from opentelemetry import trace
        from opentelemetry.trace import NonRecordingSpan, SpanKind, Status, StatusCode

        for v in buf.verdicts:
            v.run_id = v.run_id or run.run_id
        spans = run_spans(run, buf.steps, buf.events, buf.verdicts, buf.interventions, buf.recoveries)
        kinds = {1: SpanKind.INTERNAL, 3: SpanKind.CLIENT}
        made: dict[str, Any] = {}
        parent_ctx = trace.set_span_in_context(NonRecordingSpan(buf.parent)) if buf.parent is not None else None
        for s in spans:
            ctx = parent_ctx if s.parent_id is None or s.parent_id not in made else trace.set_span_in_context(
                made[s.parent_id])
            if s.parent_id is None and ctx is None:
                from opentelemetry.context import Context

                ctx = Context()  # a new trace, whatever is current on this thread
            span = self.tracer.start_span(s.name, context=ctx, kind=kinds.get(s.kind, SpanKind.INTERNAL),
                                          attributes=s.attributes, start_time=s.start_ns)
            for name, ts, attrs in s.events:
                span.add_event(name, attributes=attrs, timestamp=ts)
            if s.status == ERROR:
                span.set_status(Status(StatusCode.ERROR, s.status_message))
            elif s.status == OK:
                span.set_status(Status(StatusCode.OK))
            made[s.span_id] = span
        for s in reversed(spans):
            made[s.span_id].end(end_time=max(s.end_ns, s.start_ns))

    # ------------------------------------------------------------------ lifecycle
    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every ended run is handed to the SDK, then flush the SDK's processors."""
        with self._idle:
            done = self._idle.wait_for(lambda: self._busy <= 0, timeout)
        force = getattr(self.provider, "force_flush", None)
        if callable(force):
            force()
        return bool(done)

    def close(self, open_runs: list[Run] | None = None) -> None:
        """Export runs that never ended (as they are), flush, stop the thread; shut the provider
        down if this exporter made it."""
        for run in open_runs or []:
            with self._lock:
                buf = self._runs.pop(run.run_id, None)
            if buf is not None:
                snap = run.model_copy(deep=True)
                if snap.outcome is Outcome.UNKNOWN and snap.status == "running":
                    snap.status = "unfinished"
                self._submit(snap, buf)
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=10)
        if self._owns_provider:
            shutdown = getattr(self.provider, "shutdown", None)
            if callable(shutdown):
                shutdown()

