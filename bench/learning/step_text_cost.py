"""Per-step cost of scoring a step by its text's nearest training steps (the prototype in
``step_text_neighbours.py``): embedding the step text, then the k = 10 nearest rows of a bank of
4,096 training steps (float32, unit rows) and the similarity-weighted failed share.

Usage: uv run python bench/learning/step_text_cost.py TAU_PATH SWE_PATH

The texts are real step texts of the dev data (1,000 sampled steps per set, built as the
prototype builds them). Prints medians and p95 over those steps, repeated 3 times (the median of
the 3 medians), with the load average and this process's CPU time.
"""

from __future__ import annotations

import os
import random
import sys
import time
from typing import Any

import numpy as np
from immunity.learning.data import read_runs
from immunity.vectors import HashingEmbedder

sys.path.insert(0, os.path.dirname(__file__))
from step_text_neighbours import BANK, K_NEIGHBOURS, step_text  # noqa: E402


def _times(fn: Any, args: list[Any]) -> tuple[float, float]:
    out = []
    for a in args:
        t = time.perf_counter()
        fn(a)
        out.append((time.perf_counter() - t) * 1000)
    return float(np.median(out)), float(np.percentile(out, 95))


def main() -> None:
    tau, swe = sys.argv[1:3]
    rnd = random.Random(0)
    texts = []
    for path, fmt in ((tau, "tau-bench"), (swe, "mini-swe-agent")):
        steps = [step_text(s) for it in read_runs([path], fmt) for s in it.steps]
        texts += rnd.sample(steps, 1000)
    print(f"{len(texts)} step texts, median length {int(np.median([len(t) for t in texts]))} chars")
    embedders: list[tuple[str, Any]] = [("hashing", HashingEmbedder())]
    try:
        from immunity_static import StaticEmbedder

        embedders.append(("static", StaticEmbedder()))
    except (ImportError, FileNotFoundError):
        pass
    rng = np.random.default_rng(0)
    for name, emb in embedders:
        d = emb.dimension
        bank = rng.normal(size=(BANK, d)).astype(np.float32)
        bank /= np.linalg.norm(bank, axis=1, keepdims=True)
        ys = (rng.random(BANK) < 0.4).astype(np.float32)
        vecs = [emb.embed([t])[0] for t in texts[:200]]

        def knn(v: np.ndarray, bank: np.ndarray = bank, ys: np.ndarray = ys) -> float:
            s = bank @ v
            top = np.argpartition(-s, K_NEIGHBOURS - 1)[:K_NEIGHBOURS]
            w = np.maximum(s[top], 0.0)
            tot = float(w.sum())
            return float((w * ys[top]).sum() / tot) if tot > 0 else 0.0

        e_runs, k_runs = [], []
        for _ in range(3):
            e_runs.append(_times(lambda t, emb=emb: emb.embed([t]), texts))
            k_runs.append(_times(knn, vecs * 5))
        e = sorted(e_runs)[1]
        k = sorted(k_runs)[1]
        print(f"{name} (d={d}): embed step text median {e[0]:.4f} ms, p95 {e[1]:.4f} ms; "
              f"nearest {K_NEIGHBOURS} of {BANK} median {k[0]:.4f} ms, p95 {k[1]:.4f} ms; "
              f"sum of medians {e[0] + k[0]:.4f} ms")
    print(f"load average {os.getloadavg()[0]:.2f} (2 cores), CPU time {time.process_time():.1f} s")


if __name__ == "__main__":
    main()
