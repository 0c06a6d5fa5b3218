"""One training run: built from a TrainConfig, then the epoch loop and when it stops.

``setup`` runs on every rank and derives everything (data, splits, network, trainer)
from the configuration alone, so the ranks agree without talking. ``train`` runs the
epochs and hangs everything that is not the step off the loop, one line each:
progress, metrics, checkpoints, and the stopping conditions (--epochs,
--target-loss, --max-time, early stopping on a validation split), each decided on
values every rank already shares.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from distnn.cli.progress import MetricsLog, Progress
from distnn.config import TrainConfig
from distnn.data.load import Dataset, load_dataset
from distnn.data.preprocess import Split, fit_standardization, split_validation, standardize
from distnn.engine.lr_schedules import parse_lr_schedule
from distnn.engine.network import Network
from distnn.engine.schedules import make_schedule
from distnn.errors import DistnnError, Preempted
from distnn.io.checkpoints import (
    Checkpoint,
    Checkpointer,
    list_checkpoints,
    newest_valid_checkpoint,
)
from distnn.io.models import save_model
from distnn.parallel.deterministic import DeterministicTrainer
from distnn.parallel.trainer import TimeLimitReached, Trainer
from distnn.parallel.world import World, check_launch

log = logging.getLogger("distnn")


@dataclass
class Run:
    """What setup hands to the training loop."""

    config: TrainConfig
    data: Dataset
    net: Network
    trainer: Trainer
    shape: dict  # what a checkpoint must match to be resumed here
    validation: Split | None = None
    resume_from: Checkpoint | None = None
    notes: tuple[str, ...] = ()
    stop_reason: str = ""


def setup(config: TrainConfig, world: World) -> Run:
    """Everything before the first step, on every rank; raises DistnnError on bad input.

    Only rank 0 looks for a checkpoint; the caller broadcasts what it found.
    """
    check_launch(world)
    data = load_dataset(config.dataset, config.seed, config.dtype, config.label_column)
    notes = data.notes
    validation = None
    if config.val_fraction:
        data, validation = split_validation(data, config.val_fraction, config.seed)
    if config.loss == "cross-entropy" and not data.is_classification:
        raise DistnnError("--loss cross-entropy needs class labels, but the targets are vectors")
    net = Network(
        [data.n_features, *config.hidden, data.n_outputs],
        config.layer_activations(),
        loss=config.loss,
        seed=config.seed,
        dtype=config.dtype,
    )
    net.is_classifier = data.is_classification
    if config.standardize:  # fitted on the training split only, saved with the model
        net.input_mean, net.input_std = fit_standardization(data.x)
        data = standardize(data, net.input_mean, net.input_std)
        if validation is not None:
            x_val = (validation.x - net.input_mean) / net.input_std
            validation = validation._replace(x=x_val.astype(net.dtype))

    steps_per_epoch = -(-len(data.x) // min(config.batch_size, len(data.x)))
    lr = parse_lr_schedule(config.lr_schedule, config.lr, steps_per_epoch * config.epochs)
    schedule = make_schedule(config.schedule, lr)
    if config.deterministic:
        trainer = DeterministicTrainer(
            net,
            schedule,
            data,
            world,
            config.batch_size,
            seed=config.seed,
            virtual_shards=config.virtual_shards,
        )
        if world.size > config.virtual_shards:
            notes += (
                f"{world.size - config.virtual_shards} rank(s) idle: --deterministic "
                f"splits each batch into {config.virtual_shards} virtual shards; raise "
                "--virtual-shards to use them",
            )
    else:
        trainer = Trainer(
            net, schedule, data, world, config.batch_size, seed=config.seed, overlap=config.overlap
        )
    shape = {
        "sizes": net.sizes,
        "activations": net.activation_names,
        "loss": net.loss_fn.name,
        "schedule": config.schedule,
        "train_samples": len(data.x),
        "num_params": net.num_params,
    }
    run = Run(config, data, net, trainer, shape, validation, notes=notes)
    if world.is_root:  # find out now, not after hours of training, that an output can't land
        for path, what in ((config.save, "--save"), (config.metrics, "--metrics")):
            if path:
                check_writable(os.path.dirname(os.path.abspath(path)), what)
        if config.checkpoint_dir:
            check_writable(config.checkpoint_dir, "--checkpoint-dir")
    if config.checkpoint_dir and world.is_root:
        if config.resume:
            run.resume_from, _, skipped = newest_valid_checkpoint(config.checkpoint_dir, shape)
            run.notes += tuple(f"skipped {reason}" for reason in skipped)
        elif list_checkpoints(config.checkpoint_dir):
            raise DistnnError(
                f"{config.checkpoint_dir} already holds checkpoints: pass --resume to continue "
                "that run, or choose another --checkpoint-dir"
            )
    return run


def check_writable(directory: str, option: str) -> None:
    """Create ``directory`` if needed and prove a file can be written there."""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise DistnnError(f"{option}: cannot write to {directory} ({e.strerror})") from None


class EarlyStopping:
    """Stop after ``patience`` epochs without a lower validation loss; keep the best weights."""

    def __init__(self, patience: int, params: np.ndarray) -> None:
        self.patience, self.params = patience, params
        self.best_loss, self.best_epoch, self.waited = float("inf"), 0, 0
        self.best_params = params.copy()

    def should_stop(self, val_loss: float, epoch: int) -> bool:
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.waited = val_loss, epoch, 0
            self.best_params[...] = self.params
            return False
        self.waited += 1
        return self.waited >= self.patience

    def restore_best(self) -> None:
        self.params[...] = self.best_params


def train(run: Run, world: World) -> dict:
    """The epoch loop, from wherever the run stands; returns the last epoch's record."""
    config, trainer = run.config, run.trainer
    progress = Progress(
        config.epochs, config.batch_size, enabled=world.is_root and not config.quiet
    )
    if progress.live:
        trainer.on_step.append(progress.step)
    checkpoints = None
    if config.checkpoint_dir:
        checkpoints = Checkpointer(
            config.checkpoint_dir,
            config.checkpoint_every,
            config.keep_checkpoints,
            config.to_dict(),
            run.shape,
            writer=world.is_root,
        )
        trainer.on_step.append(checkpoints.after_step)
    early = EarlyStopping(config.patience, run.net.params) if config.patience else None
    metrics = MetricsLog(
        config.metrics if world.is_root else None, append=run.resume_from is not None
    )
    start, record, rate = time.perf_counter(), None, 0.0
    if config.max_time:
        trainer.deadline = start + config.max_time
    try:
        for epoch in range(trainer.epoch + 1, config.epochs + 1):
            progress.start_epoch(epoch)
            record = trainer.train_epoch().as_record()
            record["elapsed_s"], rate = time.perf_counter() - start, record["samples_per_sec"]
            if run.validation is not None:
                record["val_loss"], record["val_accuracy"] = trainer.evaluate(*run.validation)
            metrics.write(record)
            progress.end_epoch(record)
            if checkpoints:
                checkpoints.save(trainer)
            if config.target_loss is not None and record["loss"] <= config.target_loss:
                run.stop_reason = f"training loss reached --target-loss {config.target_loss}"
                break
            if early and early.should_stop(record["val_loss"], epoch):
                run.stop_reason = (
                    f"val_loss did not improve for {config.patience} epochs; "
                    f"best weights from epoch {early.best_epoch}"
                )
                break
    except TimeLimitReached:
        run.stop_reason = f"--max-time {config.max_time:g} s reached at step {trainer.step}"
        record = None
        if checkpoints:
            checkpoints.save(trainer)
    except Preempted:
        if checkpoints:
            checkpoints.save(trainer)
        raise
    finally:
        metrics.close()
    if early is not None and early.best_epoch not in (0, trainer.epoch):
        early.restore_best()
        record = None  # the summary describes the weights kept
    if record is None:
        record = final_record(trainer) | {"samples_per_sec": rate}
    if config.save and world.is_root:
        save_model(trainer.net, config.save)
    return record


def final_record(trainer: Trainer) -> dict:
    """Loss (and test metrics) of the weights as they are now, when no epoch just ended."""
    data = trainer.data
    loss, _ = trainer.evaluate(data.x, data.y, None)
    record = {"epoch": trainer.epoch, "loss": loss, "samples_per_sec": 0.0}
    if data.x_test is not None:
        record["test_loss"], record["accuracy"] = trainer.evaluate(
            data.x_test, data.y_test, data.labels_test
        )
    return record
