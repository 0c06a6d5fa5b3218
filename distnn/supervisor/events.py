"""The supervisor's record: each event a line on stdout and a JSON record for ``--metrics``.

Records wait in memory until :meth:`EventLog.flush`, which the supervisor calls only
while no job runs: rank 0 appends its epoch records to the same file, and the two never
write at once. Readers tell the kinds apart (:func:`distnn.io.metrics_log.is_epoch`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable


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
