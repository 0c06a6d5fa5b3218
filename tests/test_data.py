"""Tests for distnn.data: digits, synthetic sets, .npz files; other formats: test_data_formats."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from distnn.data.load import VALID_SPECS, Dataset, load_dataset
from distnn.errors import DistnnError

# ---------------------------------------------------------------- digits


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_digits_shapes_and_values(dtype: str) -> None:
    d = load_dataset("digits", dtype=dtype)
    assert d.name == "digits"
    assert d.x.shape == (1437, 64) and d.x_test.shape == (360, 64)
    assert d.y.shape == (1437, 10) and d.y_test.shape == (360, 10)
    for a in (d.x, d.y, d.x_test, d.y_test):
        assert a.dtype == np.dtype(dtype) and a.flags.c_contiguous
    assert d.x.min() >= 0 and d.x.max() <= 1 and d.x.max() == 1
    assert np.array_equal(d.x * 16, np.round(d.x * 16))  # pixel counts / 16
    assert d.labels.dtype == np.int64 and d.labels_test.dtype == np.int64
    assert set(d.labels.tolist()) == set(range(10)) == set(d.labels_test.tolist())
    assert np.array_equal(d.y.argmax(axis=1), d.labels)
    assert np.array_equal(d.y.sum(axis=1), np.ones(1437))
    assert np.array_equal(d.y_test.argmax(axis=1), d.labels_test)
    assert (d.n_features, d.n_outputs, d.n_classes, d.is_classification) == (64, 10, 10, True)


def test_digits_split_fixed_and_independent_of_seed() -> None:
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=12345)
    for name in ("x", "y", "x_test", "y_test", "labels", "labels_test"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    c = load_dataset("digits", dtype="float64")
    assert np.array_equal(a.x, c.x) and np.array_equal(a.labels_test, c.labels_test)
    # train and test are disjoint parts of the 1797 samples: no row lost or duplicated
    rows = {
        r.tobytes() + bytes([lab])
        for r, lab in zip(
            np.vstack([a.x, a.x_test]), np.concatenate([a.labels, a.labels_test]), strict=True
        )
    }
    assert len(rows) > 1700


# ---------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_dtype() -> None:
    d = load_dataset("synthetic:500:12:4", seed=1)
    assert d.name == "synthetic:500:12:4"
    assert d.x.shape == (500, 12) and d.y.shape == (500, 4)
    assert d.x_test.shape == (100, 12) and d.y_test.shape == (100, 4)
    assert d.labels.shape == (500,) and d.labels_test.shape == (100,)
    assert d.x.dtype == np.float32 and d.x.flags.c_contiguous
    assert np.array_equal(d.y.argmax(axis=1), d.labels)
    assert d.n_classes == 4 and d.n_features == 12
    assert load_dataset("synthetic:3:2:2").x_test.shape == (1, 2)
    d64 = load_dataset("synthetic:500:12:4", seed=1, dtype="float64")
    assert d64.x.dtype == np.float64
    assert np.array_equal(d64.x, d.x.astype(np.float64))
    assert np.array_equal(d64.labels, d.labels)


def test_synthetic_deterministic_per_seed() -> None:
    a, b = load_dataset("synthetic:200:8:3", seed=7), load_dataset("synthetic:200:8:3", seed=7)
    for name in ("x", "y", "x_test", "y_test", "labels", "labels_test"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    c = load_dataset("synthetic:200:8:3", seed=8)
    assert not np.array_equal(a.x, c.x)
    assert not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize(
    "spec", ["synthetic:2000:20:3", "synthetic:3000:50:10", "synthetic:2000:2:5"]
)
def test_synthetic_is_learnable_and_balanced(spec: str) -> None:
    d = load_dataset(spec, seed=3)
    counts = np.bincount(d.labels, minlength=d.n_classes)
    assert counts.min() > 0.5 * counts.mean()  # every class well represented
    # a least-squares linear classifier fitted on train does clearly better than chance on test
    fit = np.linalg.lstsq(np.c_[d.x, np.ones(d.n_samples)], d.y, rcond=None)[0]
    pred = np.argmax(np.c_[d.x_test, np.ones(len(d.x_test))] @ fit, axis=1)
    assert (pred == d.labels_test).mean() > 2.0 / d.n_classes


def test_synthetic_large_is_fast_enough() -> None:
    d = load_dataset("synthetic:20000:784:10")
    assert d.x.shape == (20000, 784) and d.x_test.shape == (4000, 784)


@pytest.mark.parametrize(
    ("spec", "word"),
    [
        ("synthetic:10", "valid forms"),
        ("synthetic", "valid forms"),
        ("synthetic:a:b:c", "valid forms"),
        ("synthetic:10:5:2:1", "valid forms"),
        ("synthetic:-1:5:2", "valid forms"),
        ("synthetic:0:5:2", "SAMPLES"),
        ("synthetic:10:0:2", "FEATURES"),
        ("synthetic:10:5:1", "CLASSES"),
    ],
)
def test_bad_synthetic_specs(spec: str, word: str) -> None:
    with pytest.raises(DistnnError) as info:
        load_dataset(spec)
    msg = str(info.value)
    assert word in msg and spec in msg and "\n" not in msg
    if word == "valid forms":
        assert VALID_SPECS in msg


def test_bad_dtype_and_seed() -> None:
    with pytest.raises(DistnnError, match="dtype"):
        load_dataset("digits", dtype="int32")
    with pytest.raises(DistnnError, match="seed"):
        load_dataset("synthetic:10:2:2", seed=-1)


# ---------------------------------------------------------------- npz: good files


def test_npz_integer_labels_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "cls.npz"
    x = np.asfortranarray(np.arange(24, dtype=np.int16).reshape(6, 4))
    y = np.array([0, 2, 1, 2, 0, 1], dtype=np.uint8)
    np.savez(path, x=x, y=y, x_test=x[:2] * 2.5, y_test=np.array([1.0, 0.0]))
    d = load_dataset(str(path))
    assert isinstance(d, Dataset) and d.name == str(path)
    assert d.x.dtype == np.float32 and d.x.flags.c_contiguous
    assert np.array_equal(d.x, x)
    assert np.array_equal(d.y, np.eye(3, dtype=np.float32)[y])
    assert np.array_equal(d.labels, y) and d.labels.dtype == np.int64
    assert np.array_equal(d.labels_test, [1, 0])
    assert np.array_equal(d.y_test, [[0, 1, 0], [1, 0, 0]])
    assert np.array_equal(d.x_test, x[:2] * 2.5)
    assert (d.n_classes, d.n_outputs, d.is_classification, d.notes) == (3, 3, True, ())


def test_npz_without_test_set_and_bool_features(tmp_path: Path) -> None:
    path = tmp_path / "bools.npz"
    np.savez(path, x=np.array([[True, False], [False, True]]), y=np.array([1, 0]))
    d = load_dataset(str(path), dtype="float64")
    assert d.x_test is None and d.y_test is None and d.labels_test is None
    assert d.x.dtype == np.float64 and np.array_equal(d.x, np.eye(2))
    assert d.n_classes == 2


def test_npz_test_labels_beyond_training_are_noted(tmp_path: Path) -> None:
    path = tmp_path / "extra.npz"
    np.savez(
        path,
        x=np.zeros((4, 2)),
        y=np.array([0, 1, 0, 1]),
        x_test=np.zeros((2, 2)),
        y_test=np.array([3, 1]),
    )
    d = load_dataset(str(path))
    assert d.n_classes == 4 and d.y.shape == (4, 4) and d.y_test.shape == (2, 4)
    assert any("test labels" in note for note in d.notes)
    assert all(str(path) in note and "\n" not in note for note in d.notes)


def test_npz_regression(tmp_path: Path) -> None:
    path = tmp_path / "reg.npz"
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((10, 3)), rng.standard_normal((10, 2))
    np.savez_compressed(path, x=x, y=y, x_test=x[:4], y_test=y[:4])
    d = load_dataset(str(path), dtype="float64")
    assert (d.labels, d.labels_test, d.n_classes, d.is_classification) == (None, None, None, False)
    assert d.n_outputs == 2 and d.n_features == 3
    assert np.array_equal(d.x, x) and np.array_equal(d.y, y) and np.array_equal(d.y_test, y[:4])
    d32 = load_dataset(str(path))
    assert d32.y.dtype == np.float32 and np.allclose(d32.y, y, atol=1e-6)


# ---------------------------------------------------------------- npz: bad files

Builder = Callable[[Path], None]


def _save(**arrays: object) -> Builder:
    return lambda p: np.savez(p, **arrays)


def _write(data: bytes) -> Builder:
    return lambda p: p.write_bytes(data)


def _truncated(p: Path) -> None:
    np.savez(p, x=np.zeros((50, 4)), y=np.zeros(50, dtype=int))
    p.write_bytes(p.read_bytes()[:300])


def _bad_member(p: Path) -> None:
    """A valid zip directory whose compressed x data is damaged."""
    np.savez_compressed(p, x=np.arange(4000.0).reshape(1000, 4), y=np.zeros(1000, dtype=int))
    raw = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as z:
        info = z.getinfo("x.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 20, start + info.compress_size - 20):
        raw[i] ^= 0x5A
    p.write_bytes(bytes(raw))


def _npy(p: Path) -> None:
    with open(p, "wb") as f:
        np.save(f, np.zeros((3, 2)))


def _ragged(p: Path) -> None:
    x = np.empty(2, dtype=object)
    x[0], x[1] = [1.0, 2.0], [3.0]
    np.savez(p, x=x, y=np.array([0, 1]))


X4, Y4 = np.zeros((4, 3)), np.array([0, 1, 0, 1])

BAD_FILES: list[tuple[str, Builder | None, list[str]]] = [
    ("absent.npz", None, ["no such file"]),
    ("adir.npz", lambda p: p.mkdir(), ["directory"]),
    ("text.npz", _write(b"x,y\n1,2\n"), ["not a valid .npz", "zip"]),
    ("empty.npz", _write(b""), ["not a valid .npz"]),
    ("truncated.npz", _truncated, ["not a valid .npz"]),
    ("damaged.npz", _bad_member, ["'x'", "corrupt"]),
    ("single.npz", _npy, [".npy"]),
    ("no_y.npz", _save(x=X4, labels=Y4), ["missing array 'y'", "found: x, labels"]),
    ("no_x.npz", _save(y=Y4), ["missing array 'x'"]),
    ("half_test.npz", _save(x=X4, y=Y4, x_test=X4), ["x_test", "no 'y_test'"]),
    ("ragged.npz", _ragged, ["'x'", "dtype object"]),
    ("strings.npz", _save(x=np.array([["a", "b"]] * 4), y=Y4), ["'x'", "non-numeric"]),
    ("complex.npz", _save(x=X4 + 1j, y=Y4), ["'x'", "non-numeric"]),
    ("flat.npz", _save(x=np.zeros(4), y=Y4), ["'x'", "2-D"]),
    ("images.npz", _save(x=np.zeros((4, 2, 3)), y=Y4), ["2-D", "reshape to (4, 6)"]),
    ("cube_y.npz", _save(x=X4, y=np.zeros((4, 1, 1))), ["'y'", "1-D", "2-D"]),
    ("no_rows.npz", _save(x=np.zeros((0, 3)), y=np.zeros(0, dtype=int)), ["'x'", "empty"]),
    ("no_cols.npz", _save(x=np.zeros((4, 0)), y=Y4), ["'x'", "empty"]),
    ("no_targets.npz", _save(x=X4, y=np.zeros((4, 0))), ["'y'", "empty"]),
    ("nan.npz", _save(x=np.where(np.eye(4, 3) > 0, np.nan, 0), y=Y4), ["has 3 NaN values"]),
    ("both.npz", _save(x=np.array([[np.nan, np.inf]] * 4), y=Y4), ["4 NaN and 4 infinite"]),
    ("inf.npz", _save(x=X4, y=np.full((4, 1), np.inf)), ["'y'", "has 4 infinite values"]),
    ("huge.npz", _save(x=np.full((4, 3), 1e300), y=Y4), ["'x'", "too large"]),
    ("negative.npz", _save(x=X4, y=np.array([0, -1, 1, -2])), ["2 negative"]),
    ("fraction.npz", _save(x=X4, y=np.array([0.0, 0.5, 1.0, 1.0])), ["1 non-integer"]),
    ("biglabel.npz", _save(x=X4, y=np.array([0, 1, 10**9, 1])), ["at most"]),
    ("mismatch.npz", _save(x=X4, y=np.array([0, 1, 0])), ["4 rows", "y has 3"]),
    ("test_rows.npz", _save(x=X4, y=Y4, x_test=X4, y_test=Y4[:3]), ["x_test has 4", "3"]),
    (
        "test_feats.npz",
        _save(x=X4, y=Y4, x_test=np.zeros((2, 5)), y_test=Y4[:2]),
        ["x_test has 5 features", "x has 3"],
    ),
    (
        "test_width.npz",
        _save(x=X4, y=np.zeros((4, 2)), x_test=X4, y_test=np.zeros((4, 3))),
        ["width"],
    ),
    ("test_ndim.npz", _save(x=X4, y=Y4, x_test=X4, y_test=np.zeros((4, 2))), ["y_test is 2-D"]),
    ("one_class.npz", _save(x=X4, y=np.zeros(4, dtype=int)), ["fewer than 2 classes"]),
]


@pytest.mark.parametrize(("name", "build", "words"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_npz_files(tmp_path: Path, name: str, build: Builder | None, words: list[str]) -> None:
    path = tmp_path / name
    if build is not None:
        build(path)
    with pytest.raises(DistnnError) as info:
        load_dataset(str(path))
    msg = str(info.value)
    assert "\n" not in msg and name in msg
    for word in words:
        assert word in msg
    assert info.value.__cause__ is None  # no chained traceback to confuse users


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.npz"
    np.savez(path, x=X4, y=Y4)
    path.chmod(0)
    try:  # asked of the file itself, not of the uid: root reads it, unless without caps
        path.open("rb").close()
    except PermissionError:
        pass
    else:
        pytest.skip("this user can read a mode-0 file (root)")
    with pytest.raises(DistnnError, match=r"secret\.npz: cannot open"):
        load_dataset(str(path))


def test_unknown_name_lists_valid_forms(tmp_path: Path) -> None:
    with pytest.raises(DistnnError) as info:
        load_dataset(str(tmp_path / "digit"))
    assert VALID_SPECS in str(info.value)
    assert VALID_SPECS.startswith("digits | synthetic:SAMPLES:FEATURES:CLASSES | path/to/data.npz")
