"""A failing rank's report to its supervisor: one small JSON record in a file, not a line
of stderr to parse.

A supervisor (``python -m distnn.launch``) names a file for each attempt in
``DISTNN_FAILURE_FILE``, inside a directory of its own that only its user can enter
(mode 0700). The rank that ends the job (an exception on it alone, ``os._exit`` inside
the run, a second Ctrl-C: :mod:`distnn.parallel.failures`) writes there, before it
aborts the job::

    {"rank": 2, "kind": "exception", "message": "RuntimeError: injected failure"}

The record appears whole or not at all (written beside it, then hard-linked into
place), and the first rank to report keeps its record: a second one, failing as the
job comes down, changes nothing. Writing never raises: without a supervisor, or when
the file cannot be written (a rank on another host, where the directory does not
exist), the job ends as it would have, and the supervisor names the rank whose
heartbeats stopped first instead.

The reader checks the record like any input: bounded in size, a regular file, every
field typed and in range; anything else is no report.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import dataclass

FAILURE_FILE_VARIABLE = "DISTNN_FAILURE_FILE"
KINDS = frozenset({"exception", "exit", "interrupted", "signal"})
MAX_BYTES = 4096
MAX_MESSAGE = 300  # characters of the one-line message kept


@dataclass(frozen=True)
class RankFailure:
    """What the rank that ended the job said about it."""

    rank: int
    kind: str  # one of KINDS: an exception, an os._exit, a second Ctrl-C, a signal
    message: str  # one line


def one_line(text: str) -> str:
    """``text`` on one line, at most ``MAX_MESSAGE`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 1] + "…"


def report(rank: int, kind: str, message: str) -> None:
    """Write this rank's failure to the supervisor's file, if one is named. Never raises."""
    path = os.environ.get(FAILURE_FILE_VARIABLE)
    if not path:
        return
    record = json.dumps({"rank": rank, "kind": kind, "message": one_line(message)})
    temporary = f"{path}.{rank}.{os.getpid()}.tmp"
    try:
        with open(temporary, "x", encoding="utf-8") as f:
            f.write(record + "\n")
        with contextlib.suppress(FileExistsError):  # another rank reported first
            os.link(temporary, path)  # whole, and only if no record is there yet
    except OSError:
        pass  # no supervisor's directory here: the heartbeats still name the rank
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def read_report(path: str, ranks: int) -> RankFailure | None:
    """The record at ``path`` if it is a well-formed report from a rank below ``ranks``;
    None otherwise (none written, unreadable, malformed). Never raises."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, MAX_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        return None
    try:
        fields = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(fields, dict) or set(fields) != {"rank", "kind", "message"}:
        return None
    rank, kind, message = fields["rank"], fields["kind"], fields["message"]
    if type(rank) is not int or not 0 <= rank < ranks:
        return None
    if not isinstance(kind, str) or kind not in KINDS or not isinstance(message, str):
        return None
    return RankFailure(rank, kind, one_line(message))
