"""The statistics of a study: intervals over seeds and McCandlish's steps model.

Every point a study plots is a mean over n runs (seeds) with a 95% interval. The
percentile bootstrap resamples the n values with replacement; with n = 3 it can only
ever span the values seen, so :func:`mean_interval` also gives Student's t interval,
which is wider and honest about small n. Both are reported; plots draw the bootstrap's
(the issue's choice) and state n.

McCandlish et al. 2018 (eq. 2.11): a global batch B reaches a target in

    S = S_min · (1 + B_noise / B)

steps. It is linear in 1/B, S = S_min + (S_min·B_noise)·(1/B), so least squares on
(1/B, S) gives S_min (intercept) and B_noise (slope / intercept) in closed form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Student's t, two-sided 95%, by degrees of freedom (beyond 30: the normal's 1.96).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values with its bootstrap and t 95% intervals."""

    n: int
    mean: float
    low: float
    high: float
    t_low: float
    t_high: float


def bootstrap_interval(
    values: Sequence[float], level: float = 0.95, resamples: int = 4000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seeded: the same values give the same
    interval, so a report regenerates byte for byte)."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, a.size, size=(resamples, a.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """Student's t 95% interval of the mean (a zero-width one for a single value)."""
    a = np.asarray(values, dtype=float)
    mean = float(a.mean()) if a.size else math.nan
    if a.size < 2:
        return mean, mean
    t = _T95[a.size - 2] if a.size - 1 <= len(_T95) else 1.96
    half = t * float(a.std(ddof=1)) / math.sqrt(a.size)
    return mean - half, mean + half


def mean_interval(values: Sequence[float]) -> Interval:
    """The mean of ``values`` with both 95% intervals."""
    a = [float(v) for v in values]
    low, high = bootstrap_interval(a)
    t_low, t_high = t_interval(a)
    return Interval(len(a), float(np.mean(a)) if a else math.nan, low, high, t_low, t_high)


@dataclass(frozen=True)
class StepsModel:
    """S = S_min·(1 + B_noise/B), fitted through ``points`` (batch, steps) pairs."""

    s_min: float
    b_noise: float
    points: int

    def steps(self, batch: float) -> float:
        return self.s_min * (1 + self.b_noise / batch)


def fit_steps_model(batches: Sequence[float], steps: Sequence[float]) -> StepsModel | None:
    """Least squares of S on 1/B; None with fewer than two distinct batches or a fit that
    is not the model's shape (S_min ≤ 0 or B_noise < 0: more steps for larger batches)."""
    x = 1.0 / np.asarray(batches, dtype=float)
    y = np.asarray(steps, dtype=float)
    if x.size < 2 or np.unique(x).size < 2:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    if intercept <= 0 or slope < 0:
        return None
    return StepsModel(float(intercept), float(slope / intercept), int(x.size))
