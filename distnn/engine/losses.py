"""The cost C of MATH.md and the base case of backprop, ∂C/∂z(L).

Both losses work on a block of rows (samples) and return the SUM of the per-sample
costs C_k; callers divide by the global batch size (MATH.md's convention: the
gradient is that of the mean over the global batch, whatever the number of ranks).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from distnn.engine.activations import Activation

if TYPE_CHECKING:
    from distnn.engine.bound_layers import BoundLayers


@lru_cache(maxsize=64)
def constant(value: float, dtype: np.dtype) -> np.ndarray:
    """``value`` as a read-only 0-d array of ``dtype``: a ufunc takes it faster than a float.

    The same scale (1/B) comes back every step, so this allocates once per batch size.
    """
    c = np.array(value, dtype)
    c.flags.writeable = False
    return c


def dot_sums(x: np.ndarray, y: np.ndarray, out: np.ndarray) -> float | np.ndarray:
    """Σ x ⊙ y over a block of rows: a float; for stacked pieces (3-D), one per piece.

    Per piece, the rows are flattened and dotted by one BLAS call with that piece's
    length, so each piece's sum is the same bits whichever stack it is computed in.
    """
    if x.ndim == 2:
        return float(np.vdot(x, y))
    k = x.shape[0]
    np.matmul(x.reshape(k, 1, -1), y.reshape(k, -1, 1), out=out[:k])
    return out[:k]


class Loss:
    name: str

    def value(
        self, a: np.ndarray, y: np.ndarray, scratch: np.ndarray, sums: np.ndarray | None = None
    ) -> float | np.ndarray:
        """Σ_k C_k for outputs ``a`` = a(L) and targets ``y``; may overwrite ``scratch``.

        For stacked pieces (3-D blocks) one sum per piece, written to ``sums`` (see
        :func:`dot_sums`).
        """
        raise NotImplementedError

    def output_delta(
        self,
        a: np.ndarray,
        y: np.ndarray,
        z: np.ndarray,
        sigma: Activation,
        delta: np.ndarray,
        scratch: np.ndarray,
        scale: float = 1.0,
        sums: np.ndarray | None = None,
        bound: BoundLayers | None = None,
    ) -> float | np.ndarray:
        """Write ``scale`` · ∂C_k/∂z(L) of every row k into ``delta``; return Σ_k C_k.

        With ``bound`` (the layer kernels bound to these arrays), a kernel may do the
        elementwise chain in one pass, with the same bits.
        """
        raise NotImplementedError


class SquaredLoss(Loss):
    """C_k = ‖a(L) − y‖² (MATH.md, Cost); ∂C_k/∂a(L) = 2 (a(L) − y) (backprop base case)."""

    name = "squared"

    def value(self, a, y, scratch, sums=None):
        np.subtract(a, y, out=scratch)
        return dot_sums(scratch, scratch, sums)

    def output_delta(self, a, y, z, sigma, delta, scratch, scale=1.0, sums=None, bound=None):
        np.subtract(a, y, out=delta)
        total = dot_sums(delta, delta, sums)
        # 2·scale in one pass: exactly (2Δ)·scale, 2 being a power of two
        if bound is None or not bound.scale_output_derivative(delta, a, 2.0 * scale):
            np.multiply(delta, constant(2.0 * scale, delta.dtype), out=delta)
            sigma.scale_by_derivative(delta, z, a, scratch)  # ∂C/∂z = σ̇(z) ⊙ ∂C/∂a
        return total


class CrossEntropyLoss(Loss):
    """C_k = −Σ_i y_i log a(L)_i with a(L) = softmax(z(L)); rows of y sum to 1.

    Softmax and cross-entropy together give ∂C_k/∂z(L) = a(L) − y, so the output
    layer needs no σ̇ of its own.
    """

    name = "cross-entropy"
    _floor = 1e-30  # log(0) would turn a confident mistake into inf, 0·log 0 into NaN

    def value(self, a, y, scratch, sums=None):
        np.maximum(a, self._floor, out=scratch)
        np.log(scratch, out=scratch)
        total = dot_sums(y, scratch, sums)
        if isinstance(total, float):
            return -total
        np.negative(total, out=total)
        return total

    def output_delta(self, a, y, z, sigma, delta, scratch, scale=1.0, sums=None, bound=None):
        if scale == 1.0:
            np.subtract(a, y, out=delta)
        elif bound is None or not bound.scaled_difference(a, y, delta, scale):
            np.subtract(a, y, out=delta)
            np.multiply(delta, constant(scale, delta.dtype), out=delta)
        return self.value(a, y, scratch, sums)


LOSSES: dict[str, Loss] = {cls.name: cls() for cls in (SquaredLoss, CrossEntropyLoss)}


def get_loss(name: str) -> Loss:
    """The loss called ``name``; ValueError listing the valid names otherwise."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r} (choose from {', '.join(LOSSES)})") from None
