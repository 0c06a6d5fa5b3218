"""One run per checkpoint folder: an exclusive lock held for the run's lifetime.

Two runs writing one ``--checkpoint-dir`` would overwrite and prune each other's
checkpoints. The first to start holds an exclusive ``flock`` on ``<folder>/.distnn-lock``
until it ends; the lock belongs to the open file, so the kernel releases it when the
holder exits in any way (a crash, SIGKILL, a lost node's process), and a dead run never
leaves a stale lock. The holder writes who it is (program, pid, host, start time) into
the file, so a refused run can name it.

``distnn.launch`` holds the lock across its attempts: it takes the lock itself and puts
the lock's random token in the environment of its jobs (:data:`SHARE_VARIABLE`); a job's
rank 0 that finds the lock held by the process whose token it was given runs under it
instead of refusing. The token identifies the holder, it is no secret: the lock guards
against accidents (a second run, a re-run in the wrong folder), not against a user who
can write the folder anyway.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import time

from distnn.errors import DistnnError

LOCK_NAME = ".distnn-lock"
SHARE_VARIABLE = "DISTNN_CHECKPOINT_LOCK"  # a supervisor's token: its job runs under its lock
_HOLDER_BYTES = 4096


class FolderLock:
    """The lock on one checkpoint folder, held (``fd``) or shared with a supervisor.

    A context manager: leaving it releases the lock (a process that ends releases it
    anyway).
    """

    def __init__(self, directory: str, fd: int | None, token: str, note: str = "") -> None:
        self.directory, self.fd, self.token = directory, fd, token
        self.note = note  # why the folder is not locked, when locking is impossible there

    @classmethod
    def take(cls, directory: str, who: str, program: str) -> FolderLock:
        """Lock ``directory`` (which exists) for this process; DistnnError naming the holder
        if another run holds it. ``who`` names the folder in messages (``--checkpoint-dir
        ck``); ``program`` is what the holder record calls this process."""
        path = os.path.join(directory, LOCK_NAME)
        token = secrets.token_hex(16)
        for _ in range(10):  # the file may be replaced under us: lock the one at ``path``
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise DistnnError(f"{who}: cannot lock the folder ({e.strerror or e})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                if holder.get("token") and holder.get("token") == os.environ.get(SHARE_VARIABLE):
                    return cls(directory, None, holder["token"])  # our supervisor holds it
                raise DistnnError(
                    f"{who}: in use by another run ({_describe(holder)}): one run per "
                    "checkpoint folder; wait for it to end, or choose another folder"
                ) from None
            except OSError as e:  # a file system without locks (some NFS mounts)
                os.close(fd)
                return cls(
                    directory, None, token,
                    note=f"{who}: cannot be locked ({e.strerror or e}): nothing stops a "
                    "second run from writing there too",
                )  # fmt: skip
            try:
                same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
            except OSError:
                same = False
            if not same:  # unlinked or replaced between open and flock: try the new one
                os.close(fd)
                continue
            _write_holder(fd, token, program)
            return cls(directory, fd, token)
        raise DistnnError(f"{who}: cannot lock the folder (its lock file keeps changing)")

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _write_holder(fd: int, token: str, program: str) -> None:
    record = {
        "program": program,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "token": token,
    }
    data = (json.dumps(record) + "\n").encode()
    with contextlib.suppress(OSError):  # the lock is what matters; the record only names it
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)


def _read_holder(fd: int) -> dict:
    """The holder's record; {} when it is unreadable or not written yet."""
    try:
        record = json.loads(os.pread(fd, _HOLDER_BYTES, 0).decode())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _describe(holder: dict) -> str:
    if not isinstance(holder.get("pid"), int):
        return "its holder is starting, or wrote no record"
    program = str(holder.get("program", "a process"))[:80]
    host = str(holder.get("host", "?"))[:80]
    started = str(holder.get("started", "?"))[:40]
    return f"{program}, pid {holder['pid']} on {host}, started {started}"
