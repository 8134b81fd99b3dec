"""Evaluation of per-step risk scores against outcomes, next to a trivial baseline.

Inputs are the rows ``immunity score`` writes (risk and alarm after each step) plus, per run, its
outcome, its group (task or repository, for the bootstrap) and its labelled failure step if any.
The outcome is only read here, never while scoring.

Figures:

- **AUROC at step k** (k = 5, 10, 20): among runs that have at least k steps, how well the risk
  after k steps separates runs that will fail from runs that will succeed. 95% CI by bootstrap
  over groups. The steps-so-far baseline is the same for every run alive at step k, so its AUROC
  there is 0.5 by construction.
- **Recall before the end**: failed runs with an alarm at a step before their last one; **recall
  at or before the failure step** where runs carry a labelled failure step. Wilson 95% CIs.
- **False-alarm rate**: successful runs with an alarm at any step. Wilson 95% CI.
- **Median lead**: steps from the first alarm to the end (or to the failure step).
- **Per class**: the class of the first alarm in failed and in successful runs.
- **Explain accuracy**: the step of the largest risk increase against the labelled failure step,
  exact and within one step, next to simple baselines.
- The same alarm figures for the **steps-so-far baseline**: alarm once a run has taken as many
  steps as all but ``target_far`` of the successful training runs.
"""

from __future__ import annotations

import html
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KS: tuple[int, ...] = (5, 10, 20)
#: Below this many runs of either class a figure is flagged unreliable.
MIN_RELIABLE = 10


@dataclass
class RunScores:
    run_id: str
    risk: np.ndarray
    alarm: np.ndarray
    classes: list[str | None] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    #: which steps failed (an error or a failed check); empty when the scores did not say
    failed: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


@dataclass
class RunLabel:
    run_id: str
    outcome: int | None
    group: str
    failure_step: int | None = None
    baseline_steps: int | None = None


