"""Runs as OpenTelemetry traces, and traces as runs.

**Export** (``immunity export --format otlp-json``): every run is one trace, written as one line of
OTLP JSON (an ``ExportTraceServiceRequest``, as the OpenTelemetry Collector's file exporter writes
it). No SDK is needed: the JSON is written here. The spans follow the OpenTelemetry GenAI semantic
conventions:

- the run: ``invoke_agent {agent}`` with ``gen_ai.operation.name=invoke_agent``,
  ``gen_ai.agent.name``, ``gen_ai.conversation.id`` (the run id);
- each tool step: ``execute_tool {tool}`` with ``gen_ai.operation.name=execute_tool``,
  ``gen_ai.tool.name``, ``gen_ai.tool.call.id``, ``gen_ai.tool.call.arguments`` and
  ``gen_ai.tool.call.result``; a failed call has status ERROR and ``error.type``;
- each message step and each model call: ``chat {model}`` with ``gen_ai.operation.name=chat``,
  ``gen_ai.request.model``, ``gen_ai.usage.input_tokens`` / ``gen_ai.usage.output_tokens``,
  ``gen_ai.output.messages``;
- verdicts, interventions (hints) and recoveries: span events (``immunity.verdict``,
  ``immunity.intervention``, ``immunity.recovery``) on their step's span, with ``immunity.*``
  attributes.

Every span also carries immunity's own record as JSON (``immunity.run``, ``immunity.step``,
``immunity.record`` on span events), so importing an export gives back the same runs field by field.

**Import** (``immunity import --format otlp-json|openinference``): span dumps as collectors' file
exporters, Phoenix and Langfuse write them (OTLP JSON, one request per line or one document), or
spans as the Python SDK's ``span.to_json()`` writes them. Spans are grouped by trace; each trace is a
run. Tool spans (OpenInference ``openinference.span.kind=TOOL`` or GenAI ``execute_tool``) become
tool steps, model spans with text and no tool calls (``LLM`` / ``chat``) become message steps, in
start-time order; agent and chain spans give the run's task and agent. The installed domains map
the steps to action types, as for every other import.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from pydantic import ValidationError

from immunity.importers.base import (
    ImportedRun,
    ImportProblem,
    iter_objects,
    message_step,
    new_run,
    parse_arguments,
    tool_step,
)
from immunity.models import Event, EventKind, Intervention, Outcome, Recovery, Run, Step, Verdict

__all__ = ["OtlpImporter", "Span", "export_otlp", "run_spans", "spans_to_otlp"]

SCOPE = "immunity"
OK, ERROR = 1, 2  # OTLP status codes
INTERNAL, CLIENT = 1, 3  # OTLP span kinds


@dataclass
class Span:
    """A span, independent of the SDK: what :func:`run_spans` builds and both the JSON writer and
    the live exporter (``immunity-otel``) emit."""

    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start_ns: int
    end_ns: int
    kind: int = INTERNAL
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    status: int = 0  # unset
    status_message: str | None = None


def _hex(*parts: str, n: int) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:n]


def _ns(ts: float | None) -> int:
    return int(round((ts or 0.0) * 1e9))


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)


def _put(attrs: dict[str, Any], key: str, value: Any) -> None:
    if value is None or value == "":
        return
    attrs[key] = value


def _tool_call_id(step: Step) -> str | None:
    cid = step.data.get("tool_call_id")
    return str(cid) if cid else None


def run_spans(run: Run, steps: list[Step], events: Iterable[Event] = (), verdicts: Iterable[Verdict] = (),
              interventions: Iterable[Intervention] = (), recoveries: Iterable[Recovery] = (),
              *, trace_id: str | None = None, parent_id: str | None = None) -> list[Span]:
    """The spans of one run: the run's span first, then its steps' and model calls' spans.

    ``trace_id`` / ``parent_id`` attach the run to an existing trace (an application's active
    span); by default the trace id is derived from the run id, so exporting twice gives the same ids.
    """
    trace = trace_id or _hex("trace", run.run_id, n=32)
    root_id = _hex("span", run.run_id, "run", n=16)
    steps = sorted(steps, key=lambda s: s.index)
    end_ts = run.ended_at or max([run.started_at, *(s.ts for s in steps)])
    attrs: dict[str, Any] = {"gen_ai.operation.name": "invoke_agent", "gen_ai.conversation.id": run.run_id}
    _put(attrs, "gen_ai.agent.name", run.agent or run.framework)
    for key in ("task", "task_id", "domain", "framework", "source", "status", "failure_step", "final_answer"):
        _put(attrs, f"immunity.{key}", getattr(run, key))
    attrs["immunity.run_id"] = run.run_id
    attrs["immunity.outcome"] = run.outcome.value
    attrs["immunity.steps"] = run.steps
    attrs["immunity.run"] = run.model_dump_json()
    root = Span(f"invoke_agent {run.agent or run.framework or 'agent'}", trace, root_id, parent_id,
                _ns(run.started_at), _ns(end_ts), INTERNAL, attrs)
    if run.outcome is Outcome.FAILURE:
        root.status, root.status_message = ERROR, f"run failed (outcome {run.outcome.value})"
    elif run.outcome is Outcome.SUCCESS:
        root.status = OK
    out = [root]
    by_step: dict[int, Span] = {}
    for i, step in enumerate(steps):
        nxt = steps[i + 1].ts if i + 1 < len(steps) else end_ts
        span = _step_span(step, trace, _hex("span", run.run_id, "step", str(step.index), n=16), root_id,
                          _ns(step.ts), max(_ns(step.ts), _ns(min(nxt, end_ts) if nxt >= step.ts else step.ts)))
        by_step[step.index] = span
        out.append(span)
    out.extend(_model_spans(run, list(events), trace, root_id))
    for name, records in (("verdict", verdicts), ("intervention", interventions), ("recovery", recoveries)):
        for rec in records:
            target = by_step.get(rec.step) if rec.step is not None else None
            ev_attrs: dict[str, Any] = {"immunity.kind": name, "immunity.record": rec.model_dump_json()}
            if isinstance(rec, Verdict):
                ev_attrs.update({"immunity.verdict.ok": rec.ok, "immunity.verdict.severity": rec.severity.value,
                                 "immunity.verdict.block": rec.block})
                _put(ev_attrs, "immunity.error_class", rec.error_class)
                _put(ev_attrs, "immunity.verdict.message", rec.message)
                _put(ev_attrs, "immunity.hint", rec.hint)
                _put(ev_attrs, "immunity.plugin", rec.plugin)
            elif isinstance(rec, Intervention):
                ev_attrs["immunity.intervention.kind"] = rec.kind.value
                _put(ev_attrs, "immunity.hint", rec.text)
                _put(ev_attrs, "immunity.error_class", rec.error_class)
                _put(ev_attrs, "immunity.intervention.variant", rec.variant)
            else:
                ev_attrs["immunity.recovery.kind"] = rec.kind.value
                _put(ev_attrs, "immunity.hint", rec.hint)
                _put(ev_attrs, "immunity.recovery.reason", rec.reason)
            (target or root).events.append((f"immunity.{name}", _ns(rec.ts), ev_attrs))
    return out


def _step_span(step: Step, trace: str, span_id: str, parent: str, start: int, end: int) -> Span:
    attrs: dict[str, Any] = {"immunity.step.index": step.index, "immunity.action_type": step.action_type.value,
                             "immunity.step": step.model_dump_json()}
    _put(attrs, "gen_ai.agent.name", step.agent)
    if step.tool:
        name = f"execute_tool {step.tool}"
        attrs.update({"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": step.tool,
                      "gen_ai.tool.type": "function"})
        _put(attrs, "gen_ai.tool.call.id", _tool_call_id(step))
        if step.arguments is not None:
            attrs["gen_ai.tool.call.arguments"] = _json(step.arguments)
        _put(attrs, "gen_ai.tool.call.result", step.result)
        kind = INTERNAL
    else:
        model = step.data.get("model")
        name = f"chat {model}" if model else "chat"
        attrs["gen_ai.operation.name"] = "chat"
        _put(attrs, "gen_ai.request.model", model)
        if step.text:
            attrs["gen_ai.output.messages"] = _json([{"role": "assistant", "parts": [
                {"type": "text", "content": step.text}]}])
        kind = CLIENT
    if step.tokens:
        attrs["immunity.tokens"] = step.tokens
    span = Span(name, trace, span_id, parent, start, end, kind, attrs)
    if step.failed:
        span.status, span.status_message = ERROR, (step.error or f"return code {step.return_code}")[:500]
        attrs["error.type"] = "tool_error" if step.error else "nonzero_return_code"
    return span


def _model_spans(run: Run, events: list[Event], trace: str, parent: str) -> list[Span]:
    """Model calls (``model_start`` .. ``model_end`` events) as ``chat`` spans with token usage."""
    out = []
    start: Event | None = None
    for n, ev in enumerate(events):
        if ev.kind is EventKind.MODEL_START:
            start = ev
        elif ev.kind is EventKind.MODEL_END:
            attrs: dict[str, Any] = {"gen_ai.operation.name": "chat", "immunity.kind": "model_call"}
            model = ev.model or (start.model if start else None)
            _put(attrs, "gen_ai.request.model", model)
            usage = ev.usage or {}
            inp = usage.get("input_tokens", usage.get("prompt_tokens"))
            outp = usage.get("output_tokens", usage.get("completion_tokens"))
            if inp is not None:
                attrs["gen_ai.usage.input_tokens"] = int(inp)
            if outp is not None:
                attrs["gen_ai.usage.output_tokens"] = int(outp)
            _put(attrs, "gen_ai.agent.name", ev.agent)
            t0 = start.ts if start is not None else ev.ts
            out.append(Span(f"chat {model}" if model else "chat", trace, _hex("span", run.run_id, "model", str(n), n=16),
                            parent, _ns(t0), _ns(ev.ts), CLIENT, attrs))
            start = None
    return out


# ---------------------------------------------------------------------------------------------- OTLP JSON
def _any_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, list | tuple):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _attributes(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _any_value(v)} for k, v in attrs.items()]


def spans_to_otlp(spans: list[Span], *, service_name: str = "immunity") -> dict[str, Any]:
    """One ``ExportTraceServiceRequest`` (OTLP JSON) holding ``spans``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        scope_version = version("immunity")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        scope_version = "0"
    out = []
    for s in spans:
        d: dict[str, Any] = {"traceId": s.trace_id, "spanId": s.span_id, "name": s.name, "kind": s.kind,
                             "startTimeUnixNano": str(s.start_ns), "endTimeUnixNano": str(s.end_ns),
                             "attributes": _attributes(s.attributes)}
        if s.parent_id:
            d["parentSpanId"] = s.parent_id
        if s.events:
            d["events"] = [{"timeUnixNano": str(t), "name": n, "attributes": _attributes(a)} for n, t, a in s.events]
        if s.status:
            d["status"] = {"code": s.status, **({"message": s.status_message} if s.status_message else {})}
        out.append(d)
    return {"resourceSpans": [{
        "resource": {"attributes": _attributes({"service.name": service_name})},
        "scopeSpans": [{"scope": {"name": SCOPE, "version": scope_version}, "spans": out}],
    }]}


