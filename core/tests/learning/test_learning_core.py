"""Learning, matching and scoring on synthetic runs through the real runtime."""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import pluggy
import pytest
from immunity import taxonomy as tx
from immunity.learning.data import collect, score_items
from immunity.learning.evaluate import auroc, evaluate, explain_step, wilson
from immunity.learning.learn import (
    LearnConfig,
    assign_folds,
    baseline_threshold,
    compile_predicates,
    divergence,
    learn_model,
    run_evidence,
    threshold_for_far,
)
from immunity.learning.model import logit
from immunity.learning.pipeline import cross_validate, labels_for, score_rows, scores_from_rows
from immunity.learning.sequences import run_features
from immunity.models import Outcome
from immunity.runtime import Runtime
from immunity.testing import FakeRun

hookimpl = pluggy.HookimplMarker("immunity")


def test_features_come_from_the_runtime_replay(runs: list[Any]) -> None:
    data, (embedder, spec, mode) = collect(runs[:3])
    assert [d.n for d in data] == [len(r.steps) for r in runs[:3]]
    d = data[0]
    assert d.numeric.shape[0] == d.n and d.sig_vecs.shape == (d.n, embedder.dimension)
    assert np.allclose(np.linalg.norm(d.sig_vecs, axis=1), 1.0, atol=1e-5)
    # the edit step is an EDIT; the tests step a VERIFY, as the runtime's mapping says
    assert "EDIT" in d.actions and "VERIFY" in d.actions
    assert spec["plugin"] == "hashing" and mode in ("features", "text")


def test_divergence_from_a_successful_run_of_the_same_task(runs: list[Any]) -> None:
    task0 = [r for r in runs if r.run.task_id == "task-1"]
    data, _ = collect(task0)
    failed = [d for d in data if d.outcome == 1][0]
    ok = [d for d in data if d.outcome == 0]
    step, ref, ended, has_ref = divergence(failed, ok)
    assert has_ref and 0 < step < failed.n
    # everything before the divergence is shared with the reference
    assert failed.actions[:step] == [a.split(":")[0] for a in [f"{x}" for x in failed.actions[:step]]]


def test_learning_finds_the_repeated_error_pattern(learned: dict[str, Any]) -> None:
    pack = learned["pack"]
    assert pack.patterns, "no pattern learned"
    classes = {p.error_class for p in pack.patterns}
    assert classes & {tx.REPEATED_TOOL_ERROR, tx.LOOP, tx.TOOL_ERROR}
    top = max(pack.patterns, key=lambda p: p.weight)
    assert top.weight > 0 and top.examples and top.metadata["failed_hits"] >= 2
    assert 0 < pack.threshold < 1
    assert pack.training["failed_runs"] + pack.training["successful_runs"] == len(learned["train"])
    assert pack.model["members"][0]["baseline_steps_threshold"] >= 2


def test_scores_are_blind_to_outcome_labels(learned: dict[str, Any]) -> None:
    test = learned["test"]
    before = score_rows(test, [learned["path"]])
    shuffled = copy.deepcopy(test)
    outcomes = [r.run.outcome for r in shuffled]
    random.Random(3).shuffle(outcomes)
    for r, o in zip(shuffled, outcomes, strict=True):
        r.run.outcome = Outcome.SUCCESS if o == Outcome.FAILURE else Outcome.FAILURE
        r.run.failure_step = 1
    after = score_rows(shuffled, [learned["path"]])
    assert before == after
    assert any(r["alarm"] for r in before)  # the comparison is about real alarms, not all-zero rows


def test_risk_at_step_k_does_not_depend_on_later_steps(learned: dict[str, Any]) -> None:
    test = learned["test"]
    full = score_rows(test, [learned["path"]])
    for k in (0, 2, 4):
        cut = copy.deepcopy(test)
        for r in cut:
            r.steps = r.steps[: k + 1]
        trunc = score_rows(cut, [learned["path"]])
        want = [row for row in full if row["step"] <= k]
        assert trunc == want


