"""The JSON contract (prompt and parser) and the criticality tiers, without a runtime."""

from __future__ import annotations

import pytest
from immunity.models import ActionType, Severity, Step
from immunity_llm_verifier import ERROR_CLASSES, Options, VerifierConfigError, build_messages, parse_reply
from immunity_llm_verifier.contract import UnparseableReply


def test_plain_json_reply() -> None:
    p = parse_reply('{"ok": false, "error_class": "scope_creep", "severity": "warning", "message": "m", "hint": "h"}')
    assert (p.ok, p.error_class, p.severity, p.message, p.hint) == (False, "scope_creep", Severity.WARNING, "m", "h")


def test_code_fence_and_text_around_it() -> None:
    text = 'Let me think.\n```json\n{"ok": false, "error_class": "Goal drift", "severity": "high"}\n```\nDone.'
    p = parse_reply(text)
    assert p.error_class == "goal_drift" and p.severity == Severity.ERROR and not p.ok


def test_object_in_prose_with_braces_before_it() -> None:
    p = parse_reply('The step {as I see it} is fine: {"ok": "true", "error_class": "none", "confidence": "0.9"}')
    assert p.ok is True and p.error_class is None and p.confidence == 0.9


def test_aliases_and_unknown_classes() -> None:
    assert parse_reply('{"ok": false, "error_class": "hallucination"}').error_class == "hallucinated_state"
    assert parse_reply('{"ok": false, "error_class": "wrong params"}').error_class == "wrong_parameters"
    # a taxonomy class outside the fixed list is kept; an invented one is unclassified
    assert parse_reply('{"ok": false, "error_class": "unsafe_action"}').error_class == "unsafe_action"
    p = parse_reply('{"ok": false, "error_class": "vibes_off"}')
    assert p.error_class == "unclassified" and p.raw_class == "vibes_off"
    # ok missing: decided by the class
    assert parse_reply('{"error_class": "none"}').ok is True
    assert parse_reply('{"error_class": "incomplete"}').ok is False


@pytest.mark.parametrize("text", ["", "The step looks fine to me.", "```json\n{ok: false}\n```", "[1, 2]",
                                  '{"message": "no verdict fields"}'])
def test_unparseable(text: str) -> None:
    with pytest.raises(UnparseableReply):
        parse_reply(text)


def test_prompt_names_every_class_and_marks_verified_steps() -> None:
    ctx = [(Step(index=0, action_type=ActionType.VERIFY, tool="bash", arguments={"command": "pytest"},
                 result="6 passed"), True)]
    step = Step(index=1, action_type=ActionType.EDIT, tool="apply_patch", arguments={"patch": "x" * 5000})
    msgs = build_messages(task="Fix subtract()", context=ctx, step=step, phase="before", max_chars=300)
    system, user = msgs[0]["content"], msgs[1]["content"]
    assert all(c in system for c in ERROR_CLASSES)
    assert "#0 VERIFY [verified] bash" in user and "6 passed" in user
    assert "(not executed yet)" in user and "more]" in user  # long arguments are clipped
    assert len(user) < 1500


def _step(action: str, **kw: object) -> Step:
    return Step(action_type=ActionType.parse(action), **kw)  # type: ignore[arg-type]


def test_default_tiers() -> None:
    o = Options.parse({"base_url": "http://x/v1", "model": "m"})
    assert o.tier_of(_step("DONE")) == "L3"
    assert o.tier_of(_step("EDIT", side_effect=True)) == "L3"
    assert o.tier_of(_step("EDIT", data={"destructive": True})) == "L3"
    assert o.tier_of(_step("EDIT")) == "L2"
    assert o.tier_of(_step("EXECUTE")) == "L2"
    assert o.tier_of(_step("SEARCH", data={"needs_verification": True})) == "L2"
    for action in ("SEARCH", "PLAN", "RESPOND", "VERIFY", "OTHER"):
        assert o.tier_of(_step(action)) == "L1"
    assert o.tier_of(None) == "L1"
    # L2 is cheap, L3 thorough
    assert o.tiers["L2"].context_steps < o.tiers["L3"].context_steps


def test_configured_tiers_and_per_tier_models() -> None:
    o = Options.parse({"base_url": "http://x/v1", "model": "small", "timeout_s": 3,
                       "tiers": {"L2": {"actions": ["EXECUTE", "RESPOND"]},
                                 "L3": {"model": "big", "side_effects": False, "timeout_s": 20,
                                        "pre_execution": True}}})
    assert o.tier_of(_step("RESPOND")) == "L2" and o.tier_of(_step("EDIT")) == "L1"
    assert o.tier_of(_step("EDIT", side_effect=True)) == "L1"
    assert (o.tiers["L2"].model, o.tiers["L3"].model) == ("small", "big")
    assert (o.tiers["L2"].timeout_s, o.tiers["L3"].timeout_s) == (3, 20)
    assert o.pre_execution
    custom = Options.parse({"base_url": "http://x/v1", "model": "m",
                            "criticality": lambda step, run, state: "L3" if step.tool == "pay" else None})
    assert custom.tier_of(_step("SEARCH", tool="pay")) == "L3"
    assert custom.tier_of(_step("SEARCH", tool="look")) == "L1"


@pytest.mark.parametrize("raw, words", [
    ({"model": "m"}, "neither base_url"),
    ({"base_url": "http://x/v1"}, "names no model"),
    ({"base_url": "http://x/v1", "model": "m", "tiers": {"L4": {}}}, "unknown tier"),
    ({"base_url": "http://x/v1", "model": "m", "tiers": {"L2": {"modle": "x"}}}, "unknown option"),
    ({"base_url": "http://x/v1", "model": "m", "timeout_s": 0}, "positive"),
])
def test_bad_options_are_named(raw: dict, words: str) -> None:
    with pytest.raises(VerifierConfigError, match=words):
        Options.parse(raw)
