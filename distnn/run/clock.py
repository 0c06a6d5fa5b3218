"""Where a start of the run spent its seconds: start-up, training, evaluation, checkpoints.

One meaning per field, each this start's own except ``wall_s``:

- ``startup_s``: from the start (the process's, for ``python -m distnn.train``; the call's,
  for ``fit``) to the first step: imports, data, network, restoring a checkpoint;
- ``eval_s``: evaluating test and validation data (epoch ends and ``--eval-every``);
- ``checkpoint_s``: writing checkpoints;
- ``train_s``: the rest of the time since the first step: steps and the loop around them;
- ``elapsed_s``: the sum of those four, the start's whole time so far;
- ``wall_s``: ``elapsed_s`` plus the run's earlier starts (resumed runs).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager


def process_started() -> float | None:
    """This process's start on the ``time.perf_counter`` clock (Linux), else None.

    perf_counter is CLOCK_MONOTONIC; /proc gives the start in ticks since boot, and
    /proc/uptime the seconds since boot, so the two meet through "now".
    """
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        started_ago = uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return time.perf_counter() - min(max(started_ago, 0.0), 3600.0)


class RunClock:
    """This start's seconds, split; ``fields()`` gives the record's time fields."""

    def __init__(self, started: float | None = None, earlier_s: float = 0.0) -> None:
        self.started = time.perf_counter() if started is None else started
        self.earlier_s = earlier_s  # wall_s of the run's earlier starts
        self.training_from: float | None = None
        self.eval_s = self.checkpoint_s = 0.0

    def start_training(self) -> None:
        self.training_from = time.perf_counter()

    def evaluating(self) -> AbstractContextManager[None]:
        return self._adding_to("eval_s")

    def checkpointing(self) -> AbstractContextManager[None]:
        return self._adding_to("checkpoint_s")

    @contextmanager
    def _adding_to(self, field: str) -> Iterator[None]:
        """The block's seconds added to ``field``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, field, getattr(self, field) + time.perf_counter() - t0)

    def wall_s(self) -> float:
        return self.earlier_s + time.perf_counter() - self.started

    def fields(self) -> dict[str, float]:
        now = time.perf_counter()
        start_of_training = self.training_from if self.training_from is not None else now
        startup = start_of_training - self.started
        elapsed = now - self.started
        train = elapsed - startup - self.eval_s - self.checkpoint_s
        return {
            "startup_s": startup,
            "train_s": max(train, 0.0),
            "eval_s": self.eval_s,
            "checkpoint_s": self.checkpoint_s,
            "elapsed_s": elapsed,
            "wall_s": self.earlier_s + elapsed,
        }
