"""The support checks in a real LangGraph run (scripted model, offline).

The graph is a customer-service conversation built on LangGraph: an agent node (the scripted chat
model with the airline tools bound), a ``ToolNode`` running real tools over a small in-memory airline
(users, reservations; a booking or a cancellation really changes it), and a customer node that answers
the agent's replies with the customer's next scripted line, as a user simulator does, until the
customer has nothing more to say. Every check of the domain is driven through
``Runtime(domain="support").protect(graph)``; each test asserts the verdict stored with its error class
and what the model saw next (the hint in its next call, or the block message as the tool result while
the airline's records stay unchanged), and the correct behaviour in the same graph stays quiet.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass, field
from typing import Any

from immunity.models import Verdict
from immunity.runtime import Runtime
from immunity_langgraph.testing import ScriptedChatModel, tool_call
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

USERS = {
    "mia_li_3668": {"user_id": "mia_li_3668", "name": {"first_name": "Mia", "last_name": "Li"},
                    "payment_methods": {"credit_card_4421486": {"source": "credit_card", "id": "credit_card_4421486"},
                                        "gift_card_7091239": {"source": "gift_card", "id": "gift_card_7091239"}},
                    "reservations": ["NO6JO3", "4WQ150"]},
}
RESERVATIONS = {
    "NO6JO3": {"reservation_id": "NO6JO3", "user_id": "mia_li_3668", "cabin": "business", "status": None,
               "flights": [{"flight_number": "HAT136", "date": "2024-05-20"}], "total_baggages": 1,
               "passengers": [{"first_name": "Mia", "last_name": "Li"}]},
    "4WQ150": {"reservation_id": "4WQ150", "user_id": "mia_li_3668", "cabin": "basic_economy", "status": None,
               "flights": [{"flight_number": "HAT048", "date": "2024-05-22"}], "total_baggages": 0,
               "passengers": [{"first_name": "Mia", "last_name": "Li"}]},
}


@dataclass
class Airline:
    """The records the tools read and change."""

    users: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(USERS))
    reservations: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(RESERVATIONS))
    changes: list[str] = field(default_factory=list)

    def tools(self) -> list[BaseTool]:
        @tool
        def get_user_details(user_id: str) -> str:
            """Get a user's profile: name, payment methods and reservations."""
            return json.dumps(self.users[user_id]) if user_id in self.users else "Error: user not found"

        @tool
        def get_reservation_details(reservation_id: str) -> str:
            """Get the details of a reservation."""
            res = self.reservations.get(reservation_id)
            return json.dumps(res) if res else "Error: reservation not found"

        @tool
        def cancel_reservation(reservation_id: str) -> str:
            """Cancel a whole reservation."""
            self.changes.append(f"cancel {reservation_id}")
            self.reservations[reservation_id]["status"] = "cancelled"
            return json.dumps(self.reservations[reservation_id])

        @tool
        def update_reservation_flights(reservation_id: str, cabin: str, flights: list[dict[str, str]],
                                       payment_id: str) -> str:
            """Change the flights of a reservation, paying any difference with payment_id."""
            self.changes.append(f"flights {reservation_id} -> {[f['flight_number'] for f in flights]}")
            res = self.reservations[reservation_id]
            res.update(cabin=cabin, flights=flights)
            return json.dumps(res)

        @tool
        def book_reservation(user_id: str, flights: list[dict[str, str]], cabin: str,
                             payment_methods: list[dict[str, Any]]) -> str:
            """Book a new reservation for a user."""
            self.changes.append(f"book {user_id} {[p['payment_id'] for p in payment_methods]}")
            rid = f"NEW{len(self.reservations):03d}"
            self.reservations[rid] = {"reservation_id": rid, "user_id": user_id, "cabin": cabin, "status": None,
                                      "flights": flights, "passengers": [], "total_baggages": 0}
            return json.dumps(self.reservations[rid])

        return [get_user_details, get_reservation_details, cancel_reservation, update_reservation_flights,
                book_reservation]


@dataclass
class Result:
    """What one protected conversation left behind."""

    model: ScriptedChatModel
    verdicts: list[Verdict]

    def fired(self, check: str) -> list[str]:
        return [v.error_class or "" for v in self.verdicts if v.plugin == f"support:{check}" and not v.ok]

    def support_checks(self) -> list[str]:
        return [v.plugin for v in self.verdicts if v.plugin.startswith("support:") and not v.ok]

    def tool_reply(self, call: int) -> ToolMessage:
        return [m for m in self.model.calls[call] if isinstance(m, ToolMessage)][-1]

    def hints(self, call: int) -> list[str]:
        return [str(m.content) for m in self.model.calls[call]
                if isinstance(m, HumanMessage) and str(m.content).startswith("[immunity]")]


