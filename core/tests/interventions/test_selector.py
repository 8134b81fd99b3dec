"""The bandit selector through a real runtime: ladder, variants, tolerance, posteriors that update
and persist, auto-disable, determinism."""

from __future__ import annotations

import random
import sqlite3
from typing import Any

import pytest
from click.testing import CliRunner
from immunity import hookimpl
from immunity.cli import build_cli
from immunity.interventions.bandit import Arm, beta_interval, class_key, context_key, thompson_pick
from immunity.interventions.selector import BanditSelector, parse_ladder
from immunity.interventions.variants import VariantCatalog, render
from immunity.models import Event, EventKind, InterventionKind, PatternPack, Severity, Verdict
from immunity.runtime import Runtime
from immunity.testing import FakeRun


class Flag:
    """A verifier that flags every completed tool call named ``flag_me`` with ``error_class``."""

    def __init__(self, error_class: str = "wrong_parameters", hint: str | None = None, at: str = "tool_end",
                 block: bool = False) -> None:
        self.error_class, self.hint, self.at, self.block = error_class, hint, at, block

    @hookimpl
    def immunity_verify(self, event: Event) -> Verdict | None:
        if event.kind.value == self.at and event.tool == "flag_me":
            return Verdict(ok=False, error_class=self.error_class, severity=Severity.WARNING, block=self.block,
                           message="the argument 'x' does not match the record", hint=self.hint,
                           evidence={"argument": "x", "expected": "an id from lookup"})
        return None


def make(tmp: Any = None, **kw: Any) -> Runtime:
    kw.setdefault("store", ":memory:" if tmp is None else str(tmp))
    kw.setdefault("seed", 3)
    # these tests are about the escalating bandit (the ladder); the default, constrained one is in
    # test_bandit_default.py
    kw["bandit"] = {"escalate": True, **kw.get("bandit", {})}
    return Runtime(selector="bandit", **kw)


# ---------------------------------------------------------------------------------------------- maths
def test_beta_interval_matches_known_quantiles() -> None:
    mean, lo, hi = beta_interval(0, 0)
    assert mean == 0.5 and lo == pytest.approx(0.025, abs=1e-9) and hi == pytest.approx(0.975, abs=1e-9)
    mean, lo, hi = beta_interval(1, 1)  # Beta(2, 2): quantiles 0.0943 / 0.9057
    assert lo == pytest.approx(0.094299, abs=1e-5) and hi == pytest.approx(0.905701, abs=1e-5)
    mean, lo, hi = beta_interval(90, 10)
    assert mean == pytest.approx(91 / 102) and lo < mean < hi and hi - lo < 0.15


def test_context_with_few_pulls_borrows_from_the_class_arm() -> None:
    ctx, cls = context_key("coding", "loop", "early", "fake"), class_key("loop")
    arms = {(cls, "good"): Arm(cls, "good", "loop", successes=40, failures=5),
            (cls, "bad"): Arm(cls, "bad", "loop", successes=5, failures=40)}
    rng = random.Random(0)
    picks = [thompson_pick(["bad", "good"], arms, ctx, cls, rng)[0] for _ in range(200)]
    assert picks.count("good") > 190
    # with borrowing switched off the new context has no evidence: a coin flip
    rng = random.Random(0)
    flat = [thompson_pick(["bad", "good"], arms, ctx, cls, rng, borrow=0.0)[0] for _ in range(400)]
    assert 140 < flat.count("good") < 260
    # a context with enough pulls of its own uses them, not the class
    arms[(ctx, "bad")] = Arm(ctx, "bad", "loop", successes=30, failures=0)
    arms[(ctx, "good")] = Arm(ctx, "good", "loop", successes=0, failures=30)
    rng = random.Random(0)
    assert [thompson_pick(["bad", "good"], arms, ctx, cls, rng)[0] for _ in range(50)].count("bad") == 50


# ---------------------------------------------------------------------------------------------- variants
def test_every_common_class_has_three_distinct_styles_and_stable_ids() -> None:
    cat = VariantCatalog.build()
    for cls in ("loop", "no_progress", "repeated_tool_error", "premature_done", "wrong_parameters", "tool_error"):
        vs = [v for v in cat.for_class(cls, None) if v.source == "builtin"]
        assert {v.style for v in vs} >= {"direct", "reflect", "evidence"}
        assert len({v.text for v in vs}) == len(vs)
    assert VariantCatalog.build().for_class("loop", None)[0].variant_id == "loop/direct"
    # a class with no templates of its own still gets three styles around its taxonomy hint
    assert {v.style for v in cat.for_class("goal_drift", None)} == {"direct", "reflect", "evidence"}
    # domain templates only in their domain
    assert any(v.variant_id == "coding:loop/read-first" for v in cat.for_class("loop", "coding"))
    assert not any(v.domain == "coding" for v in cat.for_class("loop", "support"))


