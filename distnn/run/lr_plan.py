"""The learning rate a run steps with, resolved once its data size is known.

``--lr`` scaled by ``--lr-scaling`` for the global batch actually used
(:mod:`distnn.engine.lr_scaling`), then shaped by ``--lr-schedule`` with its counts in
epochs turned into steps (:func:`distnn.engine.lr_schedules.steps_of`). The run's
header line and its metrics header record say what came out, so a rate read in a
record can be traced back to the options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distnn.engine.lr_scaling import describe_factor, lr_factor
from distnn.engine.lr_schedules import LRSchedule, Warmup, in_steps, parse_lr_schedule
from distnn.run.options import TrainConfig


@dataclass(frozen=True)
class LRPlan:
    given: float  # --lr: the rate for base_batch
    rule: str  # --lr-scaling
    batch: int  # the global batch the run steps with (never more than its training rows)
    base_batch: int
    peak: float  # given × the rule's factor: what the schedule starts from
    spec: str  # --lr-schedule as given
    in_steps: str  # the same with every count in epochs written in steps
    steps_per_epoch: int
    schedule: LRSchedule

    @property
    def warmup_steps(self) -> int:
        return self.schedule.steps if isinstance(self.schedule, Warmup) else 0

    def text(self) -> str:
        """For the header line: ``lr 0.04 (0.01 × 128/32, linear) (cosine+warmup:2ep = …)``;
        just ``lr 0.01 (constant)`` for an unscaled rate in steps, as before."""
        rate = f"lr {self.given}"
        if self.rule != "none":
            how = describe_factor(self.rule, self.batch, self.base_batch)
            rate = f"lr {self.peak:.6g} ({self.given} {how}, {self.rule})"
        shape = self.spec
        if self.in_steps != self.spec:
            shape += f" = {self.in_steps} at {self.steps_per_epoch} steps/epoch"
        return f"{rate} ({shape})"

    def record(self) -> dict[str, Any]:
        """For the metrics header record (``lr_resolved``)."""
        return {
            "lr": self.peak,
            "given_lr": self.given,
            "lr_scaling": self.rule,
            "batch_size": self.batch,
            "base_batch": self.base_batch,
            "factor": lr_factor(self.rule, self.batch, self.base_batch),
            "lr_schedule": self.in_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "warmup_steps": self.warmup_steps,
        }


def resolve_lr(config: TrainConfig, train_rows: int) -> LRPlan:
    """The run's learning-rate plan for ``train_rows`` training rows (after any
    validation split); LRScheduleError on a bad ``--lr-schedule``.

    Steps per epoch are the trainer's: ⌈rows / batch⌉, the last batch partial, with a
    batch larger than the data cut to the data.
    """
    batch = min(config.batch_size, train_rows)
    steps_per_epoch = -(-train_rows // batch)
    peak = config.lr * lr_factor(config.lr_scaling, batch, config.base_batch)
    total = steps_per_epoch * config.epochs
    schedule = parse_lr_schedule(config.lr_schedule, peak, total, steps_per_epoch)
    return LRPlan(
        given=config.lr,
        rule=config.lr_scaling,
        batch=batch,
        base_batch=config.base_batch,
        peak=peak,
        spec=config.lr_schedule,
        in_steps=in_steps(config.lr_schedule, steps_per_epoch),
        steps_per_epoch=steps_per_epoch,
        schedule=schedule,
    )
