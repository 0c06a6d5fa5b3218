"""Each rank's heartbeat to a supervisor (``python -m distnn.launch``): step and phase.

When ``DISTNN_HEARTBEAT=host:port`` is set (the supervisor sets it), a daemon thread
sends one small UDP datagram every ``INTERVAL_S``: this rank's number, pid, host, the
last finished step and what the rank is doing (``setup``, ``train``, ``checkpoint``,
``done``). The thread beats on while the main thread waits in a collective (mpi4py
releases the GIL there), so when a job stops advancing, the supervisor can tell the
rank that went silent (frozen: SIGSTOP, a dead node) from the ranks waiting for it, and
a rank stuck writing a checkpoint by its phase.

The training loop only assigns ``step`` and ``phase``: two attribute writes, no I/O, no
lock. Without the variable nothing is started and the writes go nowhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading

INTERVAL_S = 0.25
ADDRESS_VARIABLE = "DISTNN_HEARTBEAT"  # host:port of the supervisor's listener
ATTEMPT_VARIABLE = "DISTNN_ATTEMPT"  # which attempt this job is, so stale beats are ignored


class Heartbeat:
    """This rank's step and phase, sent every ``INTERVAL_S`` while a supervisor listens."""

    def __init__(self, rank: int, address: str | None = None) -> None:
        self.rank, self.step, self.phase = rank, 0, "setup"
        self._address = _parse(address) if address else None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_env(cls, rank: int) -> Heartbeat:
        return cls(rank, os.environ.get(ADDRESS_VARIABLE))

    def __enter__(self) -> Heartbeat:
        if self._address is not None:
            self._thread = threading.Thread(target=self._beat, name="distnn-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.phase = "done"
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _beat(self) -> None:
        sock = socket.socket(_family(self._address), socket.SOCK_DGRAM)
        fixed = {
            "rank": self.rank,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "attempt": os.environ.get(ATTEMPT_VARIABLE, ""),
        }
        try:
            while True:
                message = {**fixed, "step": self.step, "phase": self.phase}
                # No listener (yet), a full buffer: the next beat tries again.
                with contextlib.suppress(OSError):
                    sock.sendto(json.dumps(message).encode(), self._address)
                if self._stopped.wait(INTERVAL_S):
                    last = {**fixed, "step": self.step, "phase": "done"}
                    sock.sendto(json.dumps(last).encode(), self._address)
                    return
        except OSError:
            return
        finally:
            sock.close()


def _parse(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _family(address: tuple[str, int] | None) -> int:
    return socket.AF_INET6 if address and ":" in address[0] else socket.AF_INET
