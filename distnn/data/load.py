"""Data sets: the embedded digits, a synthetic teacher-labelled set, or a user data file.

``load_dataset(spec)`` is deterministic: every MPI rank can call it with the same
arguments and get identical arrays. Every problem with the input is a one-line
:class:`~distnn.errors.DistnnError` that names the file (or spec) and the problem.

User data files are read by :mod:`distnn.data.files` (``.npz``; directories of ``.npy``
pairs or MNIST-style IDX files) and :mod:`distnn.data.csv` (``.csv``, ``.csv.gz``); all
of them are validated by :mod:`distnn.data.dataset`, which defines :class:`Dataset`.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Sequence
from importlib.resources import files

import numpy as np

from distnn.data.csv import is_csv, load_csv
from distnn.data.dataset import Dataset, classification
from distnn.data.files import load_directory, load_npz
from distnn.errors import DistnnError

__all__ = ["VALID_SPECS", "Dataset", "load_dataset"]

VALID_SPECS = (
    "digits | synthetic:SAMPLES:FEATURES:CLASSES | path/to/data.npz | path/to/data.csv[.gz] "
    "| a directory holding x.npy and y.npy | a directory holding MNIST-style IDX files"
)
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0  # the digits split is fixed: it never depends on the ``seed`` argument
TEACHER_HIDDEN = 32
CALIBRATION_SAMPLES = 4096  # synthetic class-balancing sample; independent of SAMPLES
CALIBRATION_STEPS = 50
_DTYPES = {"float32": np.float32, "float64": np.float64}
_SYNTHETIC = re.compile(r"synthetic:(\d+):(\d+):(\d+)")


def dataset_path(spec: str) -> str | None:
    """The file or folder a data set spec reads, or None for the embedded and synthetic sets."""
    spec = os.fspath(spec)
    if spec == "digits" or spec == "synthetic" or spec.startswith("synthetic:"):
        return None
    return spec


def load_dataset(
    spec: str,
    seed: int = 0,
    dtype: str = "float32",
    label_column: str | int | None = None,
    class_names: Sequence[str] | None = None,
) -> Dataset:
    """Load ``digits``, generate ``synthetic:SAMPLES:FEATURES:CLASSES``, or read a data file.

    A file is an ``.npz``, a ``.csv``/``.csv.gz``, or a directory holding ``x.npy`` and
    ``y.npy`` or MNIST-style IDX files (see :mod:`distnn.data.files`). ``seed`` only
    affects synthetic data; ``dtype`` is ``"float32"`` or ``"float64"``;
    ``label_column`` (a column name or 0-based index) picks a CSV file's label column;
    ``class_names`` (a trained model's) maps labels given as names to its classes.
    Raises DistnnError (one line) for any bad spec or data file.
    """
    if dtype not in _DTYPES:
        raise DistnnError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
    ftype = np.dtype(_DTYPES[dtype])
    spec = os.fspath(spec)
    if label_column is not None and not is_csv(spec):
        raise DistnnError(
            f"{spec}: a label column ({label_column!r}) applies only to .csv data sets"
        )
    if spec == "digits":
        return _load_digits(ftype)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return _synthetic(spec, seed, ftype)
    if not os.path.exists(spec):
        raise DistnnError(f"{spec}: no such file or directory (dataset must be {VALID_SPECS})")
    if os.path.isdir(spec):
        return load_directory(spec, ftype)
    if is_csv(spec):
        return load_csv(spec, ftype, label_column, class_names)
    return load_npz(spec, ftype)


def _load_digits(ftype: np.dtype) -> Dataset:
    resource = files("distnn") / "datasets" / "digits.csv.gz"
    try:
        with resource.open("rb") as raw, gzip.open(raw, "rt") as text:
            table = np.loadtxt(text, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as exc:
        raise DistnnError(
            f"digits: cannot read the embedded data file ({exc}); reinstall distnn"
        ) from None
    perm = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(table.shape[0])
    test, train = np.sort(perm[:DIGITS_TEST_SIZE]), np.sort(perm[DIGITS_TEST_SIZE:])
    x = table[:, :64].astype(ftype) / ftype.type(16)
    labels = table[:, 64]
    return classification("digits", x[train], labels[train], x[test], labels[test], 10, ftype)


def _teacher(
    rng: np.random.Generator, features: int, classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random net ``tanh(x @ a) @ b + bias`` whose argmax labels x ~ N(0, 1).

    Hidden pre-activations have unit variance and class columns unit norm; the class
    biases are then tuned on a fixed calibration sample so the classes come out roughly
    equally frequent (exactly balanced is impossible for, e.g., 1 feature and 10 classes).
    """
    f32 = np.float32
    a = rng.standard_normal((features, TEACHER_HIDDEN), dtype=f32) / f32(np.sqrt(features))
    b = rng.standard_normal((TEACHER_HIDDEN, classes), dtype=f32)
    b /= np.linalg.norm(b, axis=0, keepdims=True)
    logits = np.tanh(rng.standard_normal((CALIBRATION_SAMPLES, features), dtype=f32) @ a) @ b
    bias = np.zeros(classes, dtype=f32)
    scale = float(logits.std())
    for step in range(CALIBRATION_STEPS):
        counts = np.bincount(np.argmax(logits + bias, axis=1), minlength=classes)
        excess = counts / CALIBRATION_SAMPLES - 1 / classes
        bias -= (scale * (1 - step / CALIBRATION_STEPS) * classes * excess).astype(f32)
    return a, b, bias


def _synthetic(spec: str, seed: int, ftype: np.dtype) -> Dataset:
    match = _SYNTHETIC.fullmatch(spec)
    if match is None:
        raise DistnnError(
            f"{spec}: unknown dataset spec; valid forms: {VALID_SPECS} "
            "(SAMPLES, FEATURES, CLASSES are integers)"
        )
    samples, features, classes = (int(g) for g in match.groups())
    for what, value, least in (
        ("SAMPLES", samples, 1),
        ("FEATURES", features, 1),
        ("CLASSES", classes, 2),
    ):
        if value < least:
            raise DistnnError(f"{spec}: {what} must be at least {least}, got {value}")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise DistnnError(f"{spec}: seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(seed)
    a, b, bias = _teacher(rng, features, classes)
    n_test = max(1, samples // 5)
    try:
        x = rng.standard_normal((samples, features), dtype=np.float32)
        x_test = rng.standard_normal((n_test, features), dtype=np.float32)
    except MemoryError:
        raise DistnnError(f"{spec}: not enough memory for {samples}x{features} samples") from None
    labels = np.argmax(np.tanh(x @ a) @ b + bias, axis=1)
    labels_test = np.argmax(np.tanh(x_test @ a) @ b + bias, axis=1)
    return classification(spec, x, labels, x_test, labels_test, classes, ftype)
