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
import zipfile
import zlib

import numpy as np

from distnn.data.dataset import Dataset, Source, from_arrays
from distnn.errors import DistnnError

KEYS = ("x", "y", "x_test", "y_test")
# What np.load / zipfile / numpy's .npy reader raise on files that are not valid npz data.
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, MemoryError)
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


def _detail(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ---------------------------------------------------------------- .npz


def load_npz(path: str, ftype: np.dtype) -> Dataset:
    if _IDX_NAME.fullmatch(os.path.basename(path)):
        raise DistnnError(
            f"{path}: is one IDX file; pass the directory that holds the MNIST-style set"
        )
    return from_arrays(Source(path), _read_npz(path), ftype)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """Read every array of the archive, turning each kind of failure into a DistnnError."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, after np.load
    except OSError as exc:
        raise DistnnError(f"{path}: cannot open file ({exc.strerror or exc})") from None
    with handle:
        try:
            archive = np.load(handle, allow_pickle=False)
        except _READ_ERRORS as exc:
            detail = _detail(exc)
            if "allow_pickle" in detail:  # np.load's last guess for non-zip, non-.npy files
                detail = "neither a zip archive nor a .npy array"
            raise DistnnError(f"{path}: not a valid .npz file ({detail})") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DistnnError(
                f"{path}: is a single .npy array, not an .npz archive; save with "
                "np.savez(path, x=..., y=...), or pass a directory holding x.npy and y.npy"
            )
        with archive:
            keys = list(archive.files)
            for key in ("x", "y"):
                if key not in keys:
                    raise DistnnError(
                        f"{path}: missing array '{key}' (found: {', '.join(keys) or 'none'})"
                    )
            _check_test_pair(path, "x_test" in keys, "y_test" in keys, "'x_test'", "'y_test'")
            arrays = {}
            for key in (k for k in KEYS if k in keys):
                try:
                    arrays[key] = archive[key]
                except _READ_ERRORS as exc:
                    if isinstance(exc, ValueError) and "allow_pickle" in str(exc):
                        raise DistnnError(
                            f"{path}: array '{key}' has dtype object (ragged or "
                            "pickled data is not supported)"
                        ) from None
                    raise DistnnError(
                        f"{path}: array '{key}' is corrupt ({_detail(exc)})"
                    ) from None
    return arrays


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
    try:
        a = np.load(file, mmap_mode="r", allow_pickle=False)
    except _READ_ERRORS as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise DistnnError(f"{file}: cannot open file ({exc.strerror or exc})") from None
        detail = _detail(exc)
        if "Python objects" in detail or "Object arrays" in detail:
            raise DistnnError(
                f"{file}: has dtype object (ragged or pickled data is not supported)"
            ) from None
        if "allow_pickle" in detail:  # np.load's last guess for files that are not .npy
            detail = "no .npy header"
        elif "mmap length" in detail:
            detail = "truncated: less data than its header announces"
        raise DistnnError(f"{file}: not a valid .npy file ({detail})") from None
    if isinstance(a, np.lib.npyio.NpzFile):
        a.close()
        raise DistnnError(f"{file}: is an .npz archive, not a single .npy array")
    return a


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
        a = _read_idx(file)
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


def _read_idx(file: str) -> np.ndarray:
    """Parse one IDX file: magic (0, 0, type code, number of dims), big-endian dims, data."""
    try:
        if file.endswith(".gz"):
            with gzip.open(file, "rb") as f:
                data = f.read()
        else:
            with open(file, "rb") as f:
                data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise DistnnError(f"{file}: cannot open file ({exc.strerror or exc})") from None
        raise DistnnError(f"{file}: not a valid gzip file ({_detail(exc)})") from None
    if len(data) < 4 or data[0] or data[1] or data[2] not in _IDX_TYPES or not data[3]:
        hint = "; it is gzip data: name it .gz" if data[:2] == b"\x1f\x8b" else ""
        raise DistnnError(
            f"{file}: not an IDX file (bad magic number {data[:4].hex(' ') or 'none'}: "
            f"expected 00 00, a type code 08-0e and the number of dimensions){hint}"
        )
    n_dims = data[3]
    start = 4 + 4 * n_dims
    if len(data) < start:
        raise DistnnError(f"{file}: truncated IDX header ({n_dims} dimensions announced)")
    dims = struct.unpack(f">{n_dims}I", data[4:start])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    count = math.prod(dims)
    need, have = count * dtype.itemsize, len(data) - start
    if have != need:
        shape = " x ".join(map(str, dims))
        what = "truncated" if have < need else f"{have - need} bytes too long"
        raise DistnnError(
            f"{file}: {what}: the header announces {shape} {dtype.name} values "
            f"({need:,} bytes) but {have:,} bytes of data follow"
        )
    return np.frombuffer(data, dtype, count, start).reshape(dims)