def test_live_verifier_raises_a_verdict_with_the_pattern(learned: dict[str, Any]) -> None:
    rt = Runtime(store=":memory:", verifiers=["patterns"], packs=[learned["path"]])
    try:
        run = FakeRun(rt, task="Fix the failing check number 99 in module m3.py")
        run.tool("search_code", {"query": "check 99"}, result="m3.py:99")
        run.tool("edit_file", {"path": "m3.py", "change": "x"}, result="edited")
        verdicts = []
        for _ in range(4):
            d = run.tool("run_tests", {"target": "test_99"}, result=None, error="AssertionError: expected 99 got 100",
                         return_code=1)
            verdicts += [v for v in d.verdicts if v.plugin == "verifier:patterns"]
        risk = run.state.extras["risk"]
        assert 0.0 <= risk <= 1.0
        assert verdicts, f"no alarm; final risk {risk:.3f}, threshold {learned['pack'].threshold:.3f}"
        v = verdicts[0]
        assert not v.ok and v.evidence["risk"] >= learned["pack"].threshold
        assert v.error_class and v.hint
        stored = rt.store.verdicts(run.run.run_id)
        assert any(s.plugin == "verifier:patterns" for s in stored)
    finally:
        rt.close()


def test_batch_evidence_matches_the_live_matcher(learned: dict[str, Any]) -> None:
    """Learning computes pattern evidence in batches; the verifier one step at a time: same numbers."""
    from immunity.learning.matcher import PackMatcher
    from immunity.learning.model import member_from_dict
    from immunity.learning.packs import load_pack, pattern_matrix
    from immunity.plugins import get_plugin_manager

    pack = load_pack(learned["path"])
    member = member_from_dict(pack.model["members"][0], pack.patterns, pattern_matrix(pack), pack.dimension)
    comp = compile_predicates(member.table.vectors, member.table.predicates)
    data, _ = collect(learned["test"])
    rows = score_rows(learned["test"], [learned["path"]])
    matcher = PackMatcher([pack], get_plugin_manager())
    assert matcher.members[0].threshold == member.threshold
    for d, item in zip(data, learned["test"], strict=True):
        ev = run_evidence(d, member.table, comp)
        prior = member.prior.prior(d.task_vec)
        assert member.sequences is not None
        seq = run_features(member.sequences, d.actions, d.tools, member.prior.vectors @ d.task_vec)
        x = np.hstack([d.numeric, ev, np.full((d.n, 1), logit(prior)), seq])
        risk = member.logistic.predict(x)
        live = [r["risk"] for r in rows if r["run_id"] == item.run.run_id]
        assert np.allclose(risk, live, atol=1e-5), (str(np.round(risk, 4)), str(live))


def test_cross_validation_splits_by_task_and_scores_every_run(runs: list[Any]) -> None:
    res = cross_validate(runs, LearnConfig(folds=4, min_successes=5), folds=4)
    assert set(res.scores) == {r.run.run_id for r in runs}
    result = res.evaluate(reps=200)
    assert result["runs"] == len(runs)
    assert result["auroc_alive_at_step"]["5"]["value"] is not None
    assert "baseline_steps_so_far" in result and "false_alarm_rate" in result["model"]
    # the synthetic failures are learnable from their prefixes
    assert result["auroc_alive_at_step"]["5"]["value"] > 0.6


def test_tiny_training_set_is_flagged_unreliable(runs: list[Any]) -> None:
    data, _ = collect(runs[:8])
    model = learn_model(data, LearnConfig(folds=2))
    assert any("unreliable" in w for w in model.warnings)


def test_runs_with_no_outcome_are_not_labels(runs: list[Any]) -> None:
    items = copy.deepcopy(runs[:24])
    for r in items[:12]:
        r.run.outcome = Outcome.UNKNOWN
    data, _ = collect(items)
    assert sum(d.outcome is None for d in data) == 12
    model = learn_model(data, LearnConfig(folds=2, min_successes=2))
    assert model.diagnostics["failed_runs"] + model.diagnostics["successful_runs"] == 12


def test_learning_needs_both_outcomes(runs: list[Any]) -> None:
    data, _ = collect([r for r in runs if r.run.outcome == Outcome.FAILURE][:6])
    with pytest.raises(ValueError, match="failed and successful"):
        learn_model(data, LearnConfig(folds=2))


def test_folds_keep_groups_together() -> None:
    groups = [f"g{i % 7}" for i in range(50)]
    folds = assign_folds(groups, 3)
    for g in set(groups):
        assert len({f for gg, f in zip(groups, folds, strict=True) if gg == g}) == 1
    assert assign_folds(groups, 3) == folds


