"""What a run shows while training, on one stream (stdout) so that the order is kept.

Everything human-readable a run prints (header, notes, progress, epoch lines, the
``done:`` summary of ``python -m distnn.train``) goes to one stream: two streams
(stderr for the epochs, stdout for the summary) are forwarded separately by mpiexec
and Slurm, and the summary could land before the last epoch. Errors stay on stderr.

Within an epoch, rank 0 shows its progress as ``mode`` says:

- ``bar``: one live line redrawn in place (a terminal);
- ``lines``: a plain line every ``log_every`` steps, or every ``LINE_SECONDS`` when
  ``log_every`` is 0 — what a log file of mpirun or sbatch can hold;
- ``none``: nothing between the epoch lines;
- ``auto``: ``bar`` when the stream is a terminal, else ``lines``.

With ``verbose=2`` every rank prints its epoch lines, prefixed with its rank.

A stdout that stops taking lines (closed: ``| head`` exited, EPIPE; full: ``>
/dev/full``, ENOSPC) never stops the run: the first failed write says so once on
stderr (:func:`stdout_lost`), stdout is pointed at ``/dev/null`` (so later lines, and
Python's flush at exit, go nowhere quietly), this Progress falls silent, and training
goes on to write its outputs and end with the status it would have had. No collective
is involved: the other ranks never learn of it and need not.
"""

from __future__ import annotations

import errno
import sys
import time
from typing import TextIO

from distnn.parallel.failures import stdout_to_devnull

PROGRESS_MODES = ("auto", "bar", "lines", "none")
LINE_SECONDS = 10.0  # the default interval of ``lines``: a few lines a minute in a log


