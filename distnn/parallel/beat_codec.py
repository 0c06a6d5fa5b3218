"""A heartbeat's datagram: signed by a rank, checked field by field by a listener.

Anyone on the machine (on the network, when the job spans hosts) can send a UDP datagram
to a listener's port, so a listener believes only what it can verify::

    MAGIC | HMAC-SHA256(key, MAGIC | payload) | payload (compact JSON, one object)

The key is the job's secret (32 random bytes from :mod:`secrets`): a supervisor draws
one per run and hands it to its ranks in ``DISTNN_HEARTBEAT_KEY``; under plain
``mpirun`` rank 0 draws it and broadcasts it over MPI. Without the key a sender cannot
make a datagram that passes :func:`verify`, so forged or garbled datagrams are dropped
before their JSON is even parsed. Against a genuine datagram sent again (a replay) the
payload carries the attempt and a per-sender sequence number, which
:class:`ReplayGuard` requires to rise.

What this does not do: hide anything (a beat is signed, not encrypted: its rank, pid,
host, step and phase can be read by whoever sees the packet), nor stop a process that
knows the key (the job's own ranks and anyone who can read their environment, i.e. the
same user or root) from lying.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

KEY_VARIABLE = "DISTNN_HEARTBEAT_KEY"  # the supervisor's secret, hex, read once and removed
KEY_BYTES = 32
MAGIC = b"distnn-beat/1\n"
TAG_BYTES = hashlib.sha256().digest_size
MAX_DATAGRAM = 1024  # a genuine beat is under 300 bytes; anything longer is not one
PHASES = frozenset({"setup", "train", "checkpoint", "done"})
MAX_RANKS = 1 << 24  # a rank bound when the listener does not know the world size
MAX_PID = 1 << 22  # Linux's pid_max ceiling
MAX_STEP = 1 << 53  # exact in a float: a step nobody reaches
MAX_SEQ = 1 << 62
MAX_TEXT = 255  # a host name or an attempt id


@dataclass(frozen=True)
class BeatFields:
    """What one verified datagram says."""

    rank: int
    pid: int
    host: str
    attempt: str
    step: int
    phase: str
    seq: int


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def key_from_text(text: str | None) -> bytes | None:
    """The key a supervisor put in the environment, or None when it is absent or not one."""
    try:
        key = bytes.fromhex(text or "")
    except ValueError:
        return None
    return key if len(key) == KEY_BYTES else None


def sign(key: bytes, beat: BeatFields) -> bytes:
    """The datagram that carries ``beat``, authenticated with ``key``."""
    payload = json.dumps(
        {
            "rank": beat.rank, "pid": beat.pid, "host": beat.host, "attempt": beat.attempt,
            "step": beat.step, "phase": beat.phase, "seq": beat.seq,
        },
        separators=(",", ":"), allow_nan=False,
    ).encode()  # fmt: skip
    return MAGIC + _tag(key, payload) + payload


def verify(key: bytes, data: bytes, ranks: int = MAX_RANKS) -> BeatFields | None:
    """The beat ``data`` carries if it is whole, signed with ``key`` and every field is in
    bounds (a rank below ``ranks``); None otherwise. Never raises."""
    head = len(MAGIC) + TAG_BYTES
    if not isinstance(data, bytes) or not head < len(data) <= MAX_DATAGRAM:
        return None
    if not data.startswith(MAGIC):
        return None
    tag, payload = data[len(MAGIC) : head], data[head:]
    if not hmac.compare_digest(tag, _tag(key, payload)):
        return None
    try:  # signed by a holder of the key, and still checked like any input
        fields = json.loads(payload, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    return _bounded(fields, ranks)


class ReplayGuard:
    """Accepts each sender's (rank, pid) sequence numbers only while they rise, so a beat
    recorded and sent again says nothing new."""

    def __init__(self) -> None:
        self._last: dict[tuple[int, int], int] = {}

    def fresh(self, beat: BeatFields) -> bool:
        sender = (beat.rank, beat.pid)
        if beat.seq <= self._last.get(sender, 0):
            return False
        self._last[sender] = beat.seq
        return True


def _tag(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, MAGIC + payload, hashlib.sha256).digest()


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a beat carries")


def _bounded(fields: object, ranks: int) -> BeatFields | None:
    if not isinstance(fields, dict) or set(fields) != {
        "rank", "pid", "host", "attempt", "step", "phase", "seq"
    }:  # fmt: skip
        return None
    ints = {
        "rank": (0, min(ranks, MAX_RANKS) - 1),
        "pid": (1, MAX_PID),
        "step": (0, MAX_STEP),
        "seq": (1, MAX_SEQ),
    }
    for name, (low, high) in ints.items():
        value = fields[name]
        # bool is an int to Python, not to a beat; a float is never a count
        if type(value) is not int or not low <= value <= high:
            return None
    for name in ("host", "attempt"):
        value = fields[name]
        if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable():
            return None
    phase = fields["phase"]
    if not isinstance(phase, str) or phase not in PHASES or not fields["host"]:
        return None
    return BeatFields(**{name: fields[name] for name in BeatFields.__dataclass_fields__})
