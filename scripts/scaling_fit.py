"""The fits behind scaling.py's predictions, with their uncertainty, and the check of
each prediction against what was measured.

Two linear models, each fitted by weighted least squares on the relative error (so small
times weigh as much as large ones) with the parameters' covariance s²·(XᵀWX)⁻¹:

    Allreduce, ring:  t = 2(p−1)·α + 2(p−1)/p · n·β      at one rank count p (one fit per p)
    compute:          t = α_c + β_c·b                      one rank, shard b, every repeat a point

α_c is what a step costs whatever its shard (the update of every parameter, Python, the
call overheads): small shards are not free. A prediction's band is the 2.5–97.5%
percentile of the model evaluated at parameters drawn from those covariances
(:func:`draws`); a measured point is a median over its repeats with a bootstrap 95%
interval (:func:`median_interval`). A measurement outside the band widened by
:data:`MARGIN` is a miss (:func:`is_miss`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

MARGIN = 0.15  # a measurement this far (relative) beyond the prediction's band is a miss
MONOTONE_TOLERANCE = 0.3  # a larger message may be this much faster before a sweep is refused
DRAWS = 2000  # parameter draws behind a prediction's band
Z95 = 1.96


@dataclass(frozen=True)
class LinearFit:
    """Two nonnegative coefficients with their covariance, fitted through ``points`` points."""

    coef: tuple[float, float]
    cov: tuple[tuple[float, float], tuple[float, float]]
    points: int

    def stderr(self) -> tuple[float, float]:
        return (math.sqrt(max(self.cov[0][0], 0.0)), math.sqrt(max(self.cov[1][1], 0.0)))

    def interval(self, i: int) -> tuple[float, float]:
        """The normal 95% interval of coefficient i (its lower end not below 0)."""
        half = Z95 * self.stderr()[i]
        return max(self.coef[i] - half, 0.0), self.coef[i] + half

    def draws(self, k: int = DRAWS, seed: int = 0) -> np.ndarray:
        """k parameter pairs from the fit's normal approximation, clipped at 0: shape (k, 2)."""
        rng = np.random.default_rng(seed)
        cov = np.array(self.cov)
        if not cov.any():
            return np.tile(np.array(self.coef), (k, 1))
        out = rng.multivariate_normal(self.coef, cov, size=k, method="eigh")
        return np.clip(out, 0.0, None)


def weighted_fit(design: np.ndarray, y: np.ndarray) -> LinearFit:
    """Least squares of y ≈ design·c on the relative error Σ((design·c − y)/y)², c ≥ 0.

    A coefficient that comes out negative is pinned at 0 (with no variance) and the
    other refitted. The covariance is s²·(AᵀA)⁻¹ of the scaled system A = design/y,
    s² the residual variance (0 with no degree of freedom left).
    """
    a = design / y[:, None]
    ones = np.ones_like(y)
    free = [0, 1]
    coef = np.linalg.lstsq(a, ones, rcond=None)[0]
    if coef.min() < 0:
        free = [int(np.argmax(coef))]
        column = a[:, free[0]]
        coef = np.zeros(2)
        coef[free[0]] = max(0.0, float(column @ ones / (column @ column)))
    dof = len(y) - len(free)
    rss = float(np.sum((a @ coef - ones) ** 2))
    cov = np.zeros((2, 2))
    if dof > 0:
        sub = a[:, free]
        cov[np.ix_(free, free)] = rss / dof * np.linalg.pinv(sub.T @ sub)
    c0, c1 = map(float, coef)
    return LinearFit((c0, c1), ((cov[0, 0], cov[0, 1]), (cov[1, 0], cov[1, 1])), len(y))


