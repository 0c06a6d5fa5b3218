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

The beats are signed with a key rank 0 draws and broadcasts over MPI (no environment, no
file): a datagram from anyone else is dropped and counted, never believed. The judges
listen on loopback when every rank is on this host, else on the one address the host
name resolves to, never on every interface. The judging thread outlives any error in a
poll (counted in ``errors``): a watchdog that died would let a frozen rank hang the job.

Not armed before the first step (data loading may take long), nor with ``--watchdog 0``.
"""

from __future__ import annotations

import os
import socket
import threading

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


class Watchdog:
    def __init__(self, world: World, floor_s: float, beat: Heartbeat, what: str) -> None:
        """Collective: every rank calls it after setup, with the same ``floor_s`` (0: off).
        ``what`` is how a message names the option that set the floor."""
        self.world, self.floor_s, self.what = world, floor_s, what
        self.listener: HeartbeatListener | None = None
        self.errors = 0  # polls or judgements that raised, survived
        self._stop = threading.Event()
        if not floor_s or world.size == 1:
            return
        # Collective, on every rank: the key comes with the judges' addresses below.
        spans_hosts = world.local_size() < world.size
        key = world.bcast_object(new_key() if world.rank == 0 else None)
        if world.rank in (0, 1):  # the judges: rank 0 of all, rank 1 of rank 0
            try:
                self.listener = HeartbeatListener(key, job_address(spans_hosts))
                self.listener.reset(
                    os.environ.get(ATTEMPT_VARIABLE, ""), 0, beat.interval, world.size
                )
            except OSError:  # no UDP here: this judge stays away, the run goes on
                self.listener = None
        gathered = world.gather_object(self.listener.address if self.listener else None)
        judges = world.bcast_object(gathered[:2] if gathered else None)
        beat.also([a for a in (judges if world.rank == 0 else judges[:1]) if a], key)
        beat.start()
        threading.Thread(target=self._watch, name="distnn-watchdog", daemon=True).start()

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
        if listener.first_advance_at is None:
            return None  # not armed before the first step
        limit = stall_limit(self.floor_s, WATCHDOG_FACTOR, listener.longest_gap)
        if listener.stalled_for() <= limit:
            return None
        culprits, why = listener.diagnose(self.world.size)
        if self.world.rank == 1 and culprits != [0]:
            return None  # rank 1 only stands in for a silent rank 0
        return (f"no step finished for {listener.stalled_for():.0f} s ({self.what} "
                f"{self.floor_s:g}): {why}; ending the job (exit {EXIT_HUNG})")  # fmt: skip

    def _end(self, message: str) -> None:
        if self._stop.is_set():
            return
        self.world.say_and_abort(f"distnn: error: {message}\n", EXIT_HUNG)


def job_address(spans_hosts: bool) -> str:
    """Where a judge listens: loopback when the whole job is on this host, else the address
    this host's name resolves to (the one the other hosts reach it by)."""
    if not spans_hosts:
        return "127.0.0.1"
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:  # no name to resolve: the other hosts could not reach us anyway
        return "127.0.0.1"