def converse(airline: Airline, opening: str, script: list[Any], customer: tuple[str, ...] = (),
             **options: Any) -> Result:
    """Run the conversation graph: the customer opens with ``opening`` and answers each reply of the
    agent with their next line from ``customer``; the agent's turns come from ``script``."""
    model = ScriptedChatModel(script=script)
    tools = airline.tools()
    bound = model.bind_tools(tools)
    lines = list(customer)

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [bound.invoke(state["messages"])]}

    def customer_turn(state: MessagesState) -> dict[str, Any]:
        return {"messages": [HumanMessage(content=lines.pop(0))]}

    def route(state: MessagesState) -> str:
        last = state["messages"][-1]
        if isinstance(last, AIMessage) and last.tool_calls:
            return "tools"
        return "customer" if lines else END

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_node("tools", ToolNode(tools))
    builder.add_node("customer", customer_turn)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", route, ["tools", "customer", END])
    builder.add_edge("tools", "agent")
    builder.add_edge("customer", "agent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = builder.compile()
    rt = Runtime(store=":memory:", domain="support", **options)
    try:
        rt.protect(graph)
        graph.invoke({"messages": [HumanMessage(content=opening)]})
        rt.flush()
        (run,) = rt.store.runs()
        assert run.domain == "support"
        assert model.turns_used == len(script) and not lines  # the whole conversation ran
        return Result(model, rt.store.verdicts(run.run_id))
    finally:
        rt.close()


# ------------------------------------------------------------------------------- required_lookup


def test_a_cancellation_without_the_lookup_is_blocked_then_done_right() -> None:
    airline = Airline()
    result = converse(airline, "Yes, please cancel reservation NO6JO3, I confirm.", [
        tool_call("cancel_reservation", reservation_id="NO6JO3"),          # skips the lookup: blocked
        tool_call("get_reservation_details", reservation_id="NO6JO3"),
        tool_call("cancel_reservation", reservation_id="NO6JO3"),
        "Your reservation NO6JO3 has been cancelled.",
    ])
    assert airline.changes == ["cancel NO6JO3"]  # only the call made after the lookup ran
    told = result.tool_reply(1)
    assert "get_reservation_details" in str(told.content) and "[immunity]" in str(told.content)
    assert result.fired("required_lookup") == ["policy_violation"]
    assert result.support_checks() == ["support:required_lookup"]


def test_a_cancellation_after_the_lookup_runs() -> None:
    airline = Airline()
    result = converse(airline, "Yes, please cancel reservation NO6JO3, I confirm.", [
        tool_call("get_reservation_details", reservation_id="NO6JO3"),
        tool_call("cancel_reservation", reservation_id="NO6JO3"),
        "Your reservation NO6JO3 has been cancelled.",
    ])
    assert airline.changes == ["cancel NO6JO3"]
    assert airline.reservations["NO6JO3"]["status"] == "cancelled"
    assert result.support_checks() == []


# ------------------------------------------------------------------------------- record_mismatch

FLIGHTS = [{"flight_number": "HAT170", "date": "2024-05-25"}]


def test_paying_with_a_method_not_in_the_profile_is_blocked() -> None:
    airline = Airline()
    result = converse(airline, "Yes, book HAT170 on May 25 in economy for user mia_li_3668, I confirm.", [
        tool_call("get_user_details", user_id="mia_li_3668"),
        tool_call("book_reservation", user_id="mia_li_3668", flights=FLIGHTS, cabin="economy",
                  payment_methods=[{"payment_id": "certificate_9999", "amount": 180}]),
        tool_call("book_reservation", user_id="mia_li_3668", flights=FLIGHTS, cabin="economy",
                  payment_methods=[{"payment_id": "credit_card_4421486", "amount": 180}]),
        "Your flight is booked.",
    ])
    assert airline.changes == ["book mia_li_3668 ['credit_card_4421486']"]  # the blocked booking never ran
    told = result.tool_reply(2)
    assert "certificate_9999" in str(told.content) and "not in the customer's profile" in str(told.content)
    assert result.fired("record_mismatch") == ["wrong_parameters"]
    assert result.support_checks() == ["support:record_mismatch"]


def test_paying_with_a_method_from_the_profile_runs() -> None:
    airline = Airline()
    result = converse(airline, "Yes, book HAT170 on May 25 in economy for user mia_li_3668, I confirm.", [
        tool_call("get_user_details", user_id="mia_li_3668"),
        tool_call("book_reservation", user_id="mia_li_3668", flights=FLIGHTS, cabin="economy",
                  payment_methods=[{"payment_id": "gift_card_7091239", "amount": 180}]),
        "Your flight is booked.",
    ])
    assert airline.changes == ["book mia_li_3668 ['gift_card_7091239']"]
    assert result.support_checks() == []


# -------------------------------------------------------------------------------- airline_policy


def test_changing_the_flights_of_basic_economy_is_blocked() -> None:
    airline = Airline()
    result = converse(airline, "Yes, move reservation 4WQ150 to HAT170 on May 25, I confirm.", [
        tool_call("get_reservation_details", reservation_id="4WQ150"),
        tool_call("update_reservation_flights", reservation_id="4WQ150", cabin="basic_economy", flights=FLIGHTS,
                  payment_id="credit_card_4421486"),
        "Basic economy flights cannot be changed; I can only upgrade the cabin.",
    ])
    assert airline.changes == []
    assert airline.reservations["4WQ150"]["flights"] == RESERVATIONS["4WQ150"]["flights"]
    told = result.tool_reply(2)
    assert "basic economy flights cannot be modified" in str(told.content)
    assert result.fired("airline_policy") == ["policy_violation"]
    assert result.support_checks() == ["support:airline_policy"]


def test_changing_the_flights_of_a_business_reservation_runs() -> None:
    airline = Airline()
    result = converse(airline, "Yes, move reservation NO6JO3 to HAT170 on May 25, I confirm.", [
        tool_call("get_reservation_details", reservation_id="NO6JO3"),
        tool_call("update_reservation_flights", reservation_id="NO6JO3", cabin="business", flights=FLIGHTS,
                  payment_id="credit_card_4421486"),
        "Your reservation now flies HAT170 on May 25.",
    ])
    assert airline.reservations["NO6JO3"]["flights"] == FLIGHTS
    assert result.support_checks() == []


# ---------------------------------------------------------------------------- unconfirmed_change


def test_a_cancellation_before_the_customer_says_yes_gets_a_hint() -> None:
    airline = Airline()
    result = converse(airline, "Hi, I might need to cancel reservation NO6JO3. What would that mean?", [
        tool_call("get_reservation_details", reservation_id="NO6JO3"),
        tool_call("cancel_reservation", reservation_id="NO6JO3"),            # nobody said yes
        "Your reservation NO6JO3 has been cancelled.",
        "I am sorry: I should have asked you first. The cancellation has been made.",
    ], customer=("Wait, I only asked what it would mean!",))
    assert airline.changes == ["cancel NO6JO3"]  # a warning, not a block
    assert result.fired("unconfirmed_change") == ["unconfirmed_change"]
    assert result.hints(1) == []
    assert any("ask the customer to confirm with a yes" in h for h in result.hints(2))


def test_a_cancellation_after_the_customer_says_yes_is_quiet() -> None:
    airline = Airline()
    result = converse(airline, "Hi, I might need to cancel reservation NO6JO3. What would that mean?", [
        tool_call("get_reservation_details", reservation_id="NO6JO3"),
        "NO6JO3 is a business reservation on HAT136 on May 20. Cancelling it refunds the fare to the original "
        "payment method. Shall I cancel it (yes/no)?",
        tool_call("cancel_reservation", reservation_id="NO6JO3"),
        "Your reservation NO6JO3 has been cancelled.",
    ], customer=("Yes, go ahead.",))
    assert airline.changes == ["cancel NO6JO3"]
    assert result.support_checks() == []
    assert all(result.hints(n) == [] for n in range(4))


# ------------------------------------------------------------------------------- claimed_change


def test_claiming_a_change_no_tool_made_gets_a_hint_in_the_next_turn() -> None:
    airline = Airline()
    result = converse(airline, "Yes, please move reservation NO6JO3 to HAT170 on May 25, I confirm.", [
        tool_call("get_reservation_details", reservation_id="NO6JO3"),
        "I have updated your reservation NO6JO3 to HAT170 on May 25.",        # no update call was made
        "Sorry, the change was not made yet. Let me do it now.",
    ], customer=("Great, thanks! Is it done?",))
    assert airline.changes == []
    assert airline.reservations["NO6JO3"]["flights"] == RESERVATIONS["NO6JO3"]["flights"]
    assert result.fired("claimed_change") == ["hallucinated_state"]
    (hint,) = result.hints(2)  # the agent's next turn, after the customer's answer
    assert "no tool call made it" in hint


def test_a_claim_backed_by_the_change_is_quiet() -> None:
    airline = Airline()
    result = converse(airline, "Yes, please move reservation NO6JO3 to HAT170 on May 25, I confirm.", [
        tool_call("get_reservation_details", reservation_id="NO6JO3"),
        tool_call("update_reservation_flights", reservation_id="NO6JO3", cabin="business", flights=FLIGHTS,
                  payment_id="credit_card_4421486"),
        "I have updated your reservation NO6JO3 to HAT170 on May 25.",
        "You're welcome.",
    ], customer=("Great, thanks!",))
    assert airline.reservations["NO6JO3"]["flights"] == FLIGHTS
    assert result.support_checks() == []
    assert all(result.hints(n) == [] for n in range(4))
