"""OpenTelemetry traces out and in: ``immunity export --format otlp-json`` writes every run as a
trace of GenAI-convention spans; ``immunity import --format otlp-json`` reads it back into the same
runs; OpenInference / GenAI span dumps from other tools become runs with mapped steps."""

import json

import pluggy
from click.testing import CliRunner
from immunity.cli import build_cli
from immunity.importers import iter_runs
from immunity.importers.otlp import run_spans, spans_to_otlp
from immunity.models import ActionType, Outcome, Verdict
from immunity.runtime import Runtime
from immunity.store import SQLiteStore
from immunity.testing import FakeRun

hookimpl = pluggy.HookimplMarker("immunity")


class Blocker:
    @hookimpl
    def immunity_verify(self, event, step, run, state):
        if event.tool == "drop_table" and event.kind.value == "tool_start":
            return Verdict(ok=False, error_class="unsafe_action", severity="error", message="drops a table",
                           hint="Do not drop tables.", block=True)
        return None


def invoke(*args):
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def _live_store(path):
    rt = Runtime(store=path, plugins=[Blocker()])
    a = FakeRun(rt, task="make tests pass", framework="fake", agent="coder")
    a.model("I will run the tests", usage={"input_tokens": 40, "output_tokens": 7, "total_tokens": 47})
    a.tool("run_tests", {"path": "tests"}, error="1 failed", return_code=1)
    a.tool("run_tests", {"path": "tests"}, error="1 failed", return_code=1)
    a.tool("drop_table", {"name": "users"})
    a.say("Let me look again")
    a.final("all good")
    a.session.end("failure")
    b = FakeRun(rt, task="second run", framework="fake")
    b.tool("search", {"q": "x"}, result="found x")
    b.session.end("success")
    rt.close()
    return a.run.run_id, b.run.run_id


def _records(store, rid):
    return {"run": store.get_run(rid).model_dump(mode="json"),
            "steps": [s.model_dump(mode="json") for s in store.steps(rid)],
            "verdicts": [v.model_dump(mode="json") for v in store.verdicts(rid)],
            "interventions": [i.model_dump(mode="json") for i in store.interventions(rid)],
            "recoveries": [r.model_dump(mode="json") for r in store.recoveries(rid)]}


def test_otlp_round_trip_gives_the_same_runs(tmp_path):
    src = str(tmp_path / "live.db")
    ids = _live_store(src)
    out = tmp_path / "traces.jsonl"
    res = invoke("export", "--store", src, "--format", "otlp-json", "-o", str(out))
    assert res.exit_code == 0 and "exported 2 runs" in res.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 2 and all("resourceSpans" in x for x in lines)

    dst = str(tmp_path / "copy.db")
    res = invoke("import", "--store", dst, str(out))  # auto-detected
    assert res.exit_code == 0, res.output
    assert "imported 2 runs" in res.output
    s1, s2 = SQLiteStore(src, background=False), SQLiteStore(dst, background=False)
    try:
        assert _records(s1, ids[0])["verdicts"] and _records(s1, ids[0])["interventions"]
        for rid in ids:
            before, after = _records(s1, rid), _records(s2, rid)
            assert before["steps"]
            for table in before:
                assert after[table] == before[table], table
    finally:
        s1.close()
        s2.close()


def test_exported_spans_use_genai_convention_names(tmp_path):
    src = str(tmp_path / "live.db")
    rid, _ = _live_store(src)
    store = SQLiteStore(src, background=False)
    try:
        spans = run_spans(store.get_run(rid), store.steps(rid), store.events(rid), store.verdicts(rid),
                          store.interventions(rid), store.recoveries(rid))
    finally:
        store.close()
    root, *rest = spans
    assert root.parent_id is None and root.name == "invoke_agent coder"
    assert root.attributes["gen_ai.operation.name"] == "invoke_agent" and root.attributes["gen_ai.agent.name"] == "coder"
    assert all(s.trace_id == root.trace_id and s.parent_id == root.span_id for s in rest)
    tools = [s for s in rest if s.attributes.get("gen_ai.operation.name") == "execute_tool"]
    assert {s.attributes["gen_ai.tool.name"] for s in tools} == {"run_tests", "drop_table"}
    assert json.loads(tools[0].attributes["gen_ai.tool.call.arguments"]) == {"path": "tests"}
    assert tools[0].status == 2 and tools[0].attributes["error.type"]
    chats = [s for s in rest if s.attributes.get("immunity.kind") == "model_call"]
    assert chats and chats[0].attributes["gen_ai.request.model"] == "fake"
    assert (chats[0].attributes["gen_ai.usage.input_tokens"], chats[0].attributes["gen_ai.usage.output_tokens"]) == (40, 7)
    verdicts = [e for s in spans for e in s.events if e[0] == "immunity.verdict"]
    assert any(a["immunity.error_class"] == "unsafe_action" and a["immunity.hint"] for _n, _t, a in verdicts)
    doc = spans_to_otlp(spans)
    span0 = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert len(span0["traceId"]) == 32 and len(span0["spanId"]) == 16 and span0["startTimeUnixNano"].isdigit()
    keys = {a["key"] for s in doc["resourceSpans"][0]["scopeSpans"][0]["spans"] for a in s["attributes"]}
    assert not keys & {"gen_ai.system", "gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens",
                       "gen_ai.prompt", "gen_ai.completion"}  # deprecated names are not written


