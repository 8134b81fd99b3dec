"""Diagnostic: AUROC at steps 5 and 10 of each sequence-distance input alone, and of the task prior,
computed as at learn time (a run's own group excluded from its references). It reads outcomes to
describe the data only; nothing here feeds a model.

Usage: uv run python bench/learning/sequence_features_alone.py PATH FORMAT EMBEDDER SPLIT
  e.g. .../gpt-4o-airline.json.gz tau-bench hashing task
"""

from __future__ import annotations

import sys

import numpy as np
from immunity.learning.data import collect, read_runs
from immunity.learning.evaluate import auroc
from immunity.learning.learn import LearnConfig, build_prior, sequence_inputs
from immunity.learning.sequences import SEQUENCE_NAMES


def au(x, y):
    return auroc(x[y == 1], x[y == 0])


path, fmt, emb, split = sys.argv[1:5]
items = read_runs([path], fmt)
runs, _ = collect(items, split=split, embedder_spec={"plugin": emb})
lab = [r for r in runs if r.outcome is not None and r.n > 0]
prior = build_prior(lab, LearnConfig())
_refs, feats = sequence_inputs(lab, [r.group for r in lab], prior, 5)
for k in (5, 10):
    alive = [r for r in lab if r.n >= k]
    y = np.asarray([r.outcome for r in alive])
    row = [f"{n} {au(np.asarray([feats[r.run_id][k - 1, i] for r in alive]), y):.3f}" for i, n in enumerate(SEQUENCE_NAMES)]
    pr = np.asarray([prior.prior(r.task_vec, exclude=r.task_key) for r in alive])
    print(f"{path.split('/')[-2]} {emb} step {k} (f={int(y.sum())}, s={int((1 - y).sum())}): " + ", ".join(row)
          + f", task_prior {au(pr, y):.3f}")
