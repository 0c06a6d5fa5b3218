"""Every reason a run ends before its last epoch, in one place: :class:`StopRules`.

A signal, the clock, a callback's request, a target met, a target training loss, and
early stopping's patience. Each rule only *asks*; :class:`StopRules` decides, and only
from values every rank shares (the step's reduced votes, evaluations and epoch losses
computed the same on every rank), so all ranks stop after the same step. The loop asks
it after each step (:meth:`StopRules.after_step`), each evaluation
(:meth:`StopRules.after_evaluation`) and each epoch (:meth:`StopRules.after_epoch`).
"""

from __future__ import annotations

import math
import operator
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import numpy as np

from distnn.errors import DistnnError, StopTraining
from distnn.parallel.reducers import Vote

# What ``--target`` may watch, and where its value comes from.
TARGET_METRICS = ("accuracy", "test_loss", "val_accuracy", "val_loss", "loss")
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_TARGET = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|>|<)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Target:
    """``metric op value``, e.g. ``accuracy>=0.97``: met when a record's metric satisfies it."""

    metric: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"

    def met(self, record: dict) -> bool:
        value = record.get(self.metric)
        return value is not None and _COMPARE[self.op](value, self.value)


def parse_target(spec: str) -> Target:
    """``"accuracy>=0.97"`` → Target; DistnnError naming what is wrong otherwise."""
    match = _TARGET.match(spec)
    if not match:
        raise DistnnError(
            f"cannot read target {spec!r}: expected METRIC>=VALUE or METRIC<=VALUE, "
            f"METRIC one of {', '.join(TARGET_METRICS)} (e.g. accuracy>=0.97)"
        )
    metric, op, text = match.groups()
    if metric not in TARGET_METRICS:
        raise DistnnError(
            f"cannot read target {spec!r}: unknown metric {metric!r} "
            f"(one of {', '.join(TARGET_METRICS)})"
        )
    try:
        value = float(text)
    except ValueError:
        raise DistnnError(f"cannot read target {spec!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DistnnError(f"cannot read target {spec!r}: the value must be finite")
    return Target(metric, op, value)


@dataclass(frozen=True)
class Stop:
    """Why the run ends early. ``preempted``: a signal asked; the run raises after a
    checkpoint instead of finishing cleanly."""

    reason: str
    preempted: bool = False


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
        self.signum = 0  # the signal that asked, once one has
        self.deadline: float | None = None
        self.deadline_s = 0.0  # the limit, for messages
        self._previous: dict[int, object] = {}

    def start_clock(self, max_time: float | None, is_root: bool) -> None:
        """The time limit counts from now, on rank 0's clock only."""
        self.deadline_s = max_time or 0.0
        self.deadline = time.perf_counter() + max_time if max_time and is_root else None

    def time_is_up(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self.signum = self.signum or signum  # the first one names the request
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

    def observe(self, val_loss: float, epoch: int) -> bool:
        """Note epoch ``epoch``'s validation loss, keeping its weights if it is the best
        so far; True once ``patience`` epochs in a row brought no improvement."""
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


class StopRules:
    """Every reason to stop early, asked after each step, evaluation and epoch.

    ``requests`` (signals, the clock) and the callbacks' requests become this rank's
    votes (:meth:`cast`); the step's Allreduce sums them, so :meth:`after_step` reads
    the same votes on every rank. A callback asks by returning ``True`` from
    ``on_step``/``on_epoch_end`` or by raising :class:`~distnn.errors.StopTraining`,
    on any rank: from ``on_step`` the request rides in the next step's votes; from
    ``on_epoch_end`` it is agreed at the epoch's end (:meth:`agree_at_epoch_end`).
    """

    def __init__(
        self,
        requests: StopRequests,
        target: Target | None,
        target_loss: float | None,
        early: EarlyStopping | None,
        names: Callable[[str], str],
        rank: int = 0,
    ) -> None:
        self.requests, self.target, self.target_loss, self.early = (
            requests, target, target_loss, early
        )  # fmt: skip
        self.rank = rank  # this rank's number, in the vote that names a signalled rank
        self.name = names  # how messages name an option (--flag or keyword)
        self.callback_asked = False  # this rank's callbacks asked since the last vote
        self.callback_message = ""

    def cast(self, votes: np.ndarray) -> None:
        """This rank's votes for the next step, written where the reducer sums them."""
        asked = self.requests.requested
        votes[Vote.SIGNAL] = asked
        votes[Vote.SIGNALLED_RANK] = self.rank if asked else 0
        votes[Vote.SIGNAL_NUMBER] = self.requests.signum if asked else 0
        votes[Vote.TIME] = self.requests.time_is_up()
        votes[Vote.CALLBACK] = self.callback_asked

    def ask_callback(self, method: Callable[..., object], *args: object) -> None:
        """Call one callback method; a ``True`` return or ``StopTraining`` asks to stop."""
        try:
            asked = method(*args) is True
        except StopTraining as e:
            asked, self.callback_message = True, str(e)
        self.callback_asked = self.callback_asked or asked

    def after_step(self, votes: np.ndarray, step: int) -> Stop | None:
        """The world's summed votes of step ``step``: the same on every rank."""
        if votes[Vote.SIGNAL]:
            return Stop(
                f"stopped on request after step {step} ({signalled(votes)})", preempted=True
            )
        if votes[Vote.TIME]:
            limit = self.requests.deadline_s
            return Stop(f"{self.name('max_time')} {limit:g} s reached at step {step}")
        if votes[Vote.CALLBACK]:
            return self._callback_stop(step)
        return None

    def agree_at_epoch_end(self, world_sum: Callable[[np.ndarray], None], step: int) -> Stop | None:
        """Collective, once an epoch on every rank: did any rank's callback ask?"""
        asked = np.array([float(self.callback_asked)])
        world_sum(asked)
        return self._callback_stop(step) if asked[0] else None

    def _callback_stop(self, step: int) -> Stop:
        why = f": {self.callback_message}" if self.callback_message else ""
        self.callback_asked = False
        return Stop(f"a callback asked to stop after step {step}{why}")

    def after_evaluation(self, record: dict) -> Stop | None:
        """A test/validation evaluation (inside an epoch or at its end): the target."""
        if self.target is not None and self.target.met(record):
            value = record[self.target.metric]
            return Stop(
                f"target {self.target} met: {self.target.metric} {value:.4g} at step "
                f"{record['step']} (epoch {record['epoch']}, {record['samples']:,} samples)"
            )
        return None

    def after_epoch(self, record: dict, epoch: int) -> Stop | None:
        """The epoch's record: the target, the target training loss, patience."""
        stop = self.after_evaluation(record)
        if stop:
            return stop
        if self.target_loss is not None and record["loss"] <= self.target_loss:
            return Stop(f"training loss reached {self.name('target_loss')} {self.target_loss}")
        if self.early and self.early.observe(record["val_loss"], epoch):
            return Stop(
                f"val_loss did not improve for {self.early.patience} epochs; "
                f"best weights from epoch {self.early.best_epoch}"
            )
        return None


def signalled(votes: np.ndarray) -> str:
    """Which signal reached which rank(s) first, from a step's summed votes: ``SIGTERM,
    first to rank 1``, or ``SIGTERM, first to 3 ranks``. Only the ranks whose signal
    arrived before they cast that step's votes are counted: a signal to the launcher
    reaches every rank, not necessarily in the same step, so "first" is all it can say."""
    count = round(float(votes[Vote.SIGNAL]))
    number = round(float(votes[Vote.SIGNAL_NUMBER]))
    names = [s.name for s in StopRequests.SIGNALS if number == count * s]
    name = names[0] if names else "SIGTERM/SIGINT"
    if count == 1:
        return f"{name}, first to rank {round(float(votes[Vote.SIGNALLED_RANK]))}"
    return f"{name}, first to {count} ranks"
