"""``--tensorboard DIR``: each epoch's numbers as TensorBoard scalars, written by rank 0.

Through tensorboardX, an optional extra (``pip install 'distnn[tensorboard]'``): a
small pure-Python writer of TensorBoard's event files that needs neither TensorFlow
nor PyTorch. Every numeric key of an epoch's record (``loss``, ``test_loss``,
``accuracy``, ``samples_per_sec``, ``lr``, …) becomes one scalar series, against the
global step, so a resumed run continues the same curves.
"""

from __future__ import annotations

from typing import Any

from distnn.errors import DistnnError

INSTALL_HINT = "pip install 'distnn[tensorboard]' (or: pip install tensorboardX)"
# Record keys that are not curves: the x axis itself, and constants of the run.
NOT_SCALARS = frozenset({"epoch", "step", "ranks", "batch_size"})


class TensorBoardLog:
    """An event file in ``logdir``; ``write(record)`` adds one point to each series."""

    def __init__(self, logdir: str) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise DistnnError(f"--tensorboard needs tensorboardX: {INSTALL_HINT}") from None
        try:
            self.writer = SummaryWriter(logdir=logdir)
        except OSError as e:
            raise DistnnError(f"--tensorboard {logdir}: {e.strerror or e}") from None

    def write_text(self, tag: str, text: str) -> None:
        """A note beside the curves (the run's header: versions, configuration)."""
        self.writer.add_text(tag, text)
        self.writer.flush()

    def write(self, record: dict[str, Any]) -> None:
        step = record["step"]
        for key, value in record.items():
            if key in NOT_SCALARS or isinstance(value, bool):
                continue
            if isinstance(value, int | float):
                self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # a preempted job keeps every epoch written so far

    def close(self) -> None:
        self.writer.close()
