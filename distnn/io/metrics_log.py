"""The ``--metrics`` file: one JSON object per epoch, appended and flushed as each ends."""

from __future__ import annotations

import json


class MetricsLog:
    """One JSON object per epoch, appended and flushed as each epoch ends."""

    def __init__(self, path: str | None, append: bool = False) -> None:
        mode = "a" if append else "w"
        self.file = open(path, mode, encoding="utf-8") if path else None  # noqa: SIM115

    def write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