def format_duration(seconds: float) -> str:
    """'1h02m', '3m05s' or '42s': an ETA at a glance."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


_stdout_lost = False  # said once per process, whoever notices first
STREAM_ERRORS = (OSError, ValueError)  # EPIPE, ENOSPC, EIO…; ValueError: a closed file


def stdout_lost(error: BaseException, stream: TextIO | None = None, going_on: str = "") -> None:
    """``stream`` (stdout) failed a write with ``error``: say so on stderr once, and make
    every later write to it (and Python's flush at exit) go to ``/dev/null`` quietly.

    ``going_on``: what the run does next, for the message (default: it keeps training).
    A stream that is not this process's stdout is left alone: its owner stops using it.
    """
    global _stdout_lost
    if stream is None or stream is sys.stdout or stream is sys.__stdout__:
        stdout_to_devnull()  # also drops what a failed flush left in stdout's buffer
    if _stdout_lost:
        return
    _stdout_lost = True
    code = getattr(error, "errno", None)
    state = {errno.EPIPE: "closed", errno.ENOSPC: "full"}.get(code, "not writable")
    reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
    going_on = going_on or "training continues; its output is no longer shown"
    try:
        sys.stderr.write(f"distnn: stdout {state} ({reason}): {going_on}\n")
        sys.stderr.flush()
    except STREAM_ERRORS:  # stderr gone too: nobody left to tell
        pass


def resolve_mode(mode: str, stream: TextIO) -> str:
    """``auto`` made concrete: a bar on a terminal, lines into a pipe or a file."""
    if mode != "auto":
        return mode
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, *STREAM_ERRORS):  # no isatty, or a closed stream
        return "lines"


class Progress:
    """Rank 0's view of a run: header lines, in-epoch progress, one line per epoch."""

    def __init__(
        self,
        epochs: int,
        batch_size: int,
        stream: TextIO | None = None,
        enabled: bool = True,
        prefix: str = "",
        mode: str = "auto",
        log_every: int = 0,
        steps: bool = True,
    ) -> None:
        """``steps``: whether this rank shows in-epoch progress (rank 0 only)."""
        self.epochs, self.batch_size = epochs, batch_size
        self.stream = sys.stdout if stream is None else stream
        self.enabled, self.prefix = enabled, prefix
        self.mode = resolve_mode(mode, self.stream) if enabled and steps else "none"
        self.log_every = log_every
        self._epoch, self._epoch_start, self._last_draw = 0, 0.0, 0.0
        self._total_steps, self._first_step, self._run_start = 0, 0, time.perf_counter()
        self._last_line, self._last_line_step, self._loss_sum, self._loss_n = 0.0, 0, 0.0, 0
        self._bar_drawn = False  # a bar is on screen without its newline

    def say(self, text: str) -> None:
        """Print ``text`` (one or more lines) if this rank speaks."""
        if self.enabled:
            self._write("".join(f"{self.prefix}{line}\n" for line in text.splitlines()), clear=True)

    def _write(self, text: str, clear: bool = False) -> bool:
        """``text`` on the stream (after clearing a drawn bar); False if the stream failed."""
        try:
            if clear:
                self._clear_bar()
            self.stream.write(text)
            self.stream.flush()
            return True
        except STREAM_ERRORS as e:
            self._lost(e)
            return False

    def _lost(self, error: BaseException) -> None:
        """The stream failed a write: say so once, and show nothing more (steps included)."""
        self.enabled, self.mode, self._bar_drawn = False, "none", False
        stdout_lost(error, self.stream)

    def _clear_bar(self) -> None:
        if self._bar_drawn:  # the next line starts where the bar was, not after it
            self.stream.write("\r\x1b[K")
            self._bar_drawn = False

    def start(self, step: int, total_steps: int) -> None:
        """Training starts (or resumes) at global ``step`` of ``total_steps``: the ETA's base."""
        self._first_step = self._last_line_step = step
        self._total_steps = total_steps
        self._run_start = self._last_line = time.perf_counter()

    def start_epoch(self, epoch: int) -> None:
        self._epoch, self._epoch_start = epoch, time.perf_counter()

    def _eta(self, step: int, now: float) -> str:
        done = step - self._first_step
        if done <= 0 or not self._total_steps:
            return "?"
        per_step = (now - self._run_start) / done
        return format_duration(per_step * max(self._total_steps - step, 0))

    def step(self, step: int, done: int, total: int, loss: float) -> None:
        """After global step ``step``, batch ``done`` of ``total`` in this epoch."""
        if self.mode == "lines":
            self._line(step, done, total, loss)
        elif self.mode == "bar":
            self._bar(step, done, total, loss)

    def _line(self, step: int, done: int, total: int, loss: float) -> None:
        self._loss_sum += loss
        self._loss_n += 1
        now = time.perf_counter()
        due = (
            step % self.log_every == 0 if self.log_every else now - self._last_line >= LINE_SECONDS
        )
        if not due:
            return
        rate = (step - self._last_line_step) * self.batch_size / max(now - self._last_line, 1e-9)
        text = (
            f"{self.prefix}step {step}/{self._total_steps}  epoch {self._epoch}/{self.epochs} "
            f"(batch {done}/{total})  loss {self._loss_sum / self._loss_n:.4f}  "
            f"{rate:,.0f} samples/s  ETA {self._eta(step, now)}\n"
        )
        self._write(text)
        self._last_line, self._last_line_step, self._loss_sum, self._loss_n = now, step, 0.0, 0

    def _bar(self, step: int, done: int, total: int, loss: float) -> None:
        now = time.perf_counter()
        if now - self._last_draw < 0.1 and done < total:
            return  # a terminal redrawn more than 10 times a second only costs time
        self._last_draw = now
        rate = done * self.batch_size / max(now - self._epoch_start, 1e-9)
        width = 24
        filled = width * done // total
        bar = "#" * filled + "-" * (width - filled)
        text = (
            f"\repoch {self._epoch}/{self.epochs} [{bar}] {done}/{total} "
            f"loss {loss:.4f} {rate:,.0f} samples/s ETA {self._eta(step, now)} "
        )
        if self._write(text):
            self._bar_drawn = True

    def end_epoch(self, record: dict) -> None:
        if not self.enabled:
            return
        parts = [f"epoch {record['epoch']}/{self.epochs}", f"loss {record['loss']:.4f}"]
        if record.get("test_loss") is not None:
            parts.append(f"test_loss {record['test_loss']:.4f}")
        if record.get("accuracy") is not None:
            parts.append(f"accuracy {record['accuracy']:.4f}")
        parts.append(f"{record['samples_per_sec']:,.0f} samples/s")
        if record.get("noise_scale") is not None:
            parts.append(f"noise scale {record['noise_scale']:,.0f}")
        self._write(self.prefix + "  ".join(parts) + "\n", clear=True)
