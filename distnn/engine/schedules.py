"""Gradient Update Schedules: turn the global gradient g into the step θ ← θ − step.

See MATH.md, "Gradient Update Schedule". A schedule is called once per training step
with the gradient of the mean cost over the global batch (identical on every rank
after the Allreduce). Its output depends only on the sequence of gradients and its
own state — never on the rank, the clock or unseeded randomness — so every replica
computes bit-identical steps given the same NumPy/BLAS build and thread settings.

Hot path: no array is allocated per call. The step buffer and the state arrays are
allocated on the first call (shape and dtype of the gradient) and all arithmetic is
done in place. The returned array is the schedule's own buffer, overwritten by the
next call: use it (``theta -= step``) before calling again, never keep it.

Writing your own: subclass ``GradientUpdateSchedule``, take ``lr`` as the first
constructor argument, list persistent state arrays in ``state_arrays`` and
throw-away work arrays in ``scratch_arrays`` (both are allocated for you and, for
``state_arrays``, saved by ``state_dict``), and implement ``_step``. Select it with
``make_schedule("package.module:ClassName", lr)``.
"""

from __future__ import annotations

import abc
import importlib
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from distnn.engine.lr_schedules import LRSchedule, as_lr_schedule
from distnn.errors import DistnnError, one_line


