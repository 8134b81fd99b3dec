"""The support checks in a real LangGraph run (prebuilt ReAct agent, scripted model, offline)."""

from __future__ import annotations

import json
import warnings

from immunity.runtime import Runtime
from immunity_langgraph.testing import ScriptedChatModel, tool_call
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool


def test_a_cancellation_without_the_lookup_is_blocked_then_done_right() -> None:
    cancelled: list[str] = []

    @tool
    def get_reservation_details(reservation_id: str) -> str:
        """Get the details of a reservation."""
        return json.dumps({"reservation_id": reservation_id, "user_id": "mia_li_3668", "cabin": "business",
                           "flights": [{"flight_number": "HAT136", "date": "2024-05-20"}],
                           "passengers": [{"first_name": "Mia", "last_name": "Li"}], "status": None})

    @tool
    def cancel_reservation(reservation_id: str) -> str:
        """Cancel a whole reservation."""
        cancelled.append(reservation_id)
        return json.dumps({"reservation_id": reservation_id, "status": "cancelled"})

    model = ScriptedChatModel(script=[
        tool_call("cancel_reservation", reservation_id="NO6JO3"),          # skips the lookup: blocked
        tool_call("get_reservation_details", reservation_id="NO6JO3"),
        tool_call("cancel_reservation", reservation_id="NO6JO3"),
        "Your reservation NO6JO3 has been cancelled.",
    ])
    from langgraph.prebuilt import create_react_agent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = create_react_agent(model, [get_reservation_details, cancel_reservation])
    rt = Runtime(store=":memory:", domain="support")
    try:
        rt.protect(graph)
        graph.invoke({"messages": [("user", "Yes, please cancel reservation NO6JO3, I confirm.")]})
        assert cancelled == ["NO6JO3"]  # only the call made after the lookup ran
        told = model.calls[1][-1]
        assert isinstance(told, ToolMessage) and "get_reservation_details" in told.content
        rt.flush()
        (run,) = rt.store.runs()
        verdicts = rt.store.verdicts(run.run_id)
        assert [v.plugin for v in verdicts if v.plugin.startswith("support:")] == ["support:required_lookup"]
    finally:
        rt.close()