def test_statistics() -> None:
    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0]), np.array([1.0])) == 0.5
    assert auroc(np.array([0.2, 0.8]), np.array([0.5])) == 0.5
    lo, hi = wilson(0, 50)
    assert lo == 0.0 and 0.06 < hi < 0.08
    assert threshold_for_far([0.9, 0.1, 0.2, 0.3], 0.25) > 0.3
    assert threshold_for_far([0.9, 0.1, 0.2, 0.3], 0.25) <= 0.9
    assert baseline_threshold([10, 5, 7, 3], 0.25) == 8
    assert explain_step(np.array([0.1, 0.1, 0.5, 0.6])) == 2


def test_evaluate_counts_alarms_and_baseline(learned: dict[str, Any]) -> None:
    rows = score_rows(learned["test"], [learned["path"]])
    labels = labels_for(learned["test"], "task", baseline_steps=5)
    res = evaluate(scores_from_rows(rows), labels, reps=100)
    n_f = sum(r.run.outcome == Outcome.FAILURE for r in learned["test"])
    assert res["failed"] == n_f and res["model"]["recall_before_end"]["n"] == n_f
    alarmed_success = {r["run_id"] for r in rows if r["alarm"]} & {
        r.run.run_id for r in learned["test"] if r.run.outcome == Outcome.SUCCESS}
    assert res["model"]["false_alarm_rate"]["k"] == len(alarmed_success)
    long_success = sum(1 for r in learned["test"] if r.run.outcome == Outcome.SUCCESS and len(r.steps) >= 5)
    assert res["baseline_steps_so_far"]["false_alarm_rate"]["k"] == long_success


def test_scoring_never_blocks_or_changes_the_run(learned: dict[str, Any]) -> None:
    item = copy.deepcopy(learned["test"][0])
    same = item.steps[-2]
    item.steps = item.steps[:-1] + [copy.deepcopy(same) for _ in range(7)] + item.steps[-1:]
    for i, s in enumerate(item.steps):
        s.index = i
    scored = list(score_items([item], [learned["path"]]))
    assert len(scored[0].scores) == len(item.steps)


class _BlockEverything:
    """A plugin whose verifier asks to block every tool call (like a strict domain check)."""

    @hookimpl
    def immunity_verify(self, event: Any, step: Any) -> Any:
        from immunity.models import EventKind, Verdict

        if event.kind == EventKind.TOOL_START:
            return Verdict(ok=False, error_class="policy_violation", block=True, message="blocked")
        return None


def test_scoring_observes_even_when_a_plugin_would_block(learned: dict[str, Any]) -> None:
    items = learned["test"][:3]
    plain = [s.scores for s in score_items(items, [learned["path"]])]
    strict = [s.scores for s in score_items(items, [learned["path"]], plugins=[_BlockEverything()])]
    assert [len(s) for s in strict] == [len(r.steps) for r in items]
    assert [[x.risk for x in s] for s in strict] == [[x.risk for x in s] for s in plain]


class _RegistersPack:
    """Registers a pack name only on the runtime it is given to (no entry point)."""

    def __init__(self, path: str) -> None:
        self.path = path

    @hookimpl
    def immunity_register_pattern_packs(self, register: Any) -> None:
        register("synthetic-runtime-only", self.path)


def test_the_patterns_verifier_resolves_packs_through_its_runtime(learned: dict[str, Any]) -> None:
    from immunity.errors import PackError
    from immunity.learning.matcher import PatternsVerifier

    rt = Runtime(store=":memory:", verifiers=["patterns"], packs=["synthetic-runtime-only"],
                 plugins=[_RegistersPack(learned["path"])])
    try:
        run = FakeRun(rt, task="Fix the failing check number 99 in module m3.py")
        run.tool("search_code", {"query": "check 99"}, result="m3.py:99")
        assert 0.0 <= run.state.extras["risk"] <= 1.0
        assert not run.run.metadata.get("plugin_errors")
    finally:
        rt.close()
    by_hand = PatternsVerifier(rt.config)  # no runtime: only installed plugins can name packs
    with pytest.raises(PackError, match="synthetic-runtime-only"):
        _ = by_hand.matcher
