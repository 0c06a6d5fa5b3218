"""Reading files anyone can write, in bounded time and memory, with one-line errors.

Models, checkpoints and data files are read by the helpers here, never by a bare
``open`` or ``np.load``:

* :func:`open_regular` opens without blocking and refuses what is not a regular file
  (a FIFO would block forever, ``/dev/zero`` never ends, a device may have side effects).
* :class:`Npz` reads an ``.npz`` archive member by member: each ``.npy`` header is
  parsed first and its announced size checked against the member's declared size,
  the archive's size and the memory available, *before* anything is allocated; object
  arrays (pickle) are refused; a member that inflates beyond its declared size is cut
  there (and its CRC then fails).
* :func:`npy_header` checks a lone ``.npy`` file's header against the file before it
  is memory-mapped.
* :func:`read_limited` reads a (possibly gzipped) file whole, stopping as soon as it
  gives more bytes than the caller can hold (a gzip bomb costs a fraction of a second).

Every failure of the underlying readers (``OSError``, ``zipfile.BadZipFile``,
``zlib.error``, ``EOFError``, ``struct.error``, ``MemoryError`` …) is a
:class:`~distnn.errors.DistnnError` naming the file.
"""

from __future__ import annotations

import gzip
import math
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Iterable
from typing import BinaryIO

import numpy as np

from distnn.errors import DistnnError, one_line
from distnn.io.memory_room import check_fits, size_text

# What the standard readers raise on a damaged or hostile file (never a bug of ours).
READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    TypeError,
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    NotImplementedError,  # zip: an unsupported compression method
    RuntimeError,  # zip: an encrypted member
    MemoryError,
    OverflowError,
    RecursionError,
)
MAX_MEMBERS = 10_000  # an .npz holding more is not one distnn wrote or reads
MAX_NPY_HEADER = 10_000  # numpy's own limit for a .npy header it reads safely
_CHUNK = 1 << 24  # bytes per read while streaming


_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISREG, "a regular file"),
)


def file_kind(mode: int) -> str:
    """What a file of ``os.stat`` mode ``mode`` is, as a message names it."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str) -> BinaryIO:
    """``path`` opened for reading in binary; DistnnError unless it is a regular file.

    Opened non-blocking and checked on the open descriptor, so a FIFO (or a file
    swapped for one) never blocks. ``OSError`` (missing, unreadable) is left to the
    caller, who knows how to name what is missing.
    """
    check_regular(path)  # a socket cannot even be opened: say what it is
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = file_kind(mode)
            raise DistnnError(f"{path}: is {kind}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular(path: str) -> None:
    """DistnnError if ``path`` exists and is not a regular file (FIFO, device, socket)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise DistnnError(f"{path}: is {file_kind(mode)}, not a regular file")


# ---------------------------------------------------------------- .npy headers


class NotNpyError(DistnnError):
    """Not a ``.npy`` array: ``detail`` says why; ``no_header``: not even .npy's magic."""

    def __init__(self, where: str, detail: str, no_header: bool) -> None:
        super().__init__(f"{where}: not a valid .npy array ({detail})")
        self.detail, self.no_header = detail, no_header


class ObjectArrayError(DistnnError):
    """An array of dtype object (pickled data, never read); ``key``: the archive member."""

    def __init__(self, where: str, key: str | None = None) -> None:
        super().__init__(f"{where}: has dtype object (pickled data is not read)")
        self.key = key


class TruncatedError(DistnnError):
    """A ``.npy`` file holding less data than its header announces."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"{path}: truncated: {detail}")
        self.detail = f"truncated: {detail}"


class NotArchiveError(DistnnError):
    """A file that is not a readable zip archive; ``detail`` says why."""

    def __init__(self, path: str, what: str, detail: str) -> None:
        super().__init__(f"{path}: not a readable {what} ({detail})")
        self.detail = detail


def _read_header(
    fp: BinaryIO, where: str, key: str | None = None
) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """(shape, dtype, Fortran order, data bytes) from a .npy header at ``fp``'s position;
    DistnnError (naming ``where``) for anything distnn will not allocate."""
    try:
        version = np.lib.format.read_magic(fp)
    except (zlib.error, zipfile.BadZipFile, EOFError) as exc:  # the compressed data
        raise DistnnError(f"{where} is corrupt ({one_line(exc)})") from None
    except READ_ERRORS as exc:
        raise NotNpyError(where, one_line(exc), no_header=True) from None
    try:
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp, MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp, MAX_NPY_HEADER)
        else:
            raise DistnnError(f"{where}: .npy format version {version} is not supported")
    except DistnnError:
        raise
    except (zlib.error, zipfile.BadZipFile, EOFError) as exc:  # the compressed data
        raise DistnnError(f"{where} is corrupt ({one_line(exc)})") from None
    except READ_ERRORS as exc:
        raise NotNpyError(where, one_line(exc), no_header=False) from None
    if dtype.hasobject:
        raise ObjectArrayError(where, key)
    if any(n < 0 for n in shape):
        raise DistnnError(f"{where}: negative dimension in shape {shape}")
    if dtype.itemsize == 0:
        raise DistnnError(f"{where}: dtype {dtype} has zero-size items")
    return shape, dtype, fortran, math.prod(shape) * dtype.itemsize


def _announces(shape: tuple[int, ...], dtype: np.dtype, nbytes: int) -> str:
    return f"its header announces shape {shape} {dtype} ({size_text(nbytes)})"


def npy_header(path: str) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """(shape, dtype, Fortran order, data offset) of the ``.npy`` file ``path``, checked:
    a regular file whose data is at least as long as the header announces."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        shape, dtype, fortran, nbytes = _read_header(f, path)
        offset = f.tell()
    if size - offset < nbytes:
        raise TruncatedError(
            path,
            f"{_announces(shape, dtype, nbytes)} but the file holds "
            f"{size_text(max(0, size - offset))} of data",
        )
    return shape, dtype, fortran, offset


