"""The data pattern pack: registered, verified on load, and matching in a run."""

from __future__ import annotations

from immunity.learning.packs import load_pack
from immunity.runtime import Runtime
from immunity.testing import FakeRun
from immunity_data import PACK


def test_the_pack_is_registered_and_verifies() -> None:
    with Runtime(store=":memory:") as rt:
        assert rt.pm.registry("pattern_packs")["data-basics"] == str(PACK)
    assert load_pack(PACK).domain == "data"


def test_the_pack_matches_the_same_sql_error_again() -> None:
    with Runtime(store=":memory:", domain="data", packs=["data-basics"], verifiers=["patterns"]) as rt:
        run = FakeRun(rt, domain="data")
        run.tool("run_sql", {"sql": "SELECT amount FROM order"}, error='sqlite3.OperationalError: near "order": syntax error')
        d = run.tool("run_sql", {"sql": "SELECT amount FROM order LIMIT 5"},
                     error='sqlite3.OperationalError: near "order": syntax error')
        assert "data-same-query-error" in {v.evidence.get("pattern_id") for v in d.verdicts}
