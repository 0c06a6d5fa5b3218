"""One training run, from setup to the last epoch, on every rank: what ``distnn.fit``
and ``python -m distnn.train`` both run (:func:`train_config`).

This module owns the run: BLAS threads, data, the trainer, a restored checkpoint, the stop
rules and the epoch loop all live here, and the loop reads top to bottom. Every rank
calls it with the same arguments and gets the same trained network back. Errors are
exceptions: a :class:`~distnn.errors.DistnnError` for bad input, raised on every rank
together; ``Preempted`` after a signal and a checkpoint; ``DivergenceError``. Anything
else on one rank of several ends the whole job, so no rank waits forever.
``distnn.fit`` (:mod:`distnn.api`) and ``python -m distnn.train`` are thin layers over
:func:`train_config`: the same options and seed give the same bytes either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np

from distnn.data import Dataset
from distnn.engine.network import Network
from distnn.engine.schedules import GradientUpdateSchedule
from distnn.errors import Interrupted, Preempted
from distnn.parallel.failures import failures_end_the_job
from distnn.parallel.heartbeat import Heartbeat
from distnn.parallel.threads import configure_blas_threads, usable_cores
from distnn.parallel.trainer import STOP_VOTE, TIME_VOTE, Trainer
from distnn.parallel.watchdog import Watchdog
from distnn.parallel.world import World
from distnn.run.checkpointing import Checkpointer
from distnn.run.log import RunLog, header_record, header_text
from distnn.run.options import TrainConfig
from distnn.run.outputs import write_outputs
from distnn.run.progress import Progress
from distnn.run.setup import Run, check_same_on_every_rank, prepare_run
from distnn.run.stopping import EarlyStopping, StopRequests


class History(list):
    """One record per epoch (the keys of a ``--metrics`` line), and how the run ended.

    ``final`` describes the weights ``fit`` returns (the last epoch's record, or the
    best epoch's weights re-evaluated after early stopping); ``stop_reason`` is "" when
    the run trained all its epochs; ``header`` is the metrics file's header record of
    this start (versions, MPI library, threads, ranks, configuration).
    """

    stop_reason: str = ""
    final: dict
    header: dict


def train_config(
    config: TrainConfig,
    world: World,
    net: Network | None = None,
    arrays: dict | None = None,
    validation_data: tuple | None = None,
    schedule: GradientUpdateSchedule | None = None,
    callbacks: Sequence[Any] = (),
) -> History:
    """The run ``config`` describes; ``net`` None builds the network the config names."""
    started = time.perf_counter()  # the run's clock: wall_s counts from here
    # A signal from here on asks the run to stop after a step (it rides in the step's
    # votes), even one that comes during setup; handlers are restored on the way out.
    with (
        failures_end_the_job(world),
        StopRequests() as stop,
        Heartbeat.from_env(world.rank, world.size) as beat,
        ExitStack() as held,  # the checkpoint folder's lock, while the run lasts
    ):
        # Deterministic mode fixes one BLAS thread: a product's bits may depend on it.
        ranks_on_node = world.local_size()
        threads, source = configure_blas_threads(
            ranks_on_node, fixed=1 if config.deterministic else None
        )
        run = world.agree(
            lambda: prepare_run(
                config, world, ranks_on_node, net, arrays, validation_data, schedule, held=held
            )
        )
        check_same_on_every_rank(run, world)
        world.bcast(run.net.params)  # rank 0's initialization becomes everyone's
        run.restore(world)
        run.trainer.timeline.align_clocks()
        if run.data.class_names is not None:  # saved with the model, for predict/evaluate
            run.net.class_names = list(run.data.class_names)
        earlier = run.run_state.get("wall_s", 0.0)  # the run's earlier starts, if resumed
        speaks = world.is_root or config.verbose
        prefix = f"[rank {world.rank}] " if config.verbose and world.size > 1 else ""
        progress = Progress(
            config.epochs,
            config.batch_size,
            enabled=speaks and not config.quiet,
            prefix=prefix,
            mode=config.progress,
            log_every=config.log_every,
            steps=world.is_root,
        )
        if not config.quiet:
            progress.say(header_text(run.config, run.data, run.net, world, threads, source))
            if ranks_on_node > usable_cores():
                progress.say(
                    f"note: {ranks_on_node} ranks share {usable_cores()} cores on this node "
                    "(oversubscribed): each step waits for ranks taking turns on a core; "
                    "one rank per core is faster"
                )
            for note in run.notes:
                progress.say(f"note: {note}")
        head = header_record(run.config, world, threads)
        with Watchdog(world, config.watchdog, beat, config.name("watchdog")):
            return _train(
                run, world, progress, stop, beat, callbacks, head,
                lambda: earlier + time.perf_counter() - started,
            )  # fmt: skip


def _train(
    run: Run,
    world: World,
    progress: Progress,
    stop: StopRequests,
    beat: Heartbeat,
    callbacks: Sequence[Any],
    head: dict,
    wall_clock: Callable[[], float],
) -> History:
    """The epoch loop, from wherever the run stands; ``wall_clock()``: the run's seconds."""
    config, trainer, data = run.config, run.trainer, run.data
    B = trainer.batch_size
    step_callbacks = [c for c in callbacks if hasattr(c, "on_step")]
    early = EarlyStopping(config.patience, run.net.params) if config.patience else None
    if early:
        early.load_state(run.run_state, run.run_arrays)

    def run_state() -> tuple[dict, dict]:  # what a checkpoint keeps besides the trainer's
        scalars, arrays = early.state() if early else ({}, {})
        return {"wall_s": wall_clock(), **scalars}, arrays

    checkpoints = None
    if config.checkpoint_dir:
        checkpoints = Checkpointer(
            config.checkpoint_dir,
            config.checkpoint_every,
            config.keep_checkpoints,
            config.to_dict(),
            run.fingerprint,
            world,
            run_state,
            beat,
        )
    if run.resumed and trainer.epoch >= config.epochs:
        progress.say(
            f"the checkpoint is at step {trainer.step}, past {config.name('epochs')} "
            f"{config.epochs}: "
            "nothing to train"
        )
    elif run.resumed:
        progress.say(f"resuming at epoch {trainer.epoch + 1}, step {trainer.step}")
    history, rate, start = History(), 0.0, time.perf_counter()
    history.header = head
    stop.start_clock(config.max_time, world.is_root)
    # Overflow and NaN are caught by the loss, parameter and state checks, identically on
    # every rank; NumPy's own warnings would only print the same news once per rank.
    quiet_numpy = np.errstate(over="ignore", invalid="ignore", divide="ignore")
    with RunLog(config, world, append=run.resumed or config.resume) as log, quiet_numpy:
        log.write_header(head)
        progress.start(trainer.step, config.epochs * trainer.batches_per_epoch())
        beat.step, beat.phase = trainer.step, "train"
        while trainer.epoch < config.epochs and not history.stop_reason:
            progress.start_epoch(trainer.epoch + 1)
            order, n_batches = trainer.epoch_order(), trainer.batches_per_epoch()
            first, epoch_start = trainer.batch_in_epoch, time.perf_counter()
            for b in range(first, n_batches):
                loss = trainer.train_step(
                    order[b * B : (b + 1) * B], stop.requested, stop.time_is_up()
                )
                beat.step = trainer.step  # what a supervisor watches (parallel/heartbeat)
                progress.step(trainer.step, b + 1, n_batches, loss)
                for callback in step_callbacks:
                    callback.on_step(trainer.step, loss)
                if checkpoints:
                    checkpoints.after_step(trainer)
                if trainer.votes[STOP_VOTE]:  # the same reduced votes on every rank
                    trainer.timeline.write()  # every rank is here: the trace is gathered
                    if not checkpoints:
                        raise Interrupted(
                            f"stopped on request after step {trainer.step}; without "
                            f"{config.name('checkpoint_dir')} there is nothing to resume from"
                        )
                    checkpoints.save(trainer, last=True)
                    raise Preempted(f"stopped on request after step {trainer.step}")
                if trainer.votes[TIME_VOTE]:
                    history.stop_reason = (
                        f"{config.name('max_time')} {config.max_time:g} s reached at step "
                        f"{trainer.step}"
                    )
                    break
            if history.stop_reason:
                if checkpoints:
                    checkpoints.save(trainer)
                break

            # The epoch's end: its record, then what hangs off it, one line each.
            rate = (len(order) - first * B) / max(time.perf_counter() - epoch_start, 1e-9)
            phases = _time_split(trainer, world)
            record = {
                "epoch": trainer.epoch + 1,
                "loss": trainer.end_epoch(),
                "samples_per_sec": rate,
                "elapsed_s": time.perf_counter() - start,
                **_test_metrics(trainer, data),
                "step": trainer.step,
                # The rate of the epoch's last step (the schedule has taken t steps).
                "lr": float(trainer.schedule.lr_schedule(max(trainer.schedule.t - 1, 0))),
                "ranks": world.size,
                "batch_size": trainer.batch_size,
                "wall_s": wall_clock(),
                **phases,
            }
            if run.validation is not None:
                record["val_loss"], record["val_accuracy"] = trainer.evaluate(*run.validation)
            history.append(record)
            log.write(record)
            progress.end_epoch(record)
            for callback in callbacks:
                callback.on_epoch_end(record)
            if checkpoints:
                checkpoints.save(trainer)
            if config.target_loss is not None and record["loss"] <= config.target_loss:
                history.stop_reason = (
                    f"training loss reached {config.name('target_loss')} {config.target_loss}"
                )
            elif early and early.should_stop(record["val_loss"], trainer.epoch):
                history.stop_reason = (
                    f"val_loss did not improve for {config.patience} epochs; "
                    f"best weights from epoch {early.best_epoch}"
                )

    trainer.timeline.write()
    best_restored = early is not None and early.restore_best(trainer.epoch)
    if history and not best_restored and history[-1]["epoch"] == trainer.epoch:
        history.final = history[-1]
    else:  # the weights kept are not those the last record describes
        history.final = {"epoch": trainer.epoch, "loss": trainer.evaluate(data.x, data.y, None)[0]}
        history.final |= _test_metrics(trainer, data) | {"samples_per_sec": rate}
    write_outputs(config, run.net, world, checkpoints)
    return history


PHASE_KEYS = ("data_s", "compute_s", "allreduce_s", "update_s")


def _time_split(trainer: Trainer, world: World) -> dict:
    """The epoch's seconds per phase on rank 0, and which rank computed longest.

    One small collective per epoch (never per step): each rank's four sums in its own
    row of a zero matrix, summed, so every rank's record holds the same numbers.
    """
    rows = np.zeros((world.size, len(PHASE_KEYS)))
    rows[world.rank] = trainer.take_phase_times()
    world.allreduce_sum(rows)
    compute = rows[:, 1]
    split = dict(zip(PHASE_KEYS, rows[0].tolist(), strict=True))
    return split | {"compute_s_max": float(compute.max()), "slowest_rank": int(compute.argmax())}


def _test_metrics(trainer: Trainer, data: Dataset) -> dict:
    if data.x_test is None:
        return {"test_loss": None, "accuracy": None}
    loss, accuracy = trainer.evaluate(data.x_test, data.y_test, data.labels_test)
    return {"test_loss": loss, "accuracy": accuracy}
