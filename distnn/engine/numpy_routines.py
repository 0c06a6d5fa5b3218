"""The routines NumPy itself calls, found in the running process: its BLAS and its tanh.

``fused_backprop.c`` gives NumPy's bits only by calling what NumPy calls: the cblas
functions of the OpenBLAS NumPy loaded (scipy-openblas's ILP64 build in NumPy's wheels,
the very library instance, so its thread settings are NumPy's) and the inner loop np.tanh
runs for a dtype (NumPy's SIMD tanh is not libm's). Where either is not found as
expected, :func:`find` gives None and the NumPy calls run instead.
"""

from __future__ import annotations

import ctypes
import os
import sys

import numpy as np

_BLAS = {np.dtype(np.float32): "s", np.dtype(np.float64): "d"}
_NUMPY_TYPE = {np.dtype(np.float32): 11, np.dtype(np.float64): 12}  # NPY_FLOAT, NPY_DOUBLE


class _UFunc(ctypes.Structure):
    """The head of NumPy's PyUFuncObject (numpy/ufuncobject.h, unchanged since NumPy 1.x)."""

    _fields_ = (
        ("ob_refcnt", ctypes.c_ssize_t),
        ("ob_type", ctypes.c_void_p),
        ("nin", ctypes.c_int),
        ("nout", ctypes.c_int),
        ("nargs", ctypes.c_int),
        ("identity", ctypes.c_int),
        ("functions", ctypes.POINTER(ctypes.c_void_p)),
        ("data", ctypes.POINTER(ctypes.c_void_p)),
        ("ntypes", ctypes.c_int),
        ("reserved1", ctypes.c_int),
        ("name", ctypes.c_char_p),
        ("types", ctypes.POINTER(ctypes.c_ubyte)),
    )


def _tanh_loop(dtype: np.dtype) -> tuple[int, int] | None:
    """(function, data) of the loop np.tanh runs for ``dtype``: its first loop of that
    type, as NumPy's type resolution picks it."""
    # Read in place only where an object starts as ufuncobject.h says: CPython, whose
    # object head is the two words above (not a free-threaded build's longer head).
    head = 2 * ctypes.sizeof(ctypes.c_void_p)
    if sys.implementation.name != "cpython" or object.__basicsize__ != head:
        return None
    ufunc = _UFunc.from_address(id(np.tanh))
    if ufunc.name != b"tanh" or (ufunc.nin, ufunc.nout, ufunc.nargs) != (1, 1, 2):
        return None
    code = _NUMPY_TYPE[dtype]
    for i in range(ufunc.ntypes):
        if ufunc.types[2 * i] == code and ufunc.types[2 * i + 1] == code:
            return ufunc.functions[i], ufunc.data[i] or 0
    return None


def _gives_numpy_tanh(loop: tuple[int, int], dtype: np.dtype) -> bool:
    """Whether ``loop`` gives np.tanh's bits on a probe of ordinary and special values."""
    probe = np.concatenate(
        [np.linspace(-12, 12, 997), [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, 1e30]]
    ).astype(dtype)
    out = np.empty_like(probe)
    function = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 4)(loop[0])
    args = (ctypes.c_void_p * 2)(probe.ctypes.data, out.ctypes.data)
    count = ctypes.c_ssize_t(probe.size)
    steps = (ctypes.c_ssize_t * 2)(dtype.itemsize, dtype.itemsize)
    function(args, ctypes.byref(count), steps, loop[1])
    return out.tobytes() == np.tanh(probe).tobytes()


def _numpy_openblas() -> ctypes.CDLL | None:
    """The OpenBLAS NumPy loaded (the very library instance, so its thread settings are
    NumPy's), if it is scipy-openblas's ILP64 build; else None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            library = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
        except OSError:
            continue
        if hasattr(library, "scipy_cblas_sgemm64_"):
            return library
    return None


def find() -> dict[np.dtype, dict[str, int]] | None:
    """Per dtype, the addresses of what NumPy calls: ``gemm``, ``gemv``, ``dot`` (cblas)
    and ``tanh_loop``, ``tanh_data``; None without NumPy's scipy-openblas, or if np.tanh's
    loop is not where it is looked for or does not give np.tanh's bits."""
    blas = _numpy_openblas()
    if blas is None:
        return None
    found = {}
    for dtype, letter in _BLAS.items():
        tanh = _tanh_loop(dtype)
        if tanh is None or not _gives_numpy_tanh(tanh, dtype):
            return None
        found[dtype] = {"tanh_loop": tanh[0], "tanh_data": tanh[1]}
        for name in ("gemm", "gemv", "dot"):
            function = blas[f"scipy_cblas_{letter}{name}64_"]
            found[dtype][name] = ctypes.cast(function, ctypes.c_void_p).value
    return found
