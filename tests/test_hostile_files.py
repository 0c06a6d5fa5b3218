"""Hostile and damaged input files, as an adversary builds them (issue 19).

Every case is built here, in ``tmp_path``, and run as a real command under an
address-space limit of 2 GiB (so a reader that tries to allocate what a header
announces, or inflates a bomb, fails the test): each must end with exit 2 on every
rank, exactly one line ``distnn: error: …`` naming the file, no traceback, no
MemoryError or RecursionError, and no hang (a generous guard, not a timing assert).
One-rank commands run in this process through the CLI's own entry (``run_in_process``,
with the same 2 GiB of address space to spare and the file's hang guard as the test's
timeout); the two-rank cases and the Python API's scripts start processes.
With ``--resume`` a damaged newest checkpoint is skipped for the previous one, with a
note naming it.

Families: model files, checkpoints, IDX/gzip, CSV, .npy folders and .npz data, TOML,
non-regular paths (FIFOs, devices, sockets), and the Python API.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import MPIEXEC, error_lines, run_in_process

from distnn import Network
from distnn.io.checkpoints import list_checkpoints

LIMIT = 2 << 30  # RLIMIT_AS of every command: announced sizes beyond it must never be tried
BOMB = 3 << 30  # what the bombs inflate to
HANG_GUARD = float(os.environ.get("DISTNN_HANG_GUARD", 120))  # seconds; a hang fails the test
SMALL = ["--dataset", "synthetic:60:4:3", "--hidden", "8", "--quiet"]
NOTED = SMALL[:-1]  # notes (a skipped checkpoint) are not quiet
pytestmark = pytest.mark.timeout(HANG_GUARD + 30)  # an in-process hang ends here


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def run(
    args: list[str], cwd: Path, ranks: int = 1, module: str = "distnn.train"
) -> subprocess.CompletedProcess:
    if ranks == 1:  # stdin: pytest's, which refuses reads as /dev/null gives none
        return run_in_process(args, cwd, module, memory_limit=LIMIT)
    command = [sys.executable, "-m", module, *args]
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks), *command]
    try:
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=HANG_GUARD,
            cwd=cwd,
            preexec_fn=_limit_memory,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(command)} hung for {HANG_GUARD} s")


def assert_refused(result: subprocess.CompletedProcess, name: str) -> str:
    """Exit 2, one error line naming ``name``, nothing else alarming; the line."""
    err = result.stderr
    assert result.returncode == 2, f"exit {result.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert "MemoryError" not in err and "RecursionError" not in err, err[-3000:]
    lines = error_lines(err)
    assert len(lines) == 1, err[-3000:]
    assert name in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- building blocks


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=True)
    return buf.getvalue()


def npy_header(shape: tuple, descr: str = "<f8", fortran: bool = False) -> bytes:
    """A version 1.0 .npy header announcing ``shape`` of ``descr``, whatever follows."""
    text = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape!r}, }}"
    pad = 64 - (10 + len(text) + 1) % 64
    text = text + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode()


def deflate(data: bytes) -> bytes:
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    return co.compress(data) + co.flush()


def deflate_zeros(prefix: bytes, total: int) -> bytes:
    """Raw deflate of ``prefix`` then ``total`` zero bytes, built in milliseconds: after a
    full flush the compressor starts afresh, so each MiB of zeros is the same block."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = co.compress(prefix) + co.flush(zlib.Z_FULL_FLUSH)
    block = co.compress(bytes(1 << 20)) + co.flush(zlib.Z_FULL_FLUSH)
    return head + block * (total >> 20) + co.flush()


def gzip_raw(stream: bytes, crc: int = 0, size: int = 0) -> bytes:
    """A gzip file around a raw deflate stream (CRC and size as given)."""
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + stream + struct.pack("<II", crc, size)


def raw_zip(members: list[tuple]) -> bytes:
    """A zip archive written field by field: (name, data, method, crc, declared size,
    flags) per member, so any field can lie."""
    out, central = bytearray(), bytearray()
    for name, data, method, crc, usize, flags in members:
        nb, offset = name.encode(), len(out)
        out += struct.pack(
            "<IHHHHHIIIHH",
            0x04034B50,
            20,
            flags,
            method,
            0,
            0x21,
            crc,
            len(data),
            usize,
            len(nb),
            0,
        )
        out += nb + data
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50, 20, 20, flags, method, 0, 0x21, crc, len(data), usize, len(nb),
            0, 0, 0, 0, 0, offset,
        )  # fmt: skip
        central += nb
    n, cd = len(members), len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), cd, 0)
    return bytes(out)


