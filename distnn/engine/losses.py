"""The cost C of MATH.md and the base case of backprop, ∂C/∂z(L).

Both losses work on a block of rows (samples) and return the SUM of the per-sample
costs C_k; callers divide by the global batch size (MATH.md's convention: the
gradient is that of the mean over the global batch, whatever the number of ranks).
"""

from __future__ import annotations

import numpy as np

from distnn.engine.activations import Activation


class Loss:
    name: str

    def value(self, a: np.ndarray, y: np.ndarray, scratch: np.ndarray) -> float:
        """Σ_k C_k for outputs ``a`` = a(L) and targets ``y``; may overwrite ``scratch``."""
        raise NotImplementedError

    def output_delta(
        self,
        a: np.ndarray,
        y: np.ndarray,
        z: np.ndarray,
        sigma: Activation,
        delta: np.ndarray,
        scratch: np.ndarray,
    ) -> float:
        """Write ∂C_k/∂z(L) of every row k into ``delta``; return Σ_k C_k."""
        raise NotImplementedError


class SquaredLoss(Loss):
    """C_k = ‖a(L) − y‖² (MATH.md, Cost); ∂C_k/∂a(L) = 2 (a(L) − y) (backprop base case)."""

    name = "squared"

    def value(self, a, y, scratch):
        np.subtract(a, y, out=scratch)
        return float(np.vdot(scratch, scratch))

    def output_delta(self, a, y, z, sigma, delta, scratch):
        np.subtract(a, y, out=delta)
        total = float(np.vdot(delta, delta))
        delta *= 2.0
        sigma.scale_by_derivative(delta, z, a, scratch)  # ∂C/∂z = σ̇(z) ⊙ ∂C/∂a
        return total


class CrossEntropyLoss(Loss):
    """C_k = −Σ_i y_i log a(L)_i with a(L) = softmax(z(L)); rows of y sum to 1.

    Softmax and cross-entropy together give ∂C_k/∂z(L) = a(L) − y, so the output
    layer needs no σ̇ of its own.
    """

    name = "cross-entropy"
    _floor = 1e-30  # log(0) would turn a confident mistake into inf, 0·log 0 into NaN

    def value(self, a, y, scratch):
        np.maximum(a, self._floor, out=scratch)
        np.log(scratch, out=scratch)
        return -float(np.vdot(y, scratch))

    def output_delta(self, a, y, z, sigma, delta, scratch):
        np.subtract(a, y, out=delta)
        return self.value(a, y, scratch)


LOSSES: dict[str, Loss] = {cls.name: cls() for cls in (SquaredLoss, CrossEntropyLoss)}


def get_loss(name: str) -> Loss:
    """The loss called ``name``; ValueError listing the valid names otherwise."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r} (choose from {', '.join(LOSSES)})") from None