def _oi_span(trace, sid, parent, name, kind, start, attrs, status="UNSET", message=None):
    return {"name": name, "context": {"trace_id": f"0x{trace}", "span_id": f"0x{sid}", "trace_state": "[]"},
            "kind": "SpanKind.INTERNAL", "parent_id": f"0x{parent}" if parent else None,
            "start_time": f"2025-01-01T10:00:{start:02d}.000000Z", "end_time": f"2025-01-01T10:00:{start + 1:02d}.000000Z",
            "status": {"status_code": status, **({"description": message} if message else {})},
            "attributes": {"openinference.span.kind": kind, **attrs}, "events": [], "links": [],
            "resource": {"attributes": {"service.name": "my-agent"}, "schema_url": ""}}


def test_openinference_spans_become_runs_with_mapped_steps(tmp_path):
    import pytest

    pytest.importorskip("immunity_coding")  # maps bash commands to VERIFY / SEARCH; absent where only core is installed
    t = "a" * 32
    spans = [
        _oi_span(t, "1" * 16, None, "AgentExecutor", "CHAIN", 0, {"input.value": json.dumps({"input": "Fix the bug"})},
                 status="ERROR", message="gave up"),
        _oi_span(t, "2" * 16, "1" * 16, "ChatOpenAI", "LLM", 1, {
            "llm.model_name": "gpt-4o", "llm.token_count.prompt": 30, "llm.token_count.completion": 5,
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "bash"}),
        _oi_span(t, "3" * 16, "1" * 16, "bash", "TOOL", 2, {"tool.name": "bash",
                                                           "input.value": json.dumps({"command": "pytest -x"}),
                                                           "output.value": "1 failed"}),
        _oi_span(t, "4" * 16, "1" * 16, "bash", "TOOL", 3, {"tool.name": "bash",
                                                           "input.value": json.dumps({"command": "cat a.py"})},
                 status="ERROR", message="No such file"),
        _oi_span(t, "5" * 16, "1" * 16, "ChatOpenAI", "LLM", 4, {
            "llm.model_name": "gpt-4o", "llm.output_messages.0.message.content": "I could not fix it.",
            "llm.token_count.total": 12}),
    ]
    path = tmp_path / "phoenix_spans.jsonl"
    path.write_text("\n".join(json.dumps(s) for s in spans) + "\nnot json\n" + json.dumps({"foo": 1}) + "\n")
    items = list(iter_runs([str(path)], "auto", domain="coding"))
    problems = [i for i in items if not hasattr(i, "run")]
    (item,) = [i for i in items if hasattr(i, "run")]
    assert len(problems) == 2 and {p.record for p in problems} == {"line 6", "line 7"}
    run = item.run
    assert run.source == "openinference" and run.task == "Fix the bug" and run.outcome is Outcome.FAILURE
    assert run.tokens == 47
    assert [(s.tool, s.action_type) for s in item.steps] == [("bash", ActionType.VERIFY), ("bash", ActionType.SEARCH),
                                                              (None, item.steps[2].action_type)]
    assert item.steps[0].result == "1 failed" and item.steps[1].error == "No such file"
    assert item.steps[2].text == "I could not fix it."


def test_genai_otlp_from_another_tool_and_bad_records(tmp_path):
    def attr(k, v):
        return {"key": k, "value": {"intValue": str(v)} if isinstance(v, int) else {"stringValue": v}}

    tid, root, tool = "b" * 32, "c" * 16, "d" * 16
    doc = {"resourceSpans": [{"resource": {"attributes": [attr("service.name", "svc")]}, "scopeSpans": [{
        "scope": {"name": "some.instrumentation"}, "spans": [
            {"traceId": tid, "spanId": root, "name": "invoke_agent support", "startTimeUnixNano": "1700000000000000000",
             "endTimeUnixNano": "1700000005000000000", "attributes": [
                 attr("gen_ai.operation.name", "invoke_agent"), attr("gen_ai.agent.name", "support"),
                 attr("gen_ai.input.messages", json.dumps([{"role": "user", "parts": [
                     {"type": "text", "content": "cancel my order"}]}]))]},
            {"traceId": tid, "spanId": tool, "parentSpanId": root, "name": "execute_tool get_order",
             "startTimeUnixNano": "1700000001000000000", "endTimeUnixNano": "1700000002000000000", "attributes": [
                 attr("gen_ai.operation.name", "execute_tool"), attr("gen_ai.tool.name", "get_order"),
                 attr("gen_ai.tool.call.arguments", '{"order_id": "A1"}'), attr("gen_ai.tool.call.result", "open")]},
            {"spanId": "e" * 16, "name": "no trace id"},
        ]}]}]}
    path = tmp_path / "collector.json"
    path.write_text(json.dumps(doc, indent=2))
    items = list(iter_runs([str(path)], "otlp-json", domain="support"))
    (item,) = [i for i in items if hasattr(i, "run")]
    (problem,) = [i for i in items if not hasattr(i, "run")]
    assert "without a trace id" in problem.message
    assert item.run.task == "cancel my order" and item.run.agent == "support"
    (step,) = item.steps
    assert step.tool == "get_order" and step.arguments == {"order_id": "A1"} and step.result == "open"
