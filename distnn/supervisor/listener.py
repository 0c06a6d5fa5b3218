"""The supervisor's ear: every rank's last heartbeat, and whether the job still advances.

Ranks send datagrams (:mod:`distnn.parallel.heartbeat`); :meth:`HeartbeatListener.poll`
reads whatever has arrived without blocking. The job *advances* when the highest step
any rank reports goes up; the longest gap between two advances seen so far measures
how slow a step (or an epoch's end, or a checkpoint) can legitimately be.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass

from distnn.parallel.heartbeat import INTERVAL_S

SILENT_AFTER_S = 8 * INTERVAL_S  # no beat for this long: the rank is not running


@dataclass
class Beat:
    rank: int
    pid: int
    host: str
    step: int
    phase: str
    at: float  # the supervisor's monotonic clock when it arrived


class HeartbeatListener:
    """A UDP socket on an ephemeral port; ``address`` is what ranks send to."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)
        self.address = f"{host}:{self.sock.getsockname()[1]}"
        self.attempt = ""
        self.reset("", 0)

    def reset(self, attempt: str, from_step: int) -> None:
        """A new attempt, resuming at ``from_step``: forget the last one's ranks."""
        self.attempt, self.beats = attempt, {}
        self.step, self.from_step = from_step, from_step
        self.first_advance_at: float | None = None
        self.last_advance_at = time.monotonic()
        self.longest_gap = 0.0  # between two advances, after the first

    def poll(self) -> None:
        """Take every datagram that has arrived; note when the job last advanced."""
        while True:
            try:
                data = self.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                message = json.loads(data)
                if message.get("attempt") != self.attempt:
                    continue  # a rank of an earlier attempt, still on its way out
                beat = Beat(
                    int(message["rank"]), int(message["pid"]), str(message["host"]),
                    int(message["step"]), str(message["phase"]), time.monotonic(),
                )  # fmt: skip
            except (ValueError, KeyError, TypeError):
                continue  # not ours
            self.beats[beat.rank] = beat
            if beat.step > self.step:
                now = time.monotonic()
                if self.first_advance_at is None:
                    self.first_advance_at = now
                else:
                    self.longest_gap = max(self.longest_gap, now - self.last_advance_at)
                self.step, self.last_advance_at = beat.step, now

    def stalled_for(self) -> float:
        return time.monotonic() - self.last_advance_at

    def local_pids(self) -> list[int]:
        host = socket.gethostname()
        return [b.pid for b in self.beats.values() if b.host == host]

    def first_silent(self) -> int | None:
        """The rank whose beats stopped clearly before the others' (the one that died
        first when a job ends), or None when they stopped together."""
        if len(self.beats) < 2:
            return None
        order = sorted(self.beats.values(), key=lambda b: b.at)
        return order[0].rank if order[1].at - order[0].at > 2 * INTERVAL_S else None

    def diagnose(self, ranks: int) -> tuple[list[int], str]:
        """Which rank(s) stopped the job, and how to say it in one line."""
        now = time.monotonic()
        never = [r for r in range(ranks) if r not in self.beats]
        silent = [r for r, b in sorted(self.beats.items()) if now - b.at > SILENT_AFTER_S]
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


def _list(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks))
