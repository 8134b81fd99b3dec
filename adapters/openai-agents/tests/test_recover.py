"""Recover through the real SDK: retry with a typed hint, rollback to a verified checkpoint (run
input and SQLiteSession), run identity across resumes and processes, typed tool errors."""

from __future__ import annotations

import json
from typing import Any

from agents import Agent, Runner, RunState, SQLiteSession, function_tool, set_tracing_disabled
from agents.run import AgentRunner, get_default_agent_runner, set_default_agent_runner
from immunity import EventKind, Intervention, InterventionKind, Recovery, RecoveryKind, Severity, Verdict
from immunity.interventions.quoting import QUOTE_TOOL, split
from immunity_openai_agents.bridge import run_id_for
from immunity_openai_agents.testing import ScriptedModel, call


def hinted(seen: list[dict[str, Any]]) -> bool:
    return any(str(m.get("content", "")).startswith("[immunity]") for m in seen if m.get("role") == "user")


def lookup_tool(log: list[str]) -> Any:
    @function_tool
    def lookup_order(order_id: str) -> str:
        """Look up an order by its id (letters and digits only)."""
        log.append(order_id)
        if not order_id.isalnum():
            raise KeyError(f"no order {order_id!r}; ids are letters and digits only")
        return f"order {order_id}: paid 40 EUR"

    return lookup_order


async def test_retry_with_hint_after_a_tool_error_streamed(rt: Any) -> None:
    log: list[str] = []
    model = ScriptedModel([call("lookup_order", order_id="#A1"),
                           lambda seen: call("lookup_order", order_id="A1") if hinted(seen) else "gave up",
                           "Order A1 was paid 40 EUR."])
    agent = Agent(name="support", model=model, tools=[lookup_tool(log)])
    guard = rt.protect(agent)
    result = Runner.run_streamed(agent, "Status of order #A1?")
    async for _ in result.stream_events():
        pass
    assert result.final_output == "Order A1 was paid 40 EUR." and log == ["#A1", "A1"]
    hint = model.calls[1].texts("user")[-1]
    # the failing tool's words reach the model as tool-role data, immunity's own words as the user
    assert hint.startswith("[immunity] lookup_order failed (tool_error)") and "no order" not in hint
    quote_call, quote_out = model.calls[1].input[-3:-1]
    assert quote_call["type"] == "function_call" and quote_call["name"] == QUOTE_TOOL
    assert quote_out == {"type": "function_call_output", "call_id": quote_call["call_id"],
                         "output": quote_out["output"]} and "no order" in quote_out["output"]
    assert not any(t.startswith("[immunity]") for t in model.calls[2].texts("user"))
    rt.flush()
    run_id = guard.run_ids[-1]
    steps = rt.store.steps(run_id)
    assert steps[0].error and "ids are letters and digits only" in steps[0].error and not steps[1].error
    (rec,) = rt.store.recoveries(run_id)
    assert rec.kind == RecoveryKind.RETRY and split(rec.hint).words == hint
    assert rt.store.get_run(run_id).status == "finished"


def _rollback_setup(plugin: Any) -> tuple[Any, ScriptedModel, Agent, list[str]]:
    written: list[str] = []

    @function_tool
    def search_docs(query: str) -> str:
        """Search the docs."""
        return f"3 pages about {query}"

    @function_tool
    def write_file(path: str, text: str) -> str:
        """Write a file."""
        written.append(path)
        if path.startswith("/"):
            raise PermissionError(f"cannot write {path}: outside the project")
        return f"wrote {len(text)} bytes to {path}"

    def on_write_error(event: Any, verdicts: list[Verdict]) -> Recovery | None:
        if event.kind == EventKind.TOOL_END and event.tool == "write_file" and event.error:
            return Recovery(kind=RecoveryKind.ROLLBACK, reason="write outside the project",
                            hint="[immunity] Writing outside the project failed; write under out/ instead.")
        return None

    model = ScriptedModel([
        call("search_docs", query="config"),
        call("write_file", path="/etc/app.conf", text="x=1"),
        lambda seen: call("write_file", path="out/app.conf", text="x=1") if hinted(seen) else "no hint",
        "Wrote out/app.conf.",
    ])
    agent = Agent(name="coder", model=model, tools=[search_docs, write_file])
    return plugin(recover=on_write_error), model, agent, written


