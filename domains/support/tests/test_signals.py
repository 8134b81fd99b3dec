"""The support domain's content signals, computed by a real runtime on a support run."""

from __future__ import annotations

import pytest
from immunity.runtime import Runtime
from immunity.testing import FakeRun
from immunity_support.signals import NAMES


@pytest.fixture
def rt():
    r = Runtime(store=None, domain="support", verifiers=["patterns"], observe_only=True)
    yield r
    r.close()


def _extra(run: FakeRun) -> dict[str, float]:
    return run.state.extras["patterns"].views[-1].extra


def test_changes_without_confirmation_and_refusals(rt: Runtime) -> None:
    run = FakeRun(rt, task="cancel my trip", domain="support")
    run.tool("get_reservation_details", {"reservation_id": "ABC123"}, result='{"status": "confirmed"}')
    e = _extra(run)
    assert set(e) == set(NAMES) and e["support_log_lookups_before_change"] > 0
    run.tool("cancel_reservation", {"reservation_id": "ABC123"}, result='{"status": "cancelled"}')
    e = _extra(run)
    assert e["support_unconfirmed_change"] == 1.0 and e["support_log_unconfirmed_changes"] > 0
    run.say("Shall I proceed with refunding the remaining segment? Please confirm (yes/no).")
    run.tool("cancel_reservation", {"reservation_id": "XYZ999"}, result='{"status": "cancelled"}')
    e = _extra(run)
    assert e["support_unconfirmed_change"] == 0.0 and e["support_repeated_change_tool"] == 1.0
    run.say("I'm sorry, this ticket is non-refundable under our policy.")
    assert _extra(run)["support_refusal"] == 1.0
