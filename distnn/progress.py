"""What a run shows while training: a live line on a terminal, plain lines otherwise.

Rank 0 speaks; with ``verbose=2`` every rank does, each line prefixed with its rank.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """A one-line progress bar (samples/s, loss) on a terminal; per-epoch lines elsewhere."""

    def __init__(
        self,
        epochs: int,
        batch_size: int,
        stream: TextIO | None = None,
        enabled: bool = True,
        prefix: str = "",
    ) -> None:
        self.epochs, self.batch_size = epochs, batch_size
        self.stream = sys.stderr if stream is None else stream
        self.enabled, self.prefix = enabled, prefix
        self.live = enabled and not prefix and self.stream.isatty()
        self._epoch, self._epoch_start, self._last_draw = 0, 0.0, 0.0

    def say(self, text: str) -> None:
        """Print ``text`` (one or more lines) if this rank speaks."""
        if self.enabled:
            for line in text.splitlines():
                self.stream.write(f"{self.prefix}{line}\n")
            self.stream.flush()

    def start_epoch(self, epoch: int) -> None:
        self._epoch, self._epoch_start = epoch, time.perf_counter()

    def step(self, done: int, total: int, loss: float) -> None:
        now = time.perf_counter()
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
        prefix = "\r\x1b[K" if self.live else self.prefix
        self.stream.write(prefix + "  ".join(parts) + "\n")
        self.stream.flush()
