"""Observe: events and steps of real SDK runs (Runner.run, run_sync, run_streamed), attach/detach."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import immunity
import pytest
from agents import Agent, AgentHooks, Runner, function_tool
from agents.run import get_default_agent_runner
from immunity import ActionType, EventKind, Runtime
from immunity_openai_agents import OpenAIAgentsAdapter
from immunity_openai_agents.testing import ScriptedModel, ScriptedModelProvider, call


def build(model: ScriptedModel, hooks: Any = None) -> tuple[Agent, Agent, dict[str, int]]:
    counts = {"lookup_order": 0, "issue_refund": 0}

    @function_tool
    def lookup_order(order_id: str) -> str:
        """Look up an order."""
        counts["lookup_order"] += 1
        return f"order {order_id}: 2 items, paid 40 EUR"

    @function_tool
    def issue_refund(order_id: str, amount: float) -> str:
        """Refund an order."""
        counts["issue_refund"] += 1
        return f"refunded {amount} on {order_id}"

    billing = Agent(name="billing", instructions="Handle refunds.", model=model, tools=[issue_refund])
    triage = Agent(name="triage", instructions="Route the customer.", model=model, tools=[lookup_order],
                   handoffs=[billing], hooks=hooks)
    return triage, billing, counts


SCRIPT = [call("lookup_order", order_id="A1"), call("transfer_to_billing"),
          call("issue_refund", order_id="A1", amount=40.0), "Refunded 40 EUR on order A1."]


def kinds(rt: Runtime, run_id: str) -> list[str]:
    return [e.kind.value for e in rt.store.events(run_id)]


async def test_async_run_is_observed_and_stored(rt: Runtime) -> None:
    model = ScriptedModel(list(SCRIPT))
    triage, billing, counts = build(model)
    guard = rt.protect(triage)
    assert isinstance(guard, OpenAIAgentsAdapter)
    assert [a.name for a in guard.agents] == ["triage", "billing"]  # the handoff target too

    result = await Runner.run(triage, "Please refund order A1")
    assert result.final_output == "Refunded 40 EUR on order A1."
    assert counts == {"lookup_order": 1, "issue_refund": 1}
    rt.flush()

    (run_id,) = guard.run_ids
    run = rt.store.get_run(run_id)
    assert run.status == "finished" and run.framework == "openai-agents" and run.agent == "triage"
    assert run.task == "Please refund order A1"
    assert run.final_answer == "Refunded 40 EUR on order A1."
    assert run.tokens == sum(c.usage["total_tokens"] for c in model.calls) > 0

    ks = kinds(rt, run_id)
    assert ks[0] == "run_start" and ks[-1] == "run_end"
    assert ks.count("model_start") == ks.count("model_end") == 4
    assert ks.count("tool_start") == ks.count("tool_end") == 2
    assert ks.count("handoff") == 1 and ks.count("final_answer") == 1

    events = rt.store.events(run_id)
    starts = [e for e in events if e.kind == EventKind.MODEL_START]
    assert starts[0].messages[0] == {"role": "system", "content": "Route the customer."}
    assert starts[0].messages[1] == {"role": "user", "content": "Please refund order A1"}
    assert starts[2].agent == "billing" and starts[2].messages[0]["content"] == "Handle refunds."
    ends = [e for e in events if e.kind == EventKind.MODEL_END]
    assert ends[0].data["tool_calls"][0]["name"] == "lookup_order"
    assert ends[0].usage == model.calls[0].usage and ends[0].model == "scripted"
    tool_end = next(e for e in events if e.kind == EventKind.TOOL_END and e.tool == "issue_refund")
    assert tool_end.arguments == {"order_id": "A1", "amount": 40.0}
    assert tool_end.result == "refunded 40.0 on A1" and tool_end.error is None
    assert tool_end.tool_call_id == ends[2].data["tool_calls"][0]["id"]
    handoff = next(e for e in events if e.kind == EventKind.HANDOFF)
    assert (handoff.agent, handoff.target) == ("triage", "billing")

    steps = rt.store.steps(run_id)
    assert [(s.tool, s.action_type) for s in steps] == [
        ("lookup_order", ActionType.SEARCH), (None, ActionType.DELEGATE), ("issue_refund", ActionType.EDIT),
        (None, ActionType.DONE)]
    assert steps[1].agent == "triage" and steps[1].data["target"] == "billing"
    assert steps[1].data["tool_call_id"] == ends[1].data["tool_calls"][0]["id"]  # the transfer_to_billing call
    assert steps[2].agent == "billing"
    # a checkpoint before every model call, all verified (nothing failed)
    cps = rt.store.checkpoints(run_id)
    assert len(cps) == 4 and all(c.verified for c in cps)


def test_run_sync_and_provider_model(rt: Runtime) -> None:
    """A model given through RunConfig.model_provider, a user run_config kept intact, run_sync."""
    from agents import RunConfig

    model = ScriptedModel([call("lookup_order", order_id="B2"), "Order B2 has 2 items."])
    triage, billing, counts = build(model)
    triage.model = billing.model = None  # the model comes from the run config's provider
    guard = rt.protect(triage)
    config = RunConfig(model_provider=ScriptedModelProvider(model), workflow_name="support")
    result = Runner.run_sync(triage, "What is in order B2?", run_config=config)
    assert result.final_output == "Order B2 has 2 items." and counts["lookup_order"] == 1
    assert config.call_model_input_filter is None  # the user's config object is not changed
    rt.flush()
    run = rt.store.get_run(guard.run_ids[-1])
    assert run.status == "finished" and run.steps == 2


async def test_run_streamed_is_observed(rt: Runtime) -> None:
    model = ScriptedModel(list(SCRIPT))
    triage, _billing, counts = build(model)
    guard = rt.protect(triage)
    result = Runner.run_streamed(triage, "Please refund order A1")
    seen = [ev.type async for ev in result.stream_events()]
    assert "run_item_stream_event" in seen and "agent_updated_stream_event" in seen
    assert result.final_output == "Refunded 40 EUR on order A1."
    rt.flush()
    run = rt.store.get_run(guard.run_ids[-1])
    assert run.status == "finished" and run.final_answer == "Refunded 40 EUR on order A1."
    ks = kinds(rt, run.run_id)
    assert ks.count("tool_end") == 2 and ks.count("handoff") == 1 and ks[-1] == "run_end"


async def test_user_hooks_still_called(rt: Runtime) -> None:
    calls: list[str] = []

    class Mine(AgentHooks):
        async def on_start(self, context: Any, agent: Any) -> None:
            calls.append("start")

        async def on_tool_end(self, context: Any, agent: Any, tool: Any, result: Any) -> None:
            calls.append(f"tool:{tool.name}")

        async def on_end(self, context: Any, agent: Any, output: Any) -> None:
            calls.append("end")

    mine = Mine()
    model = ScriptedModel([call("lookup_order", order_id="A1"), "done"])
    triage, _billing, _ = build(model, hooks=mine)
    rt.protect(triage)
    await Runner.run(triage, "hi")
    assert calls == ["start", "tool:lookup_order", "end"]


def test_instrument_is_idempotent_and_uninstrument_restores_identity(rt: Runtime) -> None:
    model = ScriptedModel(["ok"])
    mine = AgentHooks()
    triage, billing, _ = build(model, hooks=mine)
    tools = [*triage.tools, *billing.tools]
    runner_before = get_default_agent_runner()

    def snapshot() -> list[Any]:
        snap: list[Any] = [get_default_agent_runner()]
        for a in (triage, billing):
            snap += [a.hooks, a.tool_use_behavior, a.tools, a.handoffs]
        for t in tools:
            snap += [t.on_invoke_tool, t.tool_input_guardrails, t.tool_output_guardrails, t.needs_approval]
        return snap

    before = snapshot()
    guard = rt.protect(triage)
    guard.instrument(triage)
    guard.instrument(billing)
    assert len(guard.agents) == 2
    assert all(len(t.tool_input_guardrails) == 1 for t in tools)  # added once, not three times
    assert get_default_agent_runner() is not runner_before
    assert triage.hooks is not mine and triage.hooks.inner is mine

    guard.uninstrument()
    after = snapshot()
    assert len(before) == len(after)
    for b, a in zip(before, after, strict=True):
        assert a is b
    assert triage.hooks is mine and billing.hooks is None
    guard.uninstrument()  # twice is fine
    assert get_default_agent_runner() is runner_before


def test_protect_finds_the_adapter_by_type(tmp_path: Any) -> None:
    model = ScriptedModel(["fine"])
    triage, _billing, _ = build(model)
    assert OpenAIAgentsAdapter.matches(triage) and not OpenAIAgentsAdapter.matches(object())
    guard = immunity.protect(triage, store=str(tmp_path / "immunity.db"))
    try:
        assert isinstance(guard, OpenAIAgentsAdapter)
        assert Runner.run_sync(triage, "hello").final_output == "fine"
        guard.runtime.flush()
        assert [r.status for r in guard.runtime.store.runs()] == ["finished"]
    finally:
        guard.runtime.close()
    assert triage.hooks is None  # closing the runtime detached the adapter


def test_two_runtimes_do_not_share_runs(make_runtime: Any) -> None:
    rt1, rt2 = make_runtime(), make_runtime()
    m1, m2 = ScriptedModel(["one"]), ScriptedModel(["two"])
    a1 = Agent(name="a1", model=m1)
    a2 = Agent(name="a2", model=m2)
    g1, g2 = rt1.protect(a1), rt2.protect(a2)
    assert Runner.run_sync(a1, "x").final_output == "one"
    assert Runner.run_sync(a2, "y").final_output == "two"
    other = Agent(name="plain", model=ScriptedModel(["untouched"]))
    assert Runner.run_sync(other, "z").final_output == "untouched"  # not protected: passed through
    rt1.flush()
    rt2.flush()
    assert [r.agent for r in rt1.store.runs()] == ["a1"] and [r.agent for r in rt2.store.runs()] == ["a2"]
    g1.uninstrument()
    assert get_default_agent_runner() is not None and g2.instrumented
    m2.turns.append("two again")
    assert Runner.run_sync(a2, "again").final_output == "two again"  # rt2 still protects a2
    rt2.flush()
    assert len(rt2.store.runs()) == 2 and len(rt1.store.runs()) == 1


def test_import_does_not_import_the_sdk() -> None:
    code = ("import sys, immunity_openai_agents as m; assert 'agents' not in sys.modules, 'agents imported'; "
            "assert m.OpenAIAgentsAdapter.framework == 'openai-agents'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_supported_range_matches_the_extra() -> None:
    import tomllib
    from pathlib import Path

    data = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    (spec,) = data["project"]["optional-dependencies"]["instruments"]
    assert spec == f"openai-agents{OpenAIAgentsAdapter.supported}"
    assert not any("openai-agents" in d for d in data["project"]["dependencies"])
    assert OpenAIAgentsAdapter.version_supported() is True


@pytest.mark.parametrize("entry", ["openai-agents"])
def test_registered_through_the_entry_point(rt: Runtime, entry: str) -> None:
    assert rt.pm.registry("adapters")[entry] is OpenAIAgentsAdapter


async def test_concurrent_runs_keep_their_identity(rt: Runtime) -> None:
    """Two runs of the same agent interleaved on one event loop, and two run_sync calls in two
    threads: every event lands in its own run."""
    import asyncio
    import threading

    from agents import RunConfig

    @function_tool
    async def lookup_order(order_id: str) -> str:
        """Look up an order."""
        await asyncio.sleep(0.01)  # let the other run go on meanwhile
        return f"order {order_id}"

    agent = Agent(name="support", tools=[lookup_order])
    guard = rt.protect(agent)

    def config(order: str) -> RunConfig:
        script = [call("lookup_order", order_id=order), call("lookup_order", order_id=order + "2"), f"done {order}"]
        return RunConfig(model_provider=ScriptedModelProvider(ScriptedModel(script)))

    results = await asyncio.gather(Runner.run(agent, "order A", run_config=config("A")),
                                   Runner.run(agent, "order B", run_config=config("B")))
    assert [r.final_output for r in results] == ["done A", "done B"]

    outputs: dict[str, str] = {}

    def in_thread(order: str) -> None:
        outputs[order] = Runner.run_sync(agent, f"order {order}", run_config=config(order)).final_output

    threads = [threading.Thread(target=in_thread, args=(o,)) for o in ("C", "D")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert outputs == {"C": "done C", "D": "done D"}

    rt.flush()
    assert len(guard.run_ids) == 4
    for run_id in guard.run_ids:
        run = rt.store.get_run(run_id)
        order = run.task.split()[-1]
        args = [s.arguments["order_id"] for s in rt.store.steps(run_id) if s.tool]
        assert args == [order, order + "2"], (run.task, args)
        assert run.final_answer == f"done {order}" and run.status == "finished"


def test_immunity_demo_runs_on_this_adapter(tmp_path: Any) -> None:
    from immunity.demo import run_demo

    text = run_demo(framework="openai_agents", store=str(tmp_path / "demo.db"))
    assert text.startswith("immunity demo on openai-agents 0.20")
    assert "recovery retry: tool_error" in text and "final answer: It is sunny and 21C in Paris." in text
