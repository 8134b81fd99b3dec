"""Verify, intervene and recover through the real LangGraph runtime: block, next-call hints,
retry, rollback, stop, ask a human, rewrite, replayed side effects, model retry, fail-open."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from immunity import hookimpl
from immunity.config import Config
from immunity.errors import PluginError
from immunity.interventions.quoting import QUOTE_TOOL
from immunity.models import (
    Event,
    EventKind,
    Intervention,
    InterventionKind,
    Recovery,
    RecoveryKind,
    Severity,
    Verdict,
)
from immunity_langgraph.testing import ScriptedChatModel, tool_call
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

HINT = "[immunity] Check the city name before you answer."
ROLLBACK_HINT = "[immunity] Your last write broke the config. Use validate_config first."


class BlockDeletes:
    """A verifier that blocks destructive calls before they run."""

    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        if event.kind == EventKind.TOOL_START and event.tool == "delete_records":
            return Verdict(ok=False, block=True, error_class="unsafe_action", severity=Severity.ERROR,
                           message="deleting every record is irreversible",
                           hint="[immunity] delete_records is blocked: it is irreversible. Archive the table instead.")
        return None


class HintAfterWeather:
    """A verifier that flags the weather result with a hint (not blocking)."""

    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        if event.kind == EventKind.TOOL_END and event.tool == "get_weather":
            return Verdict(ok=False, error_class="misread_output", severity=Severity.WARNING,
                           message="check the city", hint=HINT)
        return None


def _call(graph: Any, inp: Any, cfg: Any = None, mode: str = "sync") -> Any:
    """``invoke`` or ``ainvoke`` (in a fresh event loop), as the test's mode says."""
    return graph.invoke(inp, cfg) if mode == "sync" else asyncio.run(graph.ainvoke(inp, cfg))


def _ask(graph: Any, text: str, thread: str | None = None, mode: str = "sync") -> dict[str, Any]:
    cfg = {"configurable": {"thread_id": thread}} if thread else None
    return _call(graph, {"messages": [("user", text)]}, cfg, mode)


MODES = ["sync", "async"]


# ---------------------------------------------------------------------------------------------- verify
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["toolnode", "react"])
def test_blocking_verdict_stops_the_call_and_tells_the_model(make_runtime: Any, tool_graph: Any, react_agent: Any,
                                                             weather_tools: Any, calls: Any, kind: str,
                                                             mode: str) -> None:
    rt = make_runtime(plugins=[BlockDeletes()])
    model = ScriptedChatModel(script=[tool_call("delete_records", table="orders"), "I did not delete anything."])
    graph = (tool_graph if kind == "toolnode" else react_agent)(model, weather_tools)
    rt.protect(graph)
    out = _ask(graph, "Clean the orders table", mode=mode)
    assert calls.count("delete_records") == 0  # never executed
    told = model.calls[1][-1]
    assert isinstance(told, ToolMessage) and told.status == "error"
    assert "delete_records is blocked: it is irreversible" in told.content
    assert out["messages"][-1].content == "I did not delete anything."
    rt.flush()
    (run,) = rt.store.runs()
    (step,) = [s for s in rt.store.steps(run.run_id) if s.tool]
    assert step.data.get("blocked") is True and step.error.startswith("blocked by immunity")
    assert [iv.kind for iv in rt.store.interventions(run.run_id)] == [InterventionKind.BLOCK]


# ---------------------------------------------------------------------------------------------- intervene
@pytest.mark.parametrize("mode", MODES)
def test_hint_reaches_the_next_model_call_only_and_never_the_history(make_runtime: Any, tool_graph: Any,
                                                                     weather_tools: Any, mode: str) -> None:
    rt = make_runtime(plugins=[HintAfterWeather()])
    model = ScriptedChatModel(script=[tool_call("get_weather", city="Paris"), tool_call("get_weather", city="Lyon"),
                                      "Sunny in both."])
    graph = tool_graph(model, weather_tools, InMemorySaver())
    rt.protect(graph)
    cfg = {"configurable": {"thread_id": "h-1"}}
    _call(graph, {"messages": [("user", "Weather in Paris and Lyon?")]}, cfg, mode)
    # call 2 got the hint as its last message, after the tool result
    second = model.calls[1]
    assert isinstance(second[-1], HumanMessage) and second[-1].content == HINT
    assert isinstance(second[-2], ToolMessage)
    # call 3: the first hint is gone (delivered once); the second weather result brought its own, after cooldown
    third = model.seen(2)
    assert HINT not in [m["content"] for m in third]  # the same hint twice in a row is held back (tolerance)
    assert third[-1]["role"] == "tool"
    # nothing immunity said is in the graph's state or its checkpoints
    state = graph.get_state(cfg)
    assert all(HINT not in str(m.content) for m in state.values["messages"])
    for snap in graph.get_state_history(cfg):
        assert all(HINT not in str(m.content) for m in snap.values.get("messages", []))
    rt.flush()
    ivs = rt.store.interventions("langgraph-h-1")
    assert ivs and ivs[0].kind == InterventionKind.HINT and ivs[0].delivered


