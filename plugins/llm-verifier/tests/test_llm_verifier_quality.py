"""The quality harness computes precision / recall per class correctly. No real model is measured
here (there is none offline): a scripted responder with known mistakes stands in for one, so the
expected figures can be worked out by hand."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from immunity_llm_verifier.contract import ERROR_CLASSES, render_step
from immunity_llm_verifier.options import Options
from immunity_llm_verifier.quality import NO_ANSWER, case_steps, load_cases, metrics
from immunity_llm_verifier.testing import FakeEndpoint, FakeRequest, verdict

HERE = Path(__file__).resolve().parent
CASES = HERE / "fixtures" / "labelled_steps.jsonl"
BENCH = HERE.parent / "bench" / "eval_verifier.py"


def test_fixture_covers_every_class() -> None:
    cases = load_cases(CASES)
    counts = Counter(c["label"] for c in cases)
    assert 40 <= len(cases) <= 60
    assert set(counts) == set(ERROR_CLASSES)
    assert all(n >= 5 for n in counts.values()) and counts["none"] >= 10
    assert len({c["id"] for c in cases}) == len(cases)
    assert {c["domain"] for c in cases} == {"coding", "support", "research", "data"}
    for c in cases:
        context, step = case_steps(c)
        assert c["tier"] in ("L2", "L3") and c.get("why")
        if c["phase"] == "before":
            assert step.tool and step.result is None, c["id"]


def test_metrics_by_hand() -> None:
    pairs = [("scope_creep", "scope_creep"), ("scope_creep", "none"), ("none", "none"), ("none", "scope_creep"),
             ("incomplete", NO_ANSWER), ("incomplete", "premature_done")]
    m = metrics(pairs)
    pc = m["per_class"]
    assert (pc["scope_creep"]["precision"], pc["scope_creep"]["recall"], pc["scope_creep"]["f1"]) == (0.5, 0.5, 0.5)
    assert (pc["none"]["precision"], pc["none"]["recall"]) == (0.5, 0.5)
    assert (pc["incomplete"]["precision"], pc["incomplete"]["recall"], pc["incomplete"]["support"]) == (None, 0.0, 2)
    assert (pc["premature_done"]["precision"], pc["premature_done"]["recall"]) == (0.0, None)
    assert NO_ANSWER not in pc
    assert m["detection"] == {"precision": 0.6667, "recall": 0.5, "tp": 2, "fp": 1, "fn": 2}
    assert (m["n"], m["accuracy"], m["no_answer"], m["macro_recall"]) == (6, 0.3333, 1, 0.25)
    assert m["confusion"]["incomplete"] == {NO_ANSWER: 1, "premature_done": 1}


def _load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("eval_verifier", BENCH)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_harness_end_to_end_with_a_scripted_responder(tmp_path: Path, capsys: Any) -> None:
    """The responder knows every label and makes four deliberate kinds of mistake: it misses every
    scope_creep case, calls one premature_done case incomplete, flags one clean case as goal_drift,
    and answers one misread_output case with prose."""
    cases = load_cases(CASES)
    tiers = Options.parse({"base_url": "http://x/v1", "model": "m"}).tiers
    answers: dict[str, Any] = {}
    for c in cases:
        _ctx, step = case_steps(c)
        key = render_step(step, tiers[c["tier"]].max_chars, pending=c["phase"] == "before")
        label = c["label"]
        if label == "scope_creep":
            reply: Any = verdict(True)
        elif c["id"] == "coding-premature-1":
            reply = verdict(False, "incomplete")
        elif c["id"] == "research-ok-1":
            reply = verdict(False, "goal_drift")
        elif c["id"] == "data-misread-1":
            reply = "I am not sure about this one."
        else:
            reply = verdict(label == "none", label)
        assert key not in answers, f"two cases render the same step: {c['id']}"
        answers[key] = reply

    def responder(req: FakeRequest) -> Any:
        return answers[req.step_to_check]

    ep = FakeEndpoint(responder, tokens=250)
    out = tmp_path / "report.json"
    report = _load_bench().main(["--base-url", ep.base_url, "--model", "judge", "--json", str(out)],
                                transport=ep.transport)
    assert ep.calls == len(cases) == 53
    pc = report["per_class"]
    assert (pc["scope_creep"]["precision"], pc["scope_creep"]["recall"]) == (None, 0.0)
    assert (pc["none"]["precision"], pc["none"]["recall"]) == (round(12 / 17, 4), round(12 / 13, 4))
    assert (pc["goal_drift"]["precision"], pc["goal_drift"]["recall"]) == (round(5 / 6, 4), 1.0)
    assert (pc["incomplete"]["precision"], pc["incomplete"]["recall"]) == (round(5 / 6, 4), 1.0)
    assert (pc["premature_done"]["precision"], pc["premature_done"]["recall"]) == (1.0, 0.8)
    assert (pc["misread_output"]["precision"], pc["misread_output"]["recall"]) == (1.0, 0.8)
    for c in ("contradiction", "hallucinated_state", "wrong_parameters"):
        assert (pc[c]["precision"], pc[c]["recall"]) == (1.0, 1.0)
    assert report["no_answer"] == 1 and report["answered"] == 52 and report["tokens"] == 52 * 250
    assert report["accuracy"] == round(45 / 53, 4)
    assert report["detection"] == {"precision": round(34 / 35, 4), "recall": 0.85, "tp": 34, "fp": 1, "fn": 6}
    (miss,) = [r for r in report["cases"] if r["predicted"] == NO_ANSWER]
    assert miss["id"] == "data-misread-1" and "no JSON verdict" in miss["problem"]
    saved = json.loads(out.read_text())
    assert saved["per_class"] == pc and saved["endpoint"]["model"] == "judge"
    printed = capsys.readouterr().out
    assert "scope_creep" in printed and "detection precision 0.9714" in printed
    # the L3 cases went to L3's settings (longer context), the L2 ones to L2's
    l3 = [r for r in ep.requests if "final answer" in r.prompt]
    assert l3 and all(r.body["max_tokens"] == 300 for r in ep.requests)


def test_bad_label_is_rejected(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"id": "x", "task": "t", "check": {"text": "hi"}, "phase": "after", "label": "vibes"}))
    with pytest.raises(ValueError, match="label 'vibes'"):
        load_cases(p)