def export_otlp(store: Any, output: str | IO[str], *, run_ids: list[str] | None = None,
                source: str | None = None) -> int:
    """Write runs (all, the named ones, or those with ``source``) as OTLP JSON Lines, one trace a
    line. Returns how many runs were written."""
    from immunity.importers.immunity_format import _select

    runs = _select(store, run_ids, source)

    def write(fh: IO[str]) -> int:
        for run in runs:
            rid = run.run_id
            spans = run_spans(run, store.steps(rid), store.events(rid), store.verdicts(rid),
                              store.interventions(rid), store.recoveries(rid))
            fh.write(json.dumps(spans_to_otlp(spans), ensure_ascii=False) + "\n")
        return len(runs)

    if isinstance(output, str) and output != "-":
        tmp = output + ".part"
        with open(tmp, "w", encoding="utf-8") as fh:
            n = write(fh)
        os.replace(tmp, output)  # a finished file or none
        return n
    return write(sys.stdout if output == "-" else output)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- reading
def _value(v: Any) -> Any:
    """An OTLP ``AnyValue`` as a Python value."""
    if not isinstance(v, dict):
        return v
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        try:
            return int(v["intValue"])
        except (TypeError, ValueError):
            return v["intValue"]
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "arrayValue" in v:
        return [_value(x) for x in (v["arrayValue"] or {}).get("values") or []]
    if "kvlistValue" in v:
        return {kv.get("key"): _value(kv.get("value")) for kv in (v["kvlistValue"] or {}).get("values") or []}
    return None