def member(name: str, data: bytes, **lie) -> tuple:
    """A stored (or, with ``deflated``, compressed) member, honest unless told to lie."""
    method = 8 if lie.get("deflated") else 0
    body = deflate(data) if method else data
    return (
        f"{name}.npy" if "." not in name else name,
        lie.get("body", body),
        lie.get("method", method),
        lie.get("crc", zlib.crc32(data)),
        lie.get("usize", len(data)),
        lie.get("flags", 0),
    )


def npz_with(arrays: dict[str, np.ndarray], key: str | None = None, **replace) -> bytes:
    """``arrays`` as an .npz built by raw_zip, member ``key`` replaced by ``replace``:
    ``data`` (the member's bytes) plus member()'s lies, or ``member`` (a whole tuple)."""
    members = []
    for k, a in arrays.items():
        if k == key and "member" in replace:
            members.append(replace["member"])
        elif k == key:
            lies = {n: v for n, v in replace.items() if n != "data"}
            members.append(member(k, replace.get("data", npy(a)), **lies))
        else:
            members.append(member(k, npy(np.asarray(a))))
    return raw_zip(members + list(replace.get("extra", ())))


def bomb_member(name: str, shape: tuple, descr: str = "<f8") -> tuple:
    """An honest deflated member whose header and declared size announce ``shape`` (about
    BOMB bytes) of zeros: a few MiB on disk."""
    header = npy_header(shape, descr)
    nbytes = int(np.prod(shape)) * np.dtype(descr).itemsize
    return (f"{name}.npy", deflate_zeros(header, nbytes), 8, 0, len(header) + nbytes, 0)


def many_members(n: int = 20_000) -> list[tuple]:
    empty = npy(np.zeros(0))
    return [member(f"junk{i}", empty) for i in range(n)]