# ------------------------------------------------------------------------------------------ statistics
def auroc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count one half)."""
    if len(pos) == 0 or len(neg) == 0:
        return None
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    if n == 0:
        return None
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


def bootstrap_auroc(items: list[tuple[str, int, float]], reps: int = 1000, seed: int = 0) -> tuple[float, float] | None:
    """95% percentile interval of the AUROC, resampling groups with replacement."""
    by_group: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for g, y, s in items:
        by_group[g].append((y, s))
    groups = list(by_group)
    if len(groups) < 2:
        return None
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(reps):
        pick = rng.integers(0, len(groups), len(groups))
        ys, ss = [], []
        for gi in pick:
            for y, s in by_group[groups[gi]]:
                ys.append(y)
                ss.append(s)
        ya, sa = np.asarray(ys), np.asarray(ss)
        a = auroc(sa[ya == 1], sa[ya == 0])
        if a is not None:
            vals.append(a)
    if len(vals) < reps // 2:
        return None
    return (round(float(np.percentile(vals, 2.5)), 4), round(float(np.percentile(vals, 97.5)), 4))


def explain_step(risk: np.ndarray) -> int:
    """The step whose risk rose the most (the earliest on ties); step 0 only if nothing rose."""
    if len(risk) < 2:
        return 0
    d = np.diff(risk)
    best = int(np.argmax(d))
    return best + 1 if d[best] > 0 else 0


# ------------------------------------------------------------------------------------------ figures
def _first(alarm: np.ndarray) -> int | None:
    idx = np.flatnonzero(alarm)
    return int(idx[0]) if len(idx) else None


def _alarm_figures(runs: list[tuple[RunLabel, np.ndarray, list[str | None]]]) -> dict[str, Any]:
    n_f = n_s = caught = fa = 0
    lab_n = lab_caught = 0
    leads: list[int] = []
    leads_fs: list[int] = []
    per_class: dict[str, Counter[str]] = defaultdict(Counter)
    for lab, alarm, classes in runs:
        first = _first(alarm)
        n = len(alarm)
        if lab.outcome == 1:
            n_f += 1
            if first is not None and first <= n - 2:
                caught += 1
                leads.append(n - 1 - first)
            if lab.failure_step is not None:
                lab_n += 1
                if first is not None and first <= lab.failure_step:
                    lab_caught += 1
                    leads_fs.append(lab.failure_step - first)
            if first is not None:
                per_class[(classes[first] if classes else None) or "-"]["failed"] += 1
        elif lab.outcome == 0:
            n_s += 1
            if first is not None:
                fa += 1
                per_class[(classes[first] if classes else None) or "-"]["success"] += 1
    out: dict[str, Any] = {
        "recall_before_end": _prop(caught, n_f),
        "false_alarm_rate": _prop(fa, n_s),
        "median_lead_steps": float(np.median(leads)) if leads else None,
    }
    if lab_n:
        out["recall_at_or_before_failure_step"] = _prop(lab_caught, lab_n)
        out["median_lead_to_failure_step"] = float(np.median(leads_fs)) if leads_fs else None
    out["first_alarm_class"] = {c: {"failed": v["failed"], "success": v["success"],
                                    "precision": round(v["failed"] / (v["failed"] + v["success"]), 4)}
                                for c, v in sorted(per_class.items())}
    return out


def _prop(k: int, n: int) -> dict[str, Any]:
    return {"value": round(k / n, 4) if n else None, "k": k, "n": n, "ci95": wilson(k, n),
            "reliable": n >= MIN_RELIABLE}


def evaluate(scores: dict[str, RunScores], labels: dict[str, RunLabel], *, ks: tuple[int, ...] = KS,
             reps: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Every figure, for the scores and for the steps-so-far baseline."""
    common = [rid for rid in scores if rid in labels and len(scores[rid].risk)]
    lab = [labels[r] for r in common]
    n_f = sum(1 for x in lab if x.outcome == 1)
    n_s = sum(1 for x in lab if x.outcome == 0)
    result: dict[str, Any] = {
        "runs": len(common), "failed": n_f, "successful": n_s,
        "unknown_outcome": sum(1 for x in lab if x.outcome is None),
        "groups": len({x.group for x in lab}),
        "labelled_failure_step": sum(1 for x in lab if x.outcome == 1 and x.failure_step is not None),
        "warnings": [],
    }
    if n_f < MIN_RELIABLE or n_s < MIN_RELIABLE:
        result["warnings"].append(
            f"only {n_f} failed and {n_s} successful runs: the figures are unreliable (fewer than {MIN_RELIABLE} "
            f"of a class)")
    auc: dict[str, Any] = {}
    for k in ks:
        items = [(labels[r].group, int(labels[r].outcome or 0), float(scores[r].risk[k - 1])) for r in common
                 if labels[r].outcome is not None and len(scores[r].risk) >= k]
        ys = np.asarray([y for _, y, _ in items])
        ss = np.asarray([s for _, _, s in items])
        a = auroc(ss[ys == 1], ss[ys == 0]) if len(items) else None
        nf, ns = int((ys == 1).sum()) if len(items) else 0, int((ys == 0).sum()) if len(items) else 0
        auc[str(k)] = {"value": None if a is None else round(a, 4),
                       "ci95": bootstrap_auroc(items, reps, seed) if a is not None else None,
                       "failed_alive": nf, "successful_alive": ns, "baseline": 0.5 if a is not None else None,
                       "reliable": min(nf, ns) >= MIN_RELIABLE}
    result["auroc_alive_at_step"] = auc
    model_runs = [(labels[r], scores[r].alarm, scores[r].classes) for r in common]
    result["model"] = _alarm_figures(model_runs)
    base_runs: list[tuple[RunLabel, np.ndarray, list[str | None]]] = []
    for r in common:
        t = labels[r].baseline_steps
        n = len(scores[r].risk)
        alarm = np.asarray(np.arange(1, n + 1) >= t) if t is not None else np.zeros(n, bool)
        base_runs.append((labels[r], alarm, list[str | None](["steps_so_far"] * n)))
    result["baseline_steps_so_far"] = _alarm_figures(base_runs)
    result["baseline_steps_so_far"].pop("first_alarm_class", None)
    # explain: decisive step vs labels
    ex = [(int(labels[r].failure_step or 0), scores[r].risk) for r in common
          if labels[r].outcome == 1 and labels[r].failure_step is not None]
    if ex:
        exact = sum(explain_step(rk) == fs for fs, rk in ex)
        near = sum(abs(explain_step(rk) - fs) <= 1 for fs, rk in ex)
        first_alarm = [(_first(scores[r].alarm), labels[r].failure_step) for r in common
                       if labels[r].outcome == 1 and labels[r].failure_step is not None]
        first_edit = [(next((i for i, a in enumerate(scores[r].actions) if a == "EDIT"), None), labels[r].failure_step)
                      for r in common if labels[r].outcome == 1 and labels[r].failure_step is not None]
        lab_scores: list[tuple[RunScores, int]] = [(scores[r], int(labels[r].failure_step or 0)) for r in common
               if labels[r].outcome == 1 and labels[r].failure_step is not None]
        last = [(len(sc.risk) - 1, fs) for sc, fs in lab_scores]
        first_fail = [(next((i for i, f in enumerate(sc.failed) if f), len(sc.risk) - 1), fs) for sc, fs in lab_scores]
        result["explain"] = {
            "runs": len(ex),
            "baseline_last_step_exact": _prop(sum(a == fs for a, fs in last), len(ex)),
            "baseline_last_step_within_one": _prop(sum(abs(a - fs) <= 1 for a, fs in last), len(ex)),
            "baseline_first_failing_step_exact": _prop(sum(a == fs for a, fs in first_fail), len(ex)),
            "baseline_first_failing_step_within_one": _prop(sum(abs(a - fs) <= 1 for a, fs in first_fail), len(ex)),
            "baseline_first_edit_exact": _prop(sum(a == fs for a, fs in first_edit if a is not None), len(ex)),
            "exact": _prop(exact, len(ex)),
            "within_one": _prop(near, len(ex)),
            "baseline_first_step_exact": _prop(sum(fs == 0 for fs, _ in ex), len(ex)),
            "baseline_first_alarm_exact": _prop(sum(a == fs for a, fs in first_alarm if a is not None), len(ex)),
            "baseline_uniform_random_exact": round(float(np.mean([1 / len(rk) for _, rk in ex])), 4),
            "baseline_uniform_random_within_one": round(float(np.mean([min(3, len(rk)) / len(rk) for _, rk in ex])),
                                                         4),
        }
    return result