def _attrs(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):  # the SDK's to_json(): already a flat dict
        return dict(raw)
    out: dict[str, Any] = {}
    for kv in raw or []:
        if isinstance(kv, dict) and "key" in kv:
            out[str(kv["key"])] = _value(kv.get("value"))
    return out


def _time_ns(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, int | float):
        return int(value)
    text = str(value)
    if text.isdigit():
        return int(text)
    from datetime import datetime

    try:  # the SDK's to_json(): ISO 8601 ("2024-05-01T10:00:00.123456Z")
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        return 0


@dataclass
class _Read:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attrs: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]]
    status_code: int
    status_message: str | None
    where: str


def _norm_id(value: Any) -> str:
    """A trace or span id as lowercase hex: OTLP JSON writes hex, protobuf's own JSON mapping base64,
    the SDK's ``to_json()`` ``0x``-prefixed hex."""
    text = str(value or "")
    if text.startswith("0x"):
        return text[2:].lower()
    if text and (len(text) in (12, 24) or any(c not in "0123456789abcdefABCDEF" for c in text)):
        import base64
        import binascii

        try:
            return base64.b64decode(text, validate=True).hex()
        except (binascii.Error, ValueError):
            return text
    return text.lower()


def _status(raw: Any) -> tuple[int, str | None]:
    if not isinstance(raw, dict):
        return 0, None
    code = raw.get("code", raw.get("status_code", 0))
    if isinstance(code, str):
        code = {"STATUS_CODE_OK": OK, "OK": OK, "STATUS_CODE_ERROR": ERROR, "ERROR": ERROR}.get(code.upper(), 0)
    return int(code or 0), raw.get("message") or raw.get("description")


