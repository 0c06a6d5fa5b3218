"""The fused kernels (``fused_*.c``), loaded with ctypes: one pass where NumPy makes several.

- ``fused_updates.c``: each built-in rule of :mod:`distnn.engine.schedules` (but the
  normalized step, whose ‖g‖ is a reduction) does its arithmetic and θ −= step in one
  pass (:func:`kernel`, bound to θ, g and the state as a :class:`RuleCall`).
- ``fused_sums.c``: ``--deterministic``'s tree of additions, block by block
  (:func:`sum_plan`).
- ``fused_layers.c``: the elementwise chains of feed-forward and backprop
  (:func:`layer_kernel`), which :mod:`distnn.engine.bound_layers` binds to a workspace.
- ``fused_backprop.c``: a whole backprop in one call (:func:`backprop_kernel`), which
  :mod:`distnn.engine.fused_backprop` binds to a workspace.

Each gives the same bits as the NumPy calls it replaces. The library is built at install
time when a C compiler is there (setup.py); without it, or with ``DISTNN_FUSED_KERNELS=0``
in the environment, the functions here give None and the NumPy calls run.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

# How many scalars each rule's kernel reads (update_call's scalar[]); momentum's Nesterov
# switch follows its two, as its flag.
SCALARS: dict[str, int] = {"sgd": 1, "momentum": 2, "adagrad": 2, "rmsprop": 4, "adam": 7}
_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def _load() -> ctypes.CDLL | None:
    if os.environ.get("DISTNN_FUSED_KERNELS", "1") == "0":
        return None
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_fused{suffix}"
        if path.is_file():
            try:
                return ctypes.CDLL(str(path))
            except OSError:  # built for another machine: the NumPy passes do the same work
                return None
    return None


LIBRARY = _load()


def _function(name: str, dtype: np.dtype, argtypes: list) -> Callable[..., None]:
    """``name``'s copy for ``dtype`` (``adam_f32``, …), declared with ``argtypes``."""
    function = getattr(LIBRARY, f"{name}_{_SUFFIX[np.dtype(dtype)]}")
    function.argtypes, function.restype = argtypes, None
    return function


class UpdateCall(ctypes.Structure):
    """fused_updates.c's ``update_call``: one rule's arrays, scalars and flag."""

    _fields_ = (
        ("n", ctypes.c_ssize_t),
        ("theta", ctypes.c_void_p),
        ("g", ctypes.c_void_p),
        ("state", ctypes.c_void_p * 2),
        ("scalar", ctypes.c_double * 7),
        ("flag", ctypes.c_int),
    )


class RuleCall:
    """Rule ``name``'s kernel bound to θ, g and the state arrays: ``call(scalars)`` runs
    one step with the rule's scalars (``SCALARS[name]`` of them) then its flag, if any.

    Holds nothing but addresses: the caller keeps the arrays alive.
    """

    def __init__(self, name: str, dtype: np.dtype, arrays: tuple[np.ndarray, ...]) -> None:
        self._function = _function(f"{name}_call", dtype, [ctypes.c_void_p])
        self._n_scalars = SCALARS[name]
        call = self._call = UpdateCall()
        call.n = arrays[0].size
        call.theta, call.g = arrays[0].ctypes.data, arrays[1].ctypes.data
        for i, state in enumerate(arrays[2:]):
            call.state[i] = state.ctypes.data
        self._scalars = call.scalar
        self._address = ctypes.c_void_p(ctypes.addressof(call))

    def __call__(self, scalars: tuple) -> None:
        k = self._n_scalars
        self._scalars[:k] = scalars[:k]
        if len(scalars) > k:
            self._call.flag = scalars[k]
        self._function(self._address)


def kernel(name: str, dtype: np.dtype, arrays: tuple[np.ndarray, ...]) -> RuleCall | None:
    """The C function of rule ``name`` bound to ``arrays`` (θ, g, then the rule's state,
    C-contiguous arrays of ``dtype`` of one size), or None if there is none."""
    if LIBRARY is None or name not in SCALARS or np.dtype(dtype) not in _SUFFIX:
        return None
    return RuleCall(name, np.dtype(dtype), arrays)


SumStep = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]  # into = a + b, or into = a


class SumPlan:
    """``steps`` carried out in order in one call, block by block (``fused_sums.c``).

    Holds the arrays, so the addresses it passes stay valid for its lifetime.
    """

    def __init__(self, steps: list[SumStep], function: Callable[..., None]) -> None:
        self.steps = steps
        columns = zip(*steps, strict=True)  # every step's into, then a, then b
        pointers = [
            (ctypes.c_void_p * len(steps))(*(None if x is None else x.ctypes.data for x in col))
            for col in columns
        ]
        self._function, self._args = function, (steps[0][0].size, len(steps), *pointers)

    def __call__(self) -> None:
        self._function(*self._args)


def sum_plan(steps: list[SumStep]) -> SumPlan | None:
    """``steps`` as one call; None if there is no library, or the arrays are not all
    C-contiguous, 1-D, of one length and one float dtype."""
    arrays = [x for step in steps for x in step if x is not None]
    if LIBRARY is None or not arrays or arrays[0].dtype not in _SUFFIX:
        return None
    first = arrays[0]
    if any(
        x.ndim != 1 or x.shape != first.shape or x.dtype != first.dtype or not x.flags.c_contiguous
        for x in arrays
    ):
        return None
    argtypes = [ctypes.c_ssize_t, ctypes.c_ssize_t, *[ctypes.c_void_p] * 3]
    return SumPlan(steps, _function("sum_plan", first.dtype, argtypes))


# The layer kernels of fused_layers.c; each takes one pointer to a LayerCall.
LAYER_KERNELS = (
    "bias_add",
    "bias_half",
    "sigmoid_tail",
    "sigmoid_derivative",
    "tanh_derivative",
    "relu_derivative",
    "leaky_relu_derivative",
    "sigmoid_tail_product",
    "scaled_difference",
)


class LayerCall(ctypes.Structure):
    """fused_layers.c's ``layer_call``: the arrays and sizes of one layer kernel call.

    ``blocks`` blocks of ``rows`` × ``cols`` elements, rows contiguous in a block; block
    k of ``array[i]`` starts ``stride[i]`` elements after block k − 1.
    """

    _fields_ = (
        ("blocks", ctypes.c_ssize_t),
        ("rows", ctypes.c_ssize_t),
        ("cols", ctypes.c_ssize_t),
        ("stride", ctypes.c_ssize_t * 3),
        ("array", ctypes.c_void_p * 3),
        ("bias", ctypes.c_void_p),
        ("scale", ctypes.c_double),
        ("slope", ctypes.c_double),
        ("scaled", ctypes.c_int),
    )


def layer_kernel(name: str, dtype: np.dtype) -> Callable[[ctypes.c_void_p], None] | None:
    """The C function of layer kernel ``name`` for arrays of ``dtype``, or None if there
    is none. Called as ``f(address)`` with the address of a :class:`LayerCall`."""
    if LIBRARY is None or name not in LAYER_KERNELS or np.dtype(dtype) not in _SUFFIX:
        return None
    return _function(name, dtype, [ctypes.c_void_p])


def backprop_kernel(dtype: np.dtype) -> Callable[[ctypes.c_void_p], None] | None:
    """fused_backprop.c's whole backprop for arrays of ``dtype``, or None if there is none.
    Called as ``f(address)`` with the address of a ``fused_backprop.BackpropCall``."""
    if LIBRARY is None or np.dtype(dtype) not in _SUFFIX:
        return None
    return _function("backprop", dtype, [ctypes.c_void_p])
