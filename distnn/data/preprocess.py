"""What the trainer does to a data set before training: a validation split, standardization.

Both are computed from the data and the seed alone, so every rank derives the same
arrays without communicating, and a resumed run derives them again.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from distnn.data.dataset import Dataset
from distnn.engine.network import standardize_rows
from distnn.errors import DistnnError


class Split(NamedTuple):
    """Rows held out of training: features, targets, classes (None for regression)."""

    x: np.ndarray
    y: np.ndarray
    labels: np.ndarray | None


def split_validation(
    data: Dataset, fraction: float, seed: int, what: str = "--val-fraction"
) -> tuple[Dataset, Split]:
    """(training part, validation part): a seeded random ``fraction`` of the rows held out;
    ``what``: how an error names the option that set the fraction."""
    n_val = round(len(data.x) * fraction)
    if n_val < 1 or n_val >= len(data.x):
        raise DistnnError(
            f"{what} {fraction} of {len(data.x)} training samples leaves "
            f"{n_val} for validation and {len(data.x) - n_val} for training; both need one"
        )
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(data.x))
    val, train = np.sort(order[:n_val]), np.sort(order[n_val:])

    def rows(a: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
        return None if a is None else np.ascontiguousarray(a[idx])

    training = dataclasses.replace(
        data, x=rows(data.x, train), y=rows(data.y, train), labels=rows(data.labels, train)
    )
    return training, Split(rows(data.x, val), rows(data.y, val), rows(data.labels, val))


def fit_standardization(x: np.ndarray, block: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation of ``x`` (constant features get std 1)."""
    total = np.zeros(x.shape[1], np.float64)
    for lo in range(0, len(x), block):
        total += x[lo : lo + block].sum(axis=0, dtype=np.float64)
    mean = total / len(x)
    square = np.zeros(x.shape[1], np.float64)
    for lo in range(0, len(x), block):
        square += ((x[lo : lo + block] - mean) ** 2).sum(axis=0)
    std = np.sqrt(square / len(x))
    std[std == 0] = 1.0
    return mean.astype(x.dtype), std.astype(x.dtype)


def standardize(data: Dataset, mean: np.ndarray, std: np.ndarray) -> Dataset:
    """``data`` with every feature array mapped x ↦ (x − mean) / std (new arrays)."""

    def scaled(x: np.ndarray | None) -> np.ndarray | None:
        return None if x is None else standardize_rows(x, mean, std)

    return dataclasses.replace(data, x=scaled(data.x), x_test=scaled(data.x_test))
