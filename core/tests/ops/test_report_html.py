"""The SVG charts and the evaluation report's plots (ROC per k with bands, risk over steps,
calibration), from held-out scores of a synthetic population with a known signal."""

from __future__ import annotations

import numpy as np
from immunity.learning.evaluate import RunLabel, RunScores
from immunity.report_html import Series, bar_chart, eval_report, line_chart, nice_ticks, roc_curve, wilson


def _population(n=60, seed=0):
    rng = np.random.default_rng(seed)
    scores, labels = {}, {}
    for i in range(n):
        failed = i % 2
        length = int(rng.integers(6, 25))
        drift = 0.02 if failed else -0.005
        risk = np.clip(0.4 + drift * np.arange(length) + rng.normal(0, 0.08, length), 0, 1)
        rid = f"r{i}"
        scores[rid] = RunScores(rid, risk, risk > 0.7)
        labels[rid] = RunLabel(rid, failed, group=f"task{i % 12}")
    return scores, labels


def test_ticks_and_intervals():
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 37) == [0, 10, 20, 30]
    lo, hi = wilson(5, 10)
    assert 0.23 < lo < 0.24 and 0.76 < hi < 0.77
    grid = np.linspace(0, 1, 11)
    perfect = roc_curve(np.array([0.9, 0.8]), np.array([0.1, 0.2]), grid)
    assert perfect[0] == 1.0 and perfect[-1] == 1.0
    chance = roc_curve(np.array([0.5]), np.array([0.5]), grid)
    assert chance[0] == 0.0 and chance[-1] == 1.0


def test_charts_have_axes_titles_and_legends():
    svg = line_chart([Series("a", [0, 1, 2], [0.1, None, 0.3], lo=[0, 0, 0.2], hi=[0.2, 0.3, 0.4])],
                     title="T", x_label="step", y_label="risk")
    assert svg.startswith("<svg") and "<title>T</title>" in svg and ">step</text>" in svg and ">risk</text>" in svg
    assert "class='band'" in svg and "class='series'" in svg and "legend-item" in svg
    assert svg.count(" M") >= 1   # the missing point breaks the line
    bars = bar_chart(["x", "y"], {"ok": [1, 2], "bad": [0, 3]}, title="B", x_label="cat", y_label="n")
    assert bars.count("class='bar'") == 3


def test_eval_report_plots_roc_per_k_risk_over_steps_and_calibration():
    scores, labels = _population()
    result = {"runs": 60, "failed": 30, "successful": 30, "unknown_outcome": 0, "groups": 12, "warnings": [],
              "auroc_alive_at_step": {"5": {"value": 0.6, "ci95": [0.5, 0.7], "failed_alive": 30,
                                            "successful_alive": 30, "baseline": 0.5, "reliable": True}},
              "model": {}, "baseline_steps_so_far": {}}
    page = eval_report({"evaluation": result}, scores, labels, reps=50)
    assert "class='chart roc-chart'" in page and "class='chart risk-chart'" in page
    assert "class='chart calibration-chart'" in page
    assert "false-positive rate" in page and "observed failure rate" in page and "mean risk" in page
    assert "k=5 (f=30, s=30, AUROC" in page and "class='band'" in page
    # failed runs' risk rises: the failed line ends above the successful one at step 5
    assert "failed runs" in page and "successful runs" in page
