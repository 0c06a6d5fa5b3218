"""What a Gradient Update Schedule is: the base class every update rule subclasses.

See MATH.md, "Gradient Update Schedule". A schedule is called once per training step
with the gradient of the mean cost over the global batch (identical on every rank
after the Allreduce). Its output depends only on the sequence of gradients and its
own state — never on the rank, the clock or unseeded randomness — so every replica
computes bit-identical steps given the same NumPy/BLAS build and thread settings.

Hot path: no array is allocated per call. The step buffer and the state arrays are
allocated on the first call (shape and dtype of the gradient) and all arithmetic is
done in place. The returned array is the schedule's own buffer, overwritten by the
next call: use it (``theta -= step``) before calling again, never keep it. ``apply``
does both at once, in one pass for the built-in rules (their kernels, engine/fused.py).
State is saved and restored like PyTorch's ``state_dict``. The rules themselves are in
:mod:`distnn.engine.schedules`.

Writing your own: subclass ``GradientUpdateSchedule``, take ``lr`` as the first
constructor argument, list persistent state arrays in ``state_arrays`` and
throw-away work arrays in ``scratch_arrays`` (both are allocated for you and, for
``state_arrays``, saved by ``state_dict``), and implement ``_step``. Select it with
``make_schedule("package.module:ClassName", lr)``.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from distnn.engine import fused
from distnn.engine.lr_schedules import LRSchedule, as_lr_schedule
from distnn.errors import DistnnError


def check_unit(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise DistnnError(f"{name} must be in [0, 1), got {value}")
    return value


def scalar(value: float, dtype: np.dtype) -> np.ndarray:
    """``value`` as a 0-d array of ``dtype``: the same bits a ufunc gives the Python float."""
    return np.full((), value, dtype)


def check_eps(eps: float) -> float:
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
        self._bound: tuple | None = None  # (grad, params, kernel call, the arrays it reads)
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
            bound[2](self._kernel_scalars(float(self.lr_schedule(self.t))))
            self.t += 1
            return
        params -= self(grad)
        self._bound = self._bind(grad, params)

    def _bind(self, grad: np.ndarray, params: np.ndarray) -> tuple | None:
        """The kernel call for these arrays, or None: no kernel (not built, or not for
        this rule or dtype), a subclass with its own ``_step``, or arrays the kernel cannot
        take."""
        owner = next(c for c in type(self).__mro__ if "kernel" in vars(c))
        state = [getattr(self, name) for name in self.state_arrays]
        arrays = (params, grad, *state)
        if (
            owner.kernel is None
            or type(self)._step is not owner._step
            or any(a.dtype != grad.dtype or a.shape != grad.shape for a in arrays)
            or not all(a.flags.c_contiguous and a.flags.writeable for a in arrays)
        ):
            return None
        call = fused.kernel(owner.kernel, grad.dtype, arrays)
        return None if call is None else (grad, params, call, arrays)  # arrays: kept alive

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
