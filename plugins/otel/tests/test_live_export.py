"""Live export through the real runtime and the real OpenTelemetry SDK: runs become traces whose
spans use the GenAI semantic conventions' attribute names (checked against the names published in
``opentelemetry-semantic-conventions``), the run joins the application's active span, the SDK
work happens off the agent's thread, and the OTLP exporter is configured by the standard variables."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pluggy
import pytest
from immunity.models import Verdict
from immunity.runtime import Runtime
from immunity.testing import FakeRun
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as semconv

hookimpl = pluggy.HookimplMarker("immunity")

#: Every gen_ai.* attribute name the conventions define, and the deprecated ones not to write.
GENAI_NAMES = {v for k, v in vars(semconv).items() if k.startswith("GEN_AI_") and isinstance(v, str)}
DEPRECATED = {semconv.GEN_AI_SYSTEM, semconv.GEN_AI_USAGE_PROMPT_TOKENS, semconv.GEN_AI_USAGE_COMPLETION_TOKENS,
              semconv.GEN_AI_PROMPT, semconv.GEN_AI_COMPLETION}
OPERATIONS = {v.value for v in semconv.GenAiOperationNameValues}


class Blocker:
    @hookimpl
    def immunity_verify(self, event):
        if event.tool == "drop_table" and event.kind.value == "tool_start":
            return Verdict(ok=False, error_class="unsafe_action", severity="error", message="drops a table",
                           hint="Do not drop tables.", block=True)
        return None


def _agent(rt: Runtime) -> FakeRun:
    run = FakeRun(rt, task="fix the test", framework="fake", agent="coder")
    run.model("I will run the tests", usage={"input_tokens": 40, "output_tokens": 7, "total_tokens": 47})
    run.tool("run_tests", {"path": "tests"}, error="1 failed", return_code=1)
    run.tool("drop_table", {"name": "users"})
    run.tool("read_file", {"path": "a.py"}, result="def f(): ...")
    run.say("Done, I think.")
    run.session.end("failure")
    return run


def _export(provider, *, plugins=()):
    from immunity_otel import exporter_for

    rt = Runtime(store=":memory:", plugins=[Blocker(), *plugins], otel={"tracer_provider": provider})
    run = _agent(rt)
    exporter_for(rt.config).flush()
    rt.close()
    return run


def test_a_run_is_one_trace_of_genai_spans(memory_provider):
    provider, memory = memory_provider
    run = _export(provider)
    spans = memory.get_finished_spans()
    (root,) = [s for s in spans if s.parent is None]
    assert root.name == "invoke_agent coder" and root.attributes["immunity.run_id"] == run.run.run_id
    assert root.attributes["immunity.outcome"] == "failure" and root.status.status_code.name == "ERROR"
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    assert all(s.parent.span_id == root.context.span_id for s in spans if s is not root)
    tools = {s.attributes["gen_ai.tool.name"]: s for s in spans if s.attributes.get("gen_ai.operation.name") == "execute_tool"}
    assert set(tools) == {"run_tests", "read_file"} or set(tools) >= {"run_tests", "read_file"}
    assert tools["run_tests"].status.status_code.name == "ERROR"
    chat = [s for s in spans if s.attributes.get("immunity.kind") == "model_call"]
    assert chat and chat[0].attributes["gen_ai.request.model"] == "fake"
    assert chat[0].attributes["gen_ai.usage.input_tokens"] == 40 and chat[0].attributes["gen_ai.usage.output_tokens"] == 7
    verdicts = [e for s in spans for e in s.events if e.name == "immunity.verdict"]
    assert any(e.attributes["immunity.error_class"] == "unsafe_action" for e in verdicts)
    assert any(e.name == "immunity.intervention" for s in spans for e in s.events)
    assert root.start_time <= min(s.start_time for s in spans) and root.end_time >= max(s.end_time for s in spans)


def test_exported_attribute_names_are_the_genai_conventions(memory_provider):
    provider, memory = memory_provider
    _export(provider)
    spans = memory.get_finished_spans()
    used = {k for s in spans for k in s.attributes if k.startswith("gen_ai.")}
    assert used >= {"gen_ai.operation.name", "gen_ai.request.model", "gen_ai.tool.name", "gen_ai.usage.input_tokens",
                    "gen_ai.usage.output_tokens", "gen_ai.agent.name", "gen_ai.tool.call.arguments"}
    assert used <= GENAI_NAMES, f"not in the GenAI conventions: {sorted(used - GENAI_NAMES)}"
    assert not used & DEPRECATED
    assert {s.attributes["gen_ai.operation.name"] for s in spans} <= OPERATIONS
    for s in spans:  # the span name the conventions ask for: "{operation} {subject}"
        assert s.name.split(" ")[0] == s.attributes["gen_ai.operation.name"]


def test_the_otlp_json_export_uses_the_same_names(tmp_path):
    from immunity.importers.otlp import run_spans
    from immunity.store import SQLiteStore

    db = str(tmp_path / "r.db")
    rt = Runtime(store=db, plugins=[Blocker()])
    rid = _agent(rt).run.run_id
    rt.close()
    store = SQLiteStore(db, background=False)
    try:
        spans = run_spans(store.get_run(rid), store.steps(rid), store.events(rid), store.verdicts(rid),
                          store.interventions(rid), store.recoveries(rid))
    finally:
        store.close()
    used = {k for s in spans for k in s.attributes if k.startswith("gen_ai.")}
    assert used <= GENAI_NAMES and not used & DEPRECATED
    assert {s.attributes["gen_ai.operation.name"] for s in spans} <= OPERATIONS


def test_a_run_inside_an_active_span_joins_its_trace(memory_provider):
    provider, memory = memory_provider
    tracer = provider.get_tracer("my-app")
    with tracer.start_as_current_span("handle request") as app_span:
        _export(provider)
    spans = memory.get_finished_spans()
    app = next(s for s in spans if s.name == "handle request")
    root = next(s for s in spans if s.name.startswith("invoke_agent"))
    assert root.parent is not None and root.parent.span_id == app_span.get_span_context().span_id
    assert {s.context.trace_id for s in spans} == {app.context.trace_id}


def test_spans_are_made_off_the_agents_thread(memory_provider):
    from opentelemetry.sdk.trace import SpanProcessor

    provider, _memory = memory_provider
    threads: set[str] = set()

    class Where(SpanProcessor):
        def on_start(self, span, parent_context=None):
            threads.add(threading.current_thread().name)

    provider.add_span_processor(Where())
    _export(provider)
    assert threads == {"immunity-otel"}


def test_switched_off_by_default_and_fails_open(memory_provider):
    from immunity_otel import exporter_for

    rt = Runtime(store=":memory:")
    assert exporter_for(rt.config) is None
    assert "otel" in rt.inactive  # switched off: no per-event hook of it is called (its wrappers neither)
    rt.close()
    rt = Runtime(store=":memory:", otel={"tracer_provider": memory_provider[0]})
    assert "otel" not in rt.inactive
    rt.close()

    class Broken:
        def get_tracer(self, *a, **k):
            raise RuntimeError("no tracer here")

    rt = Runtime(store=":memory:", otel={"tracer_provider": Broken()})
    run = _agent(rt)  # the agent runs as usual
    assert run.run.outcome.value == "failure" and exporter_for(rt.config) is None
    rt.close()


class _Collector(BaseHTTPRequestHandler):
    received: list[bytes] = []

    def do_POST(self):  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).received.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_otlp_http_exporter_configured_by_the_standard_variables(monkeypatch):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    server = HTTPServer(("127.0.0.1", 0), _Collector)
    _Collector.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("IMMUNITY_OTEL", "1")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{server.server_port}/v1/traces")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "my-agents")
        rt = Runtime(store=":memory:", plugins=[Blocker()])
        _agent(rt)
        rt.close()  # flushes the exporter and shuts down the provider it made
    finally:
        server.shutdown()
    assert _Collector.received, "nothing reached the collector"
    names, services = set(), set()
    for body in _Collector.received:
        req = ExportTraceServiceRequest.FromString(body)
        for rs in req.resource_spans:
            services |= {a.value.string_value for a in rs.resource.attributes if a.key == "service.name"}
            for ss in rs.scope_spans:
                names |= {s.name for s in ss.spans}
    assert services == {"my-agents"}
    assert "invoke_agent coder" in names and "execute_tool run_tests" in names


@pytest.mark.parametrize("value", ["0", ""])
def test_immunity_otel_env_off(monkeypatch, value):
    from immunity_otel import exporter_for

    monkeypatch.setenv("IMMUNITY_OTEL", value)
    rt = Runtime(store=":memory:")
    assert exporter_for(rt.config) is None
    rt.close()
