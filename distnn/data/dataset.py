"""The Dataset type, and the checks every data file's arrays pass on their way into one.

The file readers (:mod:`distnn.data.files`, :mod:`distnn.data.csv`) produce raw arrays
``x``, ``y`` and optionally ``x_test``, ``y_test``; :func:`from_arrays` validates them
(dtype, shapes, NaN/inf, labels) and builds the Dataset. Each problem is a one-line
DistnnError that names the data set and the array (or its file). NaN/inf checks and
dtype conversions run in blocks of rows, so a memory-mapped ``x`` is never shadowed by
a full-size temporary, and an ``x`` that already has the right dtype and layout is kept
as it is (a memory map stays a memory map).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from distnn.data.labels import encode_class_names, integer_labels
from distnn.errors import DistnnError
from distnn.io.memory_room import check_fits

MAX_CLASSES = 100_000  # guards against one-hot matrices blown up by a stray huge label
CHUNK_BYTES = 64 << 20  # NaN/inf scans and conversions work on blocks of about this size


@dataclass(frozen=True, eq=False)
class Dataset:
    """A training set and an optional test set, as C-contiguous arrays of one float dtype.

    For classification ``y`` holds one-hot rows and ``labels`` the int64 class of each row;
    for regression ``labels`` and ``labels_test`` are None. ``x`` and ``x_test`` may be
    read-only ``np.memmap`` views of ``.npy`` files. ``notes`` are one-line remarks
    about unusual but valid data, for the CLI to print. ``class_names`` names class k
    when the labels were given as names (a CSV of species, say), else None.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    labels: np.ndarray | None
    labels_test: np.ndarray | None
    notes: tuple[str, ...] = ()
    class_names: tuple[str, ...] | None = None

    @property
    def n_samples(self) -> int:
        """Number of training rows."""
        return int(self.x.shape[0])

    @property
    def n_features(self) -> int:
        """Number of input features (columns of ``x``)."""
        return int(self.x.shape[1])

    @property
    def n_outputs(self) -> int:
        """Width of the targets: the number of classes, or of regression outputs."""
        return int(self.y.shape[1])

    @property
    def n_classes(self) -> int | None:
        """Number of classes, or None for regression."""
        return self.n_outputs if self.is_classification else None

    @property
    def is_classification(self) -> bool:
        """True when the targets are one-hot class labels."""
        return self.labels is not None


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


def one_hot(labels: np.ndarray, n_classes: int, ftype: np.dtype) -> np.ndarray:
    out = np.zeros((labels.shape[0], n_classes), dtype=ftype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


def _as_float(a: np.ndarray, ftype: np.dtype) -> np.ndarray:
    """``a`` itself when it is already C-contiguous ``ftype`` (no copy), else a copy."""
    if a.dtype == ftype and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=ftype)


def classification(
    name: str,
    x: np.ndarray,
    labels: np.ndarray,
    x_test: np.ndarray | None,
    labels_test: np.ndarray | None,
    n_classes: int,
    ftype: np.dtype,
    notes: tuple[str, ...] = (),
    class_names: Sequence[str] | None = None,
) -> Dataset:
    return Dataset(
        name=name,
        x=_as_float(x, ftype),
        y=one_hot(labels, n_classes, ftype),
        x_test=None if x_test is None else _as_float(x_test, ftype),
        y_test=None if labels_test is None else one_hot(labels_test, n_classes, ftype),
        labels=labels.astype(np.int64),
        labels_test=None if labels_test is None else labels_test.astype(np.int64),
        notes=notes,
        class_names=None if class_names is None else tuple(class_names),
    )


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


def _as_array(src: Source, key: str, a: object) -> np.ndarray:
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


def _check_dtype(src: Source, key: str, a: np.ndarray) -> None:
    """Reject non-numeric dtypes; bool counts as numeric (0/1)."""
    if a.dtype.kind not in "biuf":
        raise DistnnError(
            f"{src.name}: {src.array(key)} has non-numeric dtype {a.dtype} "
            "(need integers, floats or bools)"
        )


def _check_finite(src: Source, key: str, a: np.ndarray) -> None:
    if a.dtype.kind != "f":
        return
    n_nan, n_inf = _count_nonfinite(a)
    if n_nan or n_inf:
        what = " and ".join(f"{n} {kind}" for n, kind in ((n_nan, "NaN"), (n_inf, "infinite")) if n)
        raise DistnnError(f"{src.name}: {src.array(key)} has {what} values")