def test_render_quotes_the_evidence_and_evaluates_nothing() -> None:
    cat = VariantCatalog.build()
    v = Verdict(ok=False, error_class="wrong_parameters", message="bad id", evidence={"argument": "order_id"})
    text = render(cat.get("wrong_parameters/evidence"), v)
    assert "argument=order_id" in text and "bad id" in text
    from immunity.interventions.variants import Variant

    odd = Variant("x", "loop", "{__class__} {message.__init__} {message}")
    assert render(odd, v) == "{__class__} {message.__init__} bad id"


def test_pack_and_user_variants_join_the_catalogue() -> None:
    pack = PatternPack(name="shop", interventions={"loop": ["[immunity] Shop-specific: check the cart id."]})
    cfg = Runtime(store=None, variants={"loop": ["[immunity] Mine.", {"id": "mine-2", "text": "[immunity] Two."}]}).config
    cat = VariantCatalog.build(cfg, [pack])
    ids = {v.variant_id for v in cat.for_class("loop", None)}
    assert any(i.startswith("pack:shop:loop/") for i in ids)
    assert "mine-2" in ids and any(i.startswith("user:loop/") for i in ids)
    with pytest.raises(ValueError):
        VariantCatalog.build(Runtime(store=None, variants={"loop": [{"nope": 1}]}).config)


# ---------------------------------------------------------------------------------------------- ladder
def test_loop_escalates_hint_block_stop_with_a_clear_final_answer() -> None:
    rt = make()
    try:
        run = FakeRun(rt, task="find the invoice", domain="support")
        kinds = []
        for _ in range(6):
            d = run.tool("search_invoices", {"q": "ACME"}, result="no invoice found")
            kinds.append(d.intervention.kind.value if d.intervention else None)
            if d.stop:
                break
        assert kinds == [None, None, "hint", "block", "stop"]
        assert d.final_answer.startswith("I stopped before finishing this task:")
        assert "search_invoices returned: no invoice found" in d.final_answer
        run.session.end(output=d.final_answer)  # what an adapter does with a stop
        assert run.run.status == "stopped" and run.run.final_answer == d.final_answer
    finally:
        rt.close()


def test_custom_ladder_and_ask_human_before_a_tool_call() -> None:
    rt = make(plugins=[Flag("policy_violation", at="tool_start")],
              ladder={"policy_violation": ["warn", "ask_human", "stop"]})
    try:
        run = FakeRun(rt)
        s = run.session
        first = s.tool_start("flag_me", {"x": 1}, tool_call_id="a")
        assert first.intervention.kind == InterventionKind.WARN and first.ok
        s.tool_end("flag_me", "ok", tool_call_id="a")
        second = s.tool_start("flag_me", {"x": 2}, tool_call_id="b")
        assert second.ask_human and "Should flag_me run?" in second.ask_human
        s.tool_end("flag_me", "ok", tool_call_id="b")
        third = s.tool_start("flag_me", {"x": 3}, tool_call_id="c")
        assert third.stop
    finally:
        rt.close()


def test_ask_human_after_the_fact_becomes_a_hint() -> None:
    rt = make(plugins=[Flag("policy_violation")], ladder={"policy_violation": ["ask_human"]})
    try:
        d = FakeRun(rt).tool("flag_me", {"x": 1})
        assert d.intervention.kind == InterventionKind.HINT and not d.ask_human
    finally:
        rt.close()


def test_bad_ladder_is_refused() -> None:
    with pytest.raises(ValueError, match="explode"):
        parse_ladder({"loop": ["hint", "explode"]})


def test_near_identical_repeats_and_polling_escalate() -> None:
    rt = make(ladder={"loop": ["hint", "block", "stop"]})
    try:
        run = FakeRun(rt)
        got, msgs = [], []
        for i in range(6):
            d = run.tool("read_log", {"offset": 100 + i}, result="no new entries")
            got.append(d.intervention.kind.value if d.intervention else None)
            msgs += [v.message for v in d.verdicts if not v.ok]
            if d.stop:
                break
        assert got == [None, None, "hint", "block", "stop"]
        assert msgs[0] == "nearly the same read_log call 3 times in a row (only numbers or spacing change)"
        # paging through with a new answer each time is reading, not looping
        pager = FakeRun(rt)
        paged = [pager.tool("read_log", {"offset": 100 + i}, result=f"page {i}") for i in range(6)]
        assert not [v for d in paged for v in d.verdicts if not v.ok]
        run2 = FakeRun(rt)
        run2.tool("job_status", {"job": "nightly"}, result="running")
        verdicts = [run2.tool("job_status", {"job": "nightly", "why": w}, result="running").verdicts
                    for w in ("check", "recheck", "poll")]
        classes = {v.error_class for vs in verdicts for v in vs if not v.ok}
        assert classes == {"no_progress"}
        polled = [v for vs in verdicts for v in vs if v.plugin == "loops" and v.error_class == "no_progress"]
        assert polled and "polling job_status" in polled[0].message
    finally:
        rt.close()


