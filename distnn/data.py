"""Data sets: the embedded digits, a synthetic teacher-labelled set, or a user ``.npz`` file.

``load_dataset(spec)`` is deterministic: every MPI rank can call it with the same
arguments and get identical arrays. Every problem with the input is a one-line
:class:`~distnn.errors.DistnnError` that names the file (or spec) and the problem.
"""

from __future__ import annotations

import gzip
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from importlib.resources import files

import numpy as np

from distnn.errors import DistnnError

VALID_SPECS = "digits | synthetic:SAMPLES:FEATURES:CLASSES | path/to/data.npz"
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0  # the digits split is fixed: it never depends on the ``seed`` argument
MAX_CLASSES = 100_000  # guards against one-hot matrices blown up by a stray huge label
TEACHER_HIDDEN = 32
CALIBRATION_SAMPLES = 4096  # synthetic class-balancing sample; independent of SAMPLES
CALIBRATION_STEPS = 50
_DTYPES = {"float32": np.float32, "float64": np.float64}
_SYNTHETIC = re.compile(r"synthetic:(\d+):(\d+):(\d+)")
# What np.load / zipfile / numpy's .npy reader raise on files that are not valid npz data.
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, MemoryError)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A training set and an optional test set, as C-contiguous arrays of one float dtype.

    For classification ``y`` holds one-hot rows and ``labels`` the int64 class of each row;
    for regression ``labels`` and ``labels_test`` are None. ``notes`` are one-line remarks
    about unusual but valid data, for the CLI to print.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    labels: np.ndarray | None
    labels_test: np.ndarray | None
    notes: tuple[str, ...] = ()

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


def load_dataset(spec: str, seed: int = 0, dtype: str = "float32") -> Dataset:
    """Load ``digits``, generate ``synthetic:SAMPLES:FEATURES:CLASSES``, or read an ``.npz``.

    ``seed`` only affects synthetic data; ``dtype`` is ``"float32"`` or ``"float64"``.
    Raises DistnnError (one line) for any bad spec or data file.
    """
    if dtype not in _DTYPES:
        raise DistnnError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
    ftype = np.dtype(_DTYPES[dtype])
    if spec == "digits":
        return _load_digits(ftype)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return _synthetic(spec, seed, ftype)
    return _load_npz(spec, ftype)


