"""End-to-end scoring cost per step, with and without the sequence-distance inputs.

Usage: uv run python bench/learning/scoring_step_cost.py TAU_BENCH_FILE [--format tau-bench]

Learns two packs on the runs of 80% of the tasks (``sequence_k`` 5 and 0, everything else equal),
then replays the other tasks' runs through a scoring runtime (``score_items``: the runtime, the
features, the signature embedding, the index search and the risk model) three times each, and
prints the median CPU time per step of each pack and their difference, with the load average.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from typing import Any

from immunity.learning.data import collect, read_runs, score_items
from immunity.learning.learn import LearnConfig
from immunity.learning.packs import save_pack
from immunity.learning.pipeline import build_pack


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--format", default="tau-bench")
    args = ap.parse_args()
    items = read_runs([args.path], args.format)

    def held_out(it: Any) -> bool:
        key = str(it.run.task_id or it.run.run_id)
        return int(hashlib.sha256(key.encode()).hexdigest(), 16) % 5 == 0

    train = [it for it in items if not held_out(it)]
    test = [it for it in items if held_out(it)]
    runs, emb = collect(train)
    n_steps = sum(len(it.steps) for it in test)
    with tempfile.TemporaryDirectory() as tmp:
        per_step = {}
        for k in (5, 0):
            pack, _ = build_pack(runs, emb, LearnConfig(sequence_k=k), name=f"k{k}")
            path = os.path.join(tmp, f"k{k}.json")
            save_pack(pack, path)
            times = []
            for _ in range(3):
                c0 = time.process_time()
                for _scored in score_items(test, [path]):
                    pass
                times.append((time.process_time() - c0) * 1000 / n_steps)
            per_step[k] = statistics.median(times)
            print(f"sequence_k={k}: {per_step[k]:.3f} ms CPU per step (median of 3; {len(test)} runs, "
                  f"{n_steps} steps; runs {', '.join(f'{t:.3f}' for t in times)})")
    print(f"sequence distance adds {per_step[5] - per_step[0]:+.3f} ms CPU per step end to end; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