# ---------------------------------------------------------------------------------------------- tolerance
def test_never_the_same_hint_twice_in_a_row_and_the_cap() -> None:
    rt = make(plugins=[Flag()], max_interventions=3, cooldown_steps=0)
    try:
        run = FakeRun(rt)
        ivs = [run.tool("flag_me", {"x": i}).intervention for i in range(5)]
        hints = [iv for iv in ivs if iv.kind == InterventionKind.HINT]
        assert len(hints) == 3  # the cap
        assert all(a.text != b.text and a.variant != b.variant for a, b in zip(hints, hints[1:], strict=False))
        assert ivs[3].kind == InterventionKind.WARN and "cap of 3" in ivs[3].source
    finally:
        rt.close()


def test_cooldown_holds_back_a_hint() -> None:
    rt = make(plugins=[Flag()], cooldown_steps=2)
    try:
        run = FakeRun(rt)
        a, b, c = (run.tool("flag_me", {"x": i}).intervention for i in range(3))
        assert a.kind == InterventionKind.HINT and b.kind == InterventionKind.WARN and "cooldown" in b.source
        assert c.kind == InterventionKind.HINT
    finally:
        rt.close()


def test_hint_reaches_the_next_model_call() -> None:
    rt = make(plugins=[Flag()])
    try:
        run = FakeRun(rt)
        iv = run.tool("flag_me", {"x": 1}).intervention
        assert run.model("thinking").inject == [iv.text]
    finally:
        rt.close()


# ---------------------------------------------------------------------------------------------- learning
def _flagged_run(rt: Runtime, outcome: str | None) -> str:
    run = FakeRun(rt, domain="coding")
    run.tool("flag_me", {"x": 1})
    run.end(outcome)
    return run.run.run_id


def test_posteriors_update_and_persist_across_runtimes(tmp_path: Any) -> None:
    db = tmp_path / "runs.db"
    rt = make(db, plugins=[Flag(hint="[immunity] Use the id that lookup returned.")])
    for i in range(6):
        _flagged_run(rt, "success" if i % 3 else "failure")
    rt.close()
    con = sqlite3.connect(db)
    rows = con.execute("select context, variant, successes, failures, pulls from bandit_arms "
                       "where context = 'class=wrong_parameters'").fetchall()
    assert sum(r[2] for r in rows) == 4 and sum(r[3] for r in rows) == 2 and sum(r[4] for r in rows) == 6
    pulls = con.execute("select intervention_id, reward from bandit_pulls").fetchall()
    ivs = {r[0] for r in con.execute("select intervention_id from interventions where kind = 'hint'")}
    assert len(pulls) == 6 and {p[0] for p in pulls} == ivs  # each pull is a delivered intervention
    con.close()
    # a new runtime on the same store starts from those counts and adds to them
    rt2 = make(db, plugins=[Flag()])
    try:
        _flagged_run(rt2, "success")
        sel = rt2.selector
        total = sum(a.successes for (ctx, _), a in sel.bandit.arms.items() if ctx == "class=wrong_parameters")
        assert total == 5
    finally:
        rt2.close()


def test_unknown_outcome_waits_and_a_later_outcome_or_correction_updates(tmp_path: Any) -> None:
    rt = make(tmp_path / "r.db", plugins=[Flag()])
    try:
        run = FakeRun(rt)
        run.tool("flag_me", {"x": 1})
        run.end()  # outcome unknown: nothing learned yet
        arms = rt.selector.bandit.arms
        assert all(a.rewarded == 0 for a in arms.values()) and any(a.pulls for a in arms.values())
        run.session.set_outcome("failure")
        assert sum(a.failures for (c, _), a in arms.items() if c.startswith("class=")) == 1
        run.session.set_outcome("success")  # corrected: the failure is taken back
        cls_arms = [a for (c, _), a in arms.items() if c.startswith("class=")]
        assert sum(a.failures for a in cls_arms) == 0 and sum(a.successes for a in cls_arms) == 1
    finally:
        rt.close()


