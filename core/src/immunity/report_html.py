"""Charts as inline SVG (no script, no network) and the evaluation report built with them.

The chart primitives (:func:`line_chart`, :func:`bar_chart`, :func:`lane_chart`) draw axes with
ticks, axis titles, a title and a legend; optional bands show confidence intervals. The UI
(``immunity-datasette``) uses them too.

:func:`eval_report` is the HTML of ``immunity eval --html``: the figures table, then

- **ROC per k**: for runs still alive at step k, the ROC curve of the risk at step k, with a 95%
  band from a bootstrap over task groups (the true-positive rate at each false-positive rate);
  the diagonal is the chance baseline; the AUROC and its CI are in the legend;
- **risk over steps**: mean risk at each step for failed and successful runs still alive, with 95%
  bands (normal approximation), from 5 runs per point;
- **calibration**: the observed failure rate against the mean risk in ten risk bins, with Wilson
  95% intervals; the diagonal is perfect calibration. The risk is a score: this shows how far it
  is from reading as a probability.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PALETTE = ("#c0392b", "#2471a3", "#27ae60", "#8e44ad", "#d35400", "#16a085", "#7f8c8d", "#b7950b")


@dataclass
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    color: str | None = None
    lo: Sequence[float | None] | None = None
    hi: Sequence[float | None] | None = None
    dashed: bool = False
    markers: bool = False
    err: Sequence[tuple[float, float] | None] = field(default_factory=list)


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-9:
        if t >= lo - step * 1e-9:
            ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt_tick(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if v == int(v):
        return str(int(v))
    return f"{v:.2f}".rstrip("0").rstrip(".")


class _Frame:
    def __init__(self, width: int, height: int, x_range: tuple[float, float], y_range: tuple[float, float],
                 left: int = 62, right: int = 16, top: int = 34, bottom: int = 78):
        self.w, self.h = width, height
        self.l, self.r, self.t, self.b = left, right, top, bottom
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1
        if self.y1 <= self.y0:
            self.y1 = self.y0 + 1

    def x(self, v: float) -> float:
        return self.l + (v - self.x0) / (self.x1 - self.x0) * (self.w - self.l - self.r)

    def y(self, v: float) -> float:
        return self.h - self.b - (v - self.y0) / (self.y1 - self.y0) * (self.h - self.t - self.b)

    def axes(self, title: str, x_label: str, y_label: str, x_ticks: list[float] | None = None,
             x_tick_labels: list[str] | None = None) -> list[str]:
        out = [f"<text class='chart-title' x='{self.w / 2:.0f}' y='20' text-anchor='middle' font-size='14' "
               f"font-weight='bold'>{_esc(title)}</text>",
               f"<line class='axis x-axis' x1='{self.l}' y1='{self.h - self.b}' x2='{self.w - self.r}' "
               f"y2='{self.h - self.b}' stroke='#333'/>",
               f"<line class='axis y-axis' x1='{self.l}' y1='{self.t}' x2='{self.l}' y2='{self.h - self.b}' stroke='#333'/>"]
        for tv in nice_ticks(self.y0, self.y1):
            yy = self.y(tv)
            out.append(f"<line x1='{self.l - 4}' y1='{yy:.1f}' x2='{self.w - self.r}' y2='{yy:.1f}' stroke='#eee'/>"
                       f"<text class='tick' x='{self.l - 7}' y='{yy + 4:.1f}' text-anchor='end' font-size='11'>"
                       f"{_fmt_tick(tv)}</text>")
        xt = x_ticks if x_ticks is not None else nice_ticks(self.x0, self.x1)
        for i, tv in enumerate(xt):
            xx = self.x(tv)
            label = x_tick_labels[i] if x_tick_labels else _fmt_tick(tv)
            out.append(f"<line x1='{xx:.1f}' y1='{self.h - self.b}' x2='{xx:.1f}' y2='{self.h - self.b + 4}' "
                       f"stroke='#333'/><text class='tick' x='{xx:.1f}' y='{self.h - self.b + 17}' text-anchor='middle' "
                       f"font-size='11'>{_esc(label)}</text>")
        out.append(f"<text class='axis-label' x='{(self.l + self.w - self.r) / 2:.0f}' y='{self.h - self.b + 36}' "
                   f"text-anchor='middle' font-size='12'>{_esc(x_label)}</text>")
        cy = (self.t + self.h - self.b) / 2
        out.append(f"<text class='axis-label' x='16' y='{cy:.0f}' text-anchor='middle' font-size='12' "
                   f"transform='rotate(-90 16 {cy:.0f})'>{_esc(y_label)}</text>")
        return out

    def legend(self, items: list[tuple[str, str, bool]]) -> list[str]:
        out: list[str] = []
        x, y = float(self.l), float(self.h - 18)
        for name, color, dashed in items:
            dash = " stroke-dasharray='5 4'" if dashed else ""
            out.append(f"<g class='legend-item'><line x1='{x}' y1='{y - 4}' x2='{x + 18}' y2='{y - 4}' stroke='{color}' "
                       f"stroke-width='3'{dash}/><text x='{x + 23}' y='{y}' font-size='11'>{_esc(name)}</text></g>")
            x += 30 + 6.3 * len(name)
            if x > self.w - 120:
                x, y = self.l, y + 14
        return out


def _svg(width: int, height: int, title: str, body: list[str], cls: str) -> str:
    return (f"<svg class='chart {cls}' role='img' aria-label='{_esc(title)}' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}' xmlns='http://www.w3.org/2000/svg' font-family='sans-serif'>"
            f"<title>{_esc(title)}</title>" + "".join(body) + "</svg>")


def _path(frame: _Frame, xs: Sequence[float], ys: Sequence[float | None]) -> str:
    parts, pen = [], "M"
    for x, y in zip(xs, ys, strict=False):
        if y is None or not math.isfinite(y):
            pen = "M"
            continue
        parts.append(f"{pen}{frame.x(x):.1f},{frame.y(y):.1f}")
        pen = "L"
    return " ".join(parts)


def line_chart(series: list[Series], *, title: str, x_label: str, y_label: str,
               x_range: tuple[float, float] | None = None, y_range: tuple[float, float] | None = (0.0, 1.0),
               width: int = 560, height: int = 360, diagonal: bool = False, cls: str = "line-chart") -> str:
    """Lines with optional CI bands (``lo``/``hi``), markers and error bars (``err``)."""
    xs_all = [x for s in series for x in s.xs]
    ys_all = [y for s in series for y in [*s.ys, *(s.lo or []), *(s.hi or [])] if y is not None]
    if x_range is None:
        x_range = (min(xs_all, default=0.0), max(xs_all, default=1.0))
    if y_range is None:
        lo, hi = min(ys_all, default=0.0), max(ys_all, default=1.0)
        pad = (hi - lo) * 0.05 or 1.0
        y_range = (min(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad)
    f = _Frame(width, height, x_range, y_range)
    body = f.axes(title, x_label, y_label)
    if diagonal:
        body.append(f"<line class='baseline' x1='{f.x(x_range[0]):.1f}' y1='{f.y(y_range[0]):.1f}' "
                    f"x2='{f.x(x_range[1]):.1f}' y2='{f.y(y_range[1]):.1f}' stroke='#999' stroke-dasharray='4 4'/>")
    legend = []
    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        if s.lo is not None and s.hi is not None:
            pts = [(x, lo_, hi_) for x, lo_, hi_ in zip(s.xs, s.lo, s.hi, strict=False) if lo_ is not None and hi_ is not None]
            if len(pts) >= 2:
                poly = [f"{f.x(x):.1f},{f.y(h):.1f}" for x, _, h in pts] + [f"{f.x(x):.1f},{f.y(lo_):.1f}"
                                                                            for x, lo_, _ in reversed(pts)]
                body.append(f"<polygon class='band' points='{' '.join(poly)}' fill='{color}' fill-opacity='0.15' "
                            f"stroke='none'/>")
        d = _path(f, s.xs, s.ys)
        if d:
            dash = " stroke-dasharray='6 4'" if s.dashed else ""
            body.append(f"<path class='series' data-name='{_esc(s.name)}' d='{d}' fill='none' stroke='{color}' "
                        f"stroke-width='2'{dash}/>")
        for j, (x, y) in enumerate(zip(s.xs, s.ys, strict=False)):
            if y is None:
                continue
            if s.err and j < len(s.err) and s.err[j] is not None:
                lo_, hi_ = s.err[j]  # type: ignore[misc]
                body.append(f"<line class='errbar' x1='{f.x(x):.1f}' y1='{f.y(lo_):.1f}' x2='{f.x(x):.1f}' "
                            f"y2='{f.y(hi_):.1f}' stroke='{color}'/>")
            if s.markers:
                body.append(f"<circle class='point' cx='{f.x(x):.1f}' cy='{f.y(y):.1f}' r='3.5' fill='{color}'/>")
        legend.append((s.name, color, s.dashed))
    if diagonal:
        legend.append(("chance / perfect", "#999", True))
    body += f.legend(legend)
    return _svg(width, height, title, body, cls)


def bar_chart(categories: list[str], stacks: dict[str, list[float]], *, title: str, x_label: str, y_label: str,
              colors: dict[str, str] | None = None, width: int = 560, height: int = 320,
              cls: str = "bar-chart") -> str:
    """Stacked bars, one per category."""
    n = max(1, len(categories))
    totals = [sum(v[i] for v in stacks.values()) for i in range(len(categories))]
    top = max(totals, default=1.0) or 1.0
    f = _Frame(width, height, (0.0, float(n)), (0.0, top * 1.08))
    step = max(1, math.ceil(n / 10))
    ticks = [i + 0.5 for i in range(0, n, step)]
    body = f.axes(title, x_label, y_label, x_ticks=ticks, x_tick_labels=[categories[i] for i in range(0, n, step)])
    bw = (f.x(1) - f.x(0)) * 0.7
    base = [0.0] * len(categories)
    legend = []
    for k, (name, vals) in enumerate(stacks.items()):
        color = (colors or {}).get(name) or PALETTE[k % len(PALETTE)]
        for i, v in enumerate(vals):
            if v <= 0:
                continue
            y_top, y_bot = f.y(base[i] + v), f.y(base[i])
            body.append(f"<rect class='bar' data-series='{_esc(name)}' x='{f.x(i + 0.5) - bw / 2:.1f}' y='{y_top:.1f}' "
                        f"width='{bw:.1f}' height='{max(0.5, y_bot - y_top):.1f}' fill='{color}'>"
                        f"<title>{_esc(categories[i])}: {_esc(name)} {v:g}</title></rect>")
            base[i] += v
        legend.append((name, color, False))
    body += f.legend(legend)
    return _svg(width, height, title, body, cls)


def lane_chart(lanes: list[tuple[str, list[tuple[float, str, str]]]], *, title: str, x_label: str,
               width: int = 900, cls: str = "lane-chart") -> str:
    """A timeline: one row per lane, a mark per item ``(x, label, color)`` with the label as tooltip."""
    row_h = 34
    height = 60 + 60 + row_h * max(1, len(lanes))
    xs = [x for _, items in lanes for x, _, _ in items]
    x0, x1 = min([0.0, *xs]), max(xs, default=1.0)
    if x1 - x0 < 1e-9:
        x1 = x0 + 1.0
    f = _Frame(width, height, (x0, x1), (0.0, float(len(lanes))), left=130, bottom=70)
    body = [f"<text class='chart-title' x='{width / 2:.0f}' y='20' text-anchor='middle' font-size='14' "
            f"font-weight='bold'>{_esc(title)}</text>",
            f"<line class='axis x-axis' x1='{f.l}' y1='{f.h - f.b}' x2='{f.w - f.r}' y2='{f.h - f.b}' stroke='#333'/>"]
    for tv in nice_ticks(x0, x1, 8):
        xx = f.x(tv)
        body.append(f"<line x1='{xx:.1f}' y1='{f.t}' x2='{xx:.1f}' y2='{f.h - f.b + 4}' stroke='#eee'/>"
                    f"<text class='tick' x='{xx:.1f}' y='{f.h - f.b + 17}' text-anchor='middle' font-size='11'>"
                    f"{_fmt_tick(tv)}</text>")
    body.append(f"<text class='axis-label' x='{(f.l + f.w - f.r) / 2:.0f}' y='{f.h - f.b + 38}' text-anchor='middle' "
                f"font-size='12'>{_esc(x_label)}</text>")
    for i, (name, items) in enumerate(lanes):
        yy = f.y(len(lanes) - i - 0.5)
        body.append(f"<text class='lane-label' x='{f.l - 8}' y='{yy + 4:.1f}' text-anchor='end' font-size='12'>"
                    f"{_esc(name)}</text><line x1='{f.l}' y1='{yy:.1f}' x2='{f.w - f.r}' y2='{yy:.1f}' "
                    f"stroke='#f0f0f0'/>")
        for x, label, color in items:
            body.append(f"<circle class='mark' cx='{f.x(x):.1f}' cy='{yy:.1f}' r='6' fill='{color}' "
                        f"fill-opacity='0.85'><title>{_esc(label)}</title></circle>")
    return _svg(width, height, title, body, cls)


# ------------------------------------------------------------------------------------------ evaluation plots
def roc_curve(pos: np.ndarray, neg: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """True-positive rate at each false-positive rate in ``grid`` (threshold sweep, step curve)."""
    thresholds = np.unique(np.concatenate([pos, neg, [np.inf]]))[::-1]
    fpr = np.array([(neg >= t).mean() for t in thresholds])
    tpr = np.array([(pos >= t).mean() for t in thresholds])
    fpr = np.concatenate([[0.0], fpr, [1.0]])
    tpr = np.concatenate([[0.0], tpr, [1.0]])
    # for each grid point the best TPR reachable at FPR <= x
    return np.array([tpr[fpr <= x + 1e-12].max() for x in grid])


def _alive(scores: dict[str, Any], labels: dict[str, Any], k: int) -> list[tuple[str, int, float]]:
    return [(labels[r].group, int(labels[r].outcome), float(scores[r].risk[k - 1])) for r in scores
            if r in labels and labels[r].outcome is not None and len(scores[r].risk) >= k]


#: Fewer failed or successful runs alive at k than this: the curve is drawn, marked UNRELIABLE.
MIN_PER_CLASS = 5


def roc_chart(scores: dict[str, Any], labels: dict[str, Any], ks: Sequence[int], *, reps: int = 200,
              seed: int = 0) -> str:
    from immunity.learning.evaluate import auroc

    grid = np.linspace(0, 1, 51)
    rng = np.random.default_rng(seed)
    series = []
    for i, k in enumerate(ks):
        items = _alive(scores, labels, k)
        ys = np.array([y for _, y, _ in items])
        ss = np.array([s for _, _, s in items])
        if len(items) == 0 or ys.sum() == 0 or (ys == 0).sum() == 0:
            continue
        curve = roc_curve(ss[ys == 1], ss[ys == 0], grid)
        auc = auroc(ss[ys == 1], ss[ys == 0]) or 0.0
        groups: dict[str, list[int]] = {}
        for j, (g, _, _) in enumerate(items):
            groups.setdefault(g, []).append(j)
        keys = list(groups)
        boots, aucs = [], []
        for _ in range(reps):
            idx = np.concatenate([groups[keys[t]] for t in rng.integers(0, len(keys), len(keys))])
            by, bs = ys[idx], ss[idx]
            if by.sum() == 0 or (by == 0).sum() == 0:
                continue
            boots.append(roc_curve(bs[by == 1], bs[by == 0], grid))
            aucs.append(auroc(bs[by == 1], bs[by == 0]) or 0.0)
        lo = hi = None
        nf, ns = int(ys.sum()), int((ys == 0).sum())
        flag = "" if min(nf, ns) >= MIN_PER_CLASS else " UNRELIABLE"
        name = f"k={k} (f={nf}, s={ns}, AUROC {auc:.2f}{flag})"
        if len(boots) >= 20:
            b = np.array(boots)
            lo, hi = list(np.percentile(b, 2.5, axis=0)), list(np.percentile(b, 97.5, axis=0))
            name = (f"k={k} (f={nf}, s={ns}, AUROC {auc:.2f} [{np.percentile(aucs, 2.5):.2f}, "
                    f"{np.percentile(aucs, 97.5):.2f}]{flag})")
        series.append(Series(name, list(grid), list(curve), PALETTE[i % len(PALETTE)], lo=lo, hi=hi))
    if not series:
        return "<p class='no-chart'>ROC: no step k has both failed and successful runs alive.</p>"
    return line_chart(series, title="ROC of the risk at step k (runs alive at k), 95% bootstrap bands over tasks",
                      x_label="false-positive rate (successful runs alarmed)",
                      y_label="true-positive rate (failed runs alarmed)", x_range=(0, 1), y_range=(0, 1),
                      diagonal=True, cls="roc-chart", height=400)


def risk_over_steps_chart(scores: dict[str, Any], labels: dict[str, Any], max_steps: int = 40,
                          min_runs: int = 5) -> str:
    series = []
    for name, y, color in (("failed runs", 1, PALETTE[0]), ("successful runs", 0, PALETTE[1])):
        xs, mean, lo, hi = [], [], [], []
        for k in range(max_steps):
            vals = np.array([float(scores[r].risk[k]) for r in scores if r in labels and labels[r].outcome == y
                             and len(scores[r].risk) > k])
            if len(vals) < min_runs:
                continue
            m, se = float(vals.mean()), float(vals.std(ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else 0.0
            xs.append(k)
            mean.append(m)
            lo.append(max(0.0, m - 1.96 * se))
            hi.append(min(1.0, m + 1.96 * se))
        if xs:
            series.append(Series(name, xs, mean, color, lo=lo, hi=hi))
    if not series:
        return "<p class='no-chart'>Risk over steps: fewer than 5 runs at every step.</p>"
    return line_chart(series, title="Mean risk by step (runs still alive), 95% bands",
                      x_label="step", y_label="mean risk", y_range=(0, 1), cls="risk-chart")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def calibration_chart(scores: dict[str, Any], labels: dict[str, Any], ks: Sequence[int], bins: int = 10) -> str:
    series = []
    for i, k in enumerate(ks):
        items = _alive(scores, labels, k)
        if len(items) < 10:
            continue
        xs, ys, err = [], [], []
        for b in range(bins):
            lo_, hi_ = b / bins, (b + 1) / bins
            sel = [(y, s) for _, y, s in items if lo_ <= s < hi_ or (b == bins - 1 and s == 1.0)]
            if len(sel) < 3:
                continue
            n, kf = len(sel), sum(y for y, _ in sel)
            xs.append(float(np.mean([s for _, s in sel])))
            ys.append(kf / n)
            err.append(wilson(kf, n))
        if xs:
            series.append(Series(f"k={k} (n={len(items)})", xs, ys, PALETTE[i % len(PALETTE)], markers=True, err=err))
    if not series:
        return "<p class='no-chart'>Calibration: fewer than 10 runs alive at every k.</p>"
    return line_chart(series, title="Calibration: observed failure rate by risk bin (Wilson 95% intervals)",
                      x_label="mean risk in the bin", y_label="observed failure rate", x_range=(0, 1),
                      y_range=(0, 1), diagonal=True, cls="calibration-chart", height=400)


STYLE = ("body{font-family:sans-serif;max-width:72em;margin:2em auto;color:#222}pre{background:#f6f6f6;padding:1em;"
         "overflow:auto}.charts{display:flex;flex-wrap:wrap;gap:1.5em}.chart{background:#fff;border:1px solid #ddd}")


def eval_report(results: dict[str, dict[str, Any]], scores: dict[str, Any] | None = None,
                labels: dict[str, Any] | None = None, *, reps: int = 200, seed: int = 0) -> str:
    """The evaluation as a self-contained HTML page: the figures table of each result, then the
    ROC per k, risk over steps and calibration charts from the held-out ``scores`` and ``labels``."""
    from immunity.learning.evaluate import table

    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>immunity evaluation</title>",
             f"<style>{STYLE}</style></head><body><h1>immunity evaluation</h1>"]
    ks: list[int] = []
    for name, res in results.items():
        parts.append(f"<h2>{_esc(name)}</h2><pre>{_esc(table(res))}</pre>")
        ks = [int(k) for k in res.get("auroc_alive_at_step", {})] or ks
    if scores is not None and labels is not None:
        ks = ks or [5, 10, 20]
        parts.append("<h2>Charts</h2><p>Scores are held out (computed without the run's outcome); bands are 95% "
                     "intervals. The baseline for ROC is the diagonal (a constant score).</p><div class='charts'>")
        parts.append(roc_chart(scores, labels, ks, reps=reps, seed=seed))
        parts.append(risk_over_steps_chart(scores, labels))
        parts.append(calibration_chart(scores, labels, ks))
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
