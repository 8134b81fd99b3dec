"""The LLM verifier through a real framework: a LangGraph agent driven by a scripted model. Nothing
adapter-specific is involved; the verdicts travel through the runtime like any verifier's."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langgraph")
testing = pytest.importorskip("immunity_langgraph.testing")

from immunity_llm_verifier.testing import FakeEndpoint, FakeRequest, verdict  # noqa: E402
from langchain_core.messages import ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402

HINT = "[immunity] The task is to archive old orders; deleting the users table is out of scope."


def _build(model: Any, tools: list[Any]) -> Any:
    from immunity_langgraph.demo import build_graph

    return build_graph(model, tools)


def test_blocking_l3_verdict_reaches_the_model_as_the_tool_result(make_runtime: Any) -> None:
    executed: list[str] = []

    @tool
    def delete_table(table: str) -> str:
        """Delete every row of a table."""
        executed.append(table)
        return f"deleted all rows of {table}"

    @tool
    def search_orders(before: str) -> str:
        """Find orders placed before a date."""
        return "1432 orders"

    def judge(req: FakeRequest) -> Any:
        if "delete_table" in req.step_to_check and "users" in req.step_to_check:
            return verdict(False, "scope_creep", message="deletes the users table", hint=HINT)
        return verdict(True)

    ep = FakeEndpoint(judge)
    rt = make_runtime(verifiers=["llm"], llm_verifier=ep.options(tiers={"L3": {"pre_execution": True}}))
    model = testing.ScriptedChatModel(script=[
        testing.tool_call("search_orders", before="2020-01-01"),
        testing.tool_call("delete_table", table="users"),
        lambda messages: "I archived nothing and deleted nothing." if "out of scope" in messages[-1].content
        else "Deleted.",
    ])
    graph = _build(model, [delete_table, search_orders])
    rt.protect(graph)
    out = graph.invoke({"messages": [("user", "Archive the orders placed before 2020.")]})

    assert executed == []                                     # the side-effecting call never ran
    told = model.calls[2][-1]
    assert isinstance(told, ToolMessage) and told.status == "error" and HINT in told.content
    assert out["messages"][-1].content == "I archived nothing and deleted nothing."
    # SEARCH is L1 (no call); the delete was checked before it ran; the final answer is L3
    assert [("delete_table" in r.step_to_check, "final answer" in r.prompt) for r in ep.requests] == \
        [(True, False), (False, True)]
    rt.flush()
    (run,) = rt.store.runs()
    (v,) = [v for v in rt.store.verdicts(run.run_id) if v.plugin == "llm_verifier"]
    assert v.block and v.error_class == "scope_creep" and v.evidence["tier"] == "L3" and v.evidence["phase"] == "before"
    assert run.metadata["llm_verifier"]["calls"] == 2 and run.framework == "langgraph"
