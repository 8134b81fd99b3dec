"""Fault injection through the OpenAI Agents SDK's real runtime (Runner.run_sync): a plugin that
raises, hangs or returns garbage in each hook leaves the agent's answer unchanged, is recorded, and
costs at most its budget."""

from __future__ import annotations

from typing import Any

import pytest
from agents import Agent, Runner, function_tool
from agents.run import get_default_agent_runner
from immunity.testing.faults import CASES, case_id, check_faults
from immunity_openai_agents.testing import ScriptedModel, call


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_a_faulty_plugin_changes_nothing_but_the_record(case: tuple[str, tuple[str, ...]]) -> None:
    runner_before = get_default_agent_runner()

    def drive(rt: Any) -> Any:
        @function_tool
        def lookup_order(order_id: str) -> str:
            """Look up an order."""
            return f"order {order_id}: 2 items, paid 40 EUR"

        model = ScriptedModel([call("lookup_order", order_id="A1"), "Order A1 has 2 items."])
        agent = Agent(name="support", instructions="Answer about orders.", model=model, tools=[lookup_order])
        rt.protect(agent)
        return Runner.run_sync(agent, "What is in order A1?").final_output

    mode, hooks = case
    clean, faulty = check_faults(drive, mode, hooks)
    assert clean.answer == "Order A1 has 2 items."
    assert get_default_agent_runner() is runner_before  # closing the runtimes uninstrumented them
