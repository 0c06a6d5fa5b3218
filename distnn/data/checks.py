"""The checks every data file's arrays pass on their way into a Dataset.

Each problem is a one-line DistnnError that names the data set and the array (or its
file), through :class:`Source`. NaN/inf checks and dtype conversions run in blocks of
rows, so a memory-mapped ``x`` is never shadowed by a full-size temporary.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from distnn.errors import DistnnError
from distnn.io.memory_room import check_fits

MAX_CLASSES = 100_000  # guards against one-hot matrices blown up by a stray huge label
CHUNK_BYTES = 64 << 20  # NaN/inf scans and conversions work on blocks of about this size


@dataclass(frozen=True)
class Source:
    """How messages name a data set (``name``: its file or directory) and its arrays.

    ``files`` maps ``x``, ``y``, ... to what a message calls each array when the data
    set is several files (``x.npy``, ``train-images-idx3-ubyte.gz``); without it an
    array is ``array 'x'`` alone and ``x`` beside another.
    """

    name: str
    files: Mapping[str, str] | None = None

    def array(self, key: str) -> str:
        return f"array '{key}'" if self.files is None else self.files[key]

    def short(self, key: str) -> str:
        return key if self.files is None else self.files[key]


def as_float(a: np.ndarray, ftype: np.dtype) -> np.ndarray:
    """``a`` itself when it is already C-contiguous ``ftype`` (no copy), else a copy."""
    if a.dtype == ftype and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=ftype)


def _blocks(a: np.ndarray) -> Iterator[np.ndarray]:
    """``a`` in blocks of whole rows of about CHUNK_BYTES each."""
    row_bytes = max(1, a.itemsize * int(np.prod(a.shape[1:], dtype=np.int64)))
    step = max(1, CHUNK_BYTES // row_bytes)
    for start in range(0, a.shape[0], step):
        yield a[start : start + step]


def _count_nonfinite(a: np.ndarray) -> tuple[int, int]:
    """(NaN count, infinite count) of a float array, scanned block by block."""
    n_nan = n_inf = 0
    for block in _blocks(a):
        n_nan += int(np.count_nonzero(np.isnan(block)))
        n_inf += int(np.count_nonzero(np.isinf(block)))
    return n_nan, n_inf


def as_array(src: Source, key: str, a: object) -> np.ndarray:
    """``a`` as an array (lists welcome); DistnnError when it is missing or cannot be one."""
    if a is None:
        raise DistnnError(
            f"{src.name}: no {src.array(key)} (give the "
            f"{'rows' if key.startswith('x') else 'class labels or targets'} with the data)"
        )
    if isinstance(a, np.ndarray):
        return a
    try:
        return np.asarray(a)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise DistnnError(f"{src.name}: {src.array(key)} is not an array ({e})") from None


def check_dtype(src: Source, key: str, a: np.ndarray) -> None:
    """Reject non-numeric dtypes; bool counts as numeric (0/1)."""
    if a.dtype.kind not in "biuf":
        raise DistnnError(
            f"{src.name}: {src.array(key)} has non-numeric dtype {a.dtype} "
            "(need integers, floats or bools)"
        )


def check_finite(src: Source, key: str, a: np.ndarray) -> None:
    if a.dtype.kind != "f":
        return
    n_nan, n_inf = _count_nonfinite(a)
    if n_nan or n_inf:
        what = " and ".join(f"{n} {kind}" for n, kind in ((n_nan, "NaN"), (n_inf, "infinite")) if n)
        raise DistnnError(f"{src.name}: {src.array(key)} has {what} values")


def convert(src: Source, key: str, a: np.ndarray, ftype: np.dtype) -> np.ndarray:
    """``a`` as C-contiguous ``ftype``: ``a`` itself if it already is, else one copy."""
    if a.dtype != ftype or not a.flags.c_contiguous:  # a copy: will it fit?
        check_fits(a.size * ftype.itemsize, src.name, f"{src.array(key)} as {ftype}")
    with np.errstate(over="ignore"):
        out = as_float(a, ftype)
    if out is not a and a.dtype.kind == "f" and a.dtype.itemsize > ftype.itemsize:
        n_bad = sum(_count_nonfinite(out))  # a is finite: these overflowed
        if n_bad:
            raise DistnnError(
                f"{src.name}: {src.array(key)} has {n_bad} values too large for {ftype}"
            )
    return out


def _check_features(src: Source, key: str, x: np.ndarray) -> None:
    if x.ndim != 2:
        hint = ""
        if x.ndim > 2 and x.shape[0] > 0:
            hint = f"; reshape to ({x.shape[0]}, {int(np.prod(x.shape[1:]))})"
        raise DistnnError(
            f"{src.name}: {src.array(key)} must be 2-D (samples x features), "
            f"got shape {x.shape}{hint}"
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DistnnError(f"{src.name}: {src.array(key)} is empty (shape {x.shape})")


def check_labels(src: Source, key: str, y: np.ndarray) -> np.ndarray:
    """Validate 1-D class labels and return them as int64."""
    if y.dtype.kind == "f":
        n_frac = int(np.count_nonzero(y != np.floor(y)))
        if n_frac:
            raise DistnnError(
                f"{src.name}: {src.array(key)} is 1-D class labels but has {n_frac} "
                "non-integer values (for regression give y shape (N, 1))"
            )
    if y.size and y.min() < 0:
        n_neg = int(np.count_nonzero(y < 0))
        raise DistnnError(
            f"{src.name}: {src.array(key)} has {n_neg} negative labels (classes must be 0..K-1)"
        )
    if y.size and y.max() >= MAX_CLASSES:
        raise DistnnError(
            f"{src.name}: {src.array(key)} has label {y.max()}; "
            f"at most {MAX_CLASSES} classes are supported"
        )
    return y.astype(np.int64)


def _check_rows(src: Source, arrays: Mapping[str, np.ndarray], xk: str, yk: str) -> None:
    n_x, n_y = arrays[xk].shape[0], arrays[yk].shape[0]
    if n_x != n_y:
        raise DistnnError(
            f"{src.name}: {src.short(xk)} has {n_x} rows but {src.short(yk)} has {n_y}"
        )


def check_shapes(src: Source, arrays: Mapping[str, np.ndarray]) -> None:
    """Shapes of x and y, and of x_test and y_test against them."""
    x, y = arrays["x"], arrays["y"]
    x_test, y_test = arrays.get("x_test"), arrays.get("y_test")
    name, short = src.name, src.short
    _check_features(src, "x", x)
    if y.ndim not in (1, 2):
        raise DistnnError(
            f"{name}: {src.array('y')} must be 1-D class labels or 2-D (N x K) targets, "
            f"got shape {y.shape}"
        )
    _check_rows(src, arrays, "x", "y")
    if y.ndim == 2 and y.shape[1] == 0:
        raise DistnnError(f"{name}: {src.array('y')} is empty (shape {y.shape})")
    if x_test is None or y_test is None:
        return
    _check_features(src, "x_test", x_test)
    if x_test.shape[1] != x.shape[1]:
        raise DistnnError(
            f"{name}: {short('x_test')} has {x_test.shape[1]} features "
            f"but {short('x')} has {x.shape[1]}"
        )
    if y_test.ndim != y.ndim:
        raise DistnnError(
            f"{name}: {short('y_test')} is {y_test.ndim}-D but {short('y')} is {y.ndim}-D "
            f"(shapes {y_test.shape} and {y.shape})"
        )
    _check_rows(src, arrays, "x_test", "y_test")
    if y.ndim == 2 and y_test.shape[1] != y.shape[1]:
        raise DistnnError(
            f"{name}: {short('y_test')} has {y_test.shape[1]} target columns but "
            f"{short('y')} has {y.shape[1]} (test target width must match)"
        )
