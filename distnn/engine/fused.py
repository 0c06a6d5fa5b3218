"""The fused kernels of ``fused_updates.c`` and ``fused_layers.c``, loaded with ctypes.

Each built-in rule of :mod:`distnn.engine.schedules` (but the normalized step, whose
‖g‖ is a reduction) has a C function that does the rule's arithmetic and θ −= step in one
pass, with the same bits as the rule's NumPy passes. The library is built at install time
when a C compiler is there (setup.py); without it, or with ``DISTNN_FUSED_UPDATES=0`` in
the environment, :func:`kernel` gives None and the rules run as NumPy passes.

The layer kernels (:func:`layer_kernel`) do the elementwise chains of feed-forward and
backprop in one pass each, with the same bits; :mod:`distnn.engine.bound_layers` binds
them to a workspace, and without the library the NumPy passes run.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Each kernel's arguments after (n, θ, g): how many state arrays, then its scalars in the
# arrays' precision, then any int flags.
SIGNATURES: dict[str, tuple[int, int, int]] = {
    "sgd": (0, 1, 0),
    "momentum": (1, 2, 1),
    "adagrad": (1, 2, 0),
    "rmsprop": (1, 4, 0),
    "adam": (2, 7, 0),
}
_SUFFIX = {
    np.dtype(np.float32): ("f32", ctypes.c_float),
    np.dtype(np.float64): ("f64", ctypes.c_double),
}


def _load() -> ctypes.CDLL | None:
    if os.environ.get("DISTNN_FUSED_UPDATES", "1") == "0":
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


def kernel(name: str, dtype: np.dtype) -> Callable[..., None] | None:
    """The C function of rule ``name`` for arrays of ``dtype``, or None if there is none.

    Called as ``f(n, θ_ptr, g_ptr, *state_ptrs, *scalars, *flags)`` with pointers to
    C-contiguous arrays of ``dtype`` holding n elements each.
    """
    if LIBRARY is None or name not in SIGNATURES or np.dtype(dtype) not in _SUFFIX:
        return None
    suffix, real = _SUFFIX[np.dtype(dtype)]
    n_arrays, n_scalars, n_flags = SIGNATURES[name]
    function = getattr(LIBRARY, f"{name}_{suffix}")
    function.argtypes = (
        [ctypes.c_ssize_t]
        + [ctypes.c_void_p] * (2 + n_arrays)
        + [real] * n_scalars
        + [ctypes.c_int] * n_flags
    )
    function.restype = None
    return function


def pointer(array: np.ndarray) -> ctypes.c_void_p:
    """The address of ``array``'s first element, for a kernel argument."""
    return ctypes.c_void_p(array.ctypes.data)


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
    function = getattr(LIBRARY, f"{name}_{_SUFFIX[np.dtype(dtype)][0]}")
    function.argtypes = [ctypes.c_void_p]
    function.restype = None
    return function
