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
    from immunity.learning.evaluate import RunLabel, evaluate
    from immunity.learning.pipeline import scores_from_rows

    for src, (fa, ns, caught, nf) in sorted(counts.items()):
        lo, hi = wilson(fa, ns)
        lo2, hi2 = wilson(caught, nf)
        # AUROC within the source, grouped by task for the bootstrap
        mine = [r for rid, rows in rows_by.items() if str(runs[rid].source) == src for r in rows]
        labels = {rid: RunLabel(rid, outcome_label(runs[rid]), str(runs[rid].task_id or rid))
                  for rid in rows_by if str(runs[rid].source) == src}
        res = evaluate(scores_from_rows(mine), labels, reps=500, seed=0)
        auc = "; ".join(f"AUROC alive at step {k} {v['value']:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
                        for k, v in res["auroc_alive_at_step"].items() if k in ("5", "10") and v.get("value") is not None)
        print(f"{src}: false alarms {fa}/{ns} = {fa / max(ns, 1):.3f} [{lo:.3f}, {hi:.3f}]; recall before the end "
              f"{caught}/{nf} = {caught / max(nf, 1):.3f} [{lo2:.3f}, {hi2:.3f}]; {auc}")


if __name__ == "__main__":
    main()
