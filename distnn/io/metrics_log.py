"""The ``--metrics`` file: a header record per (re)start, then one JSON object per epoch.

Each start of a run (the first and every ``--resume``) appends one header record,
``{"header": true, "distnn": …, "mpi": …, "blas": …, "threads": …, "ranks": …,
"config": {…}}``, so the file says what produced the epochs below it, even when a
resumed run uses another number of ranks. Under ``python -m distnn.launch`` the
supervisor adds event records (``{"event": "attempt", …}``: attempts, failures,
restarts), and ``--eval-every`` adds evaluation records (``{"eval": true, …}``).
Readers keep only epoch records (:func:`is_epoch`); :func:`epoch_records` does, and so
does ``python -m distnn.plot``.
"""

from __future__ import annotations

import json
from typing import Any


class MetricsLog:
    """One JSON object per line, appended and flushed as each is written."""

    def __init__(self, path: str | None, append: bool = False) -> None:
        mode = "a" if append else "w"
        self.file = open(path, mode, encoding="utf-8") if path else None  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def is_header(record: object) -> bool:
    """True for a header record (what produced the run), False for an epoch's record."""
    return isinstance(record, dict) and record.get("header") is True


def is_evaluation(record: object) -> bool:
    """True for an ``--eval-every`` record (an evaluation inside an epoch)."""
    return isinstance(record, dict) and record.get("eval") is True


def is_epoch(record: object) -> bool:
    """True for an epoch's record: not a header, a supervisor's event or an evaluation."""
    return (
        isinstance(record, dict)
        and not is_header(record)
        and "event" not in record
        and not is_evaluation(record)
    )


def epoch_records(path: str) -> list[dict[str, Any]]:
    """The epoch records of a metrics file in file order; headers, events, blank lines skipped."""
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if is_epoch(r)]


def event_records(path: str) -> list[dict[str, Any]]:
    """The supervisor's event records (``python -m distnn.launch``), in file order."""
    with open(path, encoding="utf-8") as f:
        return [r for line in f if line.strip() and "event" in (r := json.loads(line))]


def header_records(path: str) -> list[dict[str, Any]]:
    """The header records of a metrics file, one per start of the run."""
    with open(path, encoding="utf-8") as f:
        return [r for line in f if line.strip() and is_header(r := json.loads(line))]
