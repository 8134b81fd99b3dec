"""Diagnostic: how far apart the first 10 steps of two runs are (the sequence-distance measure), for
runs of the same task with the same outcome, the same task with different outcomes, and different
tasks (tau-bench); and which tools and action types mini-swe-agent runs use (60 runs).

Usage: uv run python bench/learning/sequence_within_task.py DATA_DIR
"""

from __future__ import annotations

import itertools
import sys
from collections import Counter, defaultdict

import numpy as np
from immunity.learning.data import collect, read_runs
from immunity.learning.sequences import SequenceTracker, build_refs

DATA = sys.argv[1]
tau = read_runs([f"{DATA}/tau_bench_airline_gpt4o/gpt-4o-airline.json.gz"], "tau-bench")
runs, _ = collect(tau)
lab = [r for r in runs if r.outcome is not None and r.n >= 10]
refs = build_refs(lab, [], 1)
def dist(i, j, k=10):
    tr = SequenceTracker(refs, [j], [])
    ids = refs.seqs[i]
    out = None
    for t in ids[:k]:
        out = tr.update(t)
    return out[0]
by = defaultdict(list)
for i, r in enumerate(lab):
    by[r.task_key].append(i)
same, diff = [], []
for idx in by.values():
    for a, b in itertools.combinations(idx, 2):
        (same if lab[a].outcome == lab[b].outcome else diff).append(dist(a, b))
other = [dist(a, b) for a, b in zip(range(0, len(lab), 7), range(3, len(lab), 7), strict=False) if lab[a].task_key != lab[b].task_key]
print(f"tau-bench step-10 prefix distance: same task same outcome {np.mean(same):.3f} (n={len(same)}), "
      f"same task different outcome {np.mean(diff):.3f} (n={len(diff)}), different tasks {np.mean(other):.3f} (n={len(other)})")
swe = read_runs([f"{DATA}/swebench_verified_minisweagent_gemini3pro/trajs.jsonl.gz"], "mini-swe-agent")[:60]
sr, _ = collect(swe)
print("SWE-bench tools in 60 runs:", Counter(t for r in sr for t in r.tools).most_common(5),
      "action types:", Counter(a for r in sr for a in r.actions).most_common(8))