def fit_allreduce(points: Sequence[tuple[float, int, float]]) -> LinearFit:
    """α (s) and β (s/B) of the ring model from (bytes, ranks, seconds) at one rank count."""
    rows = [(n, p, t) for n, p, t in points if p > 1 and t > 0]
    if len(rows) < 2:
        raise ValueError("need Allreduce timings at 2 or more sizes on more than one rank")
    if len({p for _, p, _ in rows}) != 1:
        raise ValueError("fit one rank count at a time: each model line has its own α, β")
    n, p, t = (np.array(column, dtype=float) for column in zip(*rows, strict=True))
    return weighted_fit(np.column_stack([2 * (p - 1), 2 * (p - 1) / p * n]), t)


def fit_compute(points: Sequence[tuple[float, float]]) -> LinearFit:
    """α_c (s per step) and β_c (s per sample) from (shard b, seconds per step) at 1 rank."""
    rows = [(b, t) for b, t in points if t > 0]
    if len({b for b, _ in rows}) < 2:
        raise ValueError("need 1-rank step times at 2 or more shard sizes to fit α_c, β_c")
    b, t = (np.array(column, dtype=float) for column in zip(*rows, strict=True))
    return weighted_fit(np.column_stack([np.ones_like(b), b]), t)


def monotone_problem(rows: Sequence[tuple[int, float]], ranks: int) -> str:
    """Why a sweep's (bytes, seconds) cannot be fitted, or "" if it can.

    An Allreduce of more bytes is never cheaper in the model; a sweep where one is faster
    than a smaller message by more than :data:`MONOTONE_TOLERANCE` measured noise (the
    host descheduled a rank), not the network.
    """
    slowest, slowest_bytes = 0.0, 0
    for nbytes, seconds in sorted(rows):
        if seconds < (1 - MONOTONE_TOLERANCE) * slowest:
            return (
                f"the Allreduce sweep at {ranks} ranks is not monotone: {nbytes:,} B took "
                f"{seconds * 1e6:.2f} µs, less than {1 - MONOTONE_TOLERANCE:.0%} of the "
                f"{slowest * 1e6:.2f} µs of {slowest_bytes:,} B"
            )
        if seconds > slowest:
            slowest, slowest_bytes = seconds, nbytes
    return ""


def median_interval(
    values: Sequence[float], resamples: int = 4000, seed: int = 0
) -> tuple[float, float, float]:
    """The median and the percentile-bootstrap 95% interval of the median (seeded)."""
    a = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    medians = np.median(a[rng.integers(0, a.size, size=(resamples, a.size))], axis=1)
    low, high = np.quantile(medians, [0.025, 0.975])
    return float(np.median(a)), float(low), float(high)


def ratio_interval(
    top: Sequence[float], bottom: Sequence[float], resamples: int = 4000, seed: int = 1
) -> tuple[float, float, float]:
    """median(top)/median(bottom) and the bootstrap 95% interval, both resampled."""
    a, b = np.asarray(top, dtype=float), np.asarray(bottom, dtype=float)
    rng = np.random.default_rng(seed)
    ma = np.median(a[rng.integers(0, a.size, size=(resamples, a.size))], axis=1)
    mb = np.median(b[rng.integers(0, b.size, size=(resamples, b.size))], axis=1)
    low, high = np.quantile(ma / mb, [0.025, 0.975])
    return float(np.median(a) / np.median(b)), float(low), float(high)


def band(model: Callable[[np.ndarray, np.ndarray], np.ndarray], *fits: LinearFit) -> tuple:
    """(point, low, high) of ``model(compute, network)``, each argument an (k, 2) array of
    parameters: at the fits' estimates, and the 2.5–97.5% percentiles over their draws."""
    point = float(model(*(np.array([f.coef]) for f in fits))[0])
    values = model(*(f.draws(seed=i) for i, f in enumerate(fits)))
    low, high = np.quantile(values, [0.025, 0.975])
    return point, float(min(low, point)), float(max(high, point))


def is_miss(measured: float, low: float, high: float, margin: float = MARGIN) -> bool:
    """True when ``measured`` lies outside [low·(1 − margin), high·(1 + margin)]."""
    return not low * (1 - margin) <= measured <= high * (1 + margin)
