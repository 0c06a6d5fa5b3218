"""Heartbeats: each rank's step and phase, and the ear that tells a stalled job's culprit.

A :class:`Heartbeat` is a daemon thread in every rank that sends one small UDP datagram
every ``INTERVAL_S`` to its listeners (a supervisor's, ``DISTNN_HEARTBEAT=host:port``,
and the job's own watchdog, :mod:`distnn.parallel.watchdog`): this rank's number, pid,
host, the last finished step and what the rank is doing (``setup``, ``train``,
``checkpoint``, ``done``). The thread beats on while the main thread waits in a
collective (mpi4py releases the GIL there), so a :class:`HeartbeatListener` can tell
the rank that went silent (frozen: SIGSTOP, a dead node) from the ranks waiting for it,
and a rank stuck writing a checkpoint by its phase.

Every beat is signed with its listener's key (:mod:`distnn.parallel.beat_codec`); a
listener drops and counts (``rejected``) whatever it cannot verify, and never raises.

The training loop only assigns ``step`` and ``phase``: two attribute writes, no I/O, no
lock. With no listener nothing is started and the writes go nowhere.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from distnn.parallel.beat_codec import (
    KEY_VARIABLE,
    MAX_DATAGRAM,
    MAX_RANKS,
    BeatFields,
    ReplayGuard,
    key_from_text,
    sign,
    verify,
)

INTERVAL_S = 0.25  # between one rank's beats, in a world of up to 250 ranks
MAX_PER_POLL = 10_000  # datagrams one poll takes: a flood cannot keep it from returning


def interval_for(ranks: int) -> float:
    """Seconds between one rank's beats in a world of ``ranks``: a listener hears at most
    about ``4 × 1000`` beats a second, a few percent of one core, however large the job."""
    return max(INTERVAL_S, ranks / 1000)


ADDRESS_VARIABLE = "DISTNN_HEARTBEAT"  # host:port of the supervisor's listener
ATTEMPT_VARIABLE = "DISTNN_ATTEMPT"  # which attempt this job is, so stale beats are ignored
SILENT_AFTER = 8  # beats missed in a row: the rank is not running
# A hang: no step for max(floor, factor × the longest gap between steps seen so far)
# (:func:`stall_limit`). Two judges apply it, with two factors on purpose. The job's own
# watchdog (:mod:`distnn.parallel.watchdog`) is the last resort under plain ``mpirun``:
# a false alarm there ends the run for good, so it waits longer. A supervisor restarts
# what it tears down, and must judge before the watchdog does: then the attempt ends as
# a ``hang`` naming the frozen rank, not as a job that exited 77 for reasons only its
# stderr tells. So its factor is half the watchdog's, as its default floor
# (``--hang-timeout`` 60 s) is half the watchdog's (``--watchdog`` 120 s).
WATCHDOG_FACTOR = 10.0
SUPERVISOR_FACTOR = WATCHDOG_FACTOR / 2
_SUPERVISOR_KEY: dict[str, bytes | None] = {}  # read once per process, then out of os.environ


def supervisor_key() -> bytes | None:
    """The key a supervisor gave this process (``DISTNN_HEARTBEAT_KEY``), if any. Taken out
    of the environment the first time, so the processes a rank starts do not inherit it,
    and kept for the next run in this process."""
    if KEY_VARIABLE in os.environ:
        _SUPERVISOR_KEY["key"] = key_from_text(os.environ.pop(KEY_VARIABLE))
    return _SUPERVISOR_KEY.get("key")


@dataclass
class Beat:
    rank: int
    pid: int
    host: str
    step: int
    phase: str
    at: float  # the supervisor's monotonic clock when it arrived


class Heartbeat:
    """This rank's step and phase, sent every ``interval`` seconds to its listeners, each
    ``(host:port, key)``."""

    def __init__(
        self, rank: int, listeners: Sequence[tuple[str, bytes]] = (), interval: float = INTERVAL_S
    ) -> None:
        self.rank, self.step, self.phase, self.interval = rank, 0, "setup", interval
        self._listeners = [(_parse(address), key) for address, key in listeners]
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_env(cls, rank: int, ranks: int) -> Heartbeat:
        """Beats to a supervisor, if one set ``DISTNN_HEARTBEAT`` and its key; more with
        ``also``. Without the key a beat could not be verified: none is sent."""
        address, key = os.environ.get(ADDRESS_VARIABLE), supervisor_key()
        return cls(rank, [(address, key)] if address and key else [], interval_for(ranks))

    def also(self, addresses: list[str], key: bytes) -> None:
        """Beat to these listeners too (the job's watchdog), signed with ``key``; before
        ``start``."""
        self._listeners += [(_parse(address), key) for address in addresses]

    def start(self) -> None:
        if self._listeners and self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="distnn-heartbeat", daemon=True)
            self._thread.start()

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.phase = "done"
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _beat(self) -> None:
        socks: dict[tuple[str, int], socket.socket] = {}
        pid, host = os.getpid(), socket.gethostname()
        attempt = os.environ.get(ATTEMPT_VARIABLE, "")
        seq = 0  # rises with every beat: a listener refuses one it has seen (a replay)
        try:
            while True:
                done = self._stopped.wait(self.interval) if socks else False
                seq += 1
                phase = "done" if done else self.phase
                beat = BeatFields(self.rank, pid, host, attempt, int(self.step), phase, seq)
                for address, key in self._listeners:
                    if address not in socks:
                        socks[address] = socket.socket(_family(address), socket.SOCK_DGRAM)
                    # No listener (yet), a full buffer: the next beat tries again.
                    with contextlib.suppress(OSError):
                        socks[address].sendto(sign(key, beat), address)
                if done:
                    return
        finally:
            for sock in socks.values():
                sock.close()


class HeartbeatListener:
    """A UDP socket on an ephemeral port that hears ranks' beats signed with ``key``;
    ``address`` is where to send them. The job *advances* when the highest step any rank
    reports goes up; the longest gap between two advances seen so far measures how slow a
    step (or an epoch's end, or a checkpoint) can legitimately be.

    A datagram that is not a verified, fresh beat of the current attempt from a rank in
    range changes nothing but ``rejected``; nothing a sender does makes :meth:`poll` raise.
    """

    def __init__(self, key: bytes, host: str = "127.0.0.1", bind: str | None = None) -> None:
        self.key, self.rejected = key, 0
        self.sock = socket.socket(_family((host if bind is None else bind, 0)), socket.SOCK_DGRAM)
        self.sock.bind((host if bind is None else bind, 0))
        self.sock.setblocking(False)
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self.attempt = ""
        self.reset("", 0)

    def reset(
        self, attempt: str, from_step: int, interval: float = INTERVAL_S, ranks: int = MAX_RANKS
    ) -> None:
        """A new attempt of ``ranks`` ranks, resuming at ``from_step``, its ranks beating
        every ``interval`` seconds: forget the last one's ranks."""
        self.attempt, self.beats, self.interval, self.ranks = attempt, {}, interval, ranks
        self.step, self.from_step = from_step, from_step
        self.first_advance_at: float | None = None
        self.last_advance_at = time.monotonic()
        self.longest_gap = 0.0  # between two advances, after the first
        self._replays = ReplayGuard()

    def poll(self) -> None:
        """Take every datagram that has arrived (up to ``MAX_PER_POLL``); note when the job
        last advanced."""
        for _ in range(MAX_PER_POLL):
            try:
                data = self.sock.recv(MAX_DATAGRAM + 1)  # one byte more: too long shows
            except OSError:  # nothing more waiting (BlockingIOError), or closed on the way out
                return
            self.take(data)

    def take(self, data: bytes) -> bool:
        """One datagram: True if it was a beat of this attempt, taken."""
        found = verify(self.key, data, self.ranks)
        if found is None or found.attempt != self.attempt or not self._replays.fresh(found):
            self.rejected += 1  # forged, garbled, replayed, or an earlier attempt's
            return False
        now = time.monotonic()
        self.beats[found.rank] = Beat(
            found.rank, found.pid, found.host, found.step, found.phase, now
        )
        if found.step > self.step:
            if self.first_advance_at is None:
                self.first_advance_at = now
            else:
                self.longest_gap = max(self.longest_gap, now - self.last_advance_at)
            self.step, self.last_advance_at = found.step, now
        return True

    def stalled_for(self) -> float:
        return time.monotonic() - self.last_advance_at

    def local_pids(self) -> list[int]:
        """The pids this host's ranks reported: only a hint for finding ranks a dead
        launcher left behind; the supervisor kills none it cannot verify is the job's."""
        host = socket.gethostname()
        return [b.pid for b in self.beats.values() if b.host == host]

    def first_silent(self) -> int | None:
        """The rank whose beats stopped clearly before the others' (the one that died
        first when a job ends), or None when they stopped together."""
        if len(self.beats) < 2:
            return None
        order = sorted(self.beats.values(), key=lambda b: b.at)
        return order[0].rank if order[1].at - order[0].at > 2 * self.interval else None

    def diagnose(self, ranks: int) -> tuple[list[int], str]:
        """Which rank(s) stopped the job, and how to say it in one line."""
        now = time.monotonic()
        never = [r for r in range(ranks) if r not in self.beats]
        silent = [
            r for r, b in sorted(self.beats.items()) if now - b.at > SILENT_AFTER * self.interval
        ]
        if silent:
            return silent, f"rank {_list(silent)} went silent (frozen or gone) at step {self.step}"
        if never and self.beats:
            return never, f"rank {_list(never)} never reported"
        if not self.beats:
            return [], "no rank reported (start-up stuck)"
        phases = {b.phase for b in self.beats.values()}
        odd = [r for r, b in sorted(self.beats.items()) if b.phase != "train"]
        if odd and len(phases) > 1:
            what = self.beats[odd[0]].phase
            return odd, f"rank {_list(odd)} stuck in {what} at step {self.step}"
        return [], f"every rank alive but no step finished since step {self.step}"


def stall_limit(floor_s: float, factor: float, longest_gap: float) -> float:
    """Seconds without a finished step that count as a hang, once the job has stepped:
    never less than ``floor_s``, and ``factor`` × the slowest legitimate gap seen (an
    epoch's end, an evaluation, a checkpoint) if that is more."""
    return max(floor_s, factor * longest_gap)


def _list(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks))


def _parse(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _family(address: tuple[str, int] | None) -> int:
    return socket.AF_INET6 if address and ":" in address[0] else socket.AF_INET