# ------------------------------------------------------------------------------------------ rendering
def _fmt(p: Any) -> str:
    if p is None:
        return "n/a"
    if isinstance(p, dict):
        if p.get("value") is None:
            return "n/a"
        ci = p.get("ci95")
        s = f"{p['value']:.3f}"
        if "k" in p:
            s += f" ({p['k']}/{p['n']})"
        if ci:
            s += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
        if p.get("reliable") is False:
            s += " UNRELIABLE"
        return s
    return str(p)


def table(result: dict[str, Any], title: str = "") -> str:
    """A readable table of :func:`evaluate`'s result."""
    lines = []
    if title:
        lines.append(title)
    lines.append(f"runs {result['runs']} (failed {result['failed']}, successful {result['successful']}, "
                 f"unknown {result['unknown_outcome']}), groups {result['groups']}")
    for w in result.get("warnings", []):
        lines.append(f"WARNING: {w}")
    lines.append(f"{'figure':<38} {'model':<34} {'baseline (steps so far)':<34}")
    for k, a in result["auroc_alive_at_step"].items():
        tag = f"AUROC alive at step {k} (f={a['failed_alive']},s={a['successful_alive']})"
        lines.append(f"{tag:<38} {_fmt(a):<34} {('0.500 (constant)' if a['baseline'] is not None else 'n/a'):<34}")
    m, b = result["model"], result["baseline_steps_so_far"]
    for key, label in [("recall_before_end", "recall before the end"),
                       ("recall_at_or_before_failure_step", "recall at/before failure step"),
                       ("false_alarm_rate", "false-alarm rate (successful runs)"),
                       ("median_lead_steps", "median lead (steps to end)"),
                       ("median_lead_to_failure_step", "median lead to failure step")]:
        if key in m or key in b:
            lines.append(f"{label:<38} {_fmt(m.get(key)):<34} {_fmt(b.get(key)):<34}")
    if m.get("first_alarm_class"):
        lines.append("first alarm by class (failed / successful runs, precision):")
        for c, v in m["first_alarm_class"].items():
            lines.append(f"  {c:<28} {v['failed']:>4} / {v['success']:<4} {v['precision']:.3f}")
    if "explain" in result:
        e = result["explain"]
        lines.append(f"explain (decisive step, {e['runs']} labelled failures): exact {_fmt(e['exact'])}, "
                     f"within one {_fmt(e['within_one'])}")
        lines.append(f"  baselines: first EDIT step exact {_fmt(e['baseline_first_edit_exact'])}; step 0 exact "
                     f"{_fmt(e['baseline_first_step_exact'])}; first alarm exact "
                     f"{_fmt(e['baseline_first_alarm_exact'])}; uniform random exact "
                     f"{e['baseline_uniform_random_exact']:.3f}, within one {e['baseline_uniform_random_within_one']:.3f}")
        if "baseline_last_step_exact" in e:
            lines.append(f"  baselines: last step exact {_fmt(e['baseline_last_step_exact'])}, within one "
                         f"{_fmt(e['baseline_last_step_within_one'])}; first failing step (else the last) exact "
                         f"{_fmt(e['baseline_first_failing_step_exact'])}, within one "
                         f"{_fmt(e['baseline_first_failing_step_within_one'])}")
    return "\n".join(lines)