# ---------------------------------------------------------------------------------------------- recover
@pytest.mark.parametrize("mode", MODES)
def test_retry_with_hint_after_a_tool_error(make_runtime: Any, tool_graph: Any, mode: str) -> None:
    attempts: list[str] = []

    @tool
    def get_price(sku: str) -> str:
        """Price of a product."""
        attempts.append(sku)
        if sku != "SKU-1":
            raise ValueError(f"unknown sku {sku!r}; skus look like SKU-<n>")
        return "12.50 EUR"

    def fix_after_hint(messages: list[Any]) -> Any:
        hint = messages[-1]
        assert isinstance(hint, HumanMessage) and hint.content.startswith("[immunity] get_price failed (tool_error)")
        assert "unknown sku" not in hint.content  # the tool's words travel as tool-role data
        call, quoted = messages[-3], messages[-2]
        assert isinstance(call, AIMessage) and [c["name"] for c in call.tool_calls] == [QUOTE_TOOL]
        assert isinstance(quoted, ToolMessage) and quoted.tool_call_id == call.tool_calls[0]["id"]
        assert "unknown sku" in quoted.content
        assert isinstance(messages[-4], ToolMessage) and messages[-4].status == "error"
        return tool_call("get_price", sku="SKU-1")

    rt = make_runtime()
    model = ScriptedChatModel(script=[tool_call("get_price", sku="1"), fix_after_hint, "It costs 12.50 EUR."])
    graph = tool_graph(model, [get_price])  # ToolNode's default would re-raise the ValueError
    rt.protect(graph)
    out = _ask(graph, "Price of product 1?", mode=mode)
    assert out["messages"][-1].content == "It costs 12.50 EUR."
    assert attempts == ["1", "SKU-1"]
    rt.flush()
    (run,) = rt.store.runs()
    assert [r.kind for r in rt.store.recoveries(run.run_id)] == [RecoveryKind.RETRY]
    assert [s.failed for s in rt.store.steps(run.run_id) if s.tool] == [True, False]


class RetryTwice:
    @hookimpl
    def immunity_recover(self, event: Event) -> Recovery | None:
        if event.kind == EventKind.TOOL_END and event.failed:
            return Recovery(kind=RecoveryKind.RETRY, max_attempts=2, reason="transient", hint="[immunity] retried")
        if event.kind == EventKind.MODEL_END and event.error:
            return Recovery(kind=RecoveryKind.RETRY, max_attempts=2, reason="model_error")
        return None


@pytest.mark.parametrize("mode", MODES)
def test_retry_re_executes_a_transient_tool_failure(make_runtime: Any, tool_graph: Any, mode: str) -> None:
    attempts: list[int] = []

    @tool
    def fetch_rates(currency: str) -> str:
        """Exchange rates."""
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("connection reset by peer")
        return "1 EUR = 1.08 USD"

    rt = make_runtime(plugins=[RetryTwice()])
    model = ScriptedChatModel(script=[tool_call("fetch_rates", currency="EUR"), "1.08"])
    graph = tool_graph(model, [fetch_rates])
    rt.protect(graph)
    _ask(graph, "EUR rate?", mode=mode)
    assert len(attempts) == 2
    # the model sees the successful result and no stale retry hint
    assert isinstance(model.calls[1][-1], ToolMessage) and model.calls[1][-1].content == "1 EUR = 1.08 USD"
    rt.flush()
    (run,) = rt.store.runs()
    assert [(s.tool, s.failed) for s in rt.store.steps(run.run_id)][:2] == [("fetch_rates", True), ("fetch_rates", False)]


