"""Support mapping and checks on realistic airline and helpdesk runs, through the installed plugin."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from immunity.models import ActionType
from immunity.runtime import Runtime
from immunity.testing import FakeRun

USER = {"user_id": "mia_li_3668", "name": {"first_name": "Mia", "last_name": "Li"},
        "payment_methods": {"credit_card_4421486": {"source": "credit_card", "id": "credit_card_4421486"},
                            "certificate_7504069": {"source": "certificate", "amount": 250, "id": "certificate_7504069"}},
        "reservations": ["NO6JO3", "AIXC49"]}
RES = {"reservation_id": "NO6JO3", "user_id": "mia_li_3668", "origin": "JFK", "destination": "SEA",
       "flight_type": "one_way", "cabin": "basic_economy",
       "flights": [{"flight_number": "HAT136", "date": "2024-05-20", "price": 51}],
       "passengers": [{"first_name": "Mia", "last_name": "Li", "dob": "1990-04-05"}],
       "payment_history": [{"payment_id": "credit_card_4421486", "amount": 51}], "total_baggages": 1,
       "created_at": "2024-05-14T10:00:00", "insurance": "no"}
OTHER_RES = dict(RES, reservation_id="ZZ9PLQ", user_id="omar_davis_3817", cabin="economy")


@pytest.fixture
def rt() -> Iterator[Runtime]:
    runtime = Runtime(store=":memory:", domain="support")
    yield runtime
    runtime.close()


def failed(decision: Any, check: str) -> list[str]:
    return [v.error_class for v in decision.verdicts if not v.ok and v.plugin == f"support:{check}"]


def customer(run: FakeRun, text: str) -> None:
    """The customer's message, as the next model call sees it."""
    run.session.model_start([{"role": "system", "content": "policy"}, {"role": "user", "content": text}])


@pytest.mark.parametrize("tool,expected,side_effect", [
    ("get_user_details", "SEARCH", False), ("get_reservation_details", "SEARCH", False),
    ("search_direct_flight", "SEARCH", False), ("search_onestop_flight", "SEARCH", False),
    ("list_all_airports", "SEARCH", False), ("calculate", "EXECUTE", False), ("think", "PLAN", False),
    ("book_reservation", "EDIT", True), ("cancel_reservation", "EDIT", True),
    ("update_reservation_flights", "EDIT", True), ("update_reservation_baggages", "EDIT", True),
    ("update_reservation_passengers", "EDIT", True), ("send_certificate", "EDIT", True),
    ("transfer_to_human_agents", "ESCALATE", False), ("escalate", "ESCALATE", False),
    ("lookup_customer", "SEARCH", False), ("lookup_order", "SEARCH", False), ("search_kb", "SEARCH", False),
    ("refund", "EDIT", True), ("update_ticket", "EDIT", True), ("check_policy", "VERIFY", False),
    ("send_reply", "RESPOND", False), ("draft_reply", "RESPOND", False), ("close_ticket", "DONE", False),
    ("cancel_pending_order", "EDIT", True), ("get_order_details", "SEARCH", False),
])
def test_mapping(rt: Runtime, tool: str, expected: str, side_effect: bool) -> None:
    m = rt.map_action(tool, {})
    assert (m.action_type, m.side_effect, m.mapped_by) == (ActionType(expected), side_effect, "support")
    # changes to a customer's records need verification; a ticket note does not
    assert m.needs_verification == (side_effect and tool != "update_ticket")


def test_escalation_is_not_done(rt: Runtime) -> None:
    m = rt.map_action("transfer_to_human_agents", {"summary": "user wants to change passenger count"})
    assert m.action_type == ActionType.ESCALATE


# ------------------------------------------------------------------------------------------ required_lookup


def test_cancel_without_looking_the_reservation_up_is_blocked(rt: Runtime) -> None:
    run = FakeRun(rt, domain="support")
    run.tool("get_user_details", {"user_id": "mia_li_3668"}, result=json.dumps(USER))
    d = run.tool("cancel_reservation", {"reservation_id": "NO6JO3"}, result="should not run")
    assert d.block and failed(d, "required_lookup") == ["policy_violation"]
    assert "get_reservation_details" in (d.message or "")
    run.end("failure")
    assert any(v.error_class == "policy_violation" for v in rt.store.verdicts(run.run.run_id))


