"""Writing output files: whole or not at all, never over an input, into a folder that works.

Every file distnn writes (models, checkpoints, predictions, evaluation JSON, plots)
goes through :func:`atomic_write`: the bytes go to a temporary file beside the target,
are fsynced, get the permissions of a normal new file, and replace the target by
rename, and the rename is made durable by fsyncing the directory. A crash or an error
mid-write therefore leaves the old file (or none), never half of one.

The ``check_*`` functions let a command refuse an output it could not write *before*
it does the work (hours of training, a long prediction), with one line that names the
option and the path.

An output is a regular file (or, for an output folder, a directory). A path that exists
as anything else (a device such as ``/dev/null``, a FIFO, a socket, or a symbolic link
to one of those, such as ``/dev/stdout``) is refused (:func:`refuse_special`): an atomic
replace would swap the device or the link for a regular file (as root, ``/dev/null``
for the whole machine), and opening a FIFO waits for a reader forever. A symbolic link
to a regular file (or to a place where none exists yet) is followed: the file it names
is written, atomically, in that file's folder, and the link stays a link to it; this is
also how inputs are compared with outputs (resolved). A path that is this process's
own stdin, stdout or stderr (``/dev/stdout`` while stdout is a file) is refused too.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import IO

import numpy as np

from distnn.errors import DistnnError
from distnn.io.safe_read import file_kind

__all__ = [
    "atomic_savez",
    "atomic_write",
    "check_no_clash",
    "check_output_path",
    "check_writable_dir",
    "refuse_overwrite",
    "refuse_special",
]


def refuse_overwrite(path: str, inputs: Sequence[str]) -> None:
    """DistnnError if ``path`` is one of the files ``inputs``.

    Compared by identity (``os.path.samefile``), not by name, so ``./x.npy``, a symbolic
    link or a hard link to an input is refused too.
    """
    if not os.path.exists(path):
        return  # a new file cannot be an input
    for other in inputs:
        if os.path.exists(other) and os.path.samefile(path, other):
            raise DistnnError(f"{path}: refusing to overwrite the input {other}")


def _own_stream(st: os.stat_result) -> str | None:
    """The name of this process's standard stream that is the file ``st``, if any."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            own = os.fstat(fd)
        except OSError:
            continue
        if (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino):
            return name
    return None


def refuse_special(path: str, who: str | None = None, *, folder: bool = False) -> None:
    """DistnnError (one line, naming ``who``) if ``path`` exists as something an output
    may not replace: a device, a FIFO, a socket, a symbolic link to one of those, or
    this process's own stdin/stdout/stderr.

    A directory, or for an output folder a regular file, is left to the callers' own
    messages ("is a directory", "not a directory"); ``folder`` only words the refusal.
    A missing path, or a symbolic link to a missing one, is fine: it will be
    created. Only ``stat`` calls: the path is never opened, so a FIFO cannot block.
    """
    who = who or path
    try:
        st = os.stat(path)  # follows symbolic links, as writing would
    except OSError:
        return  # nothing there (or a dangling link): a new file, checked by its folder
    mode = st.st_mode
    allowed = stat.S_ISDIR(mode) or stat.S_ISREG(mode)
    via = f" (a symbolic link to {os.readlink(path)})" if os.path.islink(path) else ""
    if not allowed:
        raise DistnnError(
            f"{who}: is {file_kind(mode)}{via}, not "
            + ("a folder: refusing to write into it (choose a folder)" if folder else
               "a regular file: refusing to replace it (choose a file name)")
        )  # fmt: skip
    stream = _own_stream(st) if stat.S_ISREG(mode) else None
    if stream:
        raise DistnnError(
            f"{who}: is this process's {stream}{via}: refusing to replace it "
            "(choose a file name; redirect the output stream instead)"
        )


def _write_target(path: str) -> str:
    """Where writing ``path`` lands: the file a symbolic link names, else ``path`` itself."""
    return os.path.realpath(path) if os.path.islink(path) else path


def _label(path: str, option: str | None) -> str:
    """How a message names an output: ``-o out.npy``, or the bare path."""
    return f"{option} {path}" if option else path


def _require_dir(directory: str, who: str, create: bool) -> None:
    """DistnnError unless ``directory`` is an existing directory (made first if ``create``)."""
    if create:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise DistnnError(f"{who}: cannot write to {directory} ({e.strerror or e})") from None
    if os.path.isdir(directory):
        return
    if os.path.exists(directory):
        raise DistnnError(f"{who}: cannot write to {directory} (not a directory)")
    raise DistnnError(f"{who}: no such directory {directory}")


def _require_target(path: str, who: str, create: bool = False) -> str:
    """The absolute folder of the output file ``path``, after refusing impossible targets."""
    if os.path.isdir(path):
        raise DistnnError(f"{who}: is a directory; give a file name")
    directory = os.path.dirname(os.path.abspath(path))
    _require_dir(directory, who, create)
    return directory