@pytest.mark.parametrize("mode", MODES)
def test_retry_of_a_failed_model_call(make_runtime: Any, tool_graph: Any, mode: str) -> None:
    state = {"n": 0}

    def flaky(messages: list[Any]) -> Any:
        state["n"] += 1
        if state["n"] == 1:
            raise TimeoutError("provider timed out")
        return "answer after retry"

    rt = make_runtime(plugins=[RetryTwice()])
    model = ScriptedChatModel(script=[flaky, flaky])
    graph = tool_graph(model, [])
    rt.protect(graph)
    out = _ask(graph, "hello", mode=mode)
    assert out["messages"][-1].content == "answer after retry"
    rt.flush()
    (run,) = rt.store.runs()
    ends = [e for e in rt.store.events(run.run_id) if e.kind == EventKind.MODEL_END]
    assert [e.error for e in ends] == ["TimeoutError: provider timed out", None]


class RollbackBadWrites:
    """Flags a write whose result shows it broke the config, and asks for a rollback."""

    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        if event.kind == EventKind.TOOL_END and event.tool == "write_config" and "BROKEN" in (event.result or ""):
            return Verdict(ok=False, error_class="hallucinated_state", severity=Severity.ERROR,
                           message="the write left an invalid config", hint=ROLLBACK_HINT)
        return None

    @hookimpl
    def immunity_recover(self, event: Event, verdicts: list[Verdict]) -> Recovery | None:
        if any(v.error_class == "hallucinated_state" for v in verdicts):
            return Recovery(kind=RecoveryKind.ROLLBACK, reason="invalid config written", hint=ROLLBACK_HINT)
        return None


def _config_tools(executed: list[str]) -> list[Any]:
    @tool
    def write_config(text: str) -> str:
        """Write the service config."""
        executed.append(f"write:{text}")
        return "BROKEN: missing port" if "port" not in text else "config written"

    @tool
    def validate_config(text: str) -> str:
        """Check a config before writing it."""
        executed.append(f"validate:{text}")
        return "invalid: missing port" if "port" not in text else "valid"

    return [write_config, validate_config]


def _config_model() -> ScriptedChatModel:
    def second(messages: list[Any]) -> Any:
        # after the rollback the model is back before its bad write, with the hint
        assert not any(isinstance(m, ToolMessage) for m in messages), "the bad step was not rolled back"
        assert messages[-1].content.startswith("[immunity] Your last write broke the config")
        return tool_call("validate_config", text="host=a port=80")

    return ScriptedChatModel(script=[tool_call("write_config", text="host=a"), second,
                                     tool_call("write_config", text="host=a port=80"), "Config updated."])


@pytest.mark.parametrize("mode", MODES)
def test_rollback_to_the_last_verified_checkpoint_and_resume(make_runtime: Any, tool_graph: Any, mode: str) -> None:
    executed: list[str] = []
    undone: list[str] = []
    rt = make_runtime(plugins=[RollbackBadWrites()])
    rt.compensate_with("write_config", lambda text: undone.append(text))
    model = _config_model()
    graph = tool_graph(model, _config_tools(executed), InMemorySaver())
    rt.protect(graph)
    cfg = {"configurable": {"thread_id": f"rb-{mode}"}}
    inp = {"messages": [("user", "Set the port to 80")]}
    out = _call(graph, inp, cfg, mode)
    # one call of the user's: the bad write happened, was rolled back, and the run went on from before it
    assert executed == ["write:host=a", "validate:host=a port=80", "write:host=a port=80"]
    assert out["messages"][-1].content == "Config updated."
    history = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert [m.content for m in history] == ["valid", "config written"]  # the bad step is not in the state
    assert all("BROKEN" not in str(m.content) for m in graph.get_state(cfg).values["messages"])
    sources = [s.metadata["source"] for s in graph.get_state_history(cfg)]
    assert "update" in sources  # the fork made with update_state(as_node=...)
    rt.flush()
    run = rt.store.get_run(f"langgraph-rb-{mode}")
    assert run.status == "finished" and run.final_answer == "Config updated."
    assert undone == ["host=a"]  # the bad write's compensating action ran
    recoveries = rt.store.recoveries(run.run_id)
    assert [r.kind for r in recoveries] == [RecoveryKind.ROLLBACK, RecoveryKind.ROLLBACK]
    assert recoveries[1].reason == "rolled back to step 0; compensated ['write_config']"
    assert run.metadata["rollbacks"][0]["step"] == 0