# ---------------------------------------------------------------- .npz archives


class Npz:
    """An ``.npz`` archive read member by member, every size checked before it is
    allocated. ``what`` names the kind of file in messages ("model file", …)."""

    def __init__(self, path: str, what: str) -> None:
        self.path, self.what = path, what
        self._file = open_regular(path)
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            self._zip = zipfile.ZipFile(self._file)
            infos = self._zip.infolist()
        except DistnnError:
            self._file.close()
            raise
        except READ_ERRORS as exc:
            self._file.close()
            raise NotArchiveError(path, what, one_line(exc)) from None
        if len(infos) > MAX_MEMBERS:
            self.close()
            raise DistnnError(
                f"{path}: not a {what}: its zip directory lists {len(infos):,} members "
                f"(at most {MAX_MEMBERS:,} are read)"
            )
        self._members = {info.filename.removesuffix(".npy"): info for info in infos}
        self.files = list(self._members)

    def __enter__(self) -> Npz:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._zip.close()
        finally:
            self._file.close()

    def _where(self, key: str) -> str:
        return f"{self.path}: array '{key}'"

    def _open(self, key: str) -> tuple[BinaryIO, tuple, np.dtype, bool, int]:
        info = self._members[key]
        where = self._where(key)
        if not info.filename.endswith(".npy"):
            raise DistnnError(f"{where}: member {info.filename!r} is not a .npy array")
        if info.header_offset + info.compress_size > self.size:
            raise DistnnError(
                f"{where}: damaged: its zip entry claims {size_text(info.compress_size)} "
                f"beyond the file's {size_text(self.size)}"
            )
        try:
            fp = self._zip.open(info)
        except READ_ERRORS as exc:
            raise DistnnError(f"{where}: cannot be read ({one_line(exc)})") from None
        try:
            shape, dtype, fortran, nbytes = _read_header(fp, where, key)
            header = fp.tell()
        except BaseException:
            fp.close()
            raise
        if header + nbytes != info.file_size:
            fp.close()
            raise DistnnError(
                f"{where}: damaged: {_announces(shape, dtype, nbytes)} but the member holds "
                f"{size_text(max(0, info.file_size - header))} of data"
            )
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            fp.close()
            raise DistnnError(f"{where}: damaged zip entry (stored sizes differ)")
        return fp, shape, dtype, fortran, nbytes

    def nbytes(self, keys: Iterable[str]) -> int:
        """The bytes the arrays ``keys`` announce (every header checked, nothing read)."""
        total = 0
        for key in keys:
            fp, *_, nbytes = self._open(key)
            fp.close()
            total += nbytes
        return total

    def read(self, key: str) -> np.ndarray:
        """Array ``key``; its size is checked against the memory available first."""
        fp, shape, dtype, fortran, nbytes = self._open(key)
        where = self._where(key)
        with fp:
            check_fits(nbytes, self.path, f"array '{key}' ({shape} {dtype})")
            try:
                buf = bytearray(nbytes)
                view, done = memoryview(buf), 0
                while done < nbytes:
                    got = fp.readinto(view[done : done + _CHUNK])
                    if not got:
                        raise DistnnError(
                            f"{where} is corrupt (truncated: {done:,} of {nbytes:,} bytes)"
                        )
                    done += got
                if fp.read(1):  # also checks the CRC, at the member's end
                    raise DistnnError(f"{where} is corrupt (more data than its header announces)")
            except DistnnError:
                raise
            except READ_ERRORS as exc:
                raise DistnnError(f"{where} is corrupt ({one_line(exc)})") from None
        return np.frombuffer(buf, dtype).reshape(shape, order="F" if fortran else "C")

    def read_all(self, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Arrays ``keys`` (default: every member), after checking that all of them fit."""
        keys = list(self.files if keys is None else keys)
        total = self.nbytes(keys)
        check_fits(total, self.path, f"this {self.what}")
        return {key: self.read(key) for key in keys}


def read_npz(path: str, what: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``; DistnnError naming it for any problem
    (``FileNotFoundError`` and other ``OSError``s opening it are left to the caller)."""
    with Npz(path, what) as archive:
        return archive.read_all()


# ---------------------------------------------------------------- whole files


def is_gzip(path: str) -> bool:
    return path.lower().endswith(".gz")


def read_limited(path: str, limit: int, what: str) -> bytes:
    """The bytes of ``path`` (gunzipped if it ends in ``.gz``), at most ``limit`` of them:
    DistnnError as soon as there are more (a gzip bomb stops there), or for damaged
    gzip data. ``OSError`` opening the file is left to the caller."""
    with open_regular(path) as raw:
        size = os.fstat(raw.fileno()).st_size
        if not is_gzip(path) and size > limit:
            raise DistnnError(
                f"{path}: {size_text(size)} is too large for {what} (at most "
                f"{size_text(limit)} here)"
            )
        try:
            stream = gzip.GzipFile(fileobj=raw) if is_gzip(path) else raw
            parts, total = [], 0
            while chunk := stream.read(min(_CHUNK, limit + 1 - total)):
                parts.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise DistnnError(
                        f"{path}: inflates to more than {size_text(limit)}, too large for "
                        f"{what} here"
                    )
            return b"".join(parts)
        except DistnnError:
            raise
        except READ_ERRORS as exc:
            kind = "gzip file" if is_gzip(path) else "file"
            raise DistnnError(f"{path}: not a valid {kind} ({one_line(exc)})") from None
