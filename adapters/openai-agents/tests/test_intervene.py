"""Verify and intervene through the real SDK: block, hint, rewrite, cached result, ask a human, stop,
fail-open and fail-closed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner, RunState, SQLiteSession, function_tool
from immunity import (
    EventKind,
    Intervention,
    InterventionKind,
    Recovery,
    RecoveryKind,
    Runtime,
    Severity,
    Verdict,
)
from immunity.errors import PluginError
from immunity.runtime import RunSession
from immunity_openai_agents import RunStopped
from immunity_openai_agents.testing import ScriptedModel, ScriptedModelProvider, call

HINT = "[immunity] Check the refund policy before refunding."


def outputs_seen(model: ScriptedModel, index: int) -> dict[str, str]:
    """call_id -> tool output, as model call ``index`` received them."""
    return {i["call_id"]: i["output"] for i in model.calls[index].input if i.get("type") == "function_call_output"}


def support_agent(model: ScriptedModel) -> tuple[Agent, dict[str, list[Any]]]:
    log: dict[str, list[Any]] = {"lookup_order": [], "delete_account": [], "issue_refund": [], "send_email": []}

    @function_tool
    def lookup_order(order_id: str) -> str:
        """Look up an order."""
        log["lookup_order"].append(order_id)
        return f"order {order_id}: paid 40 EUR"

    @function_tool
    def delete_account(user: str) -> str:
        """Delete a customer account."""
        log["delete_account"].append(user)
        return f"deleted {user}"

    @function_tool
    def issue_refund(order_id: str, amount: float) -> str:
        """Refund an order."""
        log["issue_refund"].append((order_id, amount))
        return f"refunded {amount} on {order_id}"

    @function_tool
    def send_email(to: str, body: str) -> str:
        """Send an email."""
        log["send_email"].append(to)
        return f"email #{len(log['send_email'])} sent to {to}"

    agent = Agent(name="support", instructions="Help the customer.", model=model,
                  tools=[lookup_order, delete_account, issue_refund, send_email])
    return agent, log


def block_deletes(event: Any, step: Any) -> list[Verdict] | None:
    if event.kind == EventKind.TOOL_START and event.tool == "delete_account":
        return [Verdict(ok=False, block=True, error_class="unsafe_action", severity=Severity.ERROR,
                        message="deleting accounts is not allowed",
                        hint="[immunity] Do not delete accounts; escalate to a human instead.")]
    return None


async def test_blocked_tool_call_is_not_run_and_the_model_is_told_why(make_runtime: Any, plugin: Any) -> None:
    rt: Runtime = make_runtime(plugin(verify=block_deletes))
    model = ScriptedModel([call("delete_account", user="bob"), "I escalated the request to a human."])
    agent, log = support_agent(model)
    guard = rt.protect(agent)
    result = await Runner.run(agent, "Delete my account, I am bob")

    assert log["delete_account"] == []  # never executed
    (output,) = outputs_seen(model, 1).values()
    assert output == "Blocked by immunity: [immunity] Do not delete accounts; escalate to a human instead."
    assert result.final_output == "I escalated the request to a human."
    (gr,) = result.tool_input_guardrail_results  # the SDK's own record of the guardrail
    assert gr.output.behavior["type"] == "reject_content" and gr.output.output_info["immunity"] == "block"
    rt.flush()
    run_id = guard.run_ids[-1]
    (step, _done) = rt.store.steps(run_id)
    assert step.tool == "delete_account" and step.data["blocked"] and "blocked by immunity" in step.error
    assert [i.kind for i in rt.store.interventions(run_id)] == [InterventionKind.BLOCK]
    assert not any(e.kind == EventKind.TOOL_END for e in rt.store.events(run_id))


async def test_hint_reaches_the_next_model_call_only_and_is_not_kept(make_runtime: Any, plugin: Any, tmp_path: Any) -> None:
    def after_lookup(event: Any, step: Any) -> list[Verdict] | None:
        if event.kind == EventKind.TOOL_END and event.tool == "lookup_order":
            return [Verdict(ok=False, error_class="wrong_tool", severity=Severity.WARNING,
                            message="refund without a policy check", hint=HINT)]
        return None

    rt = make_runtime(plugin(verify=after_lookup))
    model = ScriptedModel([call("lookup_order", order_id="A1"), call("send_email", to="a@x.org", body="hi"),
                           "All done."])
    agent, _log = support_agent(model)
    rt.protect(agent)
    session = SQLiteSession("hint-test", str(tmp_path / "conv.db"))
    result = await Runner.run(agent, "Refund A1", session=session)

    assert HINT not in model.calls[0].texts("user")
    assert model.calls[1].texts("user")[-1] == HINT  # delivered as a user message, last
    assert HINT not in model.calls[2].texts("user")  # this call only
    history = json.dumps(result.to_input_list())
    assert "Check the refund policy" not in history  # not in the run's history
    assert "Check the refund policy" not in json.dumps(await session.get_items())  # nor in the session
    assert result.final_output == "All done."


def test_rewrite_runs_the_tool_with_new_arguments(make_runtime: Any, plugin: Any) -> None:
    def loose_order_id(event: Any, step: Any) -> list[Verdict] | None:
        if event.kind == EventKind.TOOL_START and event.tool == "lookup_order" and " " in event.arguments["order_id"]:
            return [Verdict(ok=False, error_class="wrong_parameters", severity=Severity.WARNING, message="spaces")]
        return None

    def rewrite(verdicts: list[Verdict], event: Any) -> Intervention | None:
        if verdicts[0].error_class == "wrong_parameters":
            return Intervention(kind=InterventionKind.REWRITE, text="strip spaces",
                                arguments={"order_id": event.arguments["order_id"].replace(" ", "")})
        return None

    rt = make_runtime(plugin(verify=loose_order_id, intervene=rewrite))
    model = ScriptedModel([call("lookup_order", order_id="A 1"), "ok"])
    agent, log = support_agent(model)
    guard = rt.protect(agent)
    Runner.run_sync(agent, "order A 1?")
    assert log["lookup_order"] == ["A1"]
    assert list(outputs_seen(model, 1).values()) == ["order A1: paid 40 EUR"]
    rt.flush()
    tool_end = next(e for e in rt.store.events(guard.run_ids[-1]) if e.kind == EventKind.TOOL_END)
    assert tool_end.arguments == {"order_id": "A1"}


def test_side_effect_is_not_repeated_after_a_rollback(make_runtime: Any, plugin: Any) -> None:
    """One turn sends an email and fails to refund; the rollback re-runs that turn and the model
    sends the same email again: the email is not sent twice, the first result is returned."""

    def rollback_on_refund_error(event: Any, verdicts: list[Verdict]) -> Recovery | None:
        if event.kind == EventKind.TOOL_END and event.tool == "issue_refund" and event.error:
            return Recovery(kind=RecoveryKind.ROLLBACK, hint="[immunity] Refund amounts must be positive.")
        return None

    rt = make_runtime(plugin(recover=rollback_on_refund_error))
    email = call("send_email", to="a@x.org", body="your refund is on its way")
    model = ScriptedModel([
        call("lookup_order", order_id="A1"),
        [email, call("issue_refund", order_id="A1", amount=-40.0)],
        [email, call("issue_refund", order_id="A1", amount=40.0)],
        "Refunded and told the customer.",
    ])
    agent, log = support_agent(model)

    @function_tool
    def issue_refund(order_id: str, amount: float) -> str:
        """Refund an order."""
        if amount <= 0:
            raise ValueError("amount must be positive")
        log["issue_refund"].append((order_id, amount))
        return f"refunded {amount} on {order_id}"

    agent.tools = [t if t.name != "issue_refund" else issue_refund for t in agent.tools]
    guard = rt.protect(agent)
    result = Runner.run_sync(agent, "Refund A1 and tell the customer")
    assert result.final_output == "Refunded and told the customer."
    assert log["send_email"] == ["a@x.org"]  # sent once, not twice
    assert log["issue_refund"] == [("A1", 40.0)]
    seen = list(outputs_seen(model, 3).values())
    assert seen == ["order A1: paid 40 EUR", "email #1 sent to a@x.org", "refunded 40.0 on A1"]
    rt.flush()
    emails = [s for s in rt.store.steps(guard.run_ids[-1]) if s.tool == "send_email"]
    assert [s.data.get("replayed", False) for s in emails] == [False, True]


async def test_ask_human_pauses_on_the_sdk_approval_and_resumes(make_runtime: Any, plugin: Any) -> None:
    def big_refund(event: Any, step: Any) -> list[Verdict] | None:
        if event.kind == EventKind.TOOL_START and event.tool == "issue_refund" and event.arguments["amount"] > 100:
            return [Verdict(ok=False, error_class="policy_violation", severity=Severity.WARNING,
                            message="refund over 100 EUR")]
        return None

    def ask(verdicts: list[Verdict], event: Any) -> Intervention | None:
        if verdicts[0].error_class == "policy_violation":
            return Intervention(kind=InterventionKind.ASK_HUMAN, text="Refund over 100 EUR: approve?")
        return None

    rt = make_runtime(plugin(verify=big_refund, intervene=ask))
    model = ScriptedModel([call("issue_refund", order_id="A1", amount=250.0), "Refunded 250 EUR."])
    agent, log = support_agent(model)
    guard = rt.protect(agent)

    first = await Runner.run(agent, "Refund 250 on A1")
    assert log["issue_refund"] == [] and first.final_output is None
    (item,) = first.interruptions
    assert item.tool_name == "issue_refund"
    rt.flush()
    run_id = guard.run_ids[-1]
    assert rt.store.get_run(run_id).status == "interrupted"
    assert [i.kind for i in rt.store.interventions(run_id)] == [InterventionKind.ASK_HUMAN]

    blob = first.to_state().to_json()  # durable: the state goes through JSON
    state = await RunState.from_json(agent, blob)
    (pending,) = state.get_interruptions()
    state.approve(pending)
    second = await Runner.run(agent, state)
    assert log["issue_refund"] == [("A1", 250.0)] and second.final_output == "Refunded 250 EUR."
    rt.flush()
    assert guard.run_ids[-1] == run_id  # the same immunity run went on
    run = rt.store.get_run(run_id)
    assert run.status == "finished" and run.final_answer == "Refunded 250 EUR."
    assert [s.tool for s in rt.store.steps(run_id)] == ["issue_refund", None]


def test_stop_ends_the_run_cleanly_with_the_answer(make_runtime: Any, plugin: Any) -> None:
    def critical(event: Any, step: Any) -> list[Verdict] | None:
        if event.kind == EventKind.TOOL_START and event.tool == "delete_account":
            return [Verdict(ok=False, error_class="unsafe_action", severity=Severity.CRITICAL,
                            message="account deletion attempted")]
        return None

    rt = make_runtime(plugin(verify=critical))
    model = ScriptedModel([call("delete_account", user="bob"), "should never be asked"])
    agent, log = support_agent(model)
    guard = rt.protect(agent)
    result = Runner.run_sync(agent, "delete bob")  # no exception reaches the caller
    assert result.final_output == "Stopped by immunity: account deletion attempted."
    assert log["delete_account"] == [] and len(model.calls) == 1
    rt.flush()
    run = rt.store.get_run(guard.run_ids[-1])
    assert run.status == "stopped" and run.final_answer == "Stopped by immunity: account deletion attempted."
    assert [i.kind for i in rt.store.interventions(run.run_id)] == [InterventionKind.STOP]


async def test_circuit_breaker_stops_a_run_whose_steps_keep_failing(rt: Runtime) -> None:
    attempts: list[str] = []

    def mirror(n: int) -> Any:
        @function_tool(name_override=f"mirror_{n}")
        def fetch(url: str) -> str:
            """Fetch a page from one mirror."""
            attempts.append(url)
            raise ConnectionError(f"mirror {n} refused the connection")

        return fetch

    tools = [mirror(n) for n in range(8)]  # a different tool each time: no loop, no per-tool pause
    model = ScriptedModel([call(f"mirror_{n}", url=f"https://h{n}.example") for n in range(8)])
    agent = Agent(name="crawler", model=model, tools=tools)
    guard = rt.protect(agent)
    result = await Runner.run(agent, "get the pages", max_turns=20)
    limit = rt.config.max_consecutive_failures
    assert len(attempts) == limit and len(model.calls) == limit
    assert result.final_output.startswith(f"circuit breaker: {limit} failed steps in a row")
    rt.flush()
    run = rt.store.get_run(guard.run_ids[-1])
    assert run.status == "stopped" and run.final_answer == result.final_output
    assert rt.store.recoveries(run.run_id)[-1].kind.value == "abort"


def test_stop_before_a_model_call_answers_with_the_stop(make_runtime: Any, plugin: Any) -> None:
    def no_handoffs(event: Any, step: Any) -> list[Verdict] | None:
        if event.kind == EventKind.HANDOFF:
            return [Verdict(ok=False, error_class="policy_violation", severity=Severity.CRITICAL,
                            message="handoffs are disabled")]
        return None

    rt = make_runtime(plugin(verify=no_handoffs))
    model = ScriptedModel([call("transfer_to_other"), "other agent answer"])
    other = Agent(name="other", model=model)
    agent = Agent(name="first", model=model, handoffs=[other])
    guard = rt.protect(agent)
    result = Runner.run_sync(agent, "go")  # no exception: the agent's wrapped model answers with the stop
    assert result.final_output == "Stopped by immunity: handoffs are disabled."
    assert len(model.calls) == 1  # the other agent's model was never called
    rt.flush()
    run = rt.store.get_run(guard.run_id)
    assert run.status == "stopped" and run.final_answer == result.final_output
    assert run.metadata["outcome_reason"].startswith("stopped by immunity")


def test_stop_before_a_model_call_raises_run_stopped_with_a_model_name(make_runtime: Any, plugin: Any) -> None:
    def no_handoffs(event: Any, step: Any) -> list[Verdict] | None:
        if event.kind == EventKind.HANDOFF:
            return [Verdict(ok=False, error_class="policy_violation", severity=Severity.CRITICAL,
                            message="handoffs are disabled")]
        return None

    rt = make_runtime(plugin(verify=no_handoffs))
    model = ScriptedModel([call("transfer_to_other"), "other agent answer"])
    other = Agent(name="other", model="scripted")  # a model name: resolved by the SDK's provider
    agent = Agent(name="first", model=model, handoffs=[other])
    guard = rt.protect(agent)
    with pytest.raises(RunStopped) as info:
        Runner.run_sync(agent, "go", run_config=RunConfig(model_provider=ScriptedModelProvider(model)))
    assert info.value.reason == "Stopped by immunity: handoffs are disabled."
    assert len(model.calls) == 1  # the other agent's model was never called
    rt.flush()
    run = rt.store.get_run(guard.run_ids[-1])
    assert info.value.run_id == run.run_id and run.status == "stopped"


def test_fail_open_when_a_plugin_raises(make_runtime: Any, plugin: Any) -> None:
    def broken(event: Any, step: Any) -> None:
        raise RuntimeError("verifier bug")

    rt = make_runtime(plugin(verify=broken))
    model = ScriptedModel([call("lookup_order", order_id="A1"), "fine"])
    agent, log = support_agent(model)
    guard = rt.protect(agent)
    assert Runner.run_sync(agent, "A1?").final_output == "fine" and log["lookup_order"] == ["A1"]
    rt.flush()
    errors = rt.store.plugin_errors()
    assert errors and all("verifier bug" in e["error"] for e in errors)
    assert rt.store.get_run(guard.run_ids[-1]).status == "finished"


def test_fail_open_when_the_adapter_itself_fails(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: RunSession, *a: Any, **k: Any) -> None:
        raise ValueError("adapter bug")

    monkeypatch.setattr(RunSession, "model_end", boom)
    monkeypatch.setattr(RunSession, "tool_start", boom)
    model = ScriptedModel([call("lookup_order", order_id="A1"), "fine"])
    agent, log = support_agent(model)
    guard = rt.protect(agent)
    assert Runner.run_sync(agent, "A1?").final_output == "fine" and log["lookup_order"] == ["A1"]
    rt.flush()
    where = {(e["plugin"], e["hook"]) for e in rt.store.plugin_errors()}
    assert ("immunity_openai_agents", "on_llm_end") in where
    assert ("immunity_openai_agents", "tool_input_guardrail") in where or \
        ("immunity_openai_agents", "needs_approval") in where
    assert rt.store.get_run(guard.run_ids[-1]).status == "finished"


def test_fail_closed_raises(make_runtime: Any, plugin: Any) -> None:
    def broken(event: Any, step: Any) -> None:
        if event.kind == EventKind.TOOL_START:
            raise RuntimeError("verifier bug")

    rt = make_runtime(plugin(verify=broken), fail_closed=True)
    model = ScriptedModel([call("lookup_order", order_id="A1"), "fine"])
    agent, log = support_agent(model)
    rt.protect(agent)
    with pytest.raises(Exception) as info:
        Runner.run_sync(agent, "A1?")
    chain, cur = [], info.value
    while cur is not None:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    assert any(isinstance(e, PluginError) for e in chain)
    assert log["lookup_order"] == []


async def test_streamed_runs_stop_and_pause_for_approval(make_runtime: Any, plugin: Any) -> None:
    import asyncio

    def verify(event: Any, step: Any) -> list[Verdict] | None:
        if event.kind == EventKind.HANDOFF:
            return [Verdict(ok=False, error_class="policy_violation", severity=Severity.CRITICAL,
                            message="handoffs are disabled")]
        if event.kind == EventKind.TOOL_START and event.tool == "issue_refund":
            return [Verdict(ok=False, error_class="needs_review", severity=Severity.WARNING, message="refund")]
        return None

    def ask(verdicts: list[Verdict], event: Any) -> Intervention | None:
        if verdicts[0].error_class == "needs_review":
            return Intervention(kind=InterventionKind.ASK_HUMAN, text="approve?")
        return None

    rt = make_runtime(plugin(verify=verify, intervene=ask))
    model = ScriptedModel([call("transfer_to_other"), "never"])
    first = Agent(name="first", model=model, handoffs=[Agent(name="other", model=model)])
    g1 = rt.protect(first)
    streamed = Runner.run_streamed(first, "go")
    async for _ in streamed.stream_events():  # no exception: the next agent's model streams the stop answer
        pass
    assert streamed.final_output == "Stopped by immunity: handoffs are disabled."
    assert len(model.calls) == 1  # the other agent's model was never called
    await asyncio.sleep(0.05)  # the stream's task ends; its done-callback ends the immunity run

    model2 = ScriptedModel([call("issue_refund", order_id="A1", amount=10.0), "Refunded."])
    agent, log = support_agent(model2)
    g2 = rt.protect(agent)
    paused = Runner.run_streamed(agent, "refund A1")
    async for _ in paused.stream_events():
        pass
    assert len(paused.interruptions) == 1 and log["issue_refund"] == []
    state = paused.to_state()
    state.approve(state.get_interruptions()[0])
    resumed = Runner.run_streamed(agent, state)
    async for _ in resumed.stream_events():
        pass
    await asyncio.sleep(0.05)
    assert resumed.final_output == "Refunded." and log["issue_refund"] == [("A1", 10.0)]
    rt.flush()
    assert rt.store.get_run(g1.run_ids[-1]).status == "stopped"
    assert len(g2.run_ids) == 1 and rt.store.get_run(g2.run_ids[0]).status == "finished"
