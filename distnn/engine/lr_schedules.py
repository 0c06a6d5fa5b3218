"""Learning rate α as a function of the step count (MATH.md, "Gradient Update Schedule").

An LR schedule is called as ``lr(t)`` with ``t`` the number of updates done so far
(0 at the first step) and returns a Python float. Schedules are deterministic and
keep no state beyond their constructor arguments, so a checkpoint only needs ``t``.
"""

from __future__ import annotations

import abc
import math
import numbers

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
    "each optionally followed by +warmup:N (e.g. cosine+warmup:100)"
)


def parse_lr_schedule(spec: str, lr: float, total_steps: int) -> LRSchedule:
    """Build a schedule from a command-line ``spec`` (see ``VALID_FORMS``).

    ``lr`` is the base (peak) learning rate; ``total_steps`` is used by ``cosine``.
    Raises ``DistnnError`` on a malformed spec or invalid value.
    """
    _positive("learning rate", lr)

    def bad(reason: str) -> DistnnError:
        return DistnnError(
            f"bad learning-rate schedule {spec!r}: {reason}; valid forms: {VALID_FORMS}"
        )

    base, plus, warm = spec.strip().partition("+")
    name, *args = [p.strip() for p in base.split(":")]
    nargs = {"constant": (0,), "step": (2,), "exp": (1,), "inverse": (1,), "cosine": (0, 1)}
    if name not in nargs:
        raise bad(f"unknown schedule {name!r}")
    if len(args) not in nargs[name]:
        raise bad(f"wrong number of ':' arguments for {name!r}")
    try:
        nums = [float(a) for a in args]
        if name == "step":
            nums[0] = int(args[0])
        if name == "cosine":
            schedule: LRSchedule = Cosine(lr, total_steps, *nums)
        else:
            cls = {
                "constant": Constant,
                "step": StepDecay,
                "exp": Exponential,
                "inverse": InverseTime,
            }[name]
            schedule = cls(lr, *nums)
        if plus:
            wname, colon, n = warm.strip().partition(":")
            if wname.strip() != "warmup" or not colon:
                raise bad(f"expected '+warmup:N' after the schedule, got {'+' + warm!r}")
            schedule = Warmup(schedule, int(n))
    except ValueError as exc:
        raise bad(f"not a number ({exc})") from None
    except DistnnError as exc:
        if str(exc).startswith("bad learning-rate schedule"):
            raise
        raise bad(str(exc)) from None
    return schedule
