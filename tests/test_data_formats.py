"""Tests for the data file formats beyond .npz: .npy pairs, IDX (MNIST) files and CSV."""

from __future__ import annotations

import gzip
import io
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import distnn.data.checks
from distnn.data.load import VALID_SPECS, load_dataset
from distnn.errors import DistnnError

RNG = np.random.default_rng(0)
X = RNG.standard_normal((6, 4)).astype(np.float32)
Y = np.array([0, 2, 1, 2, 0, 1])
IMAGES = RNG.integers(0, 256, (7, 3, 2), dtype=np.uint8)
LABELS = np.array([0, 1, 2, 3, 1, 0, 2], dtype=np.uint8)
IDX_CODES = {"u1": 8, "i1": 9, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def _npy_dir(p: Path, **arrays: np.ndarray) -> None:
    p.mkdir()
    for key, a in arrays.items():
        np.save(p / f"{key}.npy", a)


def _idx(a: np.ndarray) -> bytes:
    head = bytes([0, 0, IDX_CODES[a.dtype.str[1:]], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return head + a.astype(a.dtype.newbyteorder(">")).tobytes()


def _idx_dir(p: Path, gz: bool = True, sep: str = "-", **files: bytes | np.ndarray) -> None:
    """Write IDX files; keyword ``train_images`` becomes ``train-images-idx3-ubyte[.gz]``."""
    p.mkdir(exist_ok=True)
    for key, content in files.items():
        split, kind = key.split("_")
        name = f"{split}-{kind}{sep}idx{3 if kind == 'images' else 1}-ubyte"
        data = _idx(content) if isinstance(content, np.ndarray) else content
        if gz:
            (p / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (p / name).write_bytes(data)


MNIST = {"train_images": IMAGES, "train_labels": LABELS}
MNIST4 = {**MNIST, "t10k_images": IMAGES[:3], "t10k_labels": LABELS[:3]}


# ---------------------------------------------------------------- .npy pairs


def test_npy_pair_is_memory_mapped(tmp_path: Path) -> None:
    _npy_dir(tmp_path / "d", x=X, y=Y, x_test=X[:2], y_test=Y[:2])
    d = load_dataset(str(tmp_path / "d"))
    assert isinstance(d.x, np.memmap) and isinstance(d.x_test, np.memmap)
    assert not d.x.flags.writeable and d.x.flags.c_contiguous
    assert np.array_equal(d.x, X) and np.array_equal(d.x_test, X[:2])
    assert np.array_equal(d.y, np.eye(3)[Y]) and np.array_equal(d.labels, Y)
    assert np.array_equal(d.y_test, np.eye(3)[Y[:2]]) and d.labels_test.dtype == np.int64
    assert (d.name, d.n_classes, d.notes) == (str(tmp_path / "d"), 3, ())
    assert not isinstance(d.y, np.memmap)


@pytest.mark.parametrize(
    ("x", "layout"), [(X.astype(np.float64), ""), (np.asfortranarray(X), "not C-ordered")]
)
def test_npy_conversion_copies_and_notes(tmp_path: Path, x: np.ndarray, layout: str) -> None:
    _npy_dir(tmp_path / "d", x=x, y=Y)
    d = load_dataset(str(tmp_path / "d"))
    assert not isinstance(d.x, np.memmap) and not isinstance(d.x.base, np.memmap)
    assert d.x.dtype == np.float32 and d.x.flags.c_contiguous and np.array_equal(d.x, X)
    (note,) = d.notes
    assert "x.npy" in note and "copied into memory" in note and layout in note
    assert "np.ascontiguousarray(x, dtype=np.float32)" in note and "\n" not in note
    d64 = load_dataset(str(tmp_path / "d"), dtype="float64")  # float64 x is mapped as is
    assert isinstance(d64.x, np.memmap) == (x.dtype == np.float64 and not layout)


def test_npy_regression_and_int_features(tmp_path: Path) -> None:
    _npy_dir(tmp_path / "d", x=np.arange(12, dtype=np.int32).reshape(6, 2), y=X[:, :2])
    d = load_dataset(str(tmp_path / "d"))
    assert d.labels is None and np.array_equal(d.y, X[:, :2]) and d.x[5, 1] == 11
    assert len(d.notes) == 1 and "int32" in d.notes[0]


def test_npy_scan_is_chunked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN/inf are counted block by block: no full-size temporary of a mapped x."""
    monkeypatch.setattr(distnn.data.checks, "CHUNK_BYTES", 1 << 16)
    x = np.ones((4000, 500), dtype=np.float32)  # 8 MB, 122 blocks
    labels = np.arange(4000) % 10
    _npy_dir(tmp_path / "ok", x=x, y=labels)
    tracemalloc.start()
    try:
        d = load_dataset(str(tmp_path / "ok"))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        assert np.isfinite(d.x).all()  # the whole-array check this avoids: traced, 2 MB
        assert tracemalloc.get_traced_memory()[1] > 2_000_000
    finally:
        tracemalloc.stop()
    assert isinstance(d.x, np.memmap) and peak < 1_500_000  # y one-hot is 160 kB
    x[[0, 1999, 3999], [0, 7, 499]] = np.nan, np.inf, np.nan
    _npy_dir(tmp_path / "bad", x=x, y=labels)
    with pytest.raises(DistnnError, match=r"bad: x\.npy has 2 NaN and 1 infinite values"):
        load_dataset(str(tmp_path / "bad"))


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize(("gz", "sep"), [(True, "-"), (False, "-"), (True, "."), (False, ".")])
def test_idx_round_trip(tmp_path: Path, gz: bool, sep: str) -> None:
    _idx_dir(tmp_path / "mnist", gz=gz, sep=sep, **MNIST4)
    d = load_dataset(str(tmp_path / "mnist"))
    assert d.x.shape == (7, 6) and d.x.dtype == np.float32 and d.x.flags.c_contiguous
    assert np.allclose(d.x, IMAGES.reshape(7, 6) / 255) and d.x.min() >= 0 and d.x.max() <= 1
    assert np.array_equal(d.x[IMAGES.reshape(7, 6) == 255], np.ones(np.sum(IMAGES == 255)))
    assert np.array_equal(d.labels, LABELS) and np.array_equal(d.y, np.eye(4)[LABELS])
    assert d.x_test.shape == (3, 6) and np.array_equal(d.labels_test, LABELS[:3])
    assert d.notes == () and d.name == str(tmp_path / "mnist")


def test_idx_variants(tmp_path: Path) -> None:
    # plain and gzipped copies of one file are one file; train only: no test set, noted
    _idx_dir(tmp_path / "a", gz=True, **MNIST)
    _idx_dir(tmp_path / "a", gz=False, **MNIST)
    d = load_dataset(str(tmp_path / "a"), dtype="float64")
    assert d.x.dtype == np.float64 and d.x_test is None and "no test set" in d.notes[0]
    # EMNIST names: a prefix, "test" for "t10k"; float32 pixels are not rescaled
    p = tmp_path / "emnist"
    p.mkdir()
    pixels = np.linspace(0, 3, 7 * 4, dtype=np.float32).reshape(7, 2, 2)
    for name, a in [("train-images-idx3", pixels), ("train-labels-idx1", LABELS)]:
        for split in ("train", "test"):
            file = f"emnist-digits-{name.replace('train', split)}-ubyte.gz"
            (p / file).write_bytes(gzip.compress(_idx(a)))
    d = load_dataset(str(p))
    assert np.array_equal(d.x, pixels.reshape(7, 4)) and np.array_equal(d.labels_test, LABELS)
    # Kaggle's MNIST: dotted files, and each again in a folder of its dashed name
    _idx_dir(tmp_path / "k", gz=False, sep=".", **MNIST4)
    for key, a in MNIST4.items():
        split, kind = key.split("_")
        folder = tmp_path / "k" / f"{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        _idx_dir(folder, gz=False, **{key: a})
        (tmp_path / "k" / f"{split}-{kind}.idx{3 if kind == 'images' else 1}-ubyte").unlink()
        assert load_dataset(str(tmp_path / "k")).x_test.shape == (3, 6)


# ---------------------------------------------------------------- CSV


@pytest.mark.parametrize(
    ("header", "label_column", "col"),
    [
        ("a,b,label,c", None, 2),
        ("a,b,c,Target", None, 3),
        ("y,a,b,c", None, 0),
        ("a,b,c,d", None, 3),
        ("a,b,c,d", "b", 1),
        ("a,b,c,d", 0, 0),
        ("a,b,c,d", "2", 2),
        ("a,label,y,d", "y", 2),
    ],
)
def test_csv_round_trip(tmp_path: Path, header: str, label_column, col: int) -> None:
    table = X.astype(np.float64).round(3)
    table[:, col] = Y
    rows = "\n".join(",".join(repr(float(v)) for v in row) for row in table)
    (tmp_path / "t.csv").write_text(f"{header}\n{rows}\n")
    d = load_dataset(str(tmp_path / "t.csv"), label_column=label_column)
    assert np.allclose(d.x, np.delete(table, col, axis=1)) and d.x.dtype == np.float32
    assert np.array_equal(d.labels, Y) and np.array_equal(d.y, np.eye(3)[Y])
    assert d.x_test is None and d.name == str(tmp_path / "t.csv")


def test_csv_gz_and_text_quirks(tmp_path: Path) -> None:
    text = '\ufeff"a", b ,label\r\n1, 2.5,1\r\n\r\n"3",-4e1,0\r\n'  # BOM, CRLF, blank, quotes
    (tmp_path / "q.csv.gz").write_bytes(gzip.compress(text.encode()))
    d = load_dataset(str(tmp_path / "q.csv.gz"), dtype="float64")
    assert np.array_equal(d.x, [[1, 2.5], [3, -40]]) and np.array_equal(d.labels, [1, 0])


# ---------------------------------------------------------------- dispatch and bad files


def test_dispatch_errors(tmp_path: Path) -> None:
    with pytest.raises(DistnnError, match=r"applies only to \.csv"):
        load_dataset("digits", label_column="label")
    with pytest.raises(DistnnError) as info:
        load_dataset(str(tmp_path / "nothing"))
    assert "no such file or directory" in str(info.value) and VALID_SPECS in str(info.value)
    assert "x.npy" in VALID_SPECS and "IDX" in VALID_SPECS and ".csv" in VALID_SPECS


Builder = Callable[[Path], None]
X4, Y4 = np.zeros((4, 3)), np.array([0, 1, 0, 1])
GOOD = "a,b,label\n1,2,0\n3,4,1\n"


def _npy(**arrays: np.ndarray) -> Builder:
    return lambda p: _npy_dir(p, **arrays)


def _idx_with(gz: bool = True, **files: bytes | np.ndarray) -> Builder:
    return lambda p: _idx_dir(p, gz=gz, **{**MNIST, **files})


def _then(build: Builder, name: str, data: bytes) -> Builder:
    """``build``, then overwrite its file ``name`` with ``data``."""
    return lambda p: (build(p), (p / name).write_bytes(data))


def _text(s: str | bytes) -> Builder:
    return lambda p: p.write_bytes(s if isinstance(s, bytes) else s.encode())


def _idx_t10k(p: Path) -> None:
    _idx_dir(p, t10k_images=IMAGES, t10k_labels=LABELS)


TI, TL = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
NPY_CUT = io.BytesIO()
np.save(NPY_CUT, np.zeros((99, 9)))
IDX_LABELS = gzip.compress(_idx(LABELS))
BAD: list[tuple[str, Builder, str | list[str]]] = [
    ("empty_dir", lambda p: p.mkdir(), ["holds no data set", "x.npy", "train-images"]),
    ("only_y", _npy(y=Y4), "has y.npy but no x.npy"),
    ("npy_no_y", _npy(x=X4), "has x.npy but no y.npy"),
    ("npy_half", _npy(x=X4, y=Y4, x_test=X4), "has x_test.npy but no y_test.npy"),
    ("npy_text", _then(_npy(x=X4, y=Y4), "x.npy", b"hi"), "x.npy: not a valid .npy file"),
    ("npy_cut", _then(_npy(x=X4, y=Y4), "x.npy", NPY_CUT.getvalue()[:300]), "x.npy: not a valid"),
    ("npy_object", _npy(x=np.array([[1, "a"]] * 4, dtype=object), y=Y4), "x.npy: has dtype object"),
    ("npy_nan", _npy(x=np.where(np.eye(4, 3) > 0, np.inf, np.nan), y=Y4), "9 NaN and 3 infinite"),
    ("npy_rows", _npy(x=X4, y=Y4[:3]), "x.npy has 4 rows but y.npy has 3"),
    ("npy_3d", _npy(x=np.zeros((4, 2, 3)), y=Y4), "reshape to (4, 6)"),
    ("npy_labels", _npy(x=X4, y=-Y4), "y.npy has 2 negative labels"),
    ("npy_zip", _then(_npy(x=X4, y=Y4), "x.npy", b"PK\x05\x06" + bytes(18)), "is an .npz archive"),
    ("idx_t10k_only", _idx_t10k, f"missing the IDX training files {TI} and {TL}"),
    ("idx_no_labels", lambda p: _idx_dir(p, train_images=IMAGES), f"training file {TL}"),
    ("idx_half_test", _idx_with(t10k_images=IMAGES), "but no t10k-labels-idx1-ubyte"),
    ("idx_magic", _idx_with(train_images=b"\x08\x03\0\0" + bytes(40)), "magic number 08 03 00 00"),
    ("idx_gz_data", _idx_with(False, train_labels=IDX_LABELS), [f"{TL}: not an", "name it .gz"]),
    ("idx_cut", _idx_with(train_images=_idx(IMAGES)[:-5]), "3 x 2 uint8 values (42 bytes) but 37"),
    ("idx_long", _idx_with(False, train_labels=_idx(LABELS) + b"xx"), "2 bytes too long"),
    ("idx_header", _idx_with(train_images=b"\x00\x00\x08\x03\x00\x00"), "truncated IDX header"),
    ("idx_count", _idx_with(train_labels=LABELS[:5]), f"{TI}.gz has 7 rows but {TL}.gz has 5"),
    ("idx_swapped", _idx_with(train_images=LABELS), "idx3-ubyte.gz: holds shape (7,), not images"),
    ("idx_labels_2d", _idx_with(train_labels=IMAGES[:, 0]), "holds shape (7, 2), not labels"),
    ("idx_not_gz", _then(_idx_with(), f"{TI}.gz", _idx(IMAGES)), f"{TI}.gz: not a valid gzip"),
    ("idx_gz_cut", _then(_idx_with(), f"{TL}.gz", IDX_LABELS[:-12]), f"{TL}.gz: not a valid gzip"),
    ("idx_two_sets", _then(_idx_with(), f"b-{TL}.gz", IDX_LABELS), f"2 IDX files could be {TL}"),
    (f"{TI}.gz", _text(gzip.compress(_idx(IMAGES))), "is one IDX file; pass the directory"),
    ("empty.csv", _text(""), ["empty file", "header row"]),
    ("header_only.csv", _text("a,b,label\n"), "no data rows"),
    ("no_header.csv", _text("1,2,0\n3,4,1\n"), "line 1 is numbers"),
    ("word.csv", _text(GOOD + "5,abc,0\n"), "line 4, column 'b' (index 1): non-numeric value"),
    ("blank_cell.csv", _text(GOOD + "\n5,,0\n"), "line 5, column 'b' (index 1): empty cell"),
    ("underscore.csv", _text(GOOD + "5,1_0,0\n"), ["cannot parse", "1_0"]),
    ("ragged.csv", _text(GOOD + "5,6\n"), "line 4 has 2 cells but the header has 3 columns"),
    ("nan.csv", _text(GOOD + "nan,1,0\n"), "line 4, column 'a' (index 0): 'nan' is not a finite"),
    ("fraction.csv", _text(GOOD + "5,6,1.5\n"), "'1.5' is not an integer class label"),
    ("negative.csv", _text(GOOD + "5,6,-1\n"), "label column 'label' has 1 negative"),
    ("one_class.csv", _text("a,label\n1,0\n2,0\n"), "fewer than 2 classes"),
    ("one_column.csv", _text("label\n1\n0\n"), "only one column"),
    ("two_labels.csv", _text("label,a,label\n0,1,0\n"), "2 columns are named 'label'"),
    ("binary.csv", _text(b"\xff\xfe\x00\x01garbage"), "not UTF-8"),
    ("fake.csv.gz", _text(GOOD), "not a valid gzip file"),
]


@pytest.mark.parametrize(("name", "build", "words"), BAD, ids=[c[0] for c in BAD])
def test_bad_files(tmp_path: Path, name: str, build: Builder, words: str | list[str]) -> None:
    path = tmp_path / name
    build(path)
    with pytest.raises(DistnnError) as info:
        load_dataset(str(path))
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    for word in [words] if isinstance(words, str) else words:
        assert word in msg, msg
    assert info.value.__cause__ is None


@pytest.mark.parametrize(
    ("column", "words"),
    [
        ("klass", "no label column 'klass' (columns: 'a', 'b', 'label')"),
        (3, "label column index 3 is out of range: the header has 3 columns (0..2)"),
        ("-1", "no label column '-1'"),
    ],
)
def test_bad_label_column(tmp_path: Path, column: str | int, words: str) -> None:
    (tmp_path / "t.csv").write_text(GOOD)
    with pytest.raises(DistnnError) as info:
        load_dataset(str(tmp_path / "t.csv"), label_column=column)
    assert str(info.value).startswith(f"{tmp_path / 't.csv'}: {words}")