def test_rollback_without_a_checkpointer_falls_back_to_a_hint(make_runtime: Any, tool_graph: Any) -> None:
    executed: list[str] = []
    rt = make_runtime(plugins=[RollbackBadWrites()])

    def second(messages: list[Any]) -> Any:
        assert messages[-1].content.startswith("[immunity] Your last write broke the config")
        return tool_call("write_config", text="host=a port=80")

    model = ScriptedChatModel(script=[tool_call("write_config", text="host=a"), second, "done"])
    graph = tool_graph(model, _config_tools(executed))
    rt.protect(graph)
    out = _ask(graph, "Set the port")
    assert out["messages"][-1].content == "done"
    assert executed == ["write:host=a", "write:host=a port=80"]


class StopOnCritical:
    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        if event.kind == EventKind.TOOL_START and event.tool == "delete_records":
            return Verdict(ok=False, error_class="unsafe_action", severity=Severity.CRITICAL,
                           message="mass deletion requested")
        return None


@pytest.mark.parametrize("mode", MODES)
def test_clean_stop(make_runtime: Any, react_agent: Any, weather_tools: Any, calls: Any, mode: str) -> None:
    rt = make_runtime(plugins=[StopOnCritical()])
    model = ScriptedChatModel(script=[tool_call("delete_records", table="users"), "never reached"])
    graph = react_agent(model, weather_tools, InMemorySaver())
    rt.protect(graph)
    cfg = {"configurable": {"thread_id": f"stop-{mode}"}}
    inp = {"messages": [("user", "wipe users")]}
    out = _call(graph, inp, cfg, mode)  # no exception
    assert calls.count("delete_records") == 0
    assert model.turns_used == 1  # the model was not called again: the stop answered for it
    last = out["messages"][-1]
    assert isinstance(last, AIMessage) and not last.tool_calls
    assert last.content == "Stopped by immunity: mass deletion requested."
    assert graph.get_state(cfg).next == ()  # the graph ended through its own router
    rt.flush()
    run = rt.store.get_run(f"langgraph-stop-{mode}")
    assert run.status == "stopped" and run.final_answer == "Stopped by immunity: mass deletion requested."


def test_circuit_breaker_stops_a_run_whose_steps_keep_failing(make_runtime: Any, tool_graph: Any) -> None:
    @tool
    def query_db(sql: str) -> str:
        """Run a query."""
        raise RuntimeError(f"database is locked ({sql})")

    rt = make_runtime(config=Config(store=":memory:", max_consecutive_failures=3, max_interventions=0))
    model = ScriptedChatModel(script=[tool_call("query_db", sql=f"select {i}") for i in range(10)])
    graph = tool_graph(model, [query_db])
    rt.protect(graph)
    out = _ask(graph, "count users")
    assert model.turns_used == 3
    assert out["messages"][-1].content.startswith("circuit breaker: 3 failed steps in a row")
    rt.flush()
    (run,) = rt.store.runs()
    assert run.status == "stopped"
    assert [r.kind for r in rt.store.recoveries(run.run_id)][-1] == RecoveryKind.ABORT


class AskBeforeEmail:
    @hookimpl
    def immunity_intervene(self, event: Event, verdicts: list[Verdict]) -> Intervention | None:
        if event.kind == EventKind.TOOL_START and event.tool == "send_email":
            return Intervention(kind=InterventionKind.ASK_HUMAN, text="Send this email to all customers?")
        return None

    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        if event.kind == EventKind.TOOL_START and event.tool == "send_email":
            return Verdict(ok=False, error_class="policy_violation", severity=Severity.WARNING, message="mass email")
        return None


def _email_tools(sent: list[str]) -> list[Any]:
    @tool
    def send_email(to: str, body: str) -> str:
        """Send an email."""
        sent.append(to)
        return f"sent to {to}"

    return [send_email]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("answer,expect_sent", [("approve", True), ("no, too risky", False)])
