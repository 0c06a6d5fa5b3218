"""The built-in Gradient Update Schedules (MATH.md), and ``make_schedule`` by name or path.

Each rule's ``_step`` is a few in-place NumPy passes (the reference arithmetic); the
built-in rules but the normalized step also name a one-pass C kernel that does the same
operations with the same bits, and θ −= step with them (``apply``: engine/fused.py,
fused_updates.c). The base class, its state handling and how to write your own rule are in
:mod:`distnn.engine.update_schedule`.

The rules pass their hyper-parameters to the ufuncs as 0-d arrays of the gradient's dtype
(:func:`scalar`), made once, and the per-step factors (bias corrections, the learning
rate) as 0-d arrays refilled each step. A ufunc takes a 0-d array in about half the time
of a Python float; the bits are the same, because NumPy casts a Python float operand to
the array's dtype before the operation exactly as filling a 0-d array does
(tests/test_schedules_bits.py compares every rule with the previous implementation).
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import numpy as np

from distnn.engine.lr_schedules import LRSchedule
from distnn.engine.update_schedule import (
    GradientUpdateSchedule,
    check_eps,
    check_unit,
    scalar,
)
from distnn.errors import DistnnError, one_line

__all__ = [
    "SCHEDULES",
    "SGD",
    "AdaGrad",
    "Adam",
    "GradientUpdateSchedule",
    "Momentum",
    "Nesterov",
    "NormalizedStep",
    "RMSProp",
    "make_schedule",
    "scalar",
]


class NormalizedStep(GradientUpdateSchedule):
    """MATH.md's standard rule: step = α_t · g / ‖g‖, ‖·‖ over the whole vector.

    A zero gradient gives a zero step. g is scaled by max|g_i| before the norm is
    taken, so neither huge nor tiny gradients overflow or underflow to inf/NaN.
    """

    scratch_arrays = ("_scratch",)

    def _make_scalars(self, dtype):
        super()._make_scalars(dtype)
        self._factor = scalar(0, dtype)

    def _step(self, grad, lr, out):
        np.abs(grad, out=out)
        gmax = out.max()
        if gmax == 0:
            out.fill(0)
            return
        np.divide(grad, gmax, out=out)  # |entries| <= 1, the largest is exactly 1
        np.multiply(out, out, out=self._scratch)
        # NumPy's pairwise sum: deterministic, independent of BLAS threading.
        self._factor.fill(lr / math.sqrt(float(self._scratch.sum())))
        np.multiply(out, self._factor, out=out)


class SGD(GradientUpdateSchedule):
    """step = α_t · g."""

    kernel = "sgd"

    def _kernel_scalars(self, lr):
        return (lr,)

    def _step(self, grad, lr, out):
        self._lr.fill(lr)
        np.multiply(grad, self._lr, out=out)


class Momentum(GradientUpdateSchedule):
    """v ← β·v + g;  step = α_t · v,  or with Nesterov  step = α_t · (g + β·v)."""

    state_arrays = ("velocity",)
    kernel = "momentum"

    def __init__(self, lr: float | LRSchedule, beta: float = 0.9, nesterov: bool = False) -> None:
        super().__init__(lr)
        self.beta = check_unit("momentum beta", beta)
        self.nesterov = bool(nesterov)

    def _make_scalars(self, dtype):
        super()._make_scalars(dtype)
        self._beta = scalar(self.beta, dtype)

    def _kernel_scalars(self, lr):
        return float(self._beta), lr, int(self.nesterov)

    def _step(self, grad, lr, out):
        v, beta, c_lr = self.velocity, self._beta, self._lr
        c_lr.fill(lr)
        np.multiply(v, beta, out=v)
        np.add(v, grad, out=v)
        if self.nesterov:
            np.multiply(v, beta, out=out)
            np.add(out, grad, out=out)
            np.multiply(out, c_lr, out=out)
        else:
            np.multiply(v, c_lr, out=out)


class Nesterov(Momentum):
    """``Momentum`` with ``nesterov=True``."""

    def __init__(self, lr: float | LRSchedule, beta: float = 0.9) -> None:
        super().__init__(lr, beta, nesterov=True)


class AdaGrad(GradientUpdateSchedule):
    """G ← G + g²;  step = α_t · g / (√G + ε)   (elementwise)."""

    state_arrays = ("sum_sq",)
    kernel = "adagrad"

    def __init__(self, lr: float | LRSchedule, eps: float = 1e-8) -> None:
        super().__init__(lr)
        self.eps = check_eps(eps)

    def _make_scalars(self, dtype):
        super()._make_scalars(dtype)
        self._eps = scalar(self.eps, dtype)

    def _kernel_scalars(self, lr):
        return float(self._eps), lr

    def _step(self, grad, lr, out):
        G = self.sum_sq
        self._lr.fill(lr)
        np.multiply(grad, grad, out=out)
        np.add(G, out, out=G)
        np.sqrt(G, out=out)
        np.add(out, self._eps, out=out)
        np.divide(grad, out, out=out)
        np.multiply(out, self._lr, out=out)


class RMSProp(GradientUpdateSchedule):
    """s ← ρ·s + (1−ρ)·g²;  step = α_t · g / (√s + ε)   (elementwise)."""

    state_arrays = ("sq_avg",)
    kernel = "rmsprop"

    def __init__(self, lr: float | LRSchedule, rho: float = 0.9, eps: float = 1e-8) -> None:
        super().__init__(lr)
        self.rho = check_unit("rmsprop rho", rho)
        self.eps = check_eps(eps)

    def _make_scalars(self, dtype):
        super()._make_scalars(dtype)
        self._rho, self._one_minus_rho = scalar(self.rho, dtype), scalar(1.0 - self.rho, dtype)
        self._eps = scalar(self.eps, dtype)

    def _kernel_scalars(self, lr):
        return float(self._rho), float(self._one_minus_rho), float(self._eps), lr

    def _step(self, grad, lr, out):
        s = self.sq_avg
        self._lr.fill(lr)
        np.multiply(s, self._rho, out=s)
        np.multiply(grad, grad, out=out)
        np.multiply(out, self._one_minus_rho, out=out)
        np.add(s, out, out=s)
        np.sqrt(s, out=out)
        np.add(out, self._eps, out=out)
        np.divide(grad, out, out=out)
        np.multiply(out, self._lr, out=out)


class Adam(GradientUpdateSchedule):
    """m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
    m̂ = m/(1−β1^k), v̂ = v/(1−β2^k) with k = t+1 (1 at the first step);
    step = α_t · m̂ / (√v̂ + ε).
    """

    state_arrays = ("m", "v")
    kernel = "adam"

    def __init__(
        self,
        lr: float | LRSchedule,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(lr)
        self.beta1 = check_unit("adam beta1", beta1)
        self.beta2 = check_unit("adam beta2", beta2)
        self.eps = check_eps(eps)

    def _make_scalars(self, dtype):
        b1, b2 = self.beta1, self.beta2
        self._b1, self._one_minus_b1 = scalar(b1, dtype), scalar(1.0 - b1, dtype)
        self._b2, self._one_minus_b2 = scalar(b2, dtype), scalar(1.0 - b2, dtype)
        self._eps = scalar(self.eps, dtype)
        self._v_correction, self._m_factor = scalar(1, dtype), scalar(0, dtype)
        constants = (self._b1, self._one_minus_b1, self._b2, self._one_minus_b2, self._eps)
        self._kernel_constants = tuple(map(float, constants))

    def _factors(self, lr: float) -> tuple[float, float]:
        """This step's bias correction of v, and lr times m's: (1 − β2^k, α_t/(1 − β1^k))."""
        k = self.t + 1
        return 1.0 - self.beta2**k, lr / (1.0 - self.beta1**k)

    def _kernel_scalars(self, lr):
        return (*self._kernel_constants, *self._factors(lr))

    def _step(self, grad, lr, out):
        m, v = self.m, self.v
        v_correction, m_factor = self._factors(lr)
        self._v_correction.fill(v_correction)
        self._m_factor.fill(m_factor)
        np.multiply(m, self._b1, out=m)
        np.multiply(grad, self._one_minus_b1, out=out)
        np.add(m, out, out=m)
        np.multiply(v, self._b2, out=v)
        np.multiply(grad, grad, out=out)
        np.multiply(out, self._one_minus_b2, out=out)
        np.add(v, out, out=v)
        np.divide(v, self._v_correction, out=out)  # v̂
        np.sqrt(out, out=out)
        np.add(out, self._eps, out=out)
        np.divide(m, out, out=out)
        np.multiply(out, self._m_factor, out=out)  # α_t · m̂ / (√v̂ + ε)


SCHEDULES: dict[str, type[GradientUpdateSchedule]] = {
    "normalized": NormalizedStep,
    "sgd": SGD,
    "momentum": Momentum,
    "nesterov": Nesterov,
    "adagrad": AdaGrad,
    "rmsprop": RMSProp,
    "adam": Adam,
}


def make_schedule(name_or_path: str, lr: float | LRSchedule) -> GradientUpdateSchedule:
    """A schedule from a ``SCHEDULES`` name or a ``package.module:ClassName`` path.

    Raises ``DistnnError`` (one line naming ``name_or_path``) if it cannot be built.
    """
    spec = name_or_path.strip()
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise DistnnError(f"bad schedule {spec!r}: expected package.module:ClassName")
        try:
            obj: Any = importlib.import_module(module_name)
        except Exception as exc:
            raise DistnnError(f"cannot import schedule {spec!r}: {one_line(exc)}") from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise DistnnError(
                    f"cannot import schedule {spec!r}: {module_name!r} has no attribute {attr!r}"
                )
            obj = getattr(obj, part)
        if not (isinstance(obj, type) and issubclass(obj, GradientUpdateSchedule)):
            raise DistnnError(
                f"schedule {spec!r} is not a subclass of distnn.GradientUpdateSchedule"
            )
        cls = obj
    elif spec.lower() in SCHEDULES:
        cls = SCHEDULES[spec.lower()]
    else:
        raise DistnnError(
            f"unknown schedule {spec!r}; valid names: {', '.join(SCHEDULES)}, "
            "or package.module:ClassName"
        )
    try:
        return cls(lr)
    except Exception as exc:
        raise DistnnError(f"cannot construct schedule {spec!r}: {one_line(exc)}") from None
