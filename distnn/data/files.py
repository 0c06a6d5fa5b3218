"""Binary data files: an ``.npz`` archive, or a directory of ``.npy`` pairs or IDX files.

* ``.npz``: arrays ``x``, ``y`` and optionally ``x_test``, ``y_test``.
* a directory with ``x.npy``, ``y.npy`` (optionally ``x_test.npy``, ``y_test.npy``):
  the ``x`` arrays are memory-mapped, and kept mapped when they already are C-ordered
  arrays of the requested float dtype, so ranks on one node share the page cache.
* a directory with MNIST-style IDX files (MNIST, Fashion-MNIST, EMNIST):
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each optionally ``.gz``, with ``.idx3-ubyte``-style dotted
  names, ``test`` for ``t10k`` and a name prefix (``emnist-digits-``) accepted too.

All of them end in :func:`distnn.data.dataset.from_arrays`, which validates the arrays.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
from typing import BinaryIO

import numpy as np

from distnn.data.dataset import Dataset, Source, from_arrays
from distnn.errors import DistnnError, one_line
from distnn.io.memory_room import check_fits
from distnn.io.safe_read import (
    READ_ERRORS,
    NotArchiveError,
    NotNpyError,
    Npz,
    ObjectArrayError,
    TruncatedError,
    npy_header,
    open_regular,
)

KEYS = ("x", "y", "x_test", "y_test")
NPY_FILES = {key: f"{key}.npy" for key in KEYS}
IDX_FILES = {  # canonical names, for messages
    "x": "train-images-idx3-ubyte",
    "y": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_NAME = re.compile(
    r"(?P<prefix>.*?)(?P<split>train|t10k|test)-(?P<kind>images|labels)[-.]idx\d-ubyte(\.gz)?"
)
_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
EXPECTED_IN_DIR = (
    "expected x.npy and y.npy (optionally x_test.npy and y_test.npy), or MNIST-style IDX "
    f"files {', '.join(IDX_FILES.values())} (each optionally .gz)"
)


# ---------------------------------------------------------------- .npz


def load_npz(path: str, ftype: np.dtype) -> Dataset:
    if _IDX_NAME.fullmatch(os.path.basename(path)):
        raise DistnnError(
            f"{path}: is one IDX file; pass the directory that holds the MNIST-style set"
        )
    return from_arrays(Source(path), _read_npz(path), ftype)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """Read the data arrays of the archive, every size checked against the file and the
    memory before it is read; each kind of failure is a DistnnError naming the file."""
    try:
        archive = Npz(path, "data file")
    except OSError as exc:
        raise DistnnError(f"{path}: cannot open file ({exc.strerror or exc})") from None
    except NotArchiveError as exc:
        if _starts_with(path, b"\x93NUMPY"):
            raise DistnnError(
                f"{path}: is a single .npy array, not an .npz archive; save with "
                "np.savez(path, x=..., y=...), or pass a directory holding x.npy and y.npy"
            ) from None
        detail = exc.detail
        if "not a zip file" in detail:
            detail = "neither a zip archive nor a .npy array"
        raise DistnnError(f"{path}: not a valid .npz file ({detail})") from None
    with archive:
        keys = list(archive.files)
        for key in ("x", "y"):
            if key not in keys:
                raise DistnnError(
                    f"{path}: missing array '{key}' (found: {', '.join(keys) or 'none'})"
                )
        _check_test_pair(path, "x_test" in keys, "y_test" in keys, "'x_test'", "'y_test'")
        present = [k for k in KEYS if k in keys]
        try:
            return archive.read_all(present)
        except ObjectArrayError as exc:
            raise DistnnError(
                f"{path}: array '{exc.key}' has dtype object (ragged or pickled data is "
                "not supported)"
            ) from None


def _starts_with(path: str, magic: bytes) -> bool:
    try:
        with open_regular(path) as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def _check_test_pair(where: str, has_x: bool, has_y: bool, x_name: str, y_name: str) -> None:
    if has_x != has_y:
        have, lack = (x_name, y_name) if has_x else (y_name, x_name)
        raise DistnnError(f"{where}: has {have} but no {lack} (give both or neither)")


# ---------------------------------------------------------------- directories


def load_directory(path: str, ftype: np.dtype) -> Dataset:
    """A directory of ``.npy`` pairs (if it holds ``x.npy``) or of IDX files."""
    try:
        names = set(os.listdir(path))
    except OSError as exc:
        raise DistnnError(f"{path}: cannot list directory ({exc.strerror or exc})") from None
    if "x.npy" in names:
        return _load_npy_dir(path, names, ftype)
    if any(_IDX_NAME.fullmatch(name) for name in names):
        return _load_idx_dir(path, names, ftype)
    lack = " (has y.npy but no x.npy)" if "y.npy" in names else ""
    raise DistnnError(f"{path}: directory holds no data set{lack}; {EXPECTED_IN_DIR}")


def _load_npy_dir(path: str, names: set[str], ftype: np.dtype) -> Dataset:
    present = [key for key in KEYS if NPY_FILES[key] in names]
    if "y" not in present:
        raise DistnnError(f"{path}: has x.npy but no y.npy")
    _check_test_pair(path, "x_test" in present, "y_test" in present, "x_test.npy", "y_test.npy")
    arrays = {key: _open_npy(os.path.join(path, NPY_FILES[key])) for key in present}
    notes = []
    for key in present:
        a = arrays[key]
        if key.startswith("y"):
            check_fits(a.nbytes, os.path.join(path, NPY_FILES[key]), "reading it")
            arrays[key] = np.array(a)  # labels or targets: small, read whole
        elif a.dtype.kind in "biuf" and (a.dtype != ftype or not a.flags.c_contiguous):
            layout = "" if a.flags.c_contiguous else ", not C-ordered,"
            notes.append(
                f"{path}: {NPY_FILES[key]} is {a.dtype}{layout} so it was copied into memory "
                f"as {ftype} ({a.size * ftype.itemsize / 2**20:,.1f} MiB on every rank) "
                f"instead of memory-mapped; save it as C-ordered {ftype} "
                f"(np.save(path, np.ascontiguousarray(x, dtype=np.{ftype}))) to share one "
                "copy in the page cache"
            )
    return from_arrays(Source(path, NPY_FILES), arrays, ftype, tuple(notes))


def _open_npy(file: str) -> np.ndarray:
    """The array of ``file``, memory-mapped once its header has been checked against the
    file (a header promising more than the file holds is refused, not mapped)."""
    try:
        shape, dtype, fortran, offset = npy_header(file)
    except OSError as exc:
        raise DistnnError(f"{file}: cannot open file ({exc.strerror or exc})") from None
    except ObjectArrayError:
        raise DistnnError(
            f"{file}: has dtype object (ragged or pickled data is not supported)"
        ) from None
    except NotNpyError as exc:
        if _starts_with(file, b"PK"):
            raise DistnnError(f"{file}: is an .npz archive, not a single .npy array") from None
        detail = "no .npy header" if exc.no_header else exc.detail
        raise DistnnError(f"{file}: not a valid .npy file ({detail})") from None
    except TruncatedError as exc:
        raise DistnnError(f"{file}: not a valid .npy file ({exc.detail})") from None
    if 0 in shape:
        return np.empty(shape, dtype)
    try:
        return np.memmap(file, dtype, "r", offset, shape, "F" if fortran else "C")
    except READ_ERRORS as exc:
        raise DistnnError(f"{file}: cannot map the file ({one_line(exc)})") from None


# ---------------------------------------------------------------- IDX (MNIST)


def _idx_role(name: str) -> str | None:
    match = _IDX_NAME.fullmatch(name)
    if match is None:
        return None
    key = "x" if match["kind"] == "images" else "y"
    return key if match["split"] == "train" else f"{key}_test"


def _find_idx(path: str, names: set[str]) -> dict[str, str]:
    """The IDX file of each role (x, y, x_test, y_test) found in the directory."""
    found: dict[str, list[str]] = {key: [] for key in KEYS}
    nested: dict[str, list[str]] = {key: [] for key in KEYS}
    for name in sorted(names):
        role = _idx_role(name)
        if role is None:
            continue
        if not os.path.isdir(os.path.join(path, name)):
            found[role].append(name)
        elif os.path.isfile(os.path.join(path, name, name)):  # Kaggle: a folder per file
            nested[role].append(os.path.join(name, name))
    chosen = {}
    for key in KEYS:
        cands = found[key] or nested[key]
        # a file both gunzipped and not is one file: take the plain one
        cands = [c for c in cands if not (c.endswith(".gz") and c[:-3] in cands)]
        if len(cands) > 1:
            raise DistnnError(
                f"{path}: {len(cands)} IDX files could be {IDX_FILES[key]}: "
                f"{', '.join(cands)}; keep one set per directory"
            )
        if cands:
            chosen[key] = cands[0]
    return chosen


def _load_idx_dir(path: str, names: set[str], ftype: np.dtype) -> Dataset:
    files = _find_idx(path, names)
    lack = [IDX_FILES[key] for key in ("x", "y") if key not in files]
    if lack:
        raise DistnnError(
            f"{path}: missing the IDX training file{'s' if len(lack) > 1 else ''} "
            f"{' and '.join(lack)} (optionally .gz; found {', '.join(files.values())})"
        )
    x_test, y_test = (files.get(key, IDX_FILES[key]) for key in ("x_test", "y_test"))
    _check_test_pair(path, "x_test" in files, "y_test" in files, x_test, y_test)
    arrays = {}
    for key, name in files.items():
        file = os.path.join(path, name)
        a = _read_idx(file, ftype.itemsize if key.startswith("x") else 8)
        if key.startswith("x"):
            if a.ndim < 2:
                raise DistnnError(
                    f"{file}: holds shape {a.shape}, not images (need count x rows x cols)"
                )
            a = a.reshape(a.shape[0], -1)
            if a.dtype == np.uint8:  # pixels 0..255 → [0, 1]
                a = a.astype(ftype)
                a /= ftype.type(255)
        elif a.ndim != 1:
            raise DistnnError(f"{file}: holds shape {a.shape}, not labels (need one dimension)")
        arrays[key] = a
    notes = () if "x_test" in files else (f"{path}: no t10k test files; no test set",)
    return from_arrays(Source(path, files), arrays, ftype, notes)


def _read_idx(file: str, out_itemsize: int) -> np.ndarray:
    """Parse one IDX file: magic (0, 0, type code, number of dims), big-endian dims, data.

    The header is read first; the data it announces is checked against the file's size
    (plain) and the memory (with ``out_itemsize`` bytes per value for the conversion
    that follows), then streamed: a gzip that inflates beyond what the header promises
    stops there."""
    try:
        raw = open_regular(file)
    except OSError as exc:
        raise DistnnError(f"{file}: cannot open file ({exc.strerror or exc})") from None
    gz = file.endswith(".gz")
    with raw:
        try:
            f = gzip.GzipFile(fileobj=raw) if gz else raw
            with f:
                return _parse_idx(file, f, os.fstat(raw.fileno()).st_size, gz, out_itemsize)
        except (*READ_ERRORS, struct.error) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise DistnnError(f"{file}: cannot read file ({exc.strerror or exc})") from None
            raise DistnnError(f"{file}: not a valid gzip file ({one_line(exc)})") from None


def _parse_idx(file: str, f: BinaryIO, size: int, gz: bool, out_itemsize: int) -> np.ndarray:
    magic = f.read(4)
    if len(magic) < 4 or magic[0] or magic[1] or magic[2] not in _IDX_TYPES or not magic[3]:
        hint = "; it is gzip data: name it .gz" if magic[:2] == b"\x1f\x8b" else ""
        raise DistnnError(
            f"{file}: not an IDX file (bad magic number {magic.hex(' ') or 'none'}: "
            f"expected 00 00, a type code 08-0e and the number of dimensions){hint}"
        )
    n_dims = magic[3]
    head = f.read(4 * n_dims)
    if len(head) < 4 * n_dims:
        raise DistnnError(f"{file}: truncated IDX header ({n_dims} dimensions announced)")
    dims = struct.unpack(f">{n_dims}I", head)
    dtype = np.dtype(_IDX_TYPES[magic[2]])
    count = math.prod(dims)
    need = count * dtype.itemsize
    shape = " x ".join(map(str, dims))

    def wrong(have: int, more: bool = False) -> DistnnError:
        what = "truncated" if have < need else f"{have - need:,} bytes too long"
        if more:
            what = "more data than the header announces"
        return DistnnError(
            f"{file}: {what}: the header announces {shape} {dtype.name} values "
            f"({need:,} bytes) but {'more than ' if more else ''}{have:,} bytes of data follow"
        )

    if not gz and size - 4 - 4 * n_dims != need:
        raise wrong(size - 4 - 4 * n_dims)
    check_fits(need + count * out_itemsize, file, f"{shape} {dtype.name} values")
    buf = bytearray(need)
    view, done = memoryview(buf), 0
    while done < need:
        got = f.readinto(view[done : done + (1 << 24)])
        if not got:
            raise wrong(done)
        done += got
    if f.read(1):  # a gzip bomb stops here, one byte past the promise
        raise wrong(need, more=True)
    return np.frombuffer(buf, dtype, count).reshape(dims)
