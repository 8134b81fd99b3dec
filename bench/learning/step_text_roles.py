"""Diagnostic (after the figures of ``step_text_neighbours.py``, so not a tuned setting): which steps'
text carries the tau-bench signal of step-text nearest neighbours. For each role (customer turns,
the agent's own messages, tool calls with their outputs), the bank holds only that role's training
steps and a prefix's score is the running mean over its steps of that role (0.5 before the first
one); everything else is as in the prototype (k = 10, bank <= 4,096, 5 folds by task, seed 0).

Usage: uv run python bench/learning/step_text_roles.py TAU_PATH [--cache PREFIX]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np
from immunity.learning.data import read_runs
from immunity.learning.learn import assign_folds

sys.path.insert(0, os.path.dirname(__file__))
from step_text_neighbours import KS, Run, auc_at, embed_all, fmt_auc, knn_scores, make_bank  # noqa: E402


def role(s: Any) -> str:
    if s.agent == "user":
        return "customer"
    return "tool call" if s.tool else "agent message"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tau")
    ap.add_argument("--cache", default="/tmp/step-text-neighbours")
    a = ap.parse_args()
    items = read_runs([a.tau], "tau-bench")
    runs = [Run(it, "task", "tau-bench") for it in items]
    roles = {r.id: np.asarray([role(s) for s in it.steps]) for r, it in zip(runs, items, strict=True)}
    for emb in ("hashing", "static"):
        embed_all(runs, emb, f"{a.cache}-tau-bench")
    fold = assign_folds([r.group for r in runs], 5, 0)
    print("tau-bench, 5 folds by task; steps by role: "
          + ", ".join(f"{x} {sum(int((v == x).sum()) for v in roles.values())}"
                      for x in ("customer", "agent message", "tool call")))
    print(f"{'role, embedder':34s}" + "".join(f"{'k=' + str(k):>26s}" for k in KS))
    for name in ("customer", "agent message", "tool call"):
        for emb in ("hashing", "static"):
            risk: dict[str, np.ndarray] = {}
            for j in range(5):
                train = []
                for r, f in zip(runs, fold, strict=True):
                    if f != j and r.y is not None:
                        keep = roles[r.id] == name
                        sub = Run.__new__(Run)
                        sub.__dict__.update(r.__dict__)
                        sub.n = int(keep.sum())
                        sub.emb = {emb: r.emb[emb][keep]}
                        if sub.n:
                            train.append(sub)
                bank = make_bank(train, emb)
                for r, f in zip(runs, fold, strict=True):
                    if f != j:
                        continue
                    share = knn_scores(r, bank, emb, False)[:, 2]
                    keep = roles[r.id] == name
                    cum = np.cumsum(np.where(keep, share, 0.0))
                    cnt = np.cumsum(keep)
                    risk[r.id] = np.where(cnt > 0, cum / np.maximum(cnt, 1), 0.5)
            row = [fmt_auc(auc_at(runs, risk, k)) for k in KS]
            print(f"{name + ', ' + emb:34s}" + "".join(f"{x:>26s}" for x in row))


if __name__ == "__main__":
    main()