def _convert(src: Source, key: str, a: np.ndarray, ftype: np.dtype) -> np.ndarray:
    """``a`` as C-contiguous ``ftype``: ``a`` itself if it already is, else one copy."""
    if a.dtype != ftype or not a.flags.c_contiguous:  # a copy: will it fit?
        check_fits(a.size * ftype.itemsize, src.name, f"{src.array(key)} as {ftype}")
    with np.errstate(over="ignore"):
        out = _as_float(a, ftype)
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


def _check_labels(src: Source, key: str, y: np.ndarray) -> np.ndarray:
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


def _check_shapes(src: Source, arrays: Mapping[str, np.ndarray]) -> None:
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


def from_arrays(
    src: Source,
    arrays: Mapping[str, np.ndarray],
    ftype: np.dtype,
    notes: tuple[str, ...] = (),
    class_names: Sequence[str] | None = None,
) -> Dataset:
    """Validate ``x``, ``y`` and optional ``x_test``, ``y_test`` and build the Dataset.

    1-D ``y`` holds class labels (classification, one-hot targets), 2-D ``y`` regression
    targets. Labels that are strings are class names (:func:`encode_class_names`; with
    ``class_names``, a model's, in that order). ``notes`` from the reader come first in
    the Dataset's notes.
    """
    arrays = {key: _as_array(src, key, a) for key, a in arrays.items()}
    for key in ("y", "y_test"):  # object arrays of ints are indices, not names
        as_int = None if arrays.get(key) is None else integer_labels(arrays[key])
        if as_int is not None:
            arrays[key] = as_int
    names: tuple[str, ...] | None = None
    if arrays["y"].ndim == 1 and arrays["y"].dtype.kind in "USO":
        y_test = arrays.get("y_test")
        arrays["y"], y_test, names = encode_class_names(src.name, arrays["y"], y_test, class_names)
        if y_test is not None:
            arrays["y_test"] = y_test
    elif class_names is not None and arrays["y"].ndim == 1:
        names = tuple(class_names)  # integer labels, against a model that names its classes
    for key, a in arrays.items():
        _check_dtype(src, key, a)
    _check_shapes(src, arrays)
    for key, a in arrays.items():
        _check_finite(src, key, a)
    x, y = arrays["x"], arrays["y"]
    x_test, y_test = arrays.get("x_test"), arrays.get("y_test")
    x_out = _convert(src, "x", x, ftype)
    x_test_out = None if x_test is None else _convert(src, "x_test", x_test, ftype)
    if y.ndim == 2:  # regression
        y_out = _convert(src, "y", y, ftype)
        y_test_out = None if y_test is None else _convert(src, "y_test", y_test, ftype)
        return Dataset(src.name, x_out, y_out, x_test_out, y_test_out, None, None, notes)
    labels = _check_labels(src, "y", y)
    labels_test = None if y_test is None else _check_labels(src, "y_test", y_test)
    n_train = int(labels.max()) + 1
    n_classes = max(n_train, 0 if labels_test is None else int(labels_test.max()) + 1)
    if names is not None:  # a class may have no rows here, and still its index
        n_train = n_classes = max(n_classes, len(names))
    if n_classes < 2:
        raise DistnnError(
            f"{src.name}: fewer than 2 classes (every label is 0); "
            "classification needs labels 0..K-1 with K >= 2"
        )
    notes = tuple(notes)
    if n_classes > n_train:
        notes += (
            f"{src.name}: test labels go up to {n_classes - 1} but training labels only "
            f"to {n_train - 1}; using {n_classes} classes",
        )
    rows = len(labels) + (0 if labels_test is None else len(labels_test))
    what = f"one-hot targets ({rows:,} rows x {n_classes:,} classes)"
    check_fits(rows * n_classes * ftype.itemsize, src.name, what)
    missing = n_classes - np.unique(labels).size
    if missing:
        notes += (f"{src.name}: {missing} of {n_classes} classes have no training rows",)
    return classification(
        src.name, x_out, labels, x_test_out, labels_test, n_classes, ftype, notes, names
    )