# The hostile variants of one member, shared by models, checkpoints and data archives.
# Each maps (arrays, key) to the archive's bytes.
Variant = Callable[[dict, str], bytes]
MEMBER_VARIANTS: dict[str, Variant] = {
    "huge_shape": lambda a, k: npz_with(a, k, data=npy_header((10**12,)) + bytes(16)),
    "shape_vs_size": lambda a, k: npz_with(a, k, data=npy_header((4096, 4096)) + bytes(64)),
    "huge_itemsize": lambda a, k: npz_with(a, k, data=npy_header((4,), "<U1000000000") + bytes(8)),
    "negative_shape": lambda a, k: npz_with(a, k, data=npy_header((-1, 4)) + bytes(32)),
    "object_dtype": lambda a, k: npz_with(a, k, data=npy(np.array([{"a": 1}], dtype=object))),
    "bad_crc": lambda a, k: npz_with(a, k, crc=0x12345678),
    "truncated_deflate": lambda a, k: npz_with(
        a, k, deflated=True, body=deflate(npy(a[k]))[:-9], usize=len(npy(a[k]))
    ),
    "inflates_beyond": lambda a, k: npz_with(
        a, k, member=(f"{k}.npy", deflate_zeros(b"", BOMB), 8, 0, 128, 0)
    ),
    "deflate_bomb": lambda a, k: npz_with(a, k, member=bomb_member(k, (BOMB // 8,))),
    "encrypted": lambda a, k: npz_with(a, k, flags=1),
    "unknown_method": lambda a, k: npz_with(a, k, method=99),
    "size_beyond_file": lambda a, k: npz_with(a, k, member=(f"{k}.npy", b"", 8, 0, 1 << 31, 0)),
    "many_members": lambda a, k: npz_with(a, None, extra=many_members()),
    "not_npy_member": lambda a, k: npz_with(a, k, member=(k, b"raw", 0, zlib.crc32(b"raw"), 3, 0)),
    "header_too_long": lambda a, k: npz_with(
        a, k, data=b"\x93NUMPY\x02\x00" + struct.pack("<I", 1 << 20) + b" " * 64
    ),
}


# ---------------------------------------------------------------- model files

MODEL_ARRAYS = Network([4, 8, 3], seed=0).to_arrays()


@pytest.fixture
def inputs(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((5, 4), np.float32))
    return tmp_path


@pytest.mark.parametrize("variant", MEMBER_VARIANTS)
def test_model_files(inputs, variant):
    (inputs / "model.npz").write_bytes(MEMBER_VARIANTS[variant](MODEL_ARRAYS, "W1"))
    result = run(["model.npz", "x.npy", "-o", "out.npy"], inputs, module="distnn.predict")
    assert_refused(result, "model.npz")
    assert not (inputs / "out.npy").exists()


MODEL_FILES = {
    "npy_not_npz": lambda: npy(np.zeros(3)),
    "empty": lambda: b"",
    "zip_comment_only": lambda: raw_zip([]),
}


@pytest.mark.parametrize("kind", MODEL_FILES)
def test_model_files_that_are_no_archive(inputs, kind):
    (inputs / "model.npz").write_bytes(MODEL_FILES[kind]())
    assert_refused(
        run(["model.npz", "x.npy", "-o", "o.npy"], inputs, module="distnn.predict"), "model.npz"
    )


@pytest.mark.parametrize("variant", ["huge_shape", "deflate_bomb", "encrypted", "unknown_method"])
@pytest.mark.parametrize("command", ["evaluate", "init-from"])
def test_model_files_other_commands(tmp_path, variant, command):
    (tmp_path / "model.npz").write_bytes(MEMBER_VARIANTS[variant](MODEL_ARRAYS, "b1"))
    if command == "evaluate":
        result = run(
            ["model.npz", "--dataset", "synthetic:60:4:3"], tmp_path, module="distnn.evaluate"
        )
    else:
        result = run([*SMALL, "--epochs", "1", "--init-from", "model.npz"], tmp_path)
    assert_refused(result, "model.npz")


PREDICT_NPY = {
    "huge_shape": lambda: npy_header((10**12, 4)) + bytes(16),
    "truncated": lambda: npy(np.zeros((50, 4)))[:-40],
    "object_dtype": lambda: npy(np.array([{"a": 1}], dtype=object)),
    "not_npy": lambda: b"not an array at all",
}


@pytest.mark.parametrize("variant", MEMBER_VARIANTS)
def test_predict_npz_inputs(tmp_path, variant):
    """The rows to predict, as an archive: every member variant, one line, exit 2."""
    Network([4, 8, 3], seed=0).save(str(tmp_path / "model.npz"))
    x = {"x": np.zeros((5, 4))}
    (tmp_path / "rows.npz").write_bytes(MEMBER_VARIANTS[variant](x, "x"))
    result = run(["model.npz", "rows.npz", "-o", "out.npy"], tmp_path, module="distnn.predict")
    assert_refused(result, "rows.npz")
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize("variant", PREDICT_NPY)
def test_predict_npy_inputs(tmp_path, variant):
    Network([4, 8, 3], seed=0).save(str(tmp_path / "model.npz"))
    (tmp_path / "rows.npy").write_bytes(PREDICT_NPY[variant]())
    result = run(["model.npz", "rows.npy", "-o", "out.npy"], tmp_path, module="distnn.predict")
    assert_refused(result, "rows.npy")


def test_model_fortran_order_still_loads(tmp_path):
    """Not hostile: a Fortran-ordered weight matrix is a valid .npy and loads as such."""
    arrays = dict(MODEL_ARRAYS)
    arrays["W1"] = np.asfortranarray(arrays["W1"])
    np.savez(tmp_path / "model.npz", **arrays)
    net = Network.load(str(tmp_path / "model.npz"))
    assert np.array_equal(net.weights[0], MODEL_ARRAYS["W1"])


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A folder with the checkpoints of a 2-epoch run: the newest gets damaged."""
    root = tmp_path_factory.mktemp("ck")
    result = run([*SMALL, "--epochs", "2", "--checkpoint-dir", "ck"], root)
    assert result.returncode == 0, result.stderr
    paths = list_checkpoints(str(root / "ck"))
    assert len(paths) >= 2
    return root / "ck"


def _checkpoint_arrays(path: str) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _nested_json(depth: int = 100_000) -> np.ndarray:
    return np.array("[" * depth + "]" * depth)


def _params_variant(variant: Variant, arrays: dict) -> bytes:
    return variant(arrays, "params")


CHECKPOINT_VARIANTS: dict[str, Callable[[dict], bytes]] = {
    **{name: functools.partial(_params_variant, v) for name, v in MEMBER_VARIANTS.items()},
    "nested_json_config": lambda a: npz_with({**a, "config": _nested_json()}),
    "fingerprint_not_object": lambda a: npz_with({**a, "fingerprint": np.array("[1, 2]")}),
    "params_strings": lambda a: npz_with({**a, "params": a["params"].astype(str)}),
    "params_nan": lambda a: npz_with({**a, "params": a["params"] * np.nan}),
    "epoch_negative": lambda a: npz_with({**a, "epoch": np.array(-5)}),
    "step_vector": lambda a: npz_with({**a, "step": np.arange(3)}),
    "run_state_text": lambda a: npz_with({**a, "run_state": np.array('{"wall_s": "soon"}')}),
}


@pytest.mark.parametrize("variant", CHECKPOINT_VARIANTS)
def test_checkpoint_falls_back(checkpoints, tmp_path, variant):
    """A damaged newest checkpoint is skipped, by name, for the previous one."""
    shutil.copytree(checkpoints, tmp_path / "ck")
    newest = list_checkpoints(str(tmp_path / "ck"))[0]
    Path(newest).write_bytes(CHECKPOINT_VARIANTS[variant](_checkpoint_arrays(newest)))
    result = run([*NOTED, "--epochs", "3", "--checkpoint-dir", "ck", "--resume"], tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "Traceback" not in out
    skipped = [line for line in out.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and os.path.basename(newest) in skipped[0], out[-3000:]


@pytest.mark.parametrize(
    "variant, ranks",
    [("huge_shape", 1), ("deflate_bomb", 2), ("nested_json_config", 2), ("encrypted", 1)],
)
def test_checkpoint_alone_is_refused(checkpoints, tmp_path, variant, ranks):
    shutil.copytree(checkpoints, tmp_path / "ck")
    newest, *older = list_checkpoints(str(tmp_path / "ck"))
    for path in older:
        os.unlink(path)
    Path(newest).write_bytes(CHECKPOINT_VARIANTS[variant](_checkpoint_arrays(newest)))
    result = run([*SMALL, "--epochs", "3", "--checkpoint-dir", "ck", "--resume"], tmp_path, ranks)
    assert_refused(result, os.path.basename(newest))


def test_checkpoint_fifo_is_skipped(checkpoints, tmp_path):
    shutil.copytree(checkpoints, tmp_path / "ck")
    fifo = tmp_path / "ck" / "checkpoint-999999999.npz"
    os.mkfifo(fifo)
    result = run([*NOTED, "--epochs", "3", "--checkpoint-dir", "ck", "--resume"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert fifo.name in result.stdout + result.stderr


# ---------------------------------------------------------------- IDX files, gzipped or not

TI, TL = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"


def idx_header(dims: tuple, code: int = 0x08) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


def idx(a: np.ndarray) -> bytes:
    return idx_header(a.shape) + a.astype(np.uint8).tobytes()


IMAGES, LABELS = np.arange(10 * 28 * 28).reshape(10, 28, 28) % 256, np.arange(10) % 3

IDX_CASES: dict[str, tuple[str, bytes]] = {
    "images_gz_bomb": (f"{TI}.gz", gzip_raw(deflate_zeros(idx_header((10, 28, 28)), BOMB))),
    "labels_gz_bomb": (f"{TL}.gz", gzip_raw(deflate_zeros(idx_header((10,)), BOMB))),
    "absurd_dims_gz_bomb": (
        f"{TI}.gz",
        gzip_raw(deflate_zeros(idx_header((2**31, 2**31, 2**31)), BOMB)),
    ),
    "absurd_dims_plain": (TI, idx_header((2**32 - 1, 2**32 - 1, 2**32 - 1)) + bytes(100)),
    "absurd_dims_gz": (f"{TI}.gz", gzip.compress(idx_header((2**32 - 1, 4096, 4096)) + bytes(100))),
    "gz_fewer_than_promised": (f"{TI}.gz", gzip.compress(idx(IMAGES)[:4000])),
    "gz_more_than_promised": (f"{TI}.gz", gzip.compress(idx(IMAGES) + bytes(5000))),
    "gz_bad_crc": (f"{TI}.gz", gzip_raw(deflate(idx(IMAGES)), 1, len(idx(IMAGES)))),
    "gz_header_only": (f"{TI}.gz", gzip.compress(idx_header((10, 28, 28)))),
    "gz_truncated_stream": (f"{TI}.gz", gzip_raw(deflate(idx(IMAGES))[:-40])),
    "many_dims": (TI, idx_header((1,) * 255) + b"\x01"),
    "float_type_huge": (TI, idx_header((2**31, 2**31), 0x0E)),
}


@pytest.mark.parametrize("case", IDX_CASES)
def test_idx_files(tmp_path, case):
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / f"{TI}.gz").write_bytes(gzip.compress(idx(IMAGES)))
    (folder / f"{TL}.gz").write_bytes(gzip.compress(idx(LABELS)))
    name, data = IDX_CASES[case]
    for old in folder.iterdir():
        if old.name.split(".")[0] == name.split(".")[0]:
            old.unlink()
    (folder / name).write_bytes(data)
    result = run(["--dataset", "mnist", "--epochs", "1", "--quiet"], tmp_path)
    assert_refused(result, name)


def test_idx_gz_bomb_on_two_ranks(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / f"{TI}.gz").write_bytes(IDX_CASES["images_gz_bomb"][1])
    (folder / f"{TL}.gz").write_bytes(gzip.compress(idx(LABELS)))
    assert_refused(run(["--dataset", "mnist", "--epochs", "1"], tmp_path, ranks=2), TI)


# ---------------------------------------------------------------- CSV files


def _csv_bomb() -> bytes:
    line = b"0.5,0.25,1\n"
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = co.compress(b"a,b,label\n") + co.flush(zlib.Z_FULL_FLUSH)
    block = co.compress(line * ((1 << 20) // len(line))) + co.flush(zlib.Z_FULL_FLUSH)
    return gzip_raw(head + block * (BOMB >> 20) + co.flush())


def _names_bomb() -> bytes:
    """50,000 rows, each its own class name: one-hot targets of 10 GB."""
    rows = "".join(f"{i % 7},{i % 5},class{i}\n" for i in range(50_000))
    return ("a,b,label\n" + rows).encode()


CSV_CASES: dict[str, tuple[str, Callable[[], bytes]]] = {
    "gz_bomb": ("data.csv.gz", _csv_bomb),
    "huge_field_header": ("data.csv", lambda: b"a," + b"x" * 300_000 + b",label\n1,2,0\n3,4,1\n"),
    "huge_field_names": (
        "data.csv",
        lambda: b"a,b,label\n1,2,setosa\n3,4," + b"v" * 300_000 + b"\n",
    ),
    "million_columns": (
        "data.csv",
        lambda: (
            ",".join(f"c{i}" for i in range(1_000_000)) + "\n" + "1," * 999_998 + "1\n"
        ).encode(),
    ),
    "gz_not_utf8": ("data.csv.gz", lambda: gzip.compress(b"a,b,label\n\xff\xfe,1,0\n")),
    "gz_truncated": ("data.csv.gz", lambda: gzip.compress(b"a,b,label\n" + b"1,2,0\n" * 999)[:-30]),
    "one_hot_bomb": ("data.csv", _names_bomb),
    "label_one_hot_bomb": (
        "data.csv",
        lambda: ("a,label\n" + "".join(f"1,{i * 3}\n" for i in range(30_000))).encode(),
    ),
}


@pytest.mark.parametrize("case", CSV_CASES)
def test_csv_files(tmp_path, case):
    name, build = CSV_CASES[case]
    (tmp_path / name).write_bytes(build())
    assert_refused(run(["--dataset", name, "--epochs", "1", "--quiet"], tmp_path), name)


def test_csv_bomb_as_predict_input(tmp_path):
    np.savez(tmp_path / "model.npz", **MODEL_ARRAYS)
    (tmp_path / "in.csv.gz").write_bytes(_csv_bomb())
    result = run(["model.npz", "in.csv.gz", "-o", "o.npy"], tmp_path, module="distnn.predict")
    assert_refused(result, "in.csv.gz")


def test_csv_bomb_on_two_ranks(tmp_path):
    (tmp_path / "data.csv.gz").write_bytes(_csv_bomb())
    assert_refused(run(["--dataset", "data.csv.gz", "--epochs", "1"], tmp_path, 2), "data.csv.gz")


# ---------------------------------------------------------------- .npy folders, .npz data

X, Y = np.random.default_rng(0).standard_normal((20, 4)), np.arange(20) % 3
DATA = {"x": X, "y": Y}


def _npy_folder(tmp: Path, **files: bytes) -> str:
    folder = tmp / "data"
    folder.mkdir()
    np.save(folder / "x.npy", X)
    np.save(folder / "y.npy", Y)
    for name, data in files.items():
        (folder / f"{name}.npy").write_bytes(data)
    return "data"


def _sparse_int8_x(tmp: Path) -> str:
    """An honest 3 GiB int8 x.npy (a sparse file): copying it to float32 needs 12 GiB."""
    folder = tmp / "data"
    folder.mkdir()
    rows = 1 << 26
    header = npy_header((rows, 48), "|i1")
    with open(folder / "x.npy", "wb") as f:
        f.write(header)
        f.truncate(len(header) + rows * 48)
    np.save(folder / "y.npy", (np.arange(rows) % 3).astype(np.int8))
    return "data"


FOLDER_CASES: dict[str, Callable[[Path], str]] = {
    "x_huge_shape": lambda t: _npy_folder(t, x=npy_header((10**12, 4)) + bytes(64)),
    "y_huge_shape": lambda t: _npy_folder(t, y=npy_header((10**12,), "<i8") + bytes(64)),
    "x_header_too_long": lambda t: _npy_folder(
        t, x=b"\x93NUMPY\x02\x00" + struct.pack("<I", 1 << 20) + b" " * 64
    ),
    "x_zero_size_items": lambda t: _npy_folder(t, x=npy_header((10**12, 4), "|V0")),
    "x_int8_copy_too_large": _sparse_int8_x,
}
NPZ_DATA_CASES = [
    "huge_shape", "deflate_bomb", "encrypted", "unknown_method", "many_members",
    "truncated_deflate", "size_beyond_file", "not_npy_member",
]  # fmt: skip


@pytest.mark.parametrize("case", FOLDER_CASES)
def test_npy_folders(tmp_path, case):
    spec = FOLDER_CASES[case](tmp_path)
    assert_refused(run(["--dataset", spec, "--epochs", "1", "--quiet"], tmp_path), spec)


@pytest.mark.parametrize("variant", NPZ_DATA_CASES)
def test_npz_data(tmp_path, variant):
    (tmp_path / "data.npz").write_bytes(MEMBER_VARIANTS[variant](DATA, "x"))
    assert_refused(run(["--dataset", "data.npz", "--epochs", "1", "--quiet"], tmp_path), "data.npz")


def test_npz_labels_one_hot_bomb(tmp_path):
    np.savez(tmp_path / "data.npz", x=np.zeros((30_000, 2)), y=np.arange(30_000) * 3)
    assert_refused(run(["--dataset", "data.npz", "--epochs", "1"], tmp_path), "data.npz")


# ---------------------------------------------------------------- TOML

TOML_CASES: dict[str, Callable[[], bytes]] = {
    "nested_arrays": lambda: b"hidden = " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "nested_inline_tables": lambda: b"hidden = " + b"{a=" * 50_000 + b"1" + b"}" * 50_000 + b"\n",
    "huge_file": lambda: b"# padding\n" * 6_000_000 + b"epochs = 1\n",
}


@pytest.mark.parametrize("case", TOML_CASES)
def test_toml(tmp_path, case):
    (tmp_path / "run.toml").write_bytes(TOML_CASES[case]())
    assert_refused(run([*SMALL, "--epochs", "1", "--config", "run.toml"], tmp_path), "run.toml")


def test_toml_nested_on_two_ranks(tmp_path):
    (tmp_path / "run.toml").write_bytes(TOML_CASES["nested_arrays"]())
    assert_refused(run([*SMALL, "--config", "run.toml"], tmp_path, ranks=2), "run.toml")


# ---------------------------------------------------------------- not regular files


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _socket(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()


def _fifo_in_folder(name: str) -> Callable[[Path], None]:
    def build(path: Path) -> None:  # ``path`` is the folder
        path.mkdir()
        np.save(path / "x.npy", X)
        np.save(path / "y.npy", Y)
        if name.startswith("train"):
            (path / "x.npy").unlink()
            (path / "y.npy").unlink()
            (path / f"{TL}.gz").write_bytes(gzip.compress(idx(LABELS)))
        else:
            (path / name).unlink()
        os.mkfifo(path / name)

    return build


# (the path given, what it is, the command line)
NOT_REGULAR = {
    "dataset_fifo_npz": ("d.npz", _fifo, ["--dataset", "d.npz", *SMALL[2:]]),
    "dataset_fifo_csv": ("d.csv", _fifo, ["--dataset", "d.csv", *SMALL[2:]]),
    "dataset_fifo_csv_gz": ("d.csv.gz", _fifo, ["--dataset", "d.csv.gz", *SMALL[2:]]),
    "dataset_dev_zero_csv": ("d.csv", _zero, ["--dataset", "d.csv", *SMALL[2:]]),
    "dataset_socket_npz": ("d.npz", _socket, ["--dataset", "d.npz", *SMALL[2:]]),
    "folder_x_npy_fifo": ("f", _fifo_in_folder("x.npy"), ["--dataset", "f", *SMALL[2:]]),
    "folder_y_npy_fifo": ("f", _fifo_in_folder("y.npy"), ["--dataset", "f", *SMALL[2:]]),
    "folder_idx_fifo": ("f", _fifo_in_folder(TI), ["--dataset", "f", *SMALL[2:]]),
    "config_fifo": ("c.toml", _fifo, [*SMALL, "--config", "c.toml"]),
    "config_dev_zero": ("c.toml", _zero, [*SMALL, "--config", "c.toml"]),
    "init_from_fifo": ("m.npz", _fifo, [*SMALL, "--init-from", "m.npz"]),
    "init_from_dev_zero": ("m.npz", _zero, [*SMALL, "--init-from", "m.npz"]),
}


@pytest.mark.parametrize("case", NOT_REGULAR)
def test_not_regular_inputs(tmp_path, case):
    name, make, args = NOT_REGULAR[case]
    make(tmp_path / name)
    line = assert_refused(run([*args, "--epochs", "1"], tmp_path), name)
    assert "regular file" in line or TI in line, line


@pytest.mark.parametrize("make", [_fifo, _zero], ids=["fifo", "dev_zero"])
@pytest.mark.parametrize("module", ["distnn.predict", "distnn.evaluate"])
def test_not_regular_models(inputs, make, module):
    make(inputs / "m.npz")
    args = ["m.npz", "x.npy", "-o", "o.npy"]
    if module == "distnn.evaluate":
        args = ["m.npz", "--dataset", "synthetic:60:4:3"]
    assert_refused(run(args, inputs, module=module), "m.npz")


def test_not_regular_dataset_on_two_ranks(tmp_path):
    os.mkfifo(tmp_path / "d.npz")
    assert_refused(run(["--dataset", "d.npz", "--epochs", "1"], tmp_path, ranks=2), "d.npz")


# ---------------------------------------------------------------- the Python API

API = """
import sys, distnn
try:
    if sys.argv[1] == "load":
        distnn.Network.load(sys.argv[2])
    else:
        distnn.fit(distnn.Network([2, 4, 3]), sys.argv[2], epochs=1, verbose=0)
except distnn.DistnnError as e:
    print("DistnnError:", e)
    sys.exit(2)
"""


@pytest.mark.parametrize(
    "call, name, build",
    [
        (
            "load",
            "m.npz",
            lambda p: p.write_bytes(MEMBER_VARIANTS["deflate_bomb"](MODEL_ARRAYS, "W1")),
        ),
        (
            "load",
            "m.npz",
            lambda p: p.write_bytes(MEMBER_VARIANTS["encrypted"](MODEL_ARRAYS, "W1")),
        ),
        ("load", "m.npz", _fifo),
        ("fit", "d.csv.gz", lambda p: p.write_bytes(_csv_bomb())),
        ("fit", "d.npz", lambda p: p.write_bytes(MEMBER_VARIANTS["huge_shape"](DATA, "x"))),
    ],
    ids=["load_bomb", "load_encrypted", "load_fifo", "fit_csv_bomb", "fit_npz_huge_shape"],
)
def test_python_api(tmp_path, call, name, build):
    build(tmp_path / name)
    try:
        result = subprocess.run(
            [sys.executable, "-c", API, call, name],
            capture_output=True,
            text=True,
            timeout=HANG_GUARD,
            cwd=tmp_path,
            preexec_fn=_limit_memory,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{call} {name} hung")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stdout.startswith("DistnnError:") and name in result.stdout, result.stdout
    assert "\n" not in result.stdout.strip()