def html_report(results: dict[str, dict[str, Any]], curves: dict[str, dict[str, list[float]]] | None = None) -> str:
    """A self-contained HTML report: the tables, and a plot of mean risk by step for failed and
    successful runs (inline SVG, no script)."""
    parts = ["<!doctype html><meta charset='utf-8'><title>immunity evaluation</title>",
             "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}pre{background:#f6f6f6;"
             "padding:1em;overflow:auto}</style><h1>immunity evaluation</h1>"]
    for name, res in results.items():
        parts.append(f"<h2>{html.escape(name)}</h2><pre>{html.escape(table(res))}</pre>")
        if curves and name in curves:
            parts.append(_svg(curves[name]))
    return "\n".join(parts)


def _svg(curve: dict[str, list[float]]) -> str:
    w, h, pad = 600, 220, 30
    n = max((len(v) for v in curve.values()), default=0)
    if n < 2:
        return ""
    out = [f"<svg width='{w}' height='{h}' xmlns='http://www.w3.org/2000/svg'>",
           f"<rect x='{pad}' y='5' width='{w - pad - 5}' height='{h - pad - 5}' fill='none' stroke='#999'/>"]
    colours = {"failed": "#c0392b", "successful": "#2471a3"}
    for label, vals in curve.items():
        pts = " ".join(f"{pad + i * (w - pad - 5) / (n - 1):.1f},{5 + (1 - v) * (h - pad - 5):.1f}"
                       for i, v in enumerate(vals) if v is not None)
        out.append(f"<polyline fill='none' stroke='{colours.get(label, '#333')}' stroke-width='2' points='{pts}'/>")
    out.append(f"<text x='{pad}' y='{h - 8}' font-size='12'>mean risk by step (red: failed runs, blue: "
               f"successful runs; runs still alive), steps 0..{n - 1}</text></svg>")
    return "".join(out)


def mean_curves(scores: dict[str, RunScores], labels: dict[str, RunLabel], max_steps: int = 40) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for label, y in (("failed", 1), ("successful", 0)):
        vals = []
        for k in range(max_steps):
            xs = [float(scores[r].risk[k]) for r in scores if r in labels and labels[r].outcome == y
                  and len(scores[r].risk) > k]
            vals.append(float(np.mean(xs)) if len(xs) >= 5 else None)
        out[label] = [v for v in vals if v is not None]
    return out
