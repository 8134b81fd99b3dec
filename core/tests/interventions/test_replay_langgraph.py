"""``immunity replay`` on runs recorded from a real LangGraph agent: what the default policy, or a
new intervention variant, would have flagged and injected, before it is switched on."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langgraph")
pytest.importorskip("immunity_langgraph")

from click.testing import CliRunner  # noqa: E402
from immunity.cli import build_cli  # noqa: E402
from immunity.runtime import Runtime  # noqa: E402
from immunity_langgraph.demo import build_graph  # noqa: E402
from immunity_langgraph.testing import ScriptedChatModel, tool_call  # noqa: E402
from langchain_core.messages import HumanMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402


def invoke(*args: str) -> str:
    res = CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture
def recorded(tmp_path: Any) -> str:
    """A LangGraph agent that polls the same status five times, recorded with immunity attached
    but with the loop rules set so high that nothing intervened while it ran."""
    path = str(tmp_path / "lg.db")

    @tool
    def get_status(job: str) -> str:
        """The status of a batch job."""
        return "pending"

    model = ScriptedChatModel(script=[tool_call("get_status", job="j-1")] * 5 + ["The job is still pending."])
    graph = build_graph(model, [get_status])
    rt = Runtime(store=path, rules={"repeat": 99, "block_repeat": 99, "stop_repeat": 99})
    try:
        rt.protect(graph)
        out = graph.invoke({"messages": [HumanMessage("Is job j-1 done?")]}, {"configurable": {"thread_id": "poll"}})
        assert out["messages"][-1].content == "The job is still pending."
        assert not any("[immunity]" in str(m.content) for c in model.calls for m in c)  # nothing injected live
    finally:
        rt.close()
    return path


def test_replay_of_a_real_langgraph_run_shows_the_loop_it_would_have_caught(recorded: str) -> None:
    out = invoke("replay", "langgraph-poll", "--store", recorded)
    assert "loop" in out and "get_status" in out
    assert "hint    " in out and "block   " in out  # the default ladder: a hint, then the call blocked


def test_a_new_variant_is_tried_on_the_stored_run_before_it_is_enabled(recorded: str) -> None:
    text = "[immunity] The job is slow: wait for its webhook instead of polling."
    out = invoke("replay", "langgraph-poll", "--store", recorded, "--selector", "bandit", "--variant", f"loop={text}")
    assert text in out
    summary = invoke("replay", "--all", "--store", recorded, "--selector", "bandit", "--variant", f"loop={text}")
    assert "langgraph-poll" in summary and "1 runs, 1 flagged, 1 with an intervention" in summary