def test_a_failed_lookup_does_not_count(rt: Runtime) -> None:
    run = FakeRun(rt, domain="support")
    run.tool("get_reservation_details", {"reservation_id": "HATHAT"}, result="Error: reservation HATHAT not found")
    d = run.tool("update_reservation_baggages", {"reservation_id": "HATHAT", "total_baggages": 2,
                                                 "nonfree_baggages": 0, "payment_id": "credit_card_4421486"})
    assert d.block and failed(d, "required_lookup") == ["policy_violation"]


def test_refund_without_an_order_lookup_is_blocked_and_with_it_runs(rt: Runtime) -> None:
    run = FakeRun(rt, domain="support")
    customer(run, "Yes, please refund order 1043.")
    d = run.tool("refund", {"order_id": "1043", "amount": 20.0})
    assert d.block and failed(d, "required_lookup") == ["policy_violation"]
    run.tool("lookup_order", {"order_id": "1043"},
             result=json.dumps({"order_id": "1043", "user_id": "c_77", "status": "delivered", "total": 59.9}))
    d = run.tool("refund", {"order_id": "1043", "amount": 20.0}, result="refund issued")
    assert not d.block and failed(d, "required_lookup") == []


# ------------------------------------------------------------------------------------------ record_mismatch


def test_payment_method_not_in_profile_is_blocked(rt: Runtime) -> None:
    run = FakeRun(rt, domain="support")
    run.tool("get_user_details", {"user_id": "mia_li_3668"}, result=json.dumps(USER))
    customer(run, "Yes, book it.")
    d = run.tool("book_reservation", {"user_id": "mia_li_3668", "origin": "JFK", "destination": "SEA",
                                      "flight_type": "one_way", "cabin": "economy",
                                      "flights": [{"flight_number": "HAT136", "date": "2024-05-20"}],
                                      "passengers": [{"first_name": "Mia", "last_name": "Li", "dob": "1990-04-05"}],
                                      "payment_methods": [{"payment_id": "gift_card_9999999", "amount": 121}]})
    assert d.block and failed(d, "record_mismatch") == ["wrong_parameters"]


def test_another_customers_reservation_and_a_refund_above_the_total_are_blocked(rt: Runtime) -> None:
    run = FakeRun(rt, domain="support")
    run.tool("get_user_details", {"user_id": "mia_li_3668"}, result=json.dumps(USER))
    run.tool("get_reservation_details", {"reservation_id": "ZZ9PLQ"}, result=json.dumps(OTHER_RES))
    customer(run, "yes")
    d = run.tool("cancel_reservation", {"reservation_id": "ZZ9PLQ"})
    assert d.block and failed(d, "record_mismatch") == ["wrong_parameters"]
    run.tool("lookup_order", {"order_id": "1043"},
             result=json.dumps({"order_id": "1043", "user_id": "mia_li_3668", "total": 59.9}))
    d = run.tool("refund", {"order_id": "1043", "amount": 80})
    assert d.block and failed(d, "record_mismatch") == ["wrong_parameters"]


def test_matching_arguments_pass(rt: Runtime) -> None:
    run = FakeRun(rt, domain="support")
    run.tool("get_user_details", {"user_id": "mia_li_3668"}, result=json.dumps(USER))
    run.tool("get_reservation_details", {"reservation_id": "NO6JO3"}, result=json.dumps(dict(RES, cabin="economy")))
    customer(run, "Yes, please go ahead and add one bag.")
    d = run.tool("update_reservation_baggages", {"reservation_id": "NO6JO3", "total_baggages": 2,
                                                 "nonfree_baggages": 1, "payment_id": "credit_card_4421486"},
                 result=json.dumps(dict(RES, total_baggages=2)))
    assert not d.block and [v for v in d.verdicts if not v.ok and (v.plugin or "").startswith("support:")] == []


# ------------------------------------------------------------------------------------------ airline_policy


