"""The job's own watchdog: under plain ``mpirun``, a frozen rank ends the job, not hangs it.

A rank stopped (SIGSTOP, a stuck disk, a dead node) leaves every other rank waiting in
the step's collective forever, spinning, deaf to SIGTERM. Every rank beats
(:mod:`distnn.parallel.heartbeat`) to rank 0's listener, and rank 0 beats to rank 1's
too. Rank 0 judges: when no step has finished for ``limit`` (the ``--watchdog`` floor, or
``WATCHDOG_FACTOR`` × the longest gap between steps seen so far, whichever is more;
:func:`~distnn.parallel.heartbeat.stall_limit`, shared with the supervisor), it names
the silent rank (or the one stuck in another phase) in one line and aborts the job with
:data:`~distnn.errors.EXIT_HUNG`. Rank 1 judges only rank 0, in case rank 0 is the one
that froze. A checkpoint is written atomically, so the newest one stays valid.

It starts first thing in a run, before any collective, with a rendezvous of messages
polled against a deadline (``STARTUP_FACTOR`` × the floor): every rank says hello to
rank 0, which answers with the key and the judges' addresses. A rank that never comes
(it returned before ``fit``, called ``fit`` once less, froze while starting) is named
in one line and the job ends with exit 77, instead of the others waiting forever in
the first collective. From then on the judges watch the whole run: before the first
step only a rank gone silent counts (a long data load is not a hang), and arming the
judges then closes the race where rank 0 froze before rank 1 had heard it finish a step.

The beats are signed with a key rank 0 draws and sends in the rendezvous (no
environment, no file): a datagram from anyone else is dropped and counted, never
believed. The judges listen on loopback when every rank is on this host, else on the
one address the host name resolves to, never on every interface. The judging thread
outlives any error in a poll (counted in ``errors``): a watchdog that died would let a
frozen rank hang the job.

Nothing of this with ``--watchdog 0``, nor in a world of one.
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time

from distnn.errors import EXIT_HUNG
from distnn.parallel.beat_codec import new_key
from distnn.parallel.heartbeat import (
    ATTEMPT_VARIABLE,
    WATCHDOG_FACTOR,
    Heartbeat,
    HeartbeatListener,
    stall_limit,
)
from distnn.parallel.world import World

STARTUP_FACTOR = 10.0  # the start-up rendezvous waits this × the floor for every rank
HELLO, GO, ADDRESS = 32001, 32002, 32003  # tags of the rendezvous' messages
POLL_S = 0.01


class Watchdog:
    def __init__(self, world: World, floor_s: float, beat: Heartbeat, what: str) -> None:
        """Every rank calls it first thing in a run, with the same ``floor_s`` (0: off).
        ``what`` is how a message names the option that set the floor.

        The rendezvous that starts it uses only messages polled against a deadline, never a
        blocking collective: a rank that never comes (it returned before ``fit``, called it
        once less, froze while starting) ends the job in one line instead of hanging it."""
        self.world, self.floor_s, self.what, self.beat = world, floor_s, what, beat
        self.listener: HeartbeatListener | None = None
        self.errors = 0  # polls or judgements that raised, survived
        self._stop = threading.Event()
        valid = isinstance(floor_s, int | float) and 0 < floor_s < math.inf
        if not valid or world.size == 1:  # a bad value: the run's own checks refuse it
            return
        self.startup_s = STARTUP_FACTOR * floor_s
        deadline = time.monotonic() + self.startup_s
        if world.rank == 0:
            key, judges = self._convene(deadline)
        else:
            key, judges = self._join(deadline)
        beat.also([a for a in (judges if world.rank == 0 else judges[:1]) if a], key)
        beat.start()
        threading.Thread(target=self._watch, name="distnn-watchdog", daemon=True).start()

    def _listen(self, key: bytes, spans_hosts: bool) -> None:
        try:
            self.listener = HeartbeatListener(key, job_address(spans_hosts))
            attempt = os.environ.get(ATTEMPT_VARIABLE, "")
            self.listener.reset(attempt, 0, self.beat.interval, self.world.size)
        except OSError:  # no UDP here: this judge stays away, the run goes on
            self.listener = None

    def _convene(self, deadline: float) -> tuple[bytes, list[str | None]]:
        """Rank 0: hear every rank's hello, draw the key, start judging, tell everyone."""
        world = self.world
        hosts = {0: socket.gethostname()}
        while len(hosts) < world.size:
            for r in range(1, world.size):
                if r not in hosts:
                    arrived, host = world.take_object(r, HELLO)
                    if arrived:
                        hosts[r] = str(host)
            if len(hosts) < world.size:
                missing = [r for r in range(world.size) if r not in hosts]
                self._wait_or_end(deadline, missing)
        key, spans_hosts = new_key(), len(set(hosts.values())) > 1
        self._listen(key, spans_hosts)
        address = self.listener.address if self.listener else None
        for r in range(1, world.size):
            world.post_object((key, spans_hosts, address), r, GO)
        while True:  # rank 1's ear, for the day rank 0 is the one that freezes
            arrived, second = world.take_object(1, ADDRESS)
            if arrived:
                return key, [address, second]
            self._wait_or_end(deadline, [1])

    def _join(self, deadline: float) -> tuple[bytes, list[str | None]]:
        """Any other rank: say hello, wait for rank 0's key and ear (rank 1 lends its own)."""
        world = self.world
        world.post_object(socket.gethostname(), 0, HELLO)
        # Later than rank 0's deadline (it may have started later): rank 0 names a missing
        # rank when it can; rank 1 speaks when rank 0 itself never comes, then the others.
        deadline += max(2.0, self.startup_s / 2) + (2.0 if world.rank > 1 else 0.0)
        while True:
            arrived, go = world.take_object(0, GO)
            if arrived:
                break
            self._wait_or_end(deadline, [0])
        key, spans_hosts, address = go
        if world.rank == 1:
            self._listen(key, spans_hosts)
            world.post_object(self.listener.address if self.listener else None, 0, ADDRESS)
        return key, [address]

    def _wait_or_end(self, deadline: float, missing: list[int]) -> None:
        if time.monotonic() < deadline:
            time.sleep(POLL_S)
            return
        self.world.say_and_abort(
            f"distnn: error: rank {_list(missing)} did not start within {self.startup_s:g} s "
            f"({STARTUP_FACTOR:g} × {self.what} {self.floor_s:g}): it returned before fit, "
            f"called fit fewer times than the others, or froze while starting; ending the "
            f"job (exit {EXIT_HUNG})\n",
            EXIT_HUNG,
        )

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.listener is not None:
            self.listener.sock.close()

    def _watch(self) -> None:
        listener = self.listener
        if listener is None:
            return
        while not self._stop.wait(listener.interval):
            try:
                verdict = self._judge(listener)
            except Exception:  # the judge must outlive whatever one poll met
                self.errors += 1
                continue
            if verdict:
                self._end(verdict)
                return

    def _judge(self, listener: HeartbeatListener) -> str | None:
        """Why the job must end now, or None."""
        listener.poll()
        # Before the first step only a silent rank counts (a long data load is not a hang);
        # waiting for a step before judging missed a rank 0 stopped within its first beat.
        limit = stall_limit(self.floor_s, WATCHDOG_FACTOR, listener.longest_gap)
        if listener.stalled_for() <= limit:
            return None
        if self.world.rank == 1:  # rank 1 only stands in for a silent rank 0
            culprits, why = ([0], "rank 0 never reported") if 0 not in listener.beats else (
                listener.diagnose(1))  # fmt: skip
            if culprits != [0]:
                return None
        else:
            culprits, why = listener.diagnose(self.world.size)
        if listener.first_advance_at is None and "silent" not in why and "never" not in why:
            return None  # start-up: only a rank gone silent is a hang
        return (f"no step finished for {listener.stalled_for():.0f} s ({self.what} "
                f"{self.floor_s:g}): {why}; ending the job (exit {EXIT_HUNG})")  # fmt: skip

    def _end(self, message: str) -> None:
        if self._stop.is_set():
            return
        self.world.say_and_abort(f"distnn: error: {message}\n", EXIT_HUNG)


def _list(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks))


def job_address(spans_hosts: bool) -> str:
    """Where a judge listens: loopback when the whole job is on this host, else the address
    this host's name resolves to (the one the other hosts reach it by)."""
    if not spans_hosts:
        return "127.0.0.1"
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:  # no name to resolve: the other hosts could not reach us anyway
        return "127.0.0.1"
