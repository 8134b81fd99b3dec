"""Per-step cost of the learned risk model's new parts: content signals and gradient-boosted trees.

Usage: uv run python bench/learning/step_cost.py   (needs the `learn` extra for the trees)

Prints the median and p95 time of (a) ContentTracker.update on a step with a 50 KB tool output,
(b) the coding domain's signals on the same step, (c) one row through a pack-sized tree model
(150 trees of depth 3, as `learn --model trees` fits) and (d) the logistic model, each over 5,000 calls.
"""

from __future__ import annotations

import time

import numpy as np
from immunity.learning.model import fit_logistic, fit_trees
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


if __name__ == "__main__":
    main()
