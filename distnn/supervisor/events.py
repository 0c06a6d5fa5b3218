"""The supervisor's record: each event a line on stdout and a JSON record for ``--metrics``;
what it keeps of each attempt (:class:`Attempt`), and how an attempt's end and the whole
run's are told.

Records wait in memory until :meth:`EventLog.flush`, which the supervisor calls only
while no job runs: rank 0 appends its epoch records to the same file, and the two never
write at once. Readers tell the kinds apart (:func:`distnn.io.metrics_log.is_epoch`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from distnn.supervisor.outcomes import Facts, Outcome


@dataclass
class Attempt:
    """One attempt of the job, as the supervisor saw it."""

    number: int
    ranks: int
    from_step: int
    started: float  # monotonic
    ended: float = 0.0
    status: int | None = None  # the launcher's exit status
    facts: Facts | None = None  # what was known when it ended
    outcome: Outcome | None = None  # … and what they mean
    cause: str = ""
    failed_ranks: list[int] = field(default_factory=list)
    reached: int = 0  # the highest step it finished
    first_step_at: float | None = None
    detection_s: float = 0.0  # from the failure to knowing


class EventLog:
    def __init__(self, metrics: str | None, say: Callable[[str], None]) -> None:
        self.metrics, self.say = metrics, say
        self.started = time.monotonic()
        self.pending: list[dict] = []  # records not yet in the metrics file

    def event(self, kind: str, text: str, **fields: object) -> None:
        """``text`` on stdout now; ``{"event": kind, "t": seconds, **fields}`` at the next
        flush."""
        self.say(f"distnn.launch: {text}")
        at = round(time.monotonic() - self.started, 3)
        self.pending.append({"event": kind, "t": at, **fields})

    def flush(self) -> None:
        if self.metrics and self.pending:
            try:
                with open(self.metrics, "a", encoding="utf-8") as f:
                    f.writelines(json.dumps(r) + "\n" for r in self.pending)
            except OSError as e:
                self.say(f"distnn.launch: cannot append events to {self.metrics} ({e})")
        self.pending.clear()

    def attempt_end(self, attempts: list[Attempt], checkpoint: int) -> None:
        """The last of ``attempts`` ended; ``checkpoint`` is the newest checkpoint's step."""
        a = attempts[-1]
        lost = max(a.reached - checkpoint, 0) if a.outcome.is_failure else 0
        previous = attempts[-2] if len(attempts) > 1 else None
        downtime = (a.first_step_at - previous.ended) if previous and a.first_step_at else None
        self.event(
            "attempt_end",
            f"attempt {a.number} ended: {a.outcome.value} ({a.cause}) at step {a.reached}"
            + (f", {lost} step(s) lost" if lost else ""),
            attempt=a.number, ranks=a.ranks, outcome=a.outcome.value, status=a.status,
            cause=a.cause, failed_ranks=a.failed_ranks, from_step=a.from_step,
            reached=a.reached, lost_steps=lost, detection_s=round(a.detection_s, 3),
            downtime_before_s=None if downtime is None else round(downtime, 3),
            wall_s=round(a.ended - a.started, 3),
        )  # fmt: skip

    def summary(self, attempts: list[Attempt], status: int, why: str) -> None:
        """The supervisor ends with ``status``, ``why``: how much of its time trained."""
        wall = time.monotonic() - self.started
        training = sum(a.ended - a.first_step_at for a in attempts if a.first_step_at is not None)
        failures = sum(a.outcome.is_failure for a in attempts)
        self.event(
            "summary",
            f"{why}; {len(attempts)} attempt(s), {failures} failure(s); training "
            f"{training / wall:.0%} of {wall:.1f} s wall time (exit {status})",
            status=status, attempts=len(attempts), failures=failures,
            wall_s=round(wall, 3), training_s=round(training, 3),
        )  # fmt: skip