def test_ask_human_pauses_with_interrupt_and_resumes(make_runtime: Any, tool_graph: Any, answer: str,
                                                     expect_sent: bool, mode: str) -> None:
    sent: list[str] = []
    rt = make_runtime(plugins=[AskBeforeEmail()])
    model = ScriptedChatModel(script=[tool_call("send_email", to="all", body="sale"), "done"])
    graph = tool_graph(model, _email_tools(sent), InMemorySaver())
    rt.protect(graph)
    cfg = {"configurable": {"thread_id": "ask-1"}}
    out = _call(graph, {"messages": [("user", "announce the sale")]}, cfg, mode)
    (question,) = out["__interrupt__"]
    assert question.value["question"] == "Send this email to all customers?"
    assert question.value["tool"] == "send_email" and question.value["run_id"] == "langgraph-ask-1"
    assert sent == []
    assert rt.session("langgraph-ask-1").ended is False  # paused, not over
    out = _call(graph, Command(resume=answer), cfg, mode)
    assert out["messages"][-1].content == "done"
    assert sent == (["all"] if expect_sent else [])
    tool_msg = next(m for m in out["messages"] if isinstance(m, ToolMessage))
    assert (tool_msg.content == "sent to all") if expect_sent else ("A human declined this call" in tool_msg.content)
    rt.flush()
    (run,) = rt.store.runs()
    assert run.run_id == "langgraph-ask-1" and run.status == "finished"  # one run across the pause


def test_resume_in_another_process_continues_the_same_run(tmp_path: Any, make_runtime: Any, tool_graph: Any) -> None:
    sent: list[str] = []
    db = str(tmp_path / "runs.db")
    saver = InMemorySaver()  # stands for a durable checkpointer shared by both processes
    first = make_runtime(store=db, plugins=[AskBeforeEmail()])
    graph = tool_graph(ScriptedChatModel(script=[tool_call("send_email", to="all", body="x")]), _email_tools(sent),
                       saver)
    first.protect(graph)
    cfg = {"configurable": {"thread_id": "ask-2"}}
    assert "__interrupt__" in graph.invoke({"messages": [("user", "announce")]}, cfg)
    first.close()
    second = make_runtime(store=db, plugins=[AskBeforeEmail()])
    graph2 = tool_graph(ScriptedChatModel(script=["done"]), _email_tools(sent), saver)
    second.protect(graph2)
    graph2.invoke(Command(resume="yes"), cfg)
    assert sent == ["all"]
    second.flush()
    (run,) = second.store.runs()
    assert run.run_id == "langgraph-ask-2" and run.status == "finished" and run.task == "announce"


def test_ask_human_without_a_checkpointer_does_not_run_the_call(make_runtime: Any, tool_graph: Any) -> None:
    sent: list[str] = []
    rt = make_runtime(plugins=[AskBeforeEmail()])
    model = ScriptedChatModel(script=[tool_call("send_email", to="all", body="x"), "ok"])
    graph = tool_graph(model, _email_tools(sent))
    rt.protect(graph)
    _ask(graph, "announce")
    assert sent == []
    assert "needs a human's approval" in model.calls[1][-1].content


class RewriteCity:
    @hookimpl
    def immunity_intervene(self, event: Event) -> Intervention | None:
        if event.kind == EventKind.TOOL_START and event.arguments == {"city": "paris"}:
            return Intervention(kind=InterventionKind.REWRITE, arguments={"city": "Paris"}, text="capitalise")
        return None

    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        if event.kind == EventKind.TOOL_START and event.arguments == {"city": "paris"}:
            return Verdict(ok=False, error_class="wrong_parameters", message="lower-case city")
        return None


def test_rewrite_runs_the_tool_with_new_arguments(make_runtime: Any, tool_graph: Any, weather_tools: Any,
                                                  calls: Any) -> None:
    rt = make_runtime(plugins=[RewriteCity()])
    model = ScriptedChatModel(script=[tool_call("get_weather", city="paris"), "ok"])
    graph = tool_graph(model, weather_tools)
    rt.protect(graph)
    _ask(graph, "weather")
    assert calls.log == [("get_weather", {"city": "Paris"})]


