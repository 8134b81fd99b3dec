"""The research pattern pack: registered, verified on load, and matching in a run."""

from __future__ import annotations

from immunity.learning.packs import load_pack
from immunity.runtime import Runtime
from immunity.testing import FakeRun
from immunity_research import PACK


def test_the_pack_is_registered_and_verifies() -> None:
    with Runtime(store=":memory:") as rt:
        assert rt.pm.registry("pattern_packs")["research-basics"] == str(PACK)
    assert load_pack(PACK).domain == "research"


def test_the_pack_matches_an_answer_right_after_a_failed_check() -> None:
    with Runtime(store=":memory:", domain="research", packs=["research-basics"], verifiers=["patterns"]) as rt:
        run = FakeRun(rt, task="When was the bridge opened?", domain="research")
        run.tool("web_search", {"query": "bridge opening year"}, result="Opened in 1932. https://example.org/bridge")
        run.tool("verify_claim", {"claim": "opened in 1931"}, error="claim not supported by the sources")
        d = run.tool("submit_answer", {"answer": "1931"})
        assert "research-answer-after-failed-check" in {v.evidence.get("pattern_id") for v in d.verdicts}
