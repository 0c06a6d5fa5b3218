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
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import numpy as np

from distnn.engine.network import Network
from distnn.engine.update_schedule import GradientUpdateSchedule
from distnn.errors import Interrupted, Preempted
from distnn.parallel.failures import failures_end_the_job
from distnn.parallel.heartbeat import Heartbeat
from distnn.parallel.noise_scale import batch_hint
from distnn.parallel.threads import configure_blas_threads, usable_cores
from distnn.parallel.watchdog import Watchdog
from distnn.parallel.world import World
from distnn.run.checkpointing import Checkpointer
from distnn.run.clock import RunClock
from distnn.run.log import RunLog, header_record, header_text
from distnn.run.options import TrainConfig
from distnn.run.outputs import write_outputs
from distnn.run.progress import Progress
from distnn.run.records import epoch_record, evaluation_record, final_record
from distnn.run.setup import Run, check_same_on_every_rank, prepare_run
from distnn.run.stopping import EarlyStopping, StopRequests, StopRules, parse_target


class History(list):
    """One record per epoch (the keys of a ``--metrics`` line), and how the run ended.

    ``final`` describes the weights ``fit`` returns (the last epoch's record, or the
    weights in place re-evaluated when a run stopped inside an epoch or early stopping
    restored its best epoch) and where the run stopped: ``step``, ``epoch`` (the epochs
    completed), ``batch`` (batches of the next epoch done, if it stopped inside one),
    ``samples``; its ``samples_per_sec`` is the run's (samples trained by this
    start over its ``train_s``) and its time fields (:mod:`distnn.run.clock`) the whole
    start's. ``stop_reason`` is "" when the run trained all its epochs; ``evaluations``
    holds the ``--eval-every`` records; ``header`` is the metrics file's header record
    of this start (versions, MPI library, threads, ranks, configuration).
    """

    stop_reason: str = ""
    final: dict
    header: dict
    evaluations: list[dict]