def test_side_effect_is_not_repeated_when_langgraph_re_runs_the_node(make_runtime: Any, tool_graph: Any) -> None:
    """Two tool calls in one ToolNode step: the payment runs, the email waits for a human. On resume
    LangGraph runs the whole node again; immunity answers the payment from its first result."""
    charged: list[float] = []
    sent: list[str] = []

    @tool
    def send_payment(amount: float) -> str:
        """Pay a supplier."""
        charged.append(amount)
        return f"paid {amount}"

    rt = make_runtime(plugins=[AskBeforeEmail()])
    model = ScriptedChatModel(script=[[{"name": "send_payment", "args": {"amount": 10.0}},
                                       {"name": "send_email", "args": {"to": "supplier", "body": "paid"}}], "done"])
    graph = tool_graph(model, [send_payment, *_email_tools(sent)], InMemorySaver())
    rt.protect(graph)
    cfg = {"configurable": {"thread_id": "pay-1"}}
    out = graph.invoke({"messages": [("user", "pay the invoice and tell the supplier")]}, cfg)
    assert "__interrupt__" in out and charged == [10.0]
    out = graph.invoke(Command(resume="yes"), cfg)
    assert charged == [10.0]  # not charged twice
    assert sent == ["supplier"]
    results = {m.name: m.content for m in out["messages"] if isinstance(m, ToolMessage)}
    assert results == {"send_payment": "paid 10.0", "send_email": "sent to supplier"}
    rt.flush()
    steps = [s for s in rt.store.steps("langgraph-pay-1") if s.tool == "send_payment"]
    assert [s.data.get("replayed", False) for s in steps] == [False, True]


def test_a_new_identical_side_effect_does_run(make_runtime: Any, tool_graph: Any) -> None:
    charged: list[float] = []

    @tool
    def send_payment(amount: float) -> str:
        """Pay a supplier."""
        charged.append(amount)
        return f"paid {amount}"

    rt = make_runtime()
    model = ScriptedChatModel(script=[tool_call("send_payment", amount=5.0), tool_call("send_payment", amount=5.0),
                                      "paid twice"])
    graph = tool_graph(model, [send_payment])
    rt.protect(graph)
    _ask(graph, "pay two invoices of 5")
    assert charged == [5.0, 5.0]  # a deliberate second call (a new call id) is the model's choice

# ---------------------------------------------------------------------------------------------- fail open
class Broken:
    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        raise RuntimeError("verifier crashed")

    @hookimpl
    def immunity_observe(self, event: Event) -> None:
        raise KeyError("observer crashed")


@pytest.mark.parametrize("mode", MODES)
def test_fail_open_when_a_plugin_raises(make_runtime: Any, react_agent: Any, weather_tools: Any, calls: Any,
                                       mode: str) -> None:
    rt = make_runtime(plugins=[Broken()])
    graph = react_agent(ScriptedChatModel(script=[tool_call("get_weather", city="Oslo"), "cold"]), weather_tools)
    rt.protect(graph)
    out = _ask(graph, "weather in Oslo", mode=mode)
    assert out["messages"][-1].content == "cold" and calls.count("get_weather") == 1
    rt.flush()
    errors = rt.store.plugin_errors()
    assert {e["hook"] for e in errors} >= {"immunity_verify", "immunity_observe"}


