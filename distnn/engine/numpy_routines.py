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


def _first_loop(ufunc: np.ufunc, dtype: np.dtype) -> tuple[int, int] | None:
    """(function, data) of the loop ``ufunc`` runs when every operand is ``dtype``: its
    first loop of those types, as NumPy's type resolution picks it."""
    # Read in place only where an object starts as ufuncobject.h says: CPython, whose
    # object head is the two words above (not a free-threaded build's longer head).
    head = 2 * ctypes.sizeof(ctypes.c_void_p)
    if sys.implementation.name != "cpython" or object.__basicsize__ != head:
        return None
    found = _UFunc.from_address(id(ufunc))
    nargs = ufunc.nin + ufunc.nout
    if found.name != ufunc.__name__.encode() or (found.nin, found.nargs) != (ufunc.nin, nargs):
        return None
    code = _NUMPY_TYPE[dtype]
    for i in range(found.ntypes):
        if all(found.types[nargs * i + k] == code for k in range(nargs)):
            return found.functions[i], found.data[i] or 0
    return None


_LOOP = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 4)


def _run(loop: tuple[int, int], arrays: list[np.ndarray], count: int, steps: list[int]) -> None:
    """Call ``loop`` on ``arrays`` as NumPy calls an inner loop."""
    args = (ctypes.c_void_p * len(arrays))(*(a.ctypes.data for a in arrays))
    dims = ctypes.c_ssize_t(count)
    _LOOP(loop[0])(args, ctypes.byref(dims), (ctypes.c_ssize_t * len(steps))(*steps), loop[1])


def _probe(dtype: np.dtype) -> np.ndarray:
    """Ordinary, tiny, huge and special values, positive and negative."""
    values = [np.linspace(-12, 12, 997), np.geomspace(1e-38, 1e38, 301)]
    values.append([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, 88.7, 89.0, 709.0, 710.0])
    both = np.concatenate(values)
    return np.concatenate([both, -both]).astype(dtype)


def _gives_numpys_bits(ufunc: np.ufunc, loop: tuple[int, int], dtype: np.dtype) -> bool:
    """Whether ``loop`` gives ``ufunc``'s bits as fused_backprop.c calls it: elementwise
    over contiguous arrays (a unary ufunc; a binary one with a second array or with the
    scalar 0 broadcast), or, for add, np.add.reduce's row sums."""
    probe, size = _probe(dtype), dtype.itemsize
    with np.errstate(all="ignore"):
        if ufunc.nin == 1:
            out = np.empty_like(probe)
            _run(loop, [probe, out], probe.size, [size, size])
            return out.tobytes() == ufunc(probe).tobytes()
        if ufunc is not np.add:
            zero, second, out = np.zeros(1, dtype), np.roll(probe, 7), np.empty_like(probe)
            _run(loop, [probe, zero, out], probe.size, [size, 0, size])
            if out.tobytes() != ufunc(probe, 0.0).tobytes():
                return False
            _run(loop, [probe, second, out], probe.size, [size, size, size])
            return out.tobytes() == ufunc(probe, second).tobytes()
        rng = np.random.default_rng(0)  # rows of every length a pairwise sum treats apart
        for count in [*range(1, 20), 31, 64, 100, 129, 1000, 4096]:
            row = rng.choice(probe[np.isfinite(probe)], count) * rng.choice([0, 1], count)
            row, total = row.astype(dtype), np.zeros(1, dtype)
            _run(loop, [total, row, total], count, [0, size, 0])
            if total.tobytes() != np.add.reduce(row, keepdims=True).tobytes():
                return False
    return True


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


def find() -> dict[np.dtype, dict[str, int | tuple[int, int]]] | None:
    """Per dtype, what NumPy calls: the addresses of cblas ``gemm``, ``gemv``, ``dot``, and
    (function, data) of the loops of ``tanh`` and, where they give NumPy's bits as called
    there, ``exp``, ``log``, ``add`` (cross-entropy's), ``maximum`` (the ReLUs') and
    ``logaddexp`` (softplus's); None without NumPy's scipy-openblas, or if np.tanh's loop
    is not where it is looked for."""
    blas = _numpy_openblas()
    if blas is None:
        return None
    found: dict[np.dtype, dict[str, int | tuple[int, int]]] = {}
    for dtype, letter in _BLAS.items():
        routines = found[dtype] = {}
        for name in ("gemm", "gemv", "dot"):
            function = blas[f"scipy_cblas_{letter}{name}64_"]
            routines[name] = ctypes.cast(function, ctypes.c_void_p).value
        for ufunc in (np.tanh, np.exp, np.log, np.add, np.maximum, np.logaddexp):
            loop = _first_loop(ufunc, dtype)
            if loop is not None and _gives_numpys_bits(ufunc, loop, dtype):
                routines[ufunc.__name__] = loop
        if "tanh" not in routines:
            return None
    return found
