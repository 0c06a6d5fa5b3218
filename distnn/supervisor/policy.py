"""What the supervisor decides, apart from how it does it: the world size, and whether
a failed attempt is worth another.

Never retry what cannot succeed: a status that says the input or the run itself is
wrong ends the supervisor with that status (:mod:`distnn.supervisor.outcomes`); the
same failure at the same step twice, too many restarts in a window, attempts that make
no progress, or that keep failing before their first step, end it with
:data:`~distnn.errors.EXIT_GAVE_UP`.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field


def world_size(
    slots: int, min_ranks: int, max_ranks: int, virtual_shards: int | None
) -> int | None:
    """The ranks the next attempt runs on: as many as fit, at least ``min_ranks``.

    With ``--deterministic`` (``virtual_shards`` V) the largest divisor of V that fits,
    so every rank holds as many virtual shards as every other. None: fewer than
    ``min_ranks`` slots.
    """
    cap = min(slots, max_ranks)
    sizes = [n for n in range(cap, 0, -1) if virtual_shards is None or virtual_shards % n == 0]
    return next((n for n in sizes if n >= min_ranks), None)


@dataclass(kw_only=True)
class Limits:
    """The knobs of the restart policy (``python -m distnn.launch --help``), by name."""

    max_restarts: int = 10  # within window_s
    window_s: float = 3600.0
    backoff_s: float = 1.0  # the first wait; doubles per consecutive failure
    backoff_cap_s: float = 60.0
    no_progress: int = 3  # consecutive attempts without a newer checkpoint
    startup_failures: int = 3  # consecutive attempts failing before their first step


@dataclass
class Failure:
    """One failed attempt, as the policy sees it."""

    signature: str  # the status and, where known, the rank and cause
    step: int  # the highest step the job reached
    progressed: bool  # a newer checkpoint than before the attempt
    started: bool  # the job finished at least one step


@dataclass
class RestartPolicy:
    limits: Limits
    rng: random.Random = field(default_factory=random.Random)
    restarts: deque = field(default_factory=deque)  # monotonic times of restarts
    previous: Failure | None = None
    consecutive: int = 0
    without_progress: int = 0
    failed_at_start: int = 0

    def after(self, failure: Failure, now: float | None = None) -> str | None:
        """None to restart; otherwise why to give up."""
        now = time.monotonic() if now is None else now
        limits = self.limits
        same = self.previous is not None and (
            (self.previous.signature, self.previous.step) == (failure.signature, failure.step)
        )
        self.previous = failure
        self.consecutive += 1
        self.without_progress = 0 if failure.progressed else self.without_progress + 1
        self.failed_at_start = 0 if failure.started else self.failed_at_start + 1
        while self.restarts and now - self.restarts[0] > limits.window_s:
            self.restarts.popleft()
        if same:
            return f"the same failure twice at step {failure.step} ({failure.signature})"
        if self.failed_at_start >= limits.startup_failures:
            return f"{self.failed_at_start} attempts in a row failed before their first step"
        if self.without_progress >= limits.no_progress:
            return f"{self.without_progress} attempts in a row wrote no newer checkpoint"
        if len(self.restarts) >= limits.max_restarts:
            return (
                f"{len(self.restarts)} restarts within {limits.window_s:g} s "
                f"(--max-restarts {limits.max_restarts})"
            )
        self.restarts.append(now)
        return None

    def reset_backoff(self) -> None:
        """An attempt ended on purpose (checkpointed to grow): the streak of failures is
        over, and the next failure waits the first backoff again."""
        self.consecutive = 0

    def backoff(self) -> float:
        """Seconds to wait before the next attempt: doubling, capped, with ±50% jitter so
        that many jobs hit by one outage do not all come back at once."""
        base = min(
            self.limits.backoff_cap_s, self.limits.backoff_s * 2 ** max(self.consecutive - 1, 0)
        )
        return base * self.rng.uniform(0.5, 1.5)
