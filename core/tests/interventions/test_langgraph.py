"""The intervention policy, budgets and safe recovery through the real LangGraph runtime (scripted
model, offline): side effects never repeated across a node retry or a resume in a new runtime, a
run over budget ending with a final answer, the loop ladder, transient retries with the server's
delay, and rollback with compensation."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("langgraph")
pytest.importorskip("immunity_langgraph")

from immunity.interventions.budget import FINAL_NOW  # noqa: E402
from immunity.models import InterventionKind, RecoveryKind  # noqa: E402
from immunity.runtime import Runtime  # noqa: E402
from immunity_langgraph.demo import build_graph  # noqa: E402
from immunity_langgraph.testing import ScriptedChatModel, tool_call  # noqa: E402
from langchain_core.messages import HumanMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402


@pytest.fixture
def runtimes() -> Iterator[list[Runtime]]:
    made: list[Runtime] = []
    yield made
    for rt in made:
        rt.close()


def new_runtime(made: list[Runtime], **kw: Any) -> Runtime:
    kw.setdefault("store", ":memory:")
    rt = Runtime(**kw)
    made.append(rt)
    return rt


def payment_graph(model: Any, tools: list[Any], checkpointer: Any = None, retry: bool = False) -> Any:
    """agent <-> tools, the ToolNode raising tool errors (no error messages) and, with ``retry``,
    retried by LangGraph's own RetryPolicy."""
    from langgraph.graph import END, START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition
    from langgraph.types import RetryPolicy

    bound = model.bind_tools(tools)

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [bound.invoke(state["messages"])]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    policy = RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=False, retry_on=RuntimeError) if retry else None
    builder.add_node("tools", ToolNode(tools, handle_tool_errors=False), retry_policy=policy)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=checkpointer)


def payment_tools(charged: list[float], failures: list[int]) -> list[Any]:
    @tool
    def send_payment(amount: float) -> str:
        """Pay the supplier."""
        charged.append(amount)
        return f"paid {amount} (receipt r-{len(charged)})"

    @tool
    def fetch_rates() -> str:
        """Current exchange rates."""
        if failures:
            failures.pop()
            raise RuntimeError("rates service is not ready")
        return "EUR/USD 1.08"

    return [send_payment, fetch_rates]


PAY_AND_FETCH = [{"name": "send_payment", "args": {"amount": 10.0}}, {"name": "fetch_rates", "args": {}}]


def test_side_effect_not_repeated_when_langgraph_retries_the_node(runtimes: list[Runtime]) -> None:
    charged: list[float] = []
    rt = new_runtime(runtimes)
    model = ScriptedChatModel(script=[PAY_AND_FETCH, "Paid 10 at EUR/USD 1.08."])
    graph = payment_graph(model, payment_tools(charged, failures=[1]), retry=True)
    rt.protect(graph, handle_tool_errors=False)
    out = graph.invoke({"messages": [("user", "pay the invoice")]})
    assert out["messages"][-1].content == "Paid 10 at EUR/USD 1.08."
    assert charged == [10.0]  # the node ran twice, the payment once
    rt.flush()
    (run,) = rt.store.runs()
    pays = [s for s in rt.store.steps(run.run_id) if s.tool == "send_payment"]
    assert [bool(s.data.get("replayed")) for s in pays] == [False, True]
    results = [m.content for m in out["messages"] if isinstance(m, ToolMessage) and m.name == "send_payment"]
    assert results == ["paid 10.0 (receipt r-1)"]  # the retried node got the first call's result


