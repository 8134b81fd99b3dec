"""The support pattern pack: registered, verified on load, and matching in a run."""

from __future__ import annotations

from immunity.learning.packs import load_pack
from immunity.runtime import Runtime
from immunity.testing import FakeRun
from immunity_support import PACK


def test_the_pack_is_registered_and_verifies() -> None:
    with Runtime(store=":memory:") as rt:
        assert rt.pm.registry("pattern_packs")["support-basics"] == str(PACK)
    assert load_pack(PACK).domain == "support"


def test_the_pack_matches_a_change_failing_the_same_way_twice() -> None:
    with Runtime(store=":memory:", domain="support", packs=["support-basics"], verifiers=["patterns"],
                 support={"require_confirmation": False}) as rt:
        run = FakeRun(rt, domain="support")
        run.tool("get_user_details", {"user_id": "mia_li_3668"}, result='{"payment_methods": {}}')
        args = {"user_id": "mia_li_3668", "flights": [{"flight_number": "HAT136", "date": "2024-05-20"}]}
        run.tool("book_reservation", args, error="Error: payment amount does not add up, total price is 305, but paid 255")
        d = run.tool("book_reservation", dict(args, cabin="economy"),
                     error="Error: payment amount does not add up, total price is 305, but paid 250")
        assert "support-change-keeps-failing" in {v.evidence.get("pattern_id") for v in d.verdicts}
