"""Bootstrap intervals and probability of improvement: reproducibility, coverage and known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from alignbench.reporting.stats import bootstrap_ci, probability_of_improvement


def test_bootstrap_interval_is_reproducible_for_a_seed_and_brackets_the_mean():
    v = [0.31, 0.42, 0.38, 0.29, 0.45]
    a, b = bootstrap_ci(v, seed=3), bootstrap_ci(v, seed=3)
    assert a == b and a.n == 5 and a.mean == pytest.approx(np.mean(v))
    assert min(v) <= a.low < a.mean < a.high <= max(v)
    w = np.random.default_rng(1).normal(size=50)
    assert bootstrap_ci(w, seed=3) == bootstrap_ci(w, seed=3) != bootstrap_ci(w, seed=4)  # the seed matters
    one = bootstrap_ci([0.5])
    assert one.low is None and one.high is None and one.n == 1


def test_bootstrap_interval_covers_the_known_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    hits = 0
    trials = 400
    for t in range(trials):
        sample = rng.normal(1.0, 2.0, size=30)
        ci = bootstrap_ci(sample, n_boot=2000, seed=t)
        hits += ci.low <= 1.0 <= ci.high
    # percentile bootstrap with n = 30 covers a little under 95%; 400 trials: ± ~2.2% standard error
    assert 0.89 <= hits / trials <= 0.99, hits / trials


def test_probability_of_improvement_is_mann_whitney_u_over_pairs():
    x, y = [3.0, 5.0, 7.0], [1.0, 5.0, 6.0, 8.0]
    # pairs x > y: 3>1; 5>1; 7>1, 7>5, 7>6 → 5, ties: 5 = 5 → 0.5; total 12 pairs
    assert probability_of_improvement(x, y) == pytest.approx(5.5 / 12)
    u = mannwhitneyu(x, y, alternative="two-sided").statistic
    assert probability_of_improvement(x, y) == pytest.approx(u / 12)
    assert probability_of_improvement([2, 3], [0, 1]) == 1.0
    assert probability_of_improvement([1, 1], [1, 1]) == 0.5
    with pytest.raises(ValueError):
        probability_of_improvement([], [1])


def test_sign_test_known_answers():
    from alignbench.reporting.stats import sign_test

    # n = 12, 10 better / 2 worse: 2·(C(12,0)+C(12,1)+C(12,2))/2¹² = 2·79/4096
    assert sign_test(10, 2) == pytest.approx(158 / 4096)
    assert sign_test(2, 10) == sign_test(10, 2)
    # n = 6, 4/2: 2·(1+6+15)/64
    assert sign_test(4, 2) == pytest.approx(44 / 64)
    assert sign_test(3, 3) == 1.0 and sign_test(0, 0) == 1.0
    assert sign_test(5, 0) == pytest.approx(2 / 32)
    with pytest.raises(ValueError, match="non-negative"):
        sign_test(-1, 2)
