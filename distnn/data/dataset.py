"""The Dataset type, and how a data file's arrays become one.

The file readers (:mod:`distnn.data.files`, :mod:`distnn.data.csv`) produce raw arrays
``x``, ``y`` and optionally ``x_test``, ``y_test``; :func:`from_arrays` validates them
(:mod:`distnn.data.checks`: dtype, shapes, NaN/inf, labels), turns class labels into
one-hot targets and builds the Dataset. An ``x`` that already has the right dtype and
layout is kept as it is (a memory map stays a memory map).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from distnn.data.checks import (
    Source,
    as_array,
    as_float,
    check_dtype,
    check_finite,
    check_labels,
    check_shapes,
    convert,
)
from distnn.data.labels import encode_class_names, integer_labels
from distnn.errors import DistnnError
from distnn.io.memory_room import check_fits


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


def one_hot(labels: np.ndarray, n_classes: int, ftype: np.dtype) -> np.ndarray:
    out = np.zeros((labels.shape[0], n_classes), dtype=ftype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


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
        x=as_float(x, ftype),
        y=one_hot(labels, n_classes, ftype),
        x_test=None if x_test is None else as_float(x_test, ftype),
        y_test=None if labels_test is None else one_hot(labels_test, n_classes, ftype),
        labels=labels.astype(np.int64),
        labels_test=None if labels_test is None else labels_test.astype(np.int64),
        notes=notes,
        class_names=None if class_names is None else tuple(class_names),
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
    arrays = {key: as_array(src, key, a) for key, a in arrays.items()}
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
        check_dtype(src, key, a)
    check_shapes(src, arrays)
    for key, a in arrays.items():
        check_finite(src, key, a)
    x, y = arrays["x"], arrays["y"]
    x_test, y_test = arrays.get("x_test"), arrays.get("y_test")
    x_out = convert(src, "x", x, ftype)
    x_test_out = None if x_test is None else convert(src, "x_test", x_test, ftype)
    if y.ndim == 2:  # regression
        y_out = convert(src, "y", y, ftype)
        y_test_out = None if y_test is None else convert(src, "y_test", y_test, ftype)
        return Dataset(src.name, x_out, y_out, x_test_out, y_test_out, None, None, notes)
    labels = check_labels(src, "y", y)
    labels_test = None if y_test is None else check_labels(src, "y_test", y_test)
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
