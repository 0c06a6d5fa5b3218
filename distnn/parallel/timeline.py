"""``--trace FILE.json``: where each rank's time went, step by step, for Perfetto.

Each rank records complete events (phase, start, duration) into preallocated arrays
while the traced steps run: no allocation, no I/O, no communication in the loop. At
the end (and when the run is stopped) rank 0 gathers every rank's events and writes
one Chrome trace-event file (``chrome://tracing``, https://ui.perfetto.dev): one
process lane per rank, named ``rank R``, events ``data``, ``compute``, ``allreduce``,
``update``, ``evaluate`` and ``checkpoint``, in microseconds.

The ranks' clocks are put on one time line through the system's wall clock: each rank
measures, once, the offset between its monotonic step clock and ``time.time()``, and
events are placed at wall-clock time minus rank 0's start. On one node every process
reads the same kernel clock, so lanes line up exactly; across nodes they line up as
well as the nodes' clocks are synchronised (NTP or PTP: typically well under a
millisecond). An Allreduce-based alignment was tried first and is off by a rank's
scheduling delay when ranks share cores.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import numpy as np

from distnn.io.outputs import atomic_write

if TYPE_CHECKING:  # the type only: parsing options must not start MPI
    from distnn.parallel.world import World

PHASES = ("data", "compute", "allreduce", "update", "evaluate", "checkpoint")
DATA, COMPUTE, ALLREDUCE, UPDATE, EVALUATE, CHECKPOINT = range(len(PHASES))
MAX_EVENTS = 1 << 20  # per rank: bounds the buffers whatever --trace-steps says


def parse_steps(spec: str | None) -> range:
    """``A:B`` (steps A..B-1, 1-based like the step counter), ``:B`` or ``A:``; ValueError
    saying what is wrong (the caller names the option)."""
    if not spec:
        return range(1, 1 + MAX_EVENTS // 8)
    first, colon, last = spec.partition(":")
    if not colon:
        raise ValueError(f"must be A:B (step numbers), got {spec!r}")
    try:
        lo = int(first) if first else 1
        hi = int(last) if last else lo + MAX_EVENTS // 8
    except ValueError:
        raise ValueError(f"must be A:B (step numbers), got {spec!r}") from None
    if lo < 1 or hi <= lo:
        raise ValueError(f"{spec!r}: need 1 <= A < B")
    return range(lo, hi)


class Timeline:
    """One rank's event buffer; ``active`` tells the step loop whether to record."""

    def __init__(self, world: World, path: str | None, steps: range) -> None:
        self.world, self.path, self.steps = world, path, steps
        capacity = min(MAX_EVENTS, 8 * len(steps) + 4096) if path else 0
        self.phase = np.zeros(capacity, np.int8)
        self.start = np.zeros(capacity, np.float64)
        self.duration = np.zeros(capacity, np.float64)
        self.count = 0
        self.origin = time.perf_counter()

    def align_clocks(self) -> None:
        """Put every rank's events on rank 0's time line (a collective: every rank calls)."""
        start = np.array([time.time()])
        self.world.bcast(start)  # rank 0's wall-clock start
        # origin, in this rank's perf_counter: rank 0's start on the shared wall clock
        self.origin = float(start[0]) - (time.time() - time.perf_counter())

    def covers(self, step: int) -> bool:
        """Whether step ``step`` (1-based) is traced."""
        return self.path is not None and step in self.steps

    def add_step(self, t0: float, t1: float, t2: float, t3: float, t4: float) -> None:
        """One step's four phases, from the five clock readings around them."""
        self.add(DATA, t0, t1)
        self.add(COMPUTE, t1, t2)
        self.add(ALLREDUCE, t2, t3)
        self.add(UPDATE, t3, t4)

    def add(self, phase: int, t0: float, t1: float) -> None:
        i = self.count
        if i < len(self.phase):
            self.phase[i], self.start[i], self.duration[i] = phase, t0 - self.origin, t1 - t0
            self.count = i + 1

    def write(self) -> None:
        """Gather every rank's events; rank 0 writes the trace file (atomically)."""
        if self.path is None:
            return
        n = self.count
        mine = (self.phase[:n].copy(), self.start[:n].copy(), self.duration[:n].copy())
        everyone = self.world.gather_object(mine)
        if not self.world.is_root:
            return
        events = []
        for rank, (phase, start, duration) in enumerate(everyone):
            events.append(
                {"name": "process_name", "ph": "M", "pid": rank, "args": {"name": f"rank {rank}"}}
            )
            events += [
                {
                    "name": PHASES[p],
                    "ph": "X",
                    "pid": rank,
                    "tid": 0,
                    "ts": round(s * 1e6, 3),
                    "dur": round(d * 1e6, 3),
                }
                for p, s, d in zip(phase.tolist(), start.tolist(), duration.tolist(), strict=True)
            ]
        text = json.dumps({"traceEvents": events, "displayTimeUnit": "ms"})
        atomic_write(self.path, lambda f: f.write(text.encode()))