def test_rollback_to_the_last_verified_checkpoint_skips_the_bad_step(make_runtime: Any, plugin: Any) -> None:
    recover, model, agent, written = _rollback_setup(plugin)
    rt = make_runtime(recover)
    guard = rt.protect(agent)
    result = Runner.run_sync(agent, "Configure the app")

    assert result.final_output == "Wrote out/app.conf." and written == ["/etc/app.conf", "out/app.conf"]
    # call 3 saw exactly what the bad call 2 saw (the bad step rolled back), plus the hint
    assert model.calls[2].input[:-1] == model.calls[1].input
    assert model.calls[2].input[-1]["content"].startswith("[immunity] Writing outside the project failed")
    history = json.dumps(result.to_input_list())
    assert "/etc/app.conf" not in history and "out/app.conf" in history and "[immunity]" not in history
    rt.flush()
    assert len(guard.run_ids) == 1
    run_id = guard.run_ids[0]
    (rollback,) = [e for e in rt.store.events(run_id) if e.kind == EventKind.CUSTOM and "rollback_to" in e.data]
    cp = next(c for c in rt.store.checkpoints(run_id) if c.checkpoint_id == rollback.data["rollback_to"])
    assert cp.verified and cp.ref["items"] == len(model.calls[1].input)
    kinds = [r.kind for r in rt.store.recoveries(run_id)]
    assert kinds and set(kinds) == {RecoveryKind.ROLLBACK}
    run = rt.store.get_run(run_id)
    assert run.status == "finished" and run.final_answer == "Wrote out/app.conf."
    assert [s.tool for s in rt.store.steps(run_id)] == ["search_docs", "write_file", "write_file", None]


async def test_rollback_pops_the_bad_items_from_the_sqlite_session(make_runtime: Any, plugin: Any,
                                                                   tmp_path: Any) -> None:
    recover, model, agent, written = _rollback_setup(plugin)
    rt = make_runtime(recover)
    guard = rt.protect(agent)
    session = SQLiteSession("conf-1", str(tmp_path / "conversations.db"))
    result = await Runner.run(agent, "Configure the app", session=session)
    assert result.final_output == "Wrote out/app.conf."
    items = json.dumps(await session.get_items())
    assert "/etc/app.conf" not in items and "out/app.conf" in items and "Configure the app" in items
    assert model.calls[2].input[:-1] == model.calls[1].input
    rt.flush()
    (rollback,) = [e for e in rt.store.events(guard.run_ids[0]) if "rollback_to" in e.data]
    assert rollback.data["session_items_removed"] == 2  # the bad function call and its output


def test_run_id_follows_the_sdk_session(rt: Any, tmp_path: Any) -> None:
    model = ScriptedModel(["first answer", "second answer"])
    agent = Agent(name="chat", model=model)
    guard = rt.protect(agent)
    session = SQLiteSession("customer-42", str(tmp_path / "conv.db"))
    Runner.run_sync(agent, "hello", session=session)
    Runner.run_sync(agent, "and again", session=session)
    base = run_id_for("session:customer-42")
    assert base.startswith("openai-agents-customer-42-")
    assert guard.run_ids == [base, f"{base}-2"]  # a finished run is not reopened: the next turn is run 2


