"""Statistics for the benchmark: Wilson score intervals for rates, a paired bootstrap interval and
an exact McNemar test for with-vs-without differences on the same seeds. Pure Python."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

__all__ = ["mcnemar_exact", "paired_bootstrap", "wilson"]


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n`` (95% by default). ``(0, 1)`` when n = 0."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must be between 0 and n={n}")
    phat = k / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_bootstrap(with_: Sequence[float], without: Sequence[float], *, reps: int = 2000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """Mean paired difference ``mean(with_ - without)`` and its percentile bootstrap interval,
    resampling pairs (seeds) with replacement. Deterministic for a given ``seed``."""
    if len(with_) != len(without):
        raise ValueError("paired samples must have the same length")
    n = len(with_)
    if n == 0:
        return (0.0, 0.0, 0.0)
    diffs = [a - b for a, b in zip(with_, without, strict=True)]
    mean = sum(diffs) / n
    rng = random.Random(seed)
    stats = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(reps))
    alpha = (1 - level) / 2
    lo = stats[min(reps - 1, max(0, int(math.floor(alpha * reps))))]
    hi = stats[min(reps - 1, max(0, int(math.ceil((1 - alpha) * reps)) - 1))]
    return (mean, lo, hi)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: ``b`` pairs where only the first
    arm succeeded, ``c`` where only the second did (a binomial test of b against n = b + c, p = 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)