def _check_unit(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise DistnnError(f"{name} must be in [0, 1), got {value}")
    return value


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not (math.isfinite(eps) and eps > 0):
        raise DistnnError(f"eps must be a finite number > 0, got {eps}")
    return eps


class GradientUpdateSchedule(abc.ABC):
    """Base class: ``step = schedule(grad)``, then the caller does ``θ -= step``.

    ``t`` is the number of steps taken; the learning rate of a call is
    ``lr_schedule(t)`` read before ``t`` is incremented.
    """

    state_arrays: ClassVar[tuple[str, ...]] = ()  # saved by state_dict, zeros at start
    scratch_arrays: ClassVar[tuple[str, ...]] = ()  # work space, not saved

    def __init__(self, lr: float | LRSchedule) -> None:
        self.lr_schedule: LRSchedule = as_lr_schedule(lr)
        self.t: int = 0
        self._step_buf: np.ndarray | None = None
        self._ready = False
        for name in (*self.state_arrays, *self.scratch_arrays):
            setattr(self, name, None)

    @property
    def lr(self) -> float:
        """The learning rate the next call will use."""
        return float(self.lr_schedule(self.t))

    def __call__(self, grad: np.ndarray) -> np.ndarray:
        """Return the step to subtract for ``grad`` (the schedule's own buffer)."""
        buf = self._step_buf
        if not self._ready or buf.shape != grad.shape or buf.dtype != grad.dtype:
            buf = self._prepare(grad)
        self._step(grad, float(self.lr_schedule(self.t)), buf)
        self.t += 1
        return buf

    @abc.abstractmethod
    def _step(self, grad: np.ndarray, lr: float, out: np.ndarray) -> None:
        """Write the step for ``grad`` into ``out``, updating state in place."""

    def _prepare(self, grad: np.ndarray) -> np.ndarray:
        """Allocate buffers for ``grad``'s shape and dtype (first call, or after a load)."""
        if not np.issubdtype(grad.dtype, np.floating):
            raise TypeError(f"{type(self).__name__}: gradient must be floating, got {grad.dtype}")
        for name in self.state_arrays:
            arr = getattr(self, name)
            if arr is None:
                setattr(self, name, np.zeros(grad.shape, grad.dtype))
            elif arr.shape != grad.shape:
                raise DistnnError(
                    f"{type(self).__name__} state {name!r} has shape {arr.shape} but the "
                    f"gradient has shape {grad.shape}: the state is for a different network"
                )
            elif arr.dtype != grad.dtype:
                setattr(self, name, arr.astype(grad.dtype))
        for name in ("_step_buf", *self.scratch_arrays):
            arr = getattr(self, name)
            if arr is None or arr.shape != grad.shape or arr.dtype != grad.dtype:
                setattr(self, name, np.empty(grad.shape, grad.dtype))
        self._ready = True
        return self._step_buf

    def state_dict(self) -> dict[str, np.ndarray | float | int]:
        """``t`` and copies of the state arrays (absent before the first step).

        Values are plain ndarrays and ints, fit for ``np.savez`` without pickle.
        Hyper-parameters are not included: the constructor gives them.
        """
        state: dict[str, np.ndarray | float | int] = {"t": int(self.t)}
        for name in self.state_arrays:
            arr = getattr(self, name)
            if arr is not None:
                state[name] = arr.copy()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict`` (also one read back from an ``.npz``).

        Raises ``DistnnError`` if keys are missing or unexpected, or shapes disagree.
        """
        cls = type(self).__name__
        expected = ("t", *self.state_arrays)
        unknown = sorted(set(state) - set(expected))
        if unknown or "t" not in state:
            what = f"unexpected keys {unknown}" if unknown else "missing key 't'"
            raise DistnnError(f"{cls} state: {what}; expected keys {list(expected)}")
        t = np.asarray(state["t"])
        if t.shape != () or not np.issubdtype(t.dtype, np.integer) or int(t) < 0:
            raise DistnnError(f"{cls} state: 't' must be an integer >= 0, got {state['t']!r}")
        present = [name for name in self.state_arrays if name in state]
        if present != list(self.state_arrays) and (present or int(t) > 0):
            missing = [name for name in self.state_arrays if name not in state]
            raise DistnnError(f"{cls} state at t={int(t)}: missing keys {missing}")
        arrays = {name: np.asarray(state[name]) for name in present}
        shapes = {arr.shape for arr in arrays.values()}
        if len(shapes) > 1:
            raise DistnnError(f"{cls} state: arrays have different shapes {sorted(shapes)}")
        for name, arr in arrays.items():
            if not np.issubdtype(arr.dtype, np.floating):
                raise DistnnError(f"{cls} state {name!r} must be floating, got {arr.dtype}")
            if self._step_buf is not None and arr.shape != self._step_buf.shape:
                raise DistnnError(
                    f"{cls} state {name!r} has shape {arr.shape}, expected {self._step_buf.shape}"
                )
        self.t = int(t)
        for name in self.state_arrays:
            arr = arrays.get(name)
            setattr(self, name, None if arr is None else np.array(arr, order="C", copy=True))
        self._ready = False  # re-checks shapes and dtypes against the next gradient

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr_schedule!r})"


class NormalizedStep(GradientUpdateSchedule):
    """MATH.md's standard rule: step = α_t · g / ‖g‖, ‖·‖ over the whole vector.

    A zero gradient gives a zero step. g is scaled by max|g_i| before the norm is
    taken, so neither huge nor tiny gradients overflow or underflow to inf/NaN.
    """

    scratch_arrays = ("_scratch",)

    def _step(self, grad, lr, out):
        np.abs(grad, out=out)
        gmax = out.max()
        if gmax == 0:
            out.fill(0)
            return
        np.divide(grad, gmax, out=out)  # |entries| <= 1, the largest is exactly 1
        np.multiply(out, out, out=self._scratch)
        # NumPy's pairwise sum: deterministic, independent of BLAS threading.
        out *= lr / math.sqrt(float(self._scratch.sum()))


class SGD(GradientUpdateSchedule):
    """step = α_t · g."""

    def _step(self, grad, lr, out):
        np.multiply(grad, lr, out=out)


class Momentum(GradientUpdateSchedule):
    """v ← β·v + g;  step = α_t · v,  or with Nesterov  step = α_t · (g + β·v)."""

    state_arrays = ("velocity",)

    def __init__(self, lr: float | LRSchedule, beta: float = 0.9, nesterov: bool = False) -> None:
        super().__init__(lr)
        self.beta = _check_unit("momentum beta", beta)
        self.nesterov = bool(nesterov)

    def _step(self, grad, lr, out):
        v = self.velocity
        v *= self.beta
        v += grad
        if self.nesterov:
            np.multiply(v, self.beta, out=out)
            out += grad
            out *= lr
        else:
            np.multiply(v, lr, out=out)


class Nesterov(Momentum):
    """``Momentum`` with ``nesterov=True``."""

    def __init__(self, lr: float | LRSchedule, beta: float = 0.9) -> None:
        super().__init__(lr, beta, nesterov=True)


class AdaGrad(GradientUpdateSchedule):
    """G ← G + g²;  step = α_t · g / (√G + ε)   (elementwise)."""

    state_arrays = ("sum_sq",)

    def __init__(self, lr: float | LRSchedule, eps: float = 1e-8) -> None:
        super().__init__(lr)
        self.eps = _check_eps(eps)

    def _step(self, grad, lr, out):
        np.multiply(grad, grad, out=out)
        self.sum_sq += out
        np.sqrt(self.sum_sq, out=out)
        out += self.eps
        np.divide(grad, out, out=out)
        out *= lr


class RMSProp(GradientUpdateSchedule):
    """s ← ρ·s + (1−ρ)·g²;  step = α_t · g / (√s + ε)   (elementwise)."""

    state_arrays = ("sq_avg",)

    def __init__(self, lr: float | LRSchedule, rho: float = 0.9, eps: float = 1e-8) -> None:
        super().__init__(lr)
        self.rho = _check_unit("rmsprop rho", rho)
        self.eps = _check_eps(eps)

    def _step(self, grad, lr, out):
        s = self.sq_avg
        s *= self.rho
        np.multiply(grad, grad, out=out)
        out *= 1.0 - self.rho
        s += out
        np.sqrt(s, out=out)
        out += self.eps
        np.divide(grad, out, out=out)
        out *= lr


class Adam(GradientUpdateSchedule):
    """m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
    m̂ = m/(1−β1^k), v̂ = v/(1−β2^k) with k = t+1 (1 at the first step);
    step = α_t · m̂ / (√v̂ + ε).
    """

    state_arrays = ("m", "v")

    def __init__(
        self,
        lr: float | LRSchedule,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(lr)
        self.beta1 = _check_unit("adam beta1", beta1)
        self.beta2 = _check_unit("adam beta2", beta2)
        self.eps = _check_eps(eps)

    def _step(self, grad, lr, out):
        k = self.t + 1
        b1, b2, m, v = self.beta1, self.beta2, self.m, self.v
        m *= b1
        np.multiply(grad, 1.0 - b1, out=out)
        m += out
        v *= b2
        np.multiply(grad, grad, out=out)
        out *= 1.0 - b2
        v += out
        np.divide(v, 1.0 - b2**k, out=out)  # v̂
        np.sqrt(out, out=out)
        out += self.eps
        np.divide(m, out, out=out)
        out *= lr / (1.0 - b1**k)  # α_t · m̂ / (√v̂ + ε)


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