def _read_span(s: dict[str, Any], where: str) -> _Read | str:
    if "context" in s:  # the SDK's span.to_json()
        ctx = s.get("context") or {}
        trace, sid, parent = ctx.get("trace_id"), ctx.get("span_id"), s.get("parent_id")
        start, end = s.get("start_time"), s.get("end_time")
    else:
        trace, sid, parent = s.get("traceId"), s.get("spanId"), s.get("parentSpanId")
        start, end = s.get("startTimeUnixNano"), s.get("endTimeUnixNano")
    if not trace or not sid:
        return "a span without a trace id or span id"
    events = []
    for ev in s.get("events") or []:
        if isinstance(ev, dict):
            events.append((str(ev.get("name") or ""), _time_ns(ev.get("timeUnixNano", ev.get("timestamp"))),
                           _attrs(ev.get("attributes"))))
    code, msg = _status(s.get("status"))
    return _Read(_norm_id(trace), _norm_id(sid), _norm_id(parent) or None, str(s.get("name") or ""),
                 _time_ns(start), _time_ns(end), _attrs(s.get("attributes")), events, code, msg, where)


def _spans_of(value: dict[str, Any], where: str) -> Iterator[_Read | str]:
    if "resourceSpans" in value or "resource_spans" in value:
        for rs in value.get("resourceSpans") or value.get("resource_spans") or []:
            for ss in (rs or {}).get("scopeSpans") or (rs or {}).get("scope_spans") or []:
                for s in (ss or {}).get("spans") or []:
                    yield _read_span(s, where) if isinstance(s, dict) else "a span that is not an object"
    elif "spans" in value and isinstance(value["spans"], list):  # a bare list of spans under "spans"
        for s in value["spans"]:
            yield _read_span(s, where) if isinstance(s, dict) else "a span that is not an object"
    elif "context" in value or "traceId" in value:
        yield _read_span(value, where)
    else:
        yield "neither OTLP JSON (resourceSpans) nor a span"


def _kind(s: _Read) -> str:
    """``tool``, ``model``, ``agent`` or ``other``, from OpenInference's span kind or GenAI's operation."""
    oi = str(s.attrs.get("openinference.span.kind") or "").upper()
    op = str(s.attrs.get("gen_ai.operation.name") or "")
    if oi == "TOOL" or op == "execute_tool":
        return "tool"
    if oi == "LLM" or op in ("chat", "text_completion", "generate_content"):
        return "model"
    if oi in ("AGENT", "CHAIN") or op in ("invoke_agent", "create_agent", "invoke_workflow"):
        return "agent"
    return "other"


