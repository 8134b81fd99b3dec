"""Explain accuracy next to the trivial baselines, on failed runs with a labelled decisive step.

Usage: uv run python bench/learning/explain_baselines.py --format who-and-when PATH [--pack P]

Reads the file once, explains every failed run with a labelled ``failure_step`` (alignment with
successful runs of the same task when the input has them, else the pack's risk with --pack, else
the run's own signals), and prints exact and within-one accuracy with Wilson 95% CIs next to
"always the last step" and "always the first failing step (else the last)".
"""

from __future__ import annotations

import argparse
import time

from immunity.learning.data import collect, outcome_label, read_runs
from immunity.learning.evaluate import wilson
from immunity.learning.explain import explain_run


def _line(name: str, hits: list[bool]) -> str:
    k, n = sum(hits), len(hits)
    lo, hi = wilson(k, n) or (0.0, 0.0)
    return f"{name:<44} {k / n:.3f} ({k}/{n}) [{lo:.3f}, {hi:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--format", default="auto")
    ap.add_argument("--pack", action="append", default=[])
    ap.add_argument("--limit", type=int, default=0)
    a = ap.parse_args()
    t0 = time.perf_counter()
    items = read_runs([a.path], a.format)
    failed = [it for it in items if outcome_label(it.run) == 1 and it.run.failure_step is not None]
    if a.limit:
        failed = failed[: a.limit]
    t1 = time.perf_counter()
    runs, _ = collect(failed)
    res: dict[str, list[bool]] = {k: [] for k in ("explain exact", "explain within one", "last step exact",
                                                  "last step within one", "first failing step exact",
                                                  "first failing step within one", "effect step exact")}
    methods: dict[str, int] = {}
    for it, rd in zip(failed, runs, strict=True):
        fs = int(it.run.failure_step or 0)
        rep = explain_run(it.run.run_id, items, a.pack)
        methods[rep["method"]] = methods.get(rep["method"], 0) + 1
        last = rd.n - 1
        first_fail = next((k for k in range(rd.n) if rd.signals[k, 3] > 0), last)  # SIGNAL_NAMES[3] = last_failed
        res["explain exact"].append(rep["step"] == fs)
        res["explain within one"].append(abs(rep["step"] - fs) <= 1)
        res["effect step exact"].append(rep["effect_step"] == fs)
        res["last step exact"].append(last == fs)
        res["last step within one"].append(abs(last - fs) <= 1)
        res["first failing step exact"].append(first_fail == fs)
        res["first failing step within one"].append(abs(first_fail - fs) <= 1)
    t2 = time.perf_counter()
    print(f"{len(failed)} failed runs with a labelled step; methods {methods}; read {t1 - t0:.1f} s, "
          f"explained in {t2 - t1:.1f} s ({(t2 - t1) / max(len(failed), 1) * 1000:.0f} ms per run)")
    for k, v in res.items():
        print(_line(k, v))


if __name__ == "__main__":
    main()
