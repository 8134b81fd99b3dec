"""The benchmark's statistics on inputs whose answers are known."""

from __future__ import annotations

import math

import pytest
from immunity.bench.stats import mcnemar_exact, paired_bootstrap, wilson


def test_wilson_matches_the_textbook_values() -> None:
    # Wilson 95% interval for 5/10 and 0/10 (z = 1.96), as tabulated by Newcombe (1998)
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=1e-4)


def test_wilson_edge_cases() -> None:
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(11, 10)
    lo, hi = wilson(50, 100)
    assert lo < 0.5 < hi and hi - lo < wilson(5, 10)[1] - wilson(5, 10)[0]


def test_paired_bootstrap_on_degenerate_and_known_samples() -> None:
    assert paired_bootstrap([1, 1, 1, 1], [0, 0, 0, 0]) == (1.0, 1.0, 1.0)
    assert paired_bootstrap([1, 0, 1, 0], [1, 0, 1, 0]) == (0.0, 0.0, 0.0)
    with_ = [1.0] * 30 + [0.0] * 10
    without = [0.0] * 10 + [1.0] * 10 + [0.0] * 20
    mean, lo, hi = paired_bootstrap(with_, without, reps=4000, seed=3)
    assert mean == pytest.approx(0.5)
    # half the pairs differ by +1, half by 0: the interval is around 0.5
    assert 0.2 < lo < mean < hi < 0.8
    assert paired_bootstrap(with_, without, reps=4000, seed=3) == (mean, lo, hi)  # deterministic
    with pytest.raises(ValueError):
        paired_bootstrap([1], [1, 0])


def test_mcnemar_exact() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert math.isclose(mcnemar_exact(0, 20), 2 / 2**20)