def test_low_efficacy_variant_is_disabled_and_reported(tmp_path: Any) -> None:
    db = tmp_path / "r.db"
    opts = {"disable_after": 4, "disable_below": 0.3}
    bad = {"wrong_parameters": [{"id": "bad-one", "text": "[immunity] Try harder."}]}
    # trying the new variant alone first (as `immunity replay --variant` / bandit.only allow)
    rt = make(db, plugins=[Flag()], bandit={**opts, "only": ["bad-one"]}, variants=bad)
    try:
        for _ in range(5):
            run = FakeRun(rt)
            assert run.tool("flag_me", {"x": 1}).intervention.variant == "bad-one"
            run.end("failure")
        arm = rt.selector.bandit.arms[("class=wrong_parameters", "bad-one")]
        assert arm.disabled and "below 0.3" in arm.disabled_reason
    finally:
        rt.close()
    rt = make(db, plugins=[Flag()], bandit=opts, variants=bad)  # a new process: the variant stays disabled
    try:
        later = []
        for _ in range(10):
            run = FakeRun(rt)
            later.append(run.tool("flag_me", {"x": 1}).intervention.variant)
            run.end("success")
        assert "bad-one" not in later and len(set(later)) >= 2
    finally:
        rt.close()
    res = CliRunner().invoke(build_cli(), ["interventions", "--store", str(db)], catch_exceptions=False)
    assert res.exit_code == 0
    line = next(ln for ln in res.output.splitlines() if "bad-one" in ln and "all contexts" in ln)
    assert "DISABLED" in line
    js = CliRunner().invoke(build_cli(), ["interventions", "--store", str(db), "--json"], catch_exceptions=False)
    import json

    arms = json.loads(js.output)["arms"]
    bad = next(a for a in arms if a["variant"] == "bad-one" and a["level"] == "class")
    assert bad["disabled"] and bad["ci95"][0] <= bad["mean"] <= bad["ci95"][1] and bad["text"] == "[immunity] Try harder."


def test_same_seed_same_choices() -> None:
    def choices(seed: int) -> list[str | None]:
        rt = make(plugins=[Flag()], seed=seed, cooldown_steps=0)
        try:
            out = []
            for i in range(8):
                run = FakeRun(rt)
                out.append(run.tool("flag_me", {"x": 1}).intervention.variant)
                run.end("success" if i % 2 else "failure")
            return out
        finally:
            rt.close()

    assert choices(11) == choices(11)
    assert len(set(choices(11))) > 1  # it explores


def test_selector_without_a_store_learns_in_memory() -> None:
    sel = BanditSelector(Runtime(store=None).config, None)
    rt = Runtime(store=None, selector="bandit", plugins=[Flag()], seed=1)
    try:
        run = FakeRun(rt)
        run.tool("flag_me", {"x": 1})
        run.end("success")
        assert sum(a.successes for a in rt.selector.bandit.arms.values()) == 2  # context arm + class arm
        assert not rt.selector.bandit.persistent and sel.bandit.store is None
    finally:
        rt.close()


def test_verifier_hint_competes_as_a_variant() -> None:
    rt = make(plugins=[Flag(hint="[immunity] Use the id from lookup.")], cooldown_steps=0, max_interventions=50,
              bandit={"only": ["wrong_parameters/verifier"]})
    try:
        iv = FakeRun(rt).tool("flag_me", {"x": 1}).intervention
        assert iv.variant == "wrong_parameters/verifier" and iv.text == "[immunity] Use the id from lookup."
    finally:
        rt.close()


def test_model_start_verdicts_do_not_double_count_the_ladder() -> None:
    rt = make(plugins=[Flag()])
    try:
        run = FakeRun(rt)
        run.tool("flag_me", {"x": 1})
        ev = Event(kind=EventKind.MODEL_START, messages=[])
        assert rt.selector._level("wrong_parameters", ev, run.state) == 1
        assert rt.selector._level("wrong_parameters", ev, run.state) == 1
    finally:
        rt.close()


class ShopPack:
    """Registers a pattern pack through a plugin given to the runtime only (no entry point)."""

    def __init__(self, path: str) -> None:
        self.path = path

    @hookimpl
    def immunity_register_pattern_packs(self, register: Any) -> None:
        register("shop-runtime-only", self.path)


def test_pack_names_resolve_through_the_runtime_that_built_the_selector(tmp_path: Any) -> None:
    from immunity.learning.packs import save_pack

    path = tmp_path / "shop.json"
    save_pack(PatternPack(name="shop-runtime-only",
                          interventions={"loop": ["[immunity] Shop: the cart id is in the last lookup."]}), path)
    rt = make(plugins=[ShopPack(str(path))], packs=["shop-runtime-only"])
    selector = rt.selector
    assert isinstance(selector, BanditSelector) and selector.runtime is rt
    selector._ensure_loaded(None)
    assert selector.errors == []
    assert selector.catalog is not None
    assert [v.text for v in selector.catalog.for_class("loop", None) if v.source == "pack:shop-runtime-only"] == \
        ["[immunity] Shop: the cart id is in the last lookup."]
    rt.close()

    built_by_hand = BanditSelector(rt.config, None)  # outside a runtime: the installed plugins only
    built_by_hand._ensure_loaded(None)
    assert [e for e in built_by_hand.errors if e.startswith("packs:")]