def test_side_effect_not_repeated_when_a_new_runtime_resumes_the_run(tmp_path: Any,
                                                                     runtimes: list[Runtime]) -> None:
    charged: list[float] = []
    db = str(tmp_path / "runs.db")
    saver = InMemorySaver()  # stands for a durable checkpointer both processes share
    cfg = {"configurable": {"thread_id": "pay-1"}}
    first = new_runtime(runtimes, store=db)
    graph = payment_graph(ScriptedChatModel(script=[PAY_AND_FETCH]), payment_tools(charged, failures=[1]), saver)
    first.protect(graph, handle_tool_errors=False)
    with pytest.raises(RuntimeError, match="rates service is not ready"):
        graph.invoke({"messages": [("user", "pay the invoice")]}, cfg)
    assert charged == [10.0]
    first.close()  # the first process is gone

    second = new_runtime(runtimes, store=db)
    graph2 = payment_graph(ScriptedChatModel(script=["Paid 10 at EUR/USD 1.08."]), payment_tools(charged, failures=[]),
                           saver)
    second.protect(graph2, handle_tool_errors=False)
    out = graph2.invoke(None, cfg)  # resume: LangGraph re-runs the failed tools step
    assert out["messages"][-1].content == "Paid 10 at EUR/USD 1.08."
    assert charged == [10.0]  # not paid twice
    second.flush()
    (run,) = second.store.runs()
    assert run.run_id == "langgraph-pay-1" and run.status == "finished"
    # the resumed session answered the payment from the first process's record
    pays = [s for s in second.store.steps(run.run_id) if s.tool == "send_payment"]
    assert pays and pays[-1].data.get("replayed") is True and pays[-1].result == "paid 10.0 (receipt r-1)"
    pay_msgs = [m.content for m in out["messages"] if isinstance(m, ToolMessage) and m.name == "send_payment"]
    assert pay_msgs == ["paid 10.0 (receipt r-1)"]


# ---------------------------------------------------------------------------------------------- budget
def _search_tools(log: list[str]) -> list[Any]:
    @tool
    def search(query: str) -> str:
        """Search the web."""
        log.append(query)
        return f"results for {query}: " + " ".join(f"word{i}" for i in range(40))

    return [search]


def _stubborn(messages: list[Any]) -> Any:
    n = sum(1 for m in messages if isinstance(m, ToolMessage))
    return tool_call("search", query=f"topic page {n}")


def _obedient(messages: list[Any]) -> Any:
    if any(isinstance(m, HumanMessage) and m.content == FINAL_NOW for m in messages):
        return "From the pages I read: the topic has three parts."
    return _stubborn(messages)


@pytest.mark.parametrize("mode", ["obeys", "ignores"])
def test_run_over_budget_ends_with_a_final_answer(runtimes: list[Runtime], mode: str) -> None:
    log: list[str] = []
    rt = new_runtime(runtimes, budget={"max_tokens": 1500, "expected_output_tokens": 50})
    model = ScriptedChatModel(script=[_obedient if mode == "obeys" else _stubborn] * 40)
    graph = build_graph(model, _search_tools(log))
    rt.protect(graph)
    out = graph.invoke({"messages": [("user", "research the topic")]})  # no exception
    final = out["messages"][-1]
    assert final.type == "ai" and not final.tool_calls
    rt.flush()
    (run,) = rt.store.runs()
    assert run.final_answer == final.content
    budget_ivs = [iv.kind for iv in rt.store.interventions(run.run_id) if iv.source == "budget"]
    assert budget_ivs[0] == InterventionKind.HINT
    if mode == "obeys":
        assert final.content == "From the pages I read: the topic has three parts."
        assert run.status == "finished" and run.tokens <= 1500
    else:
        assert final.content.startswith("I stopped before finishing this task: the run's budget (1500 tokens)")
        assert run.status == "stopped" and budget_ivs[-1] == InterventionKind.STOP
        assert InterventionKind.BLOCK in budget_ivs
    assert 0 < len(log) < 40


