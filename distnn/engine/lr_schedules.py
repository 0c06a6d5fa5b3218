"""Learning rate α as a function of the step count (MATH.md, "Gradient Update Schedule").

An LR schedule is called as ``lr(t)`` with ``t`` the number of updates done so far
(0 at the first step) and returns a Python float. Schedules are deterministic and
keep no state beyond their constructor arguments, so a checkpoint only needs ``t``.
"""

from __future__ import annotations

import abc
import math
import numbers
from fractions import Fraction

from distnn.errors import DistnnError


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise DistnnError(what)


def _positive(name: str, value: float) -> float:
    value = float(value)
    _check(math.isfinite(value) and value > 0, f"{name} must be a finite number > 0, got {value}")
    return value


class LRSchedule(abc.ABC):
    """``lr(t) -> float``: the learning rate of update number ``t`` (0-based)."""

    @abc.abstractmethod
    def __call__(self, t: int) -> float: ...

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Constant(LRSchedule):
    """α_t = lr."""

    def __init__(self, lr: float) -> None:
        self.lr = _positive("learning rate", lr)

    def __call__(self, t: int) -> float:
        return self.lr


class StepDecay(LRSchedule):
    """α_t = lr · gamma^⌊t / every⌋."""

    def __init__(self, lr: float, every: int, gamma: float) -> None:
        self.lr = _positive("learning rate", lr)
        _check(int(every) == every and every >= 1, f"step decay 'every' must be >= 1, got {every}")
        self.every = int(every)
        self.gamma = _positive("decay factor gamma", gamma)

    def __call__(self, t: int) -> float:
        return self.lr * self.gamma ** (t // self.every)


class Exponential(LRSchedule):
    """α_t = lr · gamma^t."""

    def __init__(self, lr: float, gamma: float) -> None:
        self.lr = _positive("learning rate", lr)
        self.gamma = _positive("decay factor gamma", gamma)

    def __call__(self, t: int) -> float:
        return self.lr * self.gamma**t


class InverseTime(LRSchedule):
    """α_t = lr / (1 + k·t)."""

    def __init__(self, lr: float, k: float) -> None:
        self.lr = _positive("learning rate", lr)
        self.k = float(k)
        _check(math.isfinite(self.k) and self.k >= 0, f"inverse-time k must be >= 0, got {k}")

    def __call__(self, t: int) -> float:
        return self.lr / (1.0 + self.k * t)


class Cosine(LRSchedule):
    """α_t = min_lr + (lr − min_lr)·(1 + cos(π·t/T))/2 for t < T, then min_lr (T = total_steps)."""

    def __init__(self, lr: float, total_steps: int, min_lr: float = 0.0) -> None:
        self.lr = _positive("learning rate", lr)
        _check(
            int(total_steps) == total_steps and total_steps >= 1,
            f"cosine total_steps must be >= 1, got {total_steps}",
        )
        self.total_steps = int(total_steps)
        self.min_lr = float(min_lr)
        _check(
            math.isfinite(self.min_lr) and 0 <= self.min_lr <= self.lr,
            f"cosine min_lr must be in [0, lr={self.lr}], got {min_lr}",
        )

    def __call__(self, t: int) -> float:
        if t >= self.total_steps:
            return self.min_lr
        cos = math.cos(math.pi * t / self.total_steps)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + cos)


class Warmup(LRSchedule):
    """α_t = inner(t) · (t+1)/steps for t < steps, then inner(t).

    The ramp multiplies the wrapped schedule; it does not shift it in time.
    """

    def __init__(self, inner: LRSchedule | float, steps: int) -> None:
        self.inner = as_lr_schedule(inner)
        _check(int(steps) == steps and steps >= 1, f"warmup steps must be >= 1, got {steps}")
        self.steps = int(steps)

    def __call__(self, t: int) -> float:
        lr = self.inner(t)
        return lr * (t + 1) / self.steps if t < self.steps else lr


def as_lr_schedule(x: LRSchedule | float) -> LRSchedule:
    """A number becomes ``Constant(x)``; an ``LRSchedule`` is returned as is."""
    if isinstance(x, LRSchedule):
        return x
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        return Constant(x)
    raise TypeError(f"expected a learning rate (float) or an LRSchedule, got {x!r}")


VALID_FORMS = (
    "constant, step:EVERY:GAMMA, exp:GAMMA, inverse:K, cosine, cosine:MIN_LR, "
    "each optionally followed by +warmup:N (e.g. cosine+warmup:100); EVERY and N are "
    "steps, or epochs with 'ep' (step:2ep:0.5, +warmup:0.5ep)"
)


