"""Per-step cost of the learned risk model's new parts: content signals and gradient-boosted trees.

Usage: uv run python bench/learning/step_cost.py   (needs the `learn` extra for the trees)

Prints the median and p95 time of (a) ContentTracker.update on a step with a 50 KB tool output,
(b) the coding domain's signals on the same step, (c) one row through a pack-sized tree model
(150 trees of depth 3, as `learn --model trees` fits), (d) the logistic model, (e) the sequence-distance
tracker (5 successful and 5 failed references of 100 steps, one step of a run) and (f) the ``static``
encoder (immunity-static, when installed) on a 400-character step text, each over 5,000 calls.
The load average and this process's CPU time are printed next to the figures.
"""

from __future__ import annotations

import os
import random
import time

import numpy as np
from immunity.learning.model import fit_logistic, fit_trees
from immunity.learning.sequences import SequenceRefs, SequenceTracker
from immunity.learning.signals import ContentTracker
from immunity.models import ActionType, Step


def _times(fn, n: int = 5000) -> str:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return f"median {float(np.median(out)):.4f} ms, p95 {float(np.percentile(out, 95)):.4f} ms"


def main() -> None:
    out = ("collected 120 items\n" + "x" * 50_000 + "\nTraceback (most recent call last):\nValueError: boom\n"
           "==== 2 failed, 118 passed in 3.1s ====")
    step = Step(action_type=ActionType.VERIFY, tool="bash", arguments={"command": "pytest"}, result=out)
    ct = ContentTracker()
    print(f"content signals, 50 KB output: {_times(lambda: ct.update(step))}")
    try:
        from immunity_coding.signals import signals as coding

        class _S:
            extras: dict = {}

        st = _S()
        print(f"coding signals, 50 KB output:  {_times(lambda: coding(step, st))}")
    except ImportError:
        pass
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 75))
    y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(size=20000) > 0).astype(float)
    w = np.ones(len(y))
    trees = fit_trees(x, y, w)
    lg = fit_logistic(x, y, w)
    row = x[:1]
    print(f"trees ({trees.feature.shape[0]} trees, depth {trees.depth}), one row: {_times(lambda: trees.predict(row))}")
    print(f"logistic, one row:             {_times(lambda: lg.predict(row))}")
    rnd = random.Random(0)
    vocab = [f"A{i}:tool{i}" for i in range(20)]
    refs = SequenceRefs(vocab=vocab, seqs=[[rnd.randrange(20) for _ in range(100)] for _ in range(10)],
                        lengths=np.full(10, 100), outcomes=np.asarray([0] * 5 + [1] * 5), tasks=np.full(10, -1))
    live = [rnd.randrange(20) for _ in range(100)]

    def seq_run() -> None:  # 100 steps of one run: the figure printed is per step
        tr = SequenceTracker(refs, list(range(5)), list(range(5, 10)))
        for t in live:
            tr.update(t)

    per_run = []
    for _ in range(200):
        t0 = time.perf_counter()
        seq_run()
        per_run.append((time.perf_counter() - t0) * 1000 / len(live))
    print(f"sequence distance, one step:   median {float(np.median(per_run)):.4f} ms, "
          f"p95 {float(np.percentile(per_run, 95)):.4f} ms (10 references, averaged over 100-step runs)")
    try:
        from immunity_static import StaticEmbedder

        emb = StaticEmbedder()
        text = ("I have checked the reservation and the flight was cancelled by the airline, so you are "
                "eligible for a full refund to the original payment method. ") * 3
        print(f"static encoder, 400-char text: {_times(lambda: emb.embed([text[:400]]))}")
    except (ImportError, FileNotFoundError):
        pass
    print(f"load average {os.getloadavg()[0]:.1f} (2 cores), CPU time {time.process_time():.1f} s")


if __name__ == "__main__":
    main()