def _probe(directory: str, who: str) -> None:
    """DistnnError unless a file can be created in ``directory``.

    Proven by creating (and removing) a nameless temporary file, because permission
    bits alone do not tell (read-only mounts, ACLs, root).
    """
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise DistnnError(f"{who}: cannot write to {directory} ({e.strerror or e})") from None


def check_writable_dir(directory: str, option: str | None = None, *, create: bool = False) -> None:
    """DistnnError (one line, naming ``option``) unless files can be created in ``directory``.

    With ``create`` the folder (and its parents) is made first, as training does for
    ``--checkpoint-dir``.
    """
    who = option or directory
    refuse_special(directory, _label(directory, option), folder=True)
    _require_dir(directory, who, create)
    _probe(directory, who)


def check_output_path(path: str, option: str | None = None, *, create: bool = False) -> None:
    """DistnnError (one line, naming ``option`` and ``path``) unless a file ``path`` could be
    written: not a directory, in a folder that exists (or is made, with ``create``) and
    is writable; not a device, FIFO, socket or a link to one (:func:`refuse_special`).
    A symbolic link to a regular file is checked where it leads."""
    who = _label(path, option)
    refuse_special(path, who)
    _probe(_require_target(_write_target(path), who, create), who)


def _umask() -> int:
    # The only portable way to read the umask is to set it and put it back.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(
    path: str, write: Callable[[IO[bytes]], None], protect: Sequence[str] = ()
) -> None:
    """Write ``path`` through ``write(file)`` so that it is always whole or as before.

    Refuses (DistnnError) to replace any file in ``protect`` (the inputs), a directory,
    a device, FIFO or socket (or a link to one), or a file in a folder that does not
    exist. A symbolic link to a regular file is followed: the file it names is
    replaced, the link is kept. An OSError while writing becomes a one-line
    DistnnError; whatever goes wrong, the temporary file is removed.
    """
    refuse_overwrite(path, protect)
    refuse_special(path)
    target = _write_target(path)
    directory = _require_target(target, path)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(target))
    except OSError as e:
        raise DistnnError(f"{path}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 is for secrets: a normal new file
        os.replace(tmp, target)  # a link's file, not the link: the link stays
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise DistnnError(f"{path}: cannot write ({e.strerror or e})") from None
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise DistnnError(f"{path}: written, but not made durable ({e.strerror or e})") from None


def atomic_savez(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as an uncompressed ``.npz``, atomically.

    The folder is created if needed: a model or checkpoint path names where it belongs.
    """
    refuse_special(path)
    _require_target(_write_target(path), path, create=True)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _same(a: str, b: str) -> bool:
    """The same file or folder: by resolved name, or by identity (hard links) if both exist."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def _inside(path: str, folder: str) -> bool:
    folder = os.path.realpath(folder)
    return os.path.isdir(folder) and os.path.realpath(path).startswith(folder + os.sep)


def check_no_clash(
    outputs: Sequence[tuple[str, str | None]], inputs: Sequence[tuple[str, str | None]]
) -> None:
    """DistnnError (one line) if an output would land on an input or on another output.

    ``outputs`` and ``inputs`` are (what a message calls it, path) pairs; None paths are
    skipped. Paths are compared resolved (``..``, symbolic links) and by identity (hard
    links). An output may not be an input file or folder, nor lie inside an input
    folder (a data folder's files are all read), and no input may lie inside an output
    folder (a checkpoint folder is pruned). An output that exists as a device, FIFO,
    socket or a link to one is refused first (:func:`refuse_special`; whether a file or
    a folder is meant is the callers' to check). Called before any work, so a typo
    costs nothing.
    """
    outs = [(what, p) for what, p in outputs if p]
    ins = [(what, p) for what, p in inputs if p]
    for what, path in outs:
        refuse_special(path, f"{what} {path}")
    for i, (what, path) in enumerate(outs):
        for other_what, other in outs[:i]:
            if _same(path, other):
                raise DistnnError(
                    f"{what} {path} and {other_what} {other} are the same file: "
                    "one would overwrite the other"
                )
        for in_what, in_path in ins:
            if _same(path, in_path) or _inside(path, in_path) or _inside(in_path, path):
                raise DistnnError(
                    f"{what} {path} would overwrite the input {in_what} {in_path}: refusing "
                    "(inputs are never overwritten; choose another path)"
                )


def rescue_copy(save: Callable[[str], None]) -> str:
    """``save(path)`` into a fresh file in the temporary folder (a trained model whose own
    destination failed); its path, or why there is none."""
    try:
        fd, path = tempfile.mkstemp(prefix="distnn-rescued-", suffix=".npz")
        os.close(fd)
        save(path)
        return path
    except (DistnnError, OSError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return f"no file either: the rescue copy failed too ({reason})"