class LRScheduleError(DistnnError):
    """A ``--lr-schedule`` spec that cannot be read or holds an invalid value; the
    message names the spec and the valid forms."""


def steps_of(text: str, steps_per_epoch: int | None, what: str) -> int:
    """A count of steps written as steps (``"90"``) or epochs (``"2ep"``, ``"0.5ep"``).

    Epochs resolve to ⌈N · steps_per_epoch⌉ steps, with N read as the exact decimal it
    is written as (so ``0.1ep`` of 30 steps is 3, not 4 from 0.1·30 = 3.0000000000000004):
    a whole number of epochs is exact, a fraction rounds up, so the count covers at
    least the epochs asked for and is never 0. ``LRScheduleError`` names ``what``
    when ``text`` is neither.
    """
    text = text.strip()
    if not text.endswith("ep"):
        try:
            return int(text)
        except ValueError:
            raise LRScheduleError(f"{what} {text!r} is not a whole number of steps") from None
    if steps_per_epoch is None:
        raise LRScheduleError(f"{what} {text!r} in epochs needs the data size")
    try:  # float first: an absurd exponent is inf there, not a huge exact Fraction
        if not math.isfinite(float(text[:-2])):
            raise ValueError
        epochs = Fraction(text[:-2].strip())
    except ValueError:
        raise LRScheduleError(f"{what} {text!r} is not a number of epochs") from None
    if epochs <= 0:
        raise LRScheduleError(f"{what} {text!r} must be more than 0 epochs")
    return math.ceil(epochs * steps_per_epoch)


def parse_lr_schedule(
    spec: str, lr: float, total_steps: int, steps_per_epoch: int | None = None
) -> LRSchedule:
    """Build a schedule from a command-line ``spec`` (see ``VALID_FORMS``).

    ``lr`` is the base (peak) learning rate; ``total_steps`` is used by ``cosine``;
    ``steps_per_epoch`` turns counts given in epochs into steps (see :func:`steps_of`).
    Raises ``LRScheduleError`` on a malformed spec or invalid value.
    """
    _positive("learning rate", lr)
    try:
        return _build(spec, lr, total_steps, steps_per_epoch)
    except DistnnError as exc:  # the reason, from the reading or a constructor's check
        raise LRScheduleError(
            f"bad learning-rate schedule {spec!r}: {exc}; valid forms: {VALID_FORMS}"
        ) from None


def _build(spec: str, lr: float, total_steps: int, steps_per_epoch: int | None) -> LRSchedule:
    base, plus, warm = spec.strip().partition("+")
    name, *args = [p.strip() for p in base.split(":")]
    nargs = {"constant": (0,), "step": (2,), "exp": (1,), "inverse": (1,), "cosine": (0, 1)}
    if name not in nargs:
        raise LRScheduleError(f"unknown schedule {name!r}")
    if len(args) not in nargs[name]:
        raise LRScheduleError(f"wrong number of ':' arguments for {name!r}")
    if name == "step":
        every = steps_of(args[0], steps_per_epoch, "step decay 'every'")
        schedule: LRSchedule = StepDecay(lr, every, _number(args[1]))
    elif name == "cosine":
        schedule = Cosine(lr, total_steps, *map(_number, args))
    else:
        cls = {"constant": Constant, "exp": Exponential, "inverse": InverseTime}[name]
        schedule = cls(lr, *map(_number, args))
    if plus:
        wname, colon, n = warm.strip().partition(":")
        if wname.strip() != "warmup" or not colon:
            raise LRScheduleError(f"expected '+warmup:N' after the schedule, got {'+' + warm!r}")
        schedule = Warmup(schedule, steps_of(n, steps_per_epoch, "warmup"))
    return schedule


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise LRScheduleError(f"{text!r} is not a number") from None


def in_steps(spec: str, steps_per_epoch: int) -> str:
    """A spec that :func:`parse_lr_schedule` read without error, with each count given
    in epochs written in steps: ``cosine+warmup:2ep`` → ``cosine+warmup:90``."""
    base, plus, warm = spec.strip().partition("+")
    name, *args = [p.strip() for p in base.split(":")]
    if name == "step":
        args[0] = str(steps_of(args[0], steps_per_epoch, "step decay 'every'"))
    resolved = ":".join([name, *args])
    if plus:
        _, _, n = warm.partition(":")
        resolved += f"+warmup:{steps_of(n, steps_per_epoch, 'warmup')}"
    return resolved
