"""The records a run writes: one per epoch, and one per ``--eval-every`` evaluation.

Each is built by one function from values every rank shares, so every rank's
``History`` holds the same numbers (rank 0 also writes them to ``--metrics`` and
TensorBoard). An evaluation record carries ``"eval": true``; readers that want epochs
skip it (:func:`distnn.io.metrics_log.is_epoch`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distnn.data.preprocess import Split
from distnn.parallel.noise_scale import efficiency, steps_ratio
from distnn.parallel.trainer import Trainer
from distnn.parallel.world import World
from distnn.run.clock import RunClock

PHASE_KEYS = ("data_s", "compute_s", "allreduce_s", "update_s")


def epoch_record(
    trainer: Trainer,
    world: World,
    loss: float,
    samples_per_sec: float,
    clock: RunClock,
    validation: Split | None,
) -> dict[str, Any]:
    """The epoch just closed (``trainer.end_epoch`` gave its mean ``loss``): its record.

    Collective: the time split is summed over the ranks, the test and validation data
    evaluated by all of them.
    """
    record = {
        "epoch": trainer.epoch,
        "loss": loss,
        "samples_per_sec": samples_per_sec,
        **_position(trainer, world),
        **time_split(trainer, world),
        **learning_speed(trainer, samples_per_sec),
    }
    with clock.evaluating():
        record |= evaluations(trainer, validation)
    return record | clock.fields()


def evaluation_record(
    trainer: Trainer, world: World, clock: RunClock, validation: Split | None
) -> dict[str, Any]:
    """An evaluation inside epoch ``epoch`` (the one under way), after step ``step``.

    ``loss`` is the mean training loss of the epoch's steps so far. Collective.
    """
    seen = min(trainer.batch_in_epoch * trainer.batch_size, len(trainer.data.x))
    record = {
        "eval": True,
        "epoch": trainer.epoch + 1,
        "batch": trainer.batch_in_epoch,
        "loss": trainer.epoch_loss_sum / max(seen, 1),
        **_position(trainer, world),
    }
    with clock.evaluating():
        record |= evaluations(trainer, validation)
    return record | clock.fields()


def final_record(
    last: dict[str, Any] | None,
    trainer: Trainer,
    clock: RunClock,
    validation: Split | None,
    first_step: int,
    first_samples: int,
) -> dict[str, Any]:
    """``History.final``: the weights in place and where the run stopped.

    ``last``: the last epoch's record if it describes these weights; else (a stop inside an
    epoch, early stopping's best weights put back) they are evaluated afresh. Its
    ``samples_per_sec`` is this start's (samples trained since ``first_samples`` over its
    ``train_s``), its time fields the whole start's. Collective.
    """
    if last is not None:
        final = dict(last)
    else:
        with clock.evaluating():
            loss = trainer.evaluate(trainer.data.x, trainer.data.y, None)[0]
            final = {"loss": loss} | evaluations(trainer, validation)
        if trainer.noise.steps:  # the steps since the last epoch record
            final |= learning_speed(trainer, 0.0)
    times = clock.fields()
    trained = trainer.samples_seen() - first_samples
    rate = trained / times["train_s"] if trained and times["train_s"] else 0.0
    efficiency = final.get("efficiency")
    return final | {
        "epoch": trainer.epoch,
        "batch": trainer.batch_in_epoch,
        "step": trainer.step,
        "samples": trainer.samples_seen(),
        "samples_per_sec": rate,  # the run's, not the last epoch's
        "goodput": rate * efficiency if efficiency is not None else None,
        "steps_this_start": trainer.step - first_step,
        **times,
    }


def _position(trainer: Trainer, world: World) -> dict[str, Any]:
    return {
        "step": trainer.step,
        "samples": trainer.samples_seen(),
        # The rate of the last step taken (the schedule has taken t steps).
        "lr": float(trainer.schedule.lr_schedule(max(trainer.schedule.t - 1, 0))),
        "ranks": world.size,
        "batch_size": trainer.batch_size,
    }


def learning_speed(trainer: Trainer, samples_per_sec: float) -> dict[str, Any]:
    """The epoch's gradient noise scale (:mod:`distnn.parallel.noise_scale`); the global
    batch's ``steps_ratio`` S/S_min = 1 + B_noise/B and sample ``efficiency``
    1/(1 + B/B_noise); ``goodput`` = samples/s × efficiency."""
    noise = trainer.noise.take()
    B = trainer.batch_size
    eff = efficiency(noise["noise_scale"], B)
    goodput = samples_per_sec * eff if eff is not None else None
    return noise | {
        "steps_ratio": steps_ratio(noise["noise_scale"], B),
        "efficiency": eff,
        "goodput": goodput,
    }


def evaluations(trainer: Trainer, validation: Split | None) -> dict[str, Any]:
    """Test loss and accuracy (None without test data), validation's if there is a split."""
    data = trainer.data
    found: dict[str, Any] = {"test_loss": None, "accuracy": None}
    if data.x_test is not None:
        found["test_loss"], found["accuracy"] = trainer.evaluate(
            data.x_test, data.y_test, data.labels_test
        )
    if validation is not None:
        found["val_loss"], found["val_accuracy"] = trainer.evaluate(*validation)
    return found


def time_split(trainer: Trainer, world: World) -> dict[str, Any]:
    """The epoch's seconds per phase on rank 0, and which rank computed longest.

    One small collective per epoch (never per step): each rank's four sums in its own
    row of a zero matrix, summed, so every rank's record holds the same numbers.

    ``allreduce_s`` splits into ``transfer_s`` and ``wait_s`` (waiting for the slowest
    rank to arrive) with no clock and no per-step cost: the rank that arrives last
    waits for no one, so its Allreduce time is the transfer alone. Per epoch, the
    transfer is the least Allreduce time of any rank and rank 0's wait the rest of its
    own. Exact when the same rank is the slowest at every step (a straggler); when the
    slowest changes from step to step, the transfer is over-counted and ``wait_s`` is a
    lower bound.
    """
    rows = np.zeros((world.size, len(PHASE_KEYS)))
    rows[world.rank] = trainer.take_phase_times()
    world.allreduce_sum(rows)
    compute, allreduce = rows[:, 1], rows[:, 2]
    split = dict(zip(PHASE_KEYS, rows[0].tolist(), strict=True))
    transfer = float(allreduce.min())
    return split | {
        "wait_s": float(allreduce[0]) - transfer,
        "transfer_s": transfer,
        "compute_s_max": float(compute.max()),
        "slowest_rank": int(compute.argmax()),
    }