def test_fail_open_when_the_adapter_itself_raises(make_runtime: Any, tool_graph: Any, weather_tools: Any,
                                                  calls: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from immunity_langgraph import events

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("adapter bug")

    monkeypatch.setattr(events.RunContext, "model_input", boom)
    monkeypatch.setattr(events.RunContext, "chain_start", boom)
    monkeypatch.setattr(events.RunContext, "tool_before", boom)
    rt = make_runtime()
    graph = tool_graph(ScriptedChatModel(script=[tool_call("get_weather", city="Rome"), "warm"]), weather_tools)
    rt.protect(graph)
    out = _ask(graph, "weather in Rome")
    assert out["messages"][-1].content == "warm"
    assert calls.log == [("get_weather", {"city": "Rome"})]  # the tool still ran
    rt.flush()
    wheres = {(e["plugin"], e["hook"]) for e in rt.store.plugin_errors()}
    assert {("immunity_langgraph", "model_start"), ("immunity_langgraph", "on_chain_start"),
            ("immunity_langgraph", "tool_start")} <= wheres


def test_fail_closed_raises(make_runtime: Any, tool_graph: Any, weather_tools: Any) -> None:
    rt = make_runtime(plugins=[Broken()], fail_closed=True)
    graph = tool_graph(ScriptedChatModel(script=[tool_call("get_weather", city="Rome"), "warm"]), weather_tools)
    rt.protect(graph)
    with pytest.raises(PluginError):
        _ask(graph, "weather in Rome")


def test_stop_in_a_graph_without_a_model_drains_cleanly(make_runtime: Any) -> None:
    """Tools called by hand inside nodes (no ToolNode, no model): the stop drains the graph at a
    step boundary and the caller's invoke returns normally."""
    from langgraph.graph import END, START, StateGraph
    from typing_extensions import TypedDict

    done: list[int] = []

    @tool
    def process_batch(n: int) -> str:
        """Process one batch."""
        done.append(n)
        return f"batch {n} ok"

    class S(TypedDict):
        n: int
        log: list[str]

    def work(state: S) -> dict[str, Any]:
        out = process_batch.invoke({"n": state["n"]})
        return {"n": state["n"] + 1, "log": [*state["log"], out]}

    builder = StateGraph(S)
    builder.add_node("work", work)
    builder.add_edge(START, "work")
    builder.add_conditional_edges("work", lambda s: END if s["n"] >= 10 else "work")
    graph = builder.compile()

    class StopAtThree:
        @hookimpl
        def immunity_verify(self, event: Event) -> Verdict | None:
            if event.kind == EventKind.TOOL_START and (event.arguments or {}).get("n") == 3:
                return Verdict(ok=False, error_class="runaway_cost", severity=Severity.CRITICAL, message="budget")
            return None

    rt = make_runtime(plugins=[StopAtThree()])
    rt.protect(graph)
    out = graph.invoke({"n": 0, "log": []})  # returns: no exception
    assert done == [0, 1, 2]
    assert out["log"][:3] == ["batch 0 ok", "batch 1 ok", "batch 2 ok"]
    assert out["log"][3].startswith("[immunity] Not run: Stopped by immunity: budget")
    assert out["n"] < 10
    rt.flush()
    (run,) = rt.store.runs()
    assert run.status == "stopped" and run.final_answer == "Stopped by immunity: budget."


def test_the_callers_own_drain_still_works_and_pauses_the_run(make_runtime: Any, tool_graph: Any) -> None:
    from langgraph.errors import GraphDrained
    from langgraph.runtime import RunControl

    control = RunControl()

    @tool
    def long_job(name: str) -> str:
        """Start a long job."""
        control.request_drain("deploy in progress")  # the caller's shutdown signal
        return f"{name} started"

    rt = make_runtime()
    graph = tool_graph(ScriptedChatModel(script=[tool_call("long_job", name="reindex"), "reindex started"]),
                       [long_job], InMemorySaver())
    rt.protect(graph)
    cfg = {"configurable": {"thread_id": "drain-1"}}
    with pytest.raises(GraphDrained, match="deploy in progress"):
        graph.invoke({"messages": [("user", "reindex")]}, cfg, control=control)
    assert rt.session("langgraph-drain-1").ended is False  # paused by the caller, not over
    out = graph.invoke(None, cfg)  # resume: same immunity run
    assert out["messages"][-1].content == "reindex started"
    rt.flush()
    (run,) = rt.store.runs()
    assert run.run_id == "langgraph-drain-1" and run.status == "finished"


@pytest.mark.parametrize("mode", MODES)
def test_fallback_model_takes_over_when_the_model_keeps_failing(make_runtime: Any, tool_graph: Any,
                                                                mode: str) -> None:
    def overloaded(messages: list[Any]) -> Any:
        raise RuntimeError("Error code: 503 - the model is overloaded, please retry later")

    rt = make_runtime(recovery={"base_delay": 0.001, "max_delay": 0.01})
    primary = ScriptedChatModel(script=[overloaded] * 5, model_name="primary")
    backup = ScriptedChatModel(script=["answer from the backup model"], model_name="backup")
    graph = tool_graph(primary, [])
    rt.protect(graph, fallback_model=backup)
    out = _ask(graph, "hello", mode=mode)
    assert out["messages"][-1].content == "answer from the backup model"
    assert len(primary.calls) == 2 and len(backup.calls) == 1  # a retry, then the fallback
    assert backup.calls[0][-1].content == "hello"  # the same conversation
    rt.flush()
    (run,) = rt.store.runs()
    kinds = [r.kind for r in rt.store.recoveries(run.run_id)]
    assert kinds == [RecoveryKind.RETRY, RecoveryKind.FALLBACK]
    assert rt.store.recoveries(run.run_id)[-1].fallback == "backup"
