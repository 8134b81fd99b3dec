"""False alarms and recall before the end, per source, from held-out step scores.

Usage: uv run python bench/learning/per_source_alarms.py SCORES.jsonl TRACE_FILE...

SCORES.jsonl is ``immunity eval --cv ... --scores-out`` output; the trace files give each run's
source and outcome. A successful run is a false alarm when any of its steps alarmed; a failed run
is caught when a step before its last alarmed (as ``immunity eval`` counts them). 95% Wilson CIs.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = p + z * z / (2 * n)
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (c - h) / d, (c + h) / d


def main() -> None:
    from immunity.learning.data import outcome_label, read_runs

    rows_by: dict[str, list[dict]] = defaultdict(list)
    with open(sys.argv[1], encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            rows_by[r["run_id"]].append(r)
    runs = {it.run.run_id: it.run for it in read_runs(sys.argv[2:], mapping=False, on_problem=lambda _m: None)}
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # false alarms, successes, caught, failures
    for rid, rows in rows_by.items():
        run = runs[rid]
        rows.sort(key=lambda r: r["step"])
        c = counts[str(run.source)]
        label = outcome_label(run)
        if label == 0:
            c[0] += any(r["alarm"] for r in rows)
            c[1] += 1
        elif label == 1:
            c[2] += any(r["alarm"] for r in rows[:-1])
            c[3] += 1
    for src, (fa, ns, caught, nf) in sorted(counts.items()):
        lo, hi = wilson(fa, ns)
        lo2, hi2 = wilson(caught, nf)
        print(f"{src}: false alarms {fa}/{ns} = {fa / max(ns, 1):.3f} [{lo:.3f}, {hi:.3f}]; recall before the end "
              f"{caught}/{nf} = {caught / max(nf, 1):.3f} [{lo2:.3f}, {hi2:.3f}]")


if __name__ == "__main__":
    main()