def _first_text(value: Any) -> str | None:
    """The text of a message list in GenAI (``parts``) or plain (``content``) form, or a string."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if isinstance(parsed, str):
            return parsed
        value = parsed
    if isinstance(value, list):
        for m in value:
            if isinstance(m, dict):
                parts = m.get("parts")
                if isinstance(parts, list):
                    texts = [p.get("content") for p in parts if isinstance(p, dict) and p.get("type") == "text"]
                    if any(texts):
                        return "\n".join(str(t) for t in texts if t)
                if isinstance(m.get("content"), str):
                    return str(m["content"])
    if isinstance(value, dict):
        for key in ("input", "query", "question", "task", "content", "message"):
            if isinstance(value.get(key), str):
                return str(value[key])
    return None


def _tokens(a: dict[str, Any]) -> int:
    total = a.get("llm.token_count.total") or a.get("gen_ai.usage.total_tokens")
    if total is None:
        parts = [a.get(k) for k in ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
                                    "llm.token_count.prompt", "llm.token_count.completion")]
        total = sum(int(p) for p in parts if isinstance(p, int | float))
    try:
        return int(total or 0)
    except (TypeError, ValueError):
        return 0


def _oi_has_tool_calls(a: dict[str, Any]) -> bool:
    return any(k.startswith("llm.output_messages.") and ".tool_calls." in k for k in a)


def _model_text(a: dict[str, Any]) -> str | None:
    for key in ("llm.output_messages.0.message.content",):
        if isinstance(a.get(key), str) and a[key].strip():
            return str(a[key])
    if "gen_ai.output.messages" in a:
        msgs = a["gen_ai.output.messages"]
        try:
            parsed = json.loads(msgs) if isinstance(msgs, str) else msgs
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and any(isinstance(m, dict) and any(
                isinstance(p, dict) and p.get("type") == "tool_call" for p in m.get("parts") or []) for m in parsed):
            return None
        return _first_text(msgs)
    out = a.get("output.value")
    return out if isinstance(out, str) and out.strip() else None


def trace_to_run(trace_id: str, spans: list[_Read], fmt: str, path: str) -> ImportedRun | ImportProblem:
    where = f"trace {trace_id}"
    ids = {s.span_id for s in spans}
    roots = sorted([s for s in spans if not s.parent_id or s.parent_id not in ids], key=lambda s: s.start_ns)
    root = next((s for s in roots if "immunity.run" in s.attrs), roots[0] if roots else spans[0])
    ordered = sorted(spans, key=lambda s: (s.start_ns, s.end_ns))
    warnings: list[str] = []
    # ---- immunity's own export: exact records
    if "immunity.run" in root.attrs:
        try:
            run = Run.model_validate_json(root.attrs["immunity.run"])
            own_steps = [Step.model_validate_json(s.attrs["immunity.step"]) for s in ordered
                         if "immunity.step" in s.attrs]
            related: dict[str, list[Any]] = {"verdicts": [], "interventions": [], "recoveries": []}
            models: dict[str, Any] = {"verdict": Verdict, "intervention": Intervention, "recovery": Recovery}
            for s in ordered:
                for name, _t, a in s.events:
                    kind = name.removeprefix("immunity.")
                    if kind in models and "immunity.record" in a:
                        related[f"{kind}s" if kind != "recovery" else "recoveries"].append(
                            models[kind].model_validate_json(a["immunity.record"]))
        except (ValidationError, ValueError, TypeError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return ImportProblem(path, where, f"immunity attributes do not fit immunity's models: {msg}")
        own_steps.sort(key=lambda s: s.index)
        for key in related:
            related[key].sort(key=lambda r: r.ts)
        return ImportedRun(run, own_steps, path, where, mapped=True, related=related)
    # ---- any OpenInference / GenAI trace
    ra = root.attrs
    task = _first_text(ra.get("input.value")) or _first_text(ra.get("gen_ai.input.messages"))
    if not task:
        first_model = next((s for s in ordered if _kind(s) == "model"), None)
        if first_model is not None:
            fa = first_model.attrs
            task = (fa.get("llm.input_messages.0.message.content") if isinstance(
                fa.get("llm.input_messages.0.message.content"), str) else None) or _first_text(
                fa.get("gen_ai.input.messages")) or _first_text(fa.get("input.value"))
    agent = ra.get("gen_ai.agent.name") or ra.get("agent.name") or (root.name if _kind(root) == "agent" else None)
    outcome = Outcome.FAILURE if root.status_code == ERROR else Outcome.UNKNOWN
    if isinstance(ra.get("immunity.outcome"), str):
        try:
            outcome = Outcome.parse(ra["immunity.outcome"])
        except ValueError:
            warnings.append(f"unknown outcome {ra['immunity.outcome']!r}; kept as unknown")
    framework = ra.get("gen_ai.provider.name") or ("openinference" if "openinference.span.kind" in ra else "otel")
    run = new_run(fmt, path, where, run_id=f"{fmt}-{trace_id[:24]}", framework=str(framework), task=task,
                  agent=str(agent) if agent else None, outcome=outcome, started_at=root.start_ns / 1e9,
                  ended_at=(root.end_ns or root.start_ns) / 1e9, metadata={"trace_id": trace_id})
    steps: list[Step] = []
    tokens = 0
    for s in ordered:
        a = s.attrs
        kind = _kind(s)
        tokens += _tokens(a) if kind == "model" else 0
        if kind == "tool":
            tool = a.get("gen_ai.tool.name") or a.get("tool.name") or s.name.removeprefix("execute_tool ").strip()
            raw_args = a.get("gen_ai.tool.call.arguments", a.get("tool.parameters", a.get("input.value")))
            arguments, problem = parse_arguments(raw_args)
            if problem:
                warnings.append(f"span {s.span_id}: {problem}")
            result = a.get("gen_ai.tool.call.result", a.get("output.value"))
            error = None
            if s.status_code == ERROR:
                error = s.status_message or next((str(e[2].get("exception.message")) for e in s.events
                                                  if e[0] == "exception"), "error")
            step = tool_step(str(tool or "tool"), arguments, result=None if error else result, error=error,
                             tool_call_id=a.get("gen_ai.tool.call.id") or a.get("tool_call.id"),
                             agent=a.get("gen_ai.agent.name"))
            step.ts = s.start_ns / 1e9
            steps.append(step)
        elif kind == "model" and not _oi_has_tool_calls(a):
            text = _model_text(a)
            if text:
                model = a.get("gen_ai.request.model") or a.get("llm.model_name")
                step = message_step(text, agent=a.get("gen_ai.agent.name"), model=model)
                step.tokens = _tokens(a)
                step.ts = s.start_ns / 1e9
                steps.append(step)
    if not steps:
        return ImportProblem(path, where, f"no tool or model spans with content among {len(spans)} spans")
    run.tokens = tokens
    imported = ImportedRun(run, steps, path, where, warnings=warnings)
    return imported


class OtlpImporter:
    """``otlp-json`` (OTLP JSON files) and ``openinference`` (the same, as OpenInference
    instrumentation and Phoenix write it, including the SDK's ``span.to_json()`` form): one reader."""

    default_domain: str | None = None

    def __init__(self, name: str = "otlp-json"):
        self.name = name

    def detect(self, path: str, head: str) -> bool:
        start = head.lstrip()[:4000]
        if not start.startswith(("{", "[")):
            return False
        if self.name == "otlp-json":
            return '"resourceSpans"' in start or '"resource_spans"' in start
        return '"openinference.span.kind"' in start and '"context"' in start

    def read(self, path: str) -> Iterator[ImportedRun | ImportProblem]:
        traces: dict[str, list[_Read]] = {}
        for rec in iter_objects(path):
            if isinstance(rec, ImportProblem):
                yield rec
                continue
            values = rec.value.get("data") if isinstance(rec.value.get("data"), list) else [rec.value]
            for value in values:
                if not isinstance(value, dict):
                    yield ImportProblem(path, rec.where, "expected an object")
                    continue
                for span in _spans_of(value, rec.where):
                    if isinstance(span, str):
                        yield ImportProblem(path, rec.where, span)
                    else:
                        traces.setdefault(span.trace_id, []).append(span)
        for trace_id, spans in traces.items():
            try:
                yield trace_to_run(trace_id, spans, self.name, path)
            except Exception as exc:  # one broken trace, not a broken import
                yield ImportProblem(path, f"trace {trace_id}", f"cannot be read: {type(exc).__name__}: {exc}")
