"""Statistics for comparisons over seeds (specs/rewards_metrics.md "Statistics for comparisons").

* Mean with a 95% percentile-bootstrap confidence interval over seeds, using numpy's
  ``default_rng`` with an explicit seed, so that an interval is reproducible. (rliable's own
  bootstrap ignores its ``random_state`` argument, so it is not used.)
* Probability of improvement P(X > Y) + ½·P(X = Y) = U / (n_x·n_y), with U the Mann-Whitney
  statistic of X against Y (Agarwal et al. 2021, "Deep RL at the edge of the statistical
  precipice").
* Paired sign test against the base model: every run evaluates its final model on the same images
  (prompt, noise) as the base model, so per image the final value is better, worse or tied. The
  exact two-sided sign test gives the probability, under "no change", of a split at least as
  uneven as the one seen (ties dropped; Dixon & Mood 1946).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values and its bootstrap interval (None with fewer than 2 values)."""

    mean: float
    low: float | None
    high: float | None
    n: int


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, n_boot: int = 10_000,
                 seed: int = 0) -> Interval:
    """Mean and percentile-bootstrap interval of ``values`` (resampling with replacement, ``n_boot``
    resamples drawn from ``numpy.random.default_rng(seed)``).

    Raises:
        ValueError: no values, or ``confidence`` not in (0, 1).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if x.size < 2:
        return Interval(float(x.mean()), None, None, int(x.size))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(float(x.mean()), float(low), float(high), int(x.size))


def probability_of_improvement(x: Sequence[float], y: Sequence[float]) -> float:
    """P(X > Y) + ½·P(X = Y) over all pairs = Mann-Whitney U / (n_x·n_y), in [0, 1].

    Raises:
        ValueError: an empty sample.
    """
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError("probability_of_improvement needs non-empty samples")
    gt = (a[:, None] > b[None, :]).sum()
    eq = (a[:, None] == b[None, :]).sum()
    return float((gt + 0.5 * eq) / (a.size * b.size))


def sign_test(better: int, worse: int) -> float:
    """Exact two-sided sign test: P(a Binomial(n, ½) split at least as uneven as better/worse),
    n = better + worse (ties are not counted). 1.0 when n = 0.

    p = min(1, 2·Σ_{i ≤ min(better, worse)} C(n, i) / 2ⁿ). Example: 10 better, 2 worse → 0.0386.

    Raises:
        ValueError: a negative count.
    """
    if better < 0 or worse < 0:
        raise ValueError(f"sign_test needs non-negative counts, got {better}, {worse}")
    n = better + worse
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(better, worse) + 1))
    return min(1.0, 2 * tail / 2**n)