@pytest.mark.parametrize("tool,arguments,rule", [
    ("update_reservation_flights", {"reservation_id": "NO6JO3", "cabin": "economy",
                                    "flights": [{"flight_number": "HAT041", "date": "2024-05-21"}],
                                    "payment_id": "credit_card_4421486"}, "basic economy"),
    ("update_reservation_passengers", {"reservation_id": "NO6JO3", "passengers": [
        {"first_name": "Mia", "last_name": "Li", "dob": "1990-04-05"},
        {"first_name": "Noah", "last_name": "Li", "dob": "1991-01-01"}]}, "number of passengers"),
    ("update_reservation_baggages", {"reservation_id": "NO6JO3", "total_baggages": 0, "nonfree_baggages": 0,
                                     "payment_id": "credit_card_4421486"}, "not removed"),
])
def test_airline_policy_rules_block(rt: Runtime, tool: str, arguments: dict, rule: str) -> None:
    run = FakeRun(rt, domain="support")
    run.tool("get_user_details", {"user_id": "mia_li_3668"}, result=json.dumps(USER))
    run.tool("get_reservation_details", {"reservation_id": "NO6JO3"}, result=json.dumps(RES))
    customer(run, "Yes, please proceed.")
    d = run.tool(tool, arguments)
    assert d.block and failed(d, "airline_policy") == ["policy_violation"]
    assert rule in d.verdicts[0].message or any(rule in v.message for v in d.verdicts)


def test_changing_only_the_cabin_of_basic_economy_is_allowed(rt: Runtime) -> None:
    run = FakeRun(rt, domain="support")
    run.tool("get_user_details", {"user_id": "mia_li_3668"}, result=json.dumps(USER))
    run.tool("get_reservation_details", {"reservation_id": "NO6JO3"}, result=json.dumps(RES))
    customer(run, "Yes, upgrade me to economy.")
    d = run.tool("update_reservation_flights", {"reservation_id": "NO6JO3", "cabin": "economy",
                                                "flights": [{"flight_number": "HAT136", "date": "2024-05-20"}],
                                                "payment_id": "credit_card_4421486"},
                 result=json.dumps(dict(RES, cabin="economy")))
    assert not d.block and failed(d, "airline_policy") == []


# ------------------------------------------------------------------------------------------ unconfirmed_change


def test_change_without_an_explicit_yes_fires_and_with_one_is_quiet(rt: Runtime) -> None:
    run = FakeRun(rt, domain="support")
    run.tool("get_user_details", {"user_id": "mia_li_3668"}, result=json.dumps(USER))
    run.tool("get_reservation_details", {"reservation_id": "AIXC49"}, result=json.dumps(dict(RES, reservation_id="AIXC49",
                                                                                            cabin="business")))
    customer(run, "I would like to cancel all of my upcoming reservations.")
    d = run.tool("cancel_reservation", {"reservation_id": "AIXC49"}, result=json.dumps(RES))
    assert failed(d, "unconfirmed_change") == ["unconfirmed_change"] and not d.block
    run2 = FakeRun(rt, domain="support")
    run2.tool("get_reservation_details", {"reservation_id": "AIXC49"}, result=json.dumps(dict(RES, reservation_id="AIXC49")))
    customer(run2, "Yes, please proceed with the cancellation.")
    d = run2.tool("cancel_reservation", {"reservation_id": "AIXC49"}, result=json.dumps(RES))
    assert failed(d, "unconfirmed_change") == []


# ------------------------------------------------------------------------------------------ claimed_change


def test_claiming_a_cancellation_that_never_happened_fires(rt: Runtime) -> None:
    run = FakeRun(rt, domain="support")
    run.tool("get_reservation_details", {"reservation_id": "NO6JO3"}, result=json.dumps(RES))
    run.session.model_start([{"role": "user", "content": "cancel it"}])
    d = run.session.model_end("I have cancelled reservation NO6JO3; the refund goes to your card in 5-7 days.")
    assert failed(d, "claimed_change") == ["hallucinated_state"]


def test_a_claim_backed_by_a_successful_call_is_quiet(rt: Runtime) -> None:
    run = FakeRun(rt, domain="support")
    run.tool("get_reservation_details", {"reservation_id": "NO6JO3"}, result=json.dumps(RES))
    customer(run, "Yes, cancel it.")
    run.tool("cancel_reservation", {"reservation_id": "NO6JO3"}, result=json.dumps(dict(RES, status="cancelled")))
    d = run.final("Your reservation NO6JO3 has been cancelled.")
    assert failed(d, "claimed_change") == []