def train_config(
    config: TrainConfig,
    world: World,
    net: Network | None = None,
    arrays: dict | None = None,
    validation_data: tuple | None = None,
    schedule: GradientUpdateSchedule | None = None,
    callbacks: Sequence[Any] = (),
    started: float | None = None,
) -> History:
    """The run ``config`` describes; ``net`` None builds the network the config names.

    ``started``: when this start began on the ``time.perf_counter`` clock (the CLI gives
    its process's start), for ``startup_s``; default: now.
    """
    started = time.perf_counter() if started is None else started
    # A signal from here on asks the run to stop after a step (it rides in the step's
    # votes), even one that comes during setup; handlers are restored on the way out.
    with (
        failures_end_the_job(world),
        StopRequests() as requests,
        Heartbeat.from_env(world.rank, world.size) as beat,
        # First: its rendezvous is the run's first exchange, and it never waits forever.
        Watchdog(world, config.watchdog, beat, config.name("watchdog")),
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
        clock = RunClock(started, earlier_s=run.run_state.get("wall_s", 0.0))
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
            progress.say(
                header_text(run.config, run.data, run.net, world, threads, source, run.lr_plan)
            )
            if ranks_on_node > usable_cores():
                progress.say(
                    f"note: {ranks_on_node} ranks share {usable_cores()} cores on this node "
                    "(oversubscribed): each step waits for ranks taking turns on a core; "
                    "one rank per core is faster"
                )
            for note in run.notes:
                progress.say(f"note: {note}")
        head = header_record(run.config, world, threads, run.lr_plan)
        return _train(run, world, progress, requests, beat, callbacks, head, clock)


def _train(
    run: Run,
    world: World,
    progress: Progress,
    requests: StopRequests,
    beat: Heartbeat,
    callbacks: Sequence[Any],
    head: dict,
    clock: RunClock,
) -> History:
    """The epoch loop, from wherever the run stands, until the last epoch or a stop rule."""
    config, trainer = run.config, run.trainer
    B = trainer.batch_size
    step_callbacks = [c for c in callbacks if hasattr(c, "on_step")]
    epoch_callbacks = [c for c in callbacks if hasattr(c, "on_epoch_end")]
    early = EarlyStopping(config.patience, run.net.params) if config.patience else None
    if early:
        early.load_state(run.run_state, run.run_arrays)
    target = parse_target(config.target) if config.target else None
    rules = StopRules(requests, target, config.target_loss, early, config.name, world.rank)

    def snapshot_run_state() -> tuple[dict, dict]:  # a checkpoint's besides the trainer's
        scalars, arrays = early.state() if early else ({}, {})
        return {"wall_s": clock.wall_s(), **scalars}, arrays

    checkpoints = None
    if config.checkpoint_dir:
        checkpoints = Checkpointer(
            config.checkpoint_dir,
            config.checkpoint_every,
            config.keep_checkpoints,
            config.to_dict(),
            run.fingerprint,
            world,
            snapshot_run_state,
            beat,
        )
    if run.resumed and trainer.epoch >= config.epochs:
        progress.say(
            f"the checkpoint is at step {trainer.step}, past {config.name('epochs')} "
            f"{config.epochs}: nothing to train"
        )
    elif run.resumed:
        progress.say(f"resuming at epoch {trainer.epoch + 1}, step {trainer.step}")
    history, first_step, first_samples = History(), trainer.step, trainer.samples_seen()
    history.header, history.evaluations = head, []
    requests.start_clock(config.max_time, world.is_root)
    stop = None
    # Overflow and NaN are caught by the loss, parameter and state checks, identically on
    # every rank; NumPy's own warnings would only print the same news once per rank.
    quiet_numpy = np.errstate(over="ignore", invalid="ignore", divide="ignore")
    with RunLog(config, world, append=run.resumed or config.resume) as log, quiet_numpy:
        log.write_header(head)
        progress.start(trainer.step, config.epochs * trainer.batches_per_epoch())
        beat.step, beat.phase = trainer.step, "train"
        clock.start_training()
        while trainer.epoch < config.epochs and stop is None:
            progress.start_epoch(trainer.epoch + 1)
            order, n_batches = trainer.epoch_order(), trainer.batches_per_epoch()
            first, epoch_start = trainer.batch_in_epoch, time.perf_counter()
            for b in range(first, n_batches):
                rules.cast(trainer.votes)  # this rank's stop votes ride in the step
                loss = trainer.train_step(order[b * B : (b + 1) * B])
                beat.step = trainer.step  # what a supervisor watches (parallel/heartbeat)
                progress.step(trainer.step, b + 1, n_batches, loss)
                for callback in step_callbacks:
                    rules.ask_callback(callback.on_step, trainer.step, loss)
                if checkpoints:
                    with clock.checkpointing():
                        checkpoints.after_step(trainer)
                stop = rules.after_step(trainer.votes, trainer.step)  # the same on every rank
                if stop is None and _evaluates_now(config.eval_every, trainer.step, b, n_batches):
                    record = evaluation_record(trainer, world, clock, run.validation)
                    history.evaluations.append(record)
                    log.write(record)
                    stop = rules.after_evaluation(record)
                if stop:
                    break
            if stop:  # inside an epoch: no epoch record, a checkpoint to resume from
                trainer.timeline.write()  # every rank is here: the trace is gathered
                if stop.preempted and not checkpoints:
                    raise Interrupted(
                        f"{stop.reason}; without {config.name('checkpoint_dir')} there is "
                        "nothing to resume from"
                    )
                if checkpoints:
                    with clock.checkpointing():
                        checkpoints.save(trainer, last=stop.preempted)
                if stop.preempted:
                    raise Preempted(stop.reason)
                break

            # The epoch's end: its record, then what hangs off it, one line each.
            rate = (len(order) - first * B) / max(time.perf_counter() - epoch_start, 1e-9)
            record = epoch_record(trainer, world, trainer.end_epoch(), rate, clock, run.validation)
            history.append(record)
            log.write(record)
            progress.end_epoch(record)
            for callback in epoch_callbacks:
                rules.ask_callback(callback.on_epoch_end, record)
            stop = rules.after_epoch(record, trainer.epoch)
            stop = rules.agree_at_epoch_end(world.allreduce_sum, trainer.step) or stop
            if checkpoints:
                with clock.checkpointing():
                    checkpoints.save(trainer)

    trainer.timeline.write()
    history.stop_reason = stop.reason if stop else ""
    best_restored = early is not None and early.restore_best(trainer.epoch)
    describes_weights = history and not best_restored and history[-1]["step"] == trainer.step
    last = history[-1] if describes_weights else None
    history.final = final_record(last, trainer, clock, run.validation, first_step, first_samples)
    hint = batch_hint(history.final.get("noise_scale"), trainer.batch_size, world.size)
    if hint:
        progress.say(f"note: {hint}")
    write_outputs(config, run.net, world, checkpoints)
    return history


def _evaluates_now(every: int, step: int, batch: int, n_batches: int) -> bool:
    """``--eval-every``: after every ``every``-th step, but an epoch's last (its end evaluates)."""
    return every > 0 and step % every == 0 and batch + 1 < n_batches