# ---------------------------------------------------------------------------------------------- ladder
def test_loop_ladder_hint_block_stop_and_learning(tmp_path: Any, runtimes: list[Runtime]) -> None:
    log: list[str] = []
    db = str(tmp_path / "runs.db")
    rt = new_runtime(runtimes, store=db, selector="bandit", bandit={"escalate": True}, seed=5)

    @tool
    def check_order(order_id: str) -> str:
        """Status of an order."""
        log.append(order_id)
        return "status: processing"

    model = ScriptedChatModel(script=[tool_call("check_order", order_id="A-1")] * 12)
    graph = build_graph(model, [check_order], InMemorySaver())
    rt.protect(graph)
    out = graph.invoke({"messages": [("user", "is order A-1 shipped?")]}, {"configurable": {"thread_id": "loop-1"}})
    final = out["messages"][-1].content
    assert final.startswith("I stopped before finishing this task:") and "status: processing" in final
    rt.flush()
    run = rt.store.get_run("langgraph-loop-1")
    kinds = [iv.kind for iv in rt.store.interventions(run.run_id) if iv.kind != InterventionKind.WARN]
    assert kinds == [InterventionKind.HINT, InterventionKind.BLOCK, InterventionKind.STOP]
    assert len(log) == 3  # the 4th identical call was blocked, the 5th never ran
    hint = rt.store.interventions(run.run_id)[0]
    assert hint.variant and hint.variant.startswith(("loop/", "support:", "coding:")) is not None
    # the hint reached the model's next call
    assert any(isinstance(m, HumanMessage) and m.content == hint.text for m in model.calls[3])
    rt.session(run.run_id).set_outcome("failure")
    rt.flush()
    con = sqlite3.connect(db)
    rows = con.execute("select variant, failures from bandit_arms where context = 'class=loop'").fetchall()
    con.close()
    assert rows == [(hint.variant, 1)]


# ---------------------------------------------------------------------------------------------- recovery
def test_transient_tool_error_retried_with_the_servers_delay(runtimes: list[Runtime]) -> None:
    attempts: list[float] = []
    rt = new_runtime(runtimes)

    @tool
    def get_quote(symbol: str) -> str:
        """Stock quote."""
        import time

        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise ConnectionError("HTTP 429 Too Many Requests; Retry-After: 0.2")
        return f"{symbol} 101.5"

    model = ScriptedChatModel(script=[tool_call("get_quote", symbol="ACME"), "ACME is at 101.5."])
    graph = build_graph(model, [get_quote])
    rt.protect(graph)
    out = graph.invoke({"messages": [("user", "quote ACME")]})
    assert out["messages"][-1].content == "ACME is at 101.5."
    assert len(attempts) == 2 and attempts[1] - attempts[0] >= 0.19
    rt.flush()
    (run,) = rt.store.runs()
    (rec,) = rt.store.recoveries(run.run_id)
    assert rec.kind == RecoveryKind.RETRY and rec.delay_s == pytest.approx(0.2)


def test_failed_check_rolls_back_to_the_verified_checkpoint_and_compensates(runtimes: list[Runtime]) -> None:
    files = {"app.toml": "x = 1"}
    undone: list[dict[str, Any]] = []
    rt = new_runtime(runtimes)
    rt.compensate_with("write_config", lambda **kw: undone.append(kw))

    @tool
    def read_config(path: str) -> str:
        """Read a config file."""
        return files[path]

    @tool
    def write_config(path: str, text: str) -> str:
        """Write a config file."""
        files[path] = text
        return f"wrote {path}"

    @tool
    def validate_config(path: str) -> str:
        """Validate a config file."""
        if "=" not in files[path] or files[path].rstrip().endswith("="):
            raise ValueError(f"invalid TOML in {path}: expected a value after '='")
        return "valid"

    def after_rollback(messages: list[Any]) -> Any:
        hints = [m.content for m in messages if isinstance(m, HumanMessage) and "were undone" in str(m.content)]
        return "Rolled back; the config stays x = 1." if hints else tool_call("validate_config", path="app.toml")

    model = ScriptedChatModel(script=[tool_call("read_config", path="app.toml"),
                                      tool_call("write_config", path="app.toml", text="x = "),
                                      tool_call("validate_config", path="app.toml"), after_rollback, after_rollback])
    graph = build_graph(model, [read_config, write_config, validate_config], InMemorySaver())
    rt.protect(graph)
    out = graph.invoke({"messages": [("user", "set x in app.toml")]}, {"configurable": {"thread_id": "rb-1"}})
    assert out["messages"][-1].content == "Rolled back; the config stays x = 1."
    assert undone == [{"path": "app.toml", "text": "x = "}]
    rt.flush()
    recs = [r for r in rt.store.recoveries("langgraph-rb-1") if r.kind == RecoveryKind.ROLLBACK]
    assert recs and recs[0].checkpoint_id is not None
    assert rt.store.get_run("langgraph-rb-1").metadata.get("rollbacks")