async def test_resume_in_another_process_continues_the_same_run(make_runtime: Any, plugin: Any,
                                                                tmp_path: Any) -> None:
    store = str(tmp_path / "immunity.db")
    conv = str(tmp_path / "conv.db")

    def big_refund(event: Any, step: Any) -> list[Verdict] | None:
        if event.kind == EventKind.TOOL_START and event.tool == "issue_refund":
            return [Verdict(ok=False, error_class="policy_violation", severity=Severity.WARNING, message="refund")]
        return None

    def ask(verdicts: list[Verdict], event: Any) -> Intervention | None:
        return Intervention(kind=InterventionKind.ASK_HUMAN, text="approve the refund?")

    def build(refunds: list[str], script: list[Any]) -> Agent:
        @function_tool
        def issue_refund(order_id: str) -> str:
            """Refund an order."""
            refunds.append(order_id)
            return f"refunded {order_id}"

        return Agent(name="support", model=ScriptedModel(script), tools=[issue_refund])

    # "process" 1: the run pauses for approval, the state is saved, the runtime closes
    refunds: list[str] = []
    agent1 = build(refunds, [call("issue_refund", order_id="A1")])
    rt1 = make_runtime(plugin(verify=big_refund, intervene=ask), store=store)
    g1 = rt1.protect(agent1)
    first = await Runner.run(agent1, "refund A1", session=SQLiteSession("case-7", conv))
    blob = json.dumps(first.to_state().to_json())
    run_id = g1.run_ids[0]
    rt1.close()

    # "process" 2: new agent objects, a new runtime on the same store, the state from JSON
    agent2 = build(refunds, ["Refund issued."])  # the model's first turn was played in process 1
    rt2 = make_runtime(plugin(verify=big_refund, intervene=ask), store=store)
    g2 = rt2.protect(agent2)
    state = await RunState.from_json(agent2, json.loads(blob))
    state.approve(state.get_interruptions()[0])
    second = await Runner.run(agent2, state, session=SQLiteSession("case-7", conv))
    assert second.final_output == "Refund issued." and refunds == ["A1"]
    assert g2.run_ids == [run_id] == [run_id_for("session:case-7")]
    rt2.flush()
    run = rt2.store.get_run(run_id)
    assert run.status == "finished" and run.final_answer == "Refund issued."
    assert any(e.data.get("resumed") for e in rt2.store.events(run_id) if e.kind == EventKind.CUSTOM)
    assert [s.tool for s in rt2.store.steps(run_id)] == ["issue_refund", None]


def test_hooks_still_observe_and_hint_when_another_runner_is_the_default(make_runtime: Any, plugin: Any) -> None:
    def after_lookup(event: Any, step: Any) -> list[Verdict] | None:
        if event.kind == EventKind.TOOL_END:
            return [Verdict(ok=False, error_class="wrong_tool", severity=Severity.WARNING, message="m",
                            hint="[immunity] double-check the order id")]
        return None

    rt = make_runtime(plugin(verify=after_lookup))
    log: list[str] = []
    model = ScriptedModel([call("lookup_order", order_id="A1"), "done"])
    agent = Agent(name="support", model=model, tools=[lookup_tool(log)])
    guard = rt.protect(agent)
    ours = get_default_agent_runner()
    set_default_agent_runner(AgentRunner())  # another library took the default runner after us
    try:
        result = Runner.run_sync(agent, "A1?")
    finally:
        set_default_agent_runner(ours)
    assert result.final_output == "done" and log == ["A1"]
    assert model.calls[1].texts("user")[-1] == "[immunity] double-check the order id"
    assert "double-check" not in json.dumps(result.to_input_list())
    rt.flush()
    run = rt.store.get_run(guard.run_ids[-1])
    assert run.status == "finished" and run.metadata.get("entry") == "hooks" and run.steps == 2


def test_typed_tool_error_comes_from_the_function_span_when_tracing_is_on(rt: Any) -> None:
    def polite(ctx: Any, error: Exception) -> str:
        return "The backend is busy, please try later."

    @function_tool(failure_error_function=polite)
    def report(day: str) -> str:
        """A daily report."""
        raise TimeoutError("backend timed out after 30s")

    model = ScriptedModel([call("report", day="mon"), call("report", day="tue"), "no report today"])
    agent = Agent(name="reports", model=model, tools=[report])
    guard = rt.protect(agent)
    Runner.run_sync(agent, "report for monday?")  # tracing off (the test environment): the text is all there is
    set_tracing_disabled(False)
    try:
        model2 = ScriptedModel([call("report", day="mon"), "no report today"])
        agent.model = model2
        Runner.run_sync(agent, "report for monday?")
    finally:
        set_tracing_disabled(True)
    rt.flush()
    off, on = (rt.store.steps(r)[0] for r in guard.run_ids)
    assert off.error is None and off.result == "The backend is busy, please try later."
    assert on.error == "backend timed out after 30s"
