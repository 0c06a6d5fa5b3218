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

The built-in rules pass their hyper-parameters to the ufuncs as 0-d arrays of the
gradient's dtype (:func:`scalar`), made once, and the per-step factors (bias
corrections, the learning rate) as 0-d arrays refilled each step. A ufunc takes a
0-d array in about half the time of a Python float, which is most of a small
network's update; the bits are the same, because NumPy casts a Python float operand
to the array's dtype before the operation exactly as filling a 0-d array does
(tests/test_schedules_bits.py compares every rule with the previous implementation).
Whole-array passes are kept: on a 1 MB-L2, 32 MB-L3 machine the update of a
670k-parameter network measured no faster in L2-sized blocks (Adam's arrays stay in L3,
and its float32 square root, not memory, is the slowest of its twelve passes).

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

from distnn.engine import fused
from distnn.engine.lr_schedules import LRSchedule, as_lr_schedule
from distnn.errors import DistnnError, one_line


def _check_unit(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise DistnnError(f"{name} must be in [0, 1), got {value}")
    return value


def scalar(value: float, dtype: np.dtype) -> np.ndarray:
    """``value`` as a 0-d array of ``dtype``: the same bits a ufunc gives the Python float."""
    return np.full((), value, dtype)


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not (math.isfinite(eps) and eps > 0):
        raise DistnnError(f"eps must be a finite number > 0, got {eps}")
    return eps


class GradientUpdateSchedule(abc.ABC):
    """Base class: ``step = schedule(grad)``, then the caller does ``θ -= step``; or both
    at once with ``schedule.apply(grad, θ)``.

    ``t`` is the number of steps taken; the learning rate of a call is
    ``lr_schedule(t)`` read before ``t`` is incremented.
    """

    state_arrays: ClassVar[tuple[str, ...]] = ()  # saved by state_dict, zeros at start
    scratch_arrays: ClassVar[tuple[str, ...]] = ()  # work space, not saved
    # The C function (engine/fused.py) that does ``_step`` and θ −= step in one pass, with
    # ``_kernel_scalars`` as its scalar arguments; it serves only the class that names it.
    kernel: ClassVar[str | None] = None

    def __init__(self, lr: float | LRSchedule) -> None:
        self.lr_schedule: LRSchedule = as_lr_schedule(lr)
        self.t: int = 0
        self._step_buf: np.ndarray | None = None
        self._ready = False
        self._bound: tuple | None = None  # (grad, params, kernel, its array arguments)
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

    def apply(self, grad: np.ndarray, params: np.ndarray) -> None:
        """θ −= step for ``grad``: ``params`` updated in place, the state advanced.

        The same bits as ``params -= schedule(grad)``, which is what runs on the first
        call, whenever the arrays change and for rules without a kernel; a built-in rule's
        later calls run its one-pass kernel (``fused_updates.c``), which reads each element
        once and leaves the step buffer alone.
        """
        bound = self._bound
        if bound is not None and bound[0] is grad and bound[1] is params:
            bound[2](*bound[3], *self._kernel_scalars(float(self.lr_schedule(self.t))))
            self.t += 1
            return
        params -= self(grad)
        self._bound = self._bind(grad, params)

    def _bind(self, grad: np.ndarray, params: np.ndarray) -> tuple | None:
        """The kernel call for these arrays, or None: no kernel (not built, or not for
        this rule or dtype), a subclass with its own ``_step``, or arrays the kernel cannot
        take."""
        owner = next(c for c in type(self).__mro__ if "kernel" in vars(c))
        function = fused.kernel(owner.kernel, grad.dtype) if owner.kernel else None
        state = [getattr(self, name) for name in self.state_arrays]
        arrays = (params, grad, *state)
        if (
            function is None
            or type(self)._step is not owner._step
            or any(a.dtype != grad.dtype or a.shape != grad.shape for a in arrays)
            or not all(a.flags.c_contiguous and a.flags.writeable for a in arrays)
        ):
            return None
        return grad, params, function, (grad.size, *map(fused.pointer, arrays))

    def _kernel_scalars(self, lr: float) -> tuple:
        """The kernel's scalar arguments for a step at ``lr``, in the array's precision
        the same numbers ``_step`` hands NumPy."""
        raise NotImplementedError

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
        self._make_scalars(grad.dtype)
        self._ready, self._bound = True, None
        return self._step_buf

    def _make_scalars(self, dtype: np.dtype) -> None:
        """Make the rule's 0-d operands (:func:`scalar`) for ``dtype``: here ``_lr``, which a
        built-in rule fills with each step's learning rate; rules add their constants."""
        self._lr = scalar(0, dtype)

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
        self._ready, self._bound = False, None  # re-checked against the next gradient

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lr={self.lr_schedule!r})"


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
        self.beta = _check_unit("momentum beta", beta)
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
        self.eps = _check_eps(eps)

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
        self.rho = _check_unit("rmsprop rho", rho)
        self.eps = _check_eps(eps)

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
        self.beta1 = _check_unit("adam beta1", beta1)
        self.beta2 = _check_unit("adam beta2", beta2)
        self.eps = _check_eps(eps)

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
