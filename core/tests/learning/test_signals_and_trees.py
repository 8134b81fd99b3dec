"""Content signals (core's generic ones) and gradient-boosted trees held as data in a pack."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from immunity.errors import PackError
from immunity.learning.features import FEATURE_NAMES
from immunity.learning.model import Trees, member_from_dict
from immunity.learning.signals import CONTENT_NAMES, ContentTracker, domain_signals
from immunity.models import ActionType, Step
from immunity.runtime import Runtime
from immunity.testing import FakeRun


def _step(act: ActionType, tool: str | None = None, *, result: str | None = None, error: str | None = None,
          text: str | None = None, side_effect: bool = False) -> Step:
    return Step(action_type=act, tool=tool, result=result, error=error, text=text, side_effect=side_effect)


def test_tool_output_lexicon() -> None:
    t = ContentTracker()
    s = t.update(_step(ActionType.EXECUTE, "bash", result="Traceback (most recent call last):\n  File x\n"
                                                           "KeyError: 'a'"))
    assert s["c_traceback"] == 1.0 and s["c_log_tracebacks"] > 0
    s = t.update(_step(ActionType.SEARCH, "http_get", result="HTTP/1.1 404 Not Found"))
    assert s["c_http_error"] == 1.0 and s["c_not_found"] == 1.0 and s["c_traceback"] == 0.0
    s = t.update(_step(ActionType.SEARCH, "search_orders", result="[]"))
    assert s["c_empty_result"] == 1.0
    s = t.update(_step(ActionType.EXECUTE, "bash", error="bash: /etc/x: Permission denied"))
    assert s["c_permission"] == 1.0
    s = t.update(_step(ActionType.SEARCH, "get_user", result='{"name": "Mia"}'))
    assert all(s[k] == 0.0 for k in ("c_traceback", "c_http_error", "c_empty_result", "c_not_found", "c_permission"))
    assert set(s) == set(CONTENT_NAMES)
    # four of the five steps in the window showed a problem (the empty result is not one)
    assert s["c_w_problem_rate"] == pytest.approx(3 / 5)


def test_agent_words_and_changes_before_lookup() -> None:
    t = ContentTracker()
    s = t.update(_step(ActionType.EDIT, "cancel_reservation", result="ok", side_effect=True))
    assert s["c_changes_before_lookup"] == 1.0
    s = t.update(_step(ActionType.RESPOND, text="I'm sorry, I cannot change a basic economy ticket."))
    assert s["c_apology"] == 1.0 and s["c_cannot"] == 1.0 and s["c_agent_negative_rate"] == 1.0
    s = t.update(_step(ActionType.SEARCH, "get_reservation", result="{}"))
    s = t.update(_step(ActionType.EDIT, "update_reservation", result="ok", side_effect=True))
    assert s["c_changes_before_lookup"] == 1.0  # the second change came after a lookup
    s = t.update(_step(ActionType.RESPOND, text="Maybe the flight is full. Let me try another approach instead."))
    assert s["c_hedge"] == 1.0 and s["c_plan_change"] == 1.0 and s["c_apology"] == 0.0
    assert s["c_agent_negative_rate"] == 1.0  # both agent messages were negative


def test_signals_read_a_bounded_slice_of_long_outputs() -> None:
    t = ContentTracker()
    long = "x" * 1_000_000 + "\nTraceback (most recent call last):\nValueError: boom"
    s = t.update(_step(ActionType.EXECUTE, "bash", result=long))
    assert s["c_traceback"] == 1.0  # the tail is read


def test_a_failing_domain_signal_function_is_ignored() -> None:
    def broken(step: Any, state: Any) -> dict[str, float]:
        raise RuntimeError("bug")

    assert domain_signals(broken, _step(ActionType.OTHER), None) == {}
    assert domain_signals(lambda s, st: {"a": 1, "b": float("nan"), "c": "x"}, _step(ActionType.OTHER), None) == {"a": 1.0}


def test_content_signals_reach_the_features_through_the_runtime() -> None:
    rt = Runtime(store=None, verifiers=["patterns"])
    try:
        run = FakeRun(rt, task="fix it")
        run.tool("run", {"cmd": "x"}, result="Traceback (most recent call last):\nValueError: boom")
        view = run.state.extras["patterns"].views[-1]
        assert view.numeric[FEATURE_NAMES.index("c_traceback")] == 1.0
    finally:
        rt.close()


# ------------------------------------------------------------------------------------------ trees
def test_exported_trees_predict_what_scikit_learn_predicts() -> None:
    sk = pytest.importorskip("sklearn.ensemble")
    from immunity.learning.model import trees_from_sklearn

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 6))
    y = ((x[:, 0] > 0.3) ^ (x[:, 1] * x[:, 2] > 0.2)).astype(int)
    clf = sk.HistGradientBoostingClassifier(max_iter=40, max_depth=3, random_state=0, early_stopping=False).fit(x, y)
    trees = trees_from_sklearn(clf)
    xt = rng.normal(size=(200, 6))
    want = clf.predict_proba(xt)[:, 1]
    assert np.allclose(trees.predict(xt), want, atol=1e-9)
    # one row at a time (the per-step path) gives the same numbers
    assert np.allclose([trees.predict(xt[i:i + 1])[0] for i in range(20)], want[:20], atol=1e-9)
    # through JSON and back
    names = [f"f{i}" for i in range(6)]
    back = Trees.from_dict(json.loads(json.dumps(trees.as_dict(names + ["pattern_weight_now"]))))
    assert np.allclose(back.predict(xt), want, atol=1e-6)


def test_trees_that_point_outside_their_arrays_are_refused() -> None:
    d = Trees(feature=np.zeros((1, 3), np.intp), threshold=np.zeros((1, 3)), left=np.asarray([[1, 1, 2]]),
              right=np.asarray([[2, 1, 2]]), value=np.asarray([[0.0, -1.0, 1.0]]), depth=1, baseline=0.0).as_dict(
        ["a"])
    Trees.from_dict(d)
    bad = dict(d, left=[[7, 1, 2]])
    with pytest.raises(PackError):
        Trees.from_dict(bad)
    with pytest.raises(PackError):
        Trees.from_dict(dict(d, value=[[0.0, float("inf"), 1.0]]))


def test_a_trees_pack_scores_through_the_runtime_like_the_batch_path(runs: list[Any], tmp_path: Any) -> None:
    pytest.importorskip("sklearn")
    from immunity.learning.data import collect
    from immunity.learning.learn import LearnConfig, compile_predicates, design, run_evidence
    from immunity.learning.packs import load_pack, pattern_matrix, save_pack
    from immunity.learning.pipeline import build_pack, score_rows
    from immunity.learning.sequences import run_features

    train = [r for r in runs if int(r.run.task_id.split("-")[1]) < 12]
    test = [r for r in runs if int(r.run.task_id.split("-")[1]) >= 12]
    data, emb = collect(train)
    pack, _w = build_pack(data, emb, LearnConfig(folds=4, min_successes=5, model="trees"), name="trees")
    assert pack.model["kind"] == "trees-v1" and "trees" in pack.model["members"][0]
    path = tmp_path / "trees.json"
    save_pack(pack, path)
    loaded = load_pack(path)
    member = member_from_dict(loaded.model["members"][0], loaded.patterns, pattern_matrix(loaded), loaded.dimension)
    assert member.kind == "trees"
    rows = score_rows(test, [str(path)])
    assert len(rows) == sum(len(r.steps) for r in test)
    comp = compile_predicates(member.table.vectors, member.table.predicates)
    test_data, _ = collect(test)
    for d in test_data:
        assert member.sequences is not None
        seq = run_features(member.sequences, d.actions, d.tools, member.prior.vectors @ d.task_vec)
        x = design(d, run_evidence(d, member.table, comp), member.prior.prior(d.task_vec), member.extra_names, seq)
        live = [r["risk"] for r in rows if r["run_id"] == d.run_id]
        assert np.allclose(member.predict(x), live, atol=1e-5)
    # the pack separates the synthetic failures (repeated failing tests) from the successes
    fail = [r["risk"] for r in rows if r["run_id"] in {t.run.run_id for t in test if t.run.outcome == "failure"}]
    ok = [r["risk"] for r in rows if r["run_id"] in {t.run.run_id for t in test if t.run.outcome == "success"}]
    assert np.mean(fail) > np.mean(ok)


def test_a_pack_reads_its_inputs_by_name() -> None:
    """A pack that reads fewer core features (an older version) still lines up by name."""
    from immunity.learning.model import EVIDENCE_NAMES, Logistic, Member, PatternTable, TaskPrior

    names = ["log_steps", "error_rate", *EVIDENCE_NAMES, "coding_syntax_error"]
    lg = Logistic(np.zeros(len(names)), np.ones(len(names)), np.arange(len(names), dtype=float), 0.0)
    m = Member(name="m", threshold=0.5, table=PatternTable([], np.zeros((0, 4), np.float32), np.zeros(0), [], []),
               logistic=lg, prior=TaskPrior(np.zeros((0, 4), np.float32), np.zeros(0), np.zeros(0), [], 0.5),
               extra_names=["coding_syntax_error"], input_names=names)
    numeric = np.arange(len(FEATURE_NAMES), dtype=float) + 100
    x = m.inputs(numeric, 1.0, 2.0, 0, 0.5, {"coding_syntax_error": 7.0})
    assert list(x) == [100.0, 101.0, 1.0, 2.0, 0.0, 0.0, 7.0]


def test_explain_figures_sit_next_to_last_step_and_first_failing_step() -> None:
    from immunity.learning.evaluate import RunLabel, RunScores, evaluate, table

    scores, labels = {}, {}
    for i in range(12):
        risk = np.asarray([0.1, 0.1, 0.6, 0.7, 0.7])  # the largest rise is at step 2
        failed = np.asarray([False, False, False, True, False])  # the first failing step is 3
        scores[f"r{i}"] = RunScores(f"r{i}", risk, risk > 0.9, [None] * 5, ["SEARCH"] * 5, failed)
        labels[f"r{i}"] = RunLabel(f"r{i}", 1, f"g{i}", failure_step=2 if i < 6 else 4)
    res = evaluate(scores, labels, reps=20)
    e = res["explain"]
    assert e["exact"]["k"] == 6 and e["baseline_last_step_exact"]["k"] == 6
    assert e["baseline_first_failing_step_exact"]["k"] == 0 and e["baseline_first_failing_step_within_one"]["k"] == 12
    assert "first failing step" in table(res)