def _one_hot(labels: np.ndarray, n_classes: int, ftype: np.dtype) -> np.ndarray:
    out = np.zeros((labels.shape[0], n_classes), dtype=ftype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


def _classification(
    name: str,
    x: np.ndarray,
    labels: np.ndarray,
    x_test: np.ndarray | None,
    labels_test: np.ndarray | None,
    n_classes: int,
    ftype: np.dtype,
    notes: tuple[str, ...] = (),
) -> Dataset:
    return Dataset(
        name=name,
        x=np.ascontiguousarray(x, dtype=ftype),
        y=_one_hot(labels, n_classes, ftype),
        x_test=None if x_test is None else np.ascontiguousarray(x_test, dtype=ftype),
        y_test=None if labels_test is None else _one_hot(labels_test, n_classes, ftype),
        labels=labels.astype(np.int64),
        labels_test=None if labels_test is None else labels_test.astype(np.int64),
        notes=notes,
    )


def _load_digits(ftype: np.dtype) -> Dataset:
    resource = files(__package__ or "distnn") / "data" / "digits.csv.gz"
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
    return _classification("digits", x[train], labels[train], x[test], labels[test], 10, ftype)


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
    return _classification(spec, x, labels, x_test, labels_test, classes, ftype)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """Read every array of the archive, turning each kind of failure into a DistnnError."""
    if not os.path.exists(path):
        raise DistnnError(f"{path}: no such file (dataset must be {VALID_SPECS})")
    if os.path.isdir(path):
        raise DistnnError(f"{path}: is a directory, not an .npz file")
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, after np.load
    except OSError as exc:
        raise DistnnError(f"{path}: cannot open file ({exc.strerror or exc})") from None
    with handle:
        try:
            archive = np.load(handle, allow_pickle=False)
        except _READ_ERRORS as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            if "allow_pickle" in detail:  # np.load's last guess for non-zip, non-.npy files
                detail = "neither a zip archive nor a .npy array"
            raise DistnnError(f"{path}: not a valid .npz file ({detail})") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DistnnError(
                f"{path}: is a single .npy array, not an .npz archive; "
                "save with np.savez(path, x=..., y=...)"
            )
        with archive:
            keys = list(archive.files)
            for key in ("x", "y"):
                if key not in keys:
                    raise DistnnError(
                        f"{path}: missing array '{key}' (found: {', '.join(keys) or 'none'})"
                    )
            if ("x_test" in keys) != ("y_test" in keys):
                have, lack = ("x_test", "y_test") if "x_test" in keys else ("y_test", "x_test")
                raise DistnnError(f"{path}: has '{have}' but no '{lack}' (give both or neither)")
            arrays = {}
            for key in ("x", "y", "x_test", "y_test"):
                if key not in keys:
                    continue
                try:
                    arrays[key] = archive[key]
                except _READ_ERRORS as exc:
                    if isinstance(exc, ValueError) and "allow_pickle" in str(exc):
                        raise DistnnError(
                            f"{path}: array '{key}' has dtype object (ragged or "
                            "pickled data is not supported)"
                        ) from None
                    detail = " ".join(str(exc).split()) or type(exc).__name__
                    raise DistnnError(f"{path}: array '{key}' is corrupt ({detail})") from None
    return arrays


def _check_numeric(path: str, key: str, a: np.ndarray) -> None:
    """Reject non-numeric dtypes and NaN/inf; bool counts as numeric (0/1)."""
    if a.dtype.kind not in "biuf":
        raise DistnnError(
            f"{path}: array '{key}' has non-numeric dtype {a.dtype} "
            "(need integers, floats or bools)"
        )
    if a.dtype.kind == "f":
        n_nan = int(np.count_nonzero(np.isnan(a)))
        n_inf = int(np.count_nonzero(np.isinf(a)))
        if n_nan or n_inf:
            what = " and ".join(
                f"{n} {kind}" for n, kind in ((n_nan, "NaN"), (n_inf, "infinite")) if n
            )
            raise DistnnError(f"{path}: array '{key}' has {what} values")


def _convert(path: str, key: str, a: np.ndarray, ftype: np.dtype) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(a, dtype=ftype)
    if not np.isfinite(out).all():
        n_bad = int(np.count_nonzero(~np.isfinite(out)))
        raise DistnnError(f"{path}: array '{key}' has {n_bad} values too large for {ftype}")
    return out


def _check_features(path: str, key: str, x: np.ndarray) -> None:
    if x.ndim != 2:
        hint = ""
        if x.ndim > 2 and x.shape[0] > 0:
            hint = f"; reshape to ({x.shape[0]}, {int(np.prod(x.shape[1:]))})"
        raise DistnnError(
            f"{path}: array '{key}' must be 2-D (samples x features), got shape {x.shape}{hint}"
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DistnnError(f"{path}: array '{key}' is empty (shape {x.shape})")


def _check_labels(path: str, key: str, y: np.ndarray) -> np.ndarray:
    """Validate 1-D class labels and return them as int64."""
    if y.dtype.kind == "f":
        n_frac = int(np.count_nonzero(y != np.floor(y)))
        if n_frac:
            raise DistnnError(
                f"{path}: array '{key}' is 1-D class labels but has {n_frac} "
                "non-integer values (for regression give y shape (N, 1))"
            )
    if y.size and y.min() < 0:
        n_neg = int(np.count_nonzero(y < 0))
        raise DistnnError(
            f"{path}: array '{key}' has {n_neg} negative labels (classes must be 0..K-1)"
        )
    if y.size and y.max() >= MAX_CLASSES:
        raise DistnnError(
            f"{path}: array '{key}' has label {y.max()}; "
            f"at most {MAX_CLASSES} classes are supported"
        )
    return y.astype(np.int64)


def _load_npz(path: str, ftype: np.dtype) -> Dataset:
    arrays = _read_npz(path)
    for key, a in arrays.items():
        _check_numeric(path, key, a)
    x, y = arrays["x"], arrays["y"]
    x_test, y_test = arrays.get("x_test"), arrays.get("y_test")
    _check_features(path, "x", x)
    if y.ndim not in (1, 2):
        raise DistnnError(
            f"{path}: array 'y' must be 1-D class labels or 2-D (N x K) targets, "
            f"got shape {y.shape}"
        )
    if y.shape[0] != x.shape[0]:
        raise DistnnError(f"{path}: x has {x.shape[0]} rows but y has {y.shape[0]}")
    if y.ndim == 2 and y.shape[1] == 0:
        raise DistnnError(f"{path}: array 'y' is empty (shape {y.shape})")
    if x_test is not None and y_test is not None:
        _check_features(path, "x_test", x_test)
        if x_test.shape[1] != x.shape[1]:
            raise DistnnError(
                f"{path}: x_test has {x_test.shape[1]} features but x has {x.shape[1]}"
            )
        if y_test.ndim != y.ndim:
            raise DistnnError(
                f"{path}: y_test is {y_test.ndim}-D but y is {y.ndim}-D "
                f"(shapes {y_test.shape} and {y.shape})"
            )
        if y_test.shape[0] != x_test.shape[0]:
            raise DistnnError(
                f"{path}: x_test has {x_test.shape[0]} rows but y_test has {y_test.shape[0]}"
            )
        if y.ndim == 2 and y_test.shape[1] != y.shape[1]:
            raise DistnnError(
                f"{path}: y_test has {y_test.shape[1]} target columns but y has "
                f"{y.shape[1]} (test target width must match)"
            )
    x_out = _convert(path, "x", x, ftype)
    x_test_out = None if x_test is None else _convert(path, "x_test", x_test, ftype)
    if y.ndim == 2:  # regression
        y_test_out = None if y_test is None else _convert(path, "y_test", y_test, ftype)
        return Dataset(
            path,
            x_out,
            _convert(path, "y", y, ftype),
            x_test_out,
            y_test_out,
            labels=None,
            labels_test=None,
        )
    labels = _check_labels(path, "y", y)
    labels_test = None if y_test is None else _check_labels(path, "y_test", y_test)
    n_train = int(labels.max()) + 1
    n_classes = max(n_train, 0 if labels_test is None else int(labels_test.max()) + 1)
    if n_classes < 2:
        raise DistnnError(
            f"{path}: fewer than 2 classes (every label is 0); "
            "classification needs labels 0..K-1 with K >= 2"
        )
    notes = []
    if n_classes > n_train:
        notes.append(
            f"{path}: test labels go up to {n_classes - 1} but training labels only "
            f"to {n_train - 1}; using {n_classes} classes"
        )
    missing = n_classes - np.unique(labels).size
    if missing:
        notes.append(f"{path}: {missing} of {n_classes} classes have no training rows")
    return _classification(
        path, x_out, labels, x_test_out, labels_test, n_classes, ftype, tuple(notes)
    )
