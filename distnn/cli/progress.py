"""What rank 0 shows while training: a live line on a terminal, plain lines otherwise."""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO


class Progress:
    """A one-line progress bar (samples/s, loss) on a terminal; per-epoch lines elsewhere."""

    def __init__(
        self, epochs: int, batch_size: int, stream: TextIO = sys.stderr, enabled: bool = True
    ) -> None:
        self.epochs, self.batch_size, self.stream = epochs, batch_size, stream
        self.enabled = enabled
        self.live = enabled and stream.isatty()
        self._epoch, self._epoch_start, self._last_draw = 0, 0.0, 0.0

    def start_epoch(self, epoch: int) -> None:
        self._epoch, self._epoch_start = epoch, time.perf_counter()

    def step(self, trainer, total: int, loss: float) -> None:
        done, now = trainer.batch_in_epoch, time.perf_counter()
        if not self.live or (now - self._last_draw < 0.1 and done < total):
            return
        self._last_draw = now
        rate = done * self.batch_size / max(now - self._epoch_start, 1e-9)
        width = 24
        filled = width * done // total
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(
            f"\repoch {self._epoch}/{self.epochs} [{bar}] {done}/{total} "
            f"loss {loss:.4f} {rate:,.0f} samples/s "
        )
        self.stream.flush()

    def end_epoch(self, record: dict) -> None:
        if not self.enabled:
            return
        parts = [f"epoch {record['epoch']}/{self.epochs}", f"loss {record['loss']:.4f}"]
        if record.get("test_loss") is not None:
            parts.append(f"test_loss {record['test_loss']:.4f}")
        if record.get("accuracy") is not None:
            parts.append(f"accuracy {record['accuracy']:.4f}")
        parts.append(f"{record['samples_per_sec']:,.0f} samples/s")
        prefix = "\r\x1b[K" if self.live else ""
        self.stream.write(prefix + "  ".join(parts) + "\n")
        self.stream.flush()


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
