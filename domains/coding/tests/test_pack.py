"""The coding pattern pack: registered, verified on load, and matching in a run."""

from __future__ import annotations

from immunity.learning.packs import load_pack
from immunity.runtime import Runtime
from immunity.testing import FakeRun
from immunity_coding import PACK


def test_the_pack_is_registered_and_verifies() -> None:
    with Runtime(store=":memory:") as rt:
        assert rt.pm.registry("pattern_packs")["coding-basics"] == str(PACK)
    pack = load_pack(PACK)
    assert pack.domain == "coding" and {p.error_class for p in pack.patterns} == {"premature_done", "loop"}


def test_the_pack_matches_a_submit_with_untested_edits_and_a_test_loop() -> None:
    with Runtime(store=":memory:", domain="coding", packs=["coding-basics"], verifiers=["patterns"]) as rt:
        run = FakeRun(rt, domain="coding")
        run.tool("bash", {"command": "pytest tests/test_app.py"}, result="3 passed", return_code=0)
        run.tool("bash", {"command": "sed -i 's/a/b/' src/app.py"}, return_code=0)
        d = run.tool("bash", {"command": "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT && git add -A && git diff --cached"})
        assert "coding-submit-unverified" in {v.evidence.get("pattern_id") for v in d.verdicts}
        run = FakeRun(rt, domain="coding")
        for _ in range(3):
            d = run.tool("bash", {"command": "pytest tests/test_app.py"}, result="1 failed", return_code=1)
        assert "coding-same-failing-test" in {v.evidence.get("pattern_id") for v in d.verdicts}
