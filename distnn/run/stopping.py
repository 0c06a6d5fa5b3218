"""What can end a run before its last epoch: a signal, the clock, and early stopping.

Each rule only *asks*; :func:`distnn.run.loop.train_config` decides, from values every rank
shares (the step's reduced votes, the epoch's losses), so all ranks stop together.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType

import numpy as np


class StopRequests:
    """SIGTERM (Slurm, kill) or SIGINT (Ctrl-C) asks to stop after the step under way.

    The request rides in the next step's votes, so all ranks stop after the same step.
    A second Ctrl-C stops at once, for a user who cannot wait; a repeated SIGTERM does
    not, because on ``scancel`` each rank gets one from Slurm and one from mpiexec.
    ``deadline`` (``max_time`` seconds from now) is read on rank 0 only: its clock
    decides, so no rank decides alone on a clock of its own.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self.deadline: float | None = None
        self._previous: dict[int, object] = {}

    def start_clock(self, max_time: float | None, is_root: bool) -> None:
        """The time limit counts from now, on rank 0's clock only."""
        self.deadline = time.perf_counter() + max_time if max_time and is_root else None

    def time_is_up(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> StopRequests:
        # Handlers can only be set from the main thread; elsewhere signals act as usual.
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._request)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # a library call leaves the handlers as it found them


class EarlyStopping:
    """Stop after ``patience`` epochs without a lower validation loss; keep the best weights.

    Its state travels in checkpoints, so a resumed run remembers its best epoch.
    """

    def __init__(self, patience: int, params: np.ndarray) -> None:
        self.patience, self.params = patience, params
        self.best_loss, self.best_epoch, self.waited = float("inf"), 0, 0
        self.best_params = params.copy()

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        scalars = {"best_loss": self.best_loss, "best_epoch": self.best_epoch}
        return scalars | {"waited": self.waited}, {"best_params": self.best_params}

    def load_state(self, scalars: dict, arrays: dict[str, np.ndarray]) -> None:
        if "best_params" not in arrays:  # a checkpoint of a run without early stopping
            return
        self.best_loss, self.best_epoch = scalars["best_loss"], scalars["best_epoch"]
        self.waited = scalars["waited"]
        self.best_params[...] = arrays["best_params"]

    def should_stop(self, val_loss: float, epoch: int) -> bool:
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.waited = val_loss, epoch, 0
            self.best_params[...] = self.params
            return False
        self.waited += 1
        return self.waited >= self.patience

    def restore_best(self, last_epoch: int) -> bool:
        """Put the best weights back if a later epoch's are in place; True if it did."""
        if self.best_epoch in (0, last_epoch):
            return False
        self.params[...] = self.best_params
        return True
