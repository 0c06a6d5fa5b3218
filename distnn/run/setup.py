"""Everything before a run's first step: data, splits, network, schedule, trainer, outputs.

:func:`prepare_run` runs on every rank and derives everything from the configuration
(and the arrays or network ``fit`` was given) alone, so the ranks agree without
talking; it starts no collective, so ``World.agree`` can gather its errors. Rank 0
also checks that every output can be written and finds the checkpoint to resume
from; :meth:`Run.restore` then gives every rank that checkpoint.
"""

from __future__ import annotations

import copy
import json
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np

from distnn.data import Dataset, load_dataset
from distnn.data.dataset import Source, classification, from_arrays, one_hot
from distnn.data.preprocess import Split, fit_standardization, split_validation, standardize
from distnn.engine.network import Network, standardize_rows
from distnn.engine.schedules import make_schedule
from distnn.engine.update_schedule import GradientUpdateSchedule
from distnn.errors import DistnnError
from distnn.io.checkpoints import (
    Checkpoint,
    clear_debris,
    content_hash,
    list_checkpoints,
    newest_valid_checkpoint,
)
from distnn.io.folder_lock import FolderLock
from distnn.parallel.agreement import check_same_everywhere
from distnn.parallel.memory import check_memory
from distnn.parallel.timeline import Timeline, parse_steps
from distnn.parallel.trainer import Trainer, make_reducer
from distnn.parallel.world import World, check_launch
from distnn.run.checkpointing import fingerprint_names, run_fingerprint
from distnn.run.lr_plan import LRPlan, resolve_lr
from distnn.run.options import TrainConfig
from distnn.run.outputs import check_no_output_over_an_input, check_outputs_writable
from distnn.run.stopping import Target, parse_target


@dataclass
class Run:
    """What setup hands to the training loop."""

    config: TrainConfig
    data: Dataset
    net: Network
    trainer: Trainer
    fingerprint: dict  # what a checkpoint must match to be resumed by this run
    validation: Split | None = None
    checkpoint: Checkpoint | None = None  # found by rank 0, for ``restore``
    notes: tuple[str, ...] = ()
    resumed: bool = False
    run_state: dict = field(default_factory=dict)  # restored: wall_s, early stopping
    run_arrays: dict = field(default_factory=dict)
    lr_plan: LRPlan | None = None  # None: fit was given a schedule instance

    def restore(self, world: World) -> None:
        """Every rank continues from the checkpoint rank 0 found (if any)."""
        ckpt = self.checkpoint
        arrays = None
        if ckpt is not None:
            arrays = {"params": ckpt.params}
            arrays |= {f"schedule/{k}": np.asarray(v) for k, v in ckpt.schedule_state.items()}
            arrays |= {f"run/{k}": np.asarray(v) for k, v in ckpt.run_arrays.items()}
        arrays = world.bcast_arrays(arrays)  # raw buffers: parameter-sized, never pickled
        meta = world.bcast_object(None if ckpt is None else (ckpt.position, ckpt.run_state))
        if arrays is None:
            return
        state = {k[9:]: v for k, v in arrays.items() if k.startswith("schedule/")}
        self.trainer.restore(arrays["params"], state, meta[0])
        self.run_state = meta[1]
        self.run_arrays = {k[4:]: v for k, v in arrays.items() if k.startswith("run/")}
        self.resumed = True


def prepare_run(
    config: TrainConfig,
    world: World,
    ranks_on_node: int,
    net: Network | None = None,
    arrays: dict | None = None,
    validation_data: tuple | None = None,
    schedule: GradientUpdateSchedule | None = None,
    *,
    held: ExitStack,
) -> Run:
    """Everything before the first step, on every rank; DistnnError on bad input.

    Rank 0 locks the checkpoint folder into ``held``: the caller's run holds it until
    it leaves ``held``.
    """
    config.validate()
    check_launch(world)
    mapped = [
        (f"memory-mapped {k}", getattr(a, "filename", None)) for k, a in (arrays or {}).items()
    ]
    check_no_output_over_an_input(config, arrays, mapped)  # before any work
    if arrays is None:
        data = load_dataset(config.dataset, config.seed, config.dtype, config.label_column)
    else:
        data = from_arrays(Source("arrays"), arrays, np.dtype(config.dtype))
    # What the run trains on, for --resume to recognise it (rank 0 writes and reads).
    data_hash = content_hash(data.x, data.y) if config.checkpoint_dir and world.is_root else ""
    notes = data.notes
    validation = None
    if validation_data is not None:
        x_val, y_val = validation_data
        val = from_arrays(
            Source("validation_data"),
            {"x": x_val, "y": y_val},
            data.x.dtype,
            class_names=data.class_names,
        )
        validation = Split(val.x, val.y, val.labels)
    elif config.val_fraction:
        data, validation = split_validation(
            data, config.val_fraction, config.seed, config.name("val_fraction")
        )
    if config.loss == "cross-entropy" and not data.is_classification:
        raise DistnnError(
            f"{config.name('loss')} cross-entropy needs class labels, but the targets are vectors"
        )
    if config.target is not None:
        check_target_measurable(parse_target(config.target), data, config.name("target"))
    sizes = [data.n_features, *config.hidden, data.n_outputs] if net is None else net.sizes
    V = config.virtual_shards if config.deterministic else None
    names = {k: config.name(k) for k in ("hidden", "batch_size", "virtual_shards")}
    check_memory(
        sizes, np.dtype(config.dtype).itemsize, config.batch_size, V, config.patience is not None,
        ranks_on_node, world.size, names,
    )  # fmt: skip
    if net is None:
        net = Network(
            sizes, config.layer_activations(), loss=config.loss, seed=config.seed,
            dtype=config.dtype,
        )  # fmt: skip
    if config.init_from:
        warm_start(net, config.init_from, config.name("init_from"))
    data, validation = _fit_to_network(data, validation, net)
    net.is_classifier = data.is_classification
    if net.input_mean is not None:  # its weights were trained on inputs scaled so
        notes += ("the network's saved standardization is applied to the inputs",)
    elif config.standardize:  # fitted on the training split only, saved with the model
        net.input_mean, net.input_std = fit_standardization(data.x)
    if net.input_mean is not None:
        data = standardize(data, net.input_mean, net.input_std)
        if validation is not None:
            x_val = standardize_rows(validation.x, net.input_mean, net.input_std)
            validation = validation._replace(x=x_val)

    lr_plan = None
    if schedule is None:
        lr_plan = resolve_lr(config, len(data.x))  # the training rows: after the split
        schedule = make_schedule(config.schedule, lr_plan.schedule)
    elif config.lr_scaling != "none":
        raise DistnnError(
            f"{config.name('lr_scaling')} scales {config.name('lr')}, which a schedule "
            "instance does not use: give it the scaled learning rate itself"
        )
    reducer = make_reducer(net, world, overlap=config.overlap, virtual_shards=V)
    timeline = Timeline(world, config.trace, parse_steps(config.trace_steps))
    trainer = Trainer(net, schedule, data, world, config.batch_size, reducer, config.seed, timeline)
    if config.deterministic and world.size > config.virtual_shards:
        notes += (
            f"{world.size - config.virtual_shards} rank(s) idle: {config.name('deterministic')} "
            f"splits each batch into {config.virtual_shards} virtual shards; raise "
            f"{config.name('virtual_shards')} to use them",
        )
    if not config.deterministic and trainer.batch_size < world.size:
        notes += (
            f"{world.size - trainer.batch_size} rank(s) idle: a batch of "
            f"{trainer.batch_size} rows gives one row to each of {trainer.batch_size} of the "
            f"{world.size} ranks; raise {config.name('batch_size')} to use them",
        )
    fingerprint = run_fingerprint(config, net, data_hash, len(data.x))
    run = Run(config, data, net, trainer, fingerprint, validation, notes=notes, lr_plan=lr_plan)
    if world.is_root:  # find out now, not after hours of training, that an output can't land
        check_outputs_writable(config)
        if config.checkpoint_dir:  # one run per folder, from before its first look inside
            lock = FolderLock.take(
                config.checkpoint_dir, f"{config.name('checkpoint_dir')} {config.checkpoint_dir}",
                "a distnn run",
            )  # fmt: skip
            held.enter_context(lock)
            run.notes += (lock.note,) if lock.note else ()
            clear_debris(config.checkpoint_dir)  # with the lock held, no writer is live
        if config.checkpoint_dir and config.resume:
            run.checkpoint, _, skipped = newest_valid_checkpoint(
                config.checkpoint_dir, fingerprint, fingerprint_names(config),
                lambda ckpt: _misfit(ckpt, trainer),
            )  # fmt: skip
            run.notes += tuple(f"skipped {reason}" for reason in skipped)
        elif config.checkpoint_dir and list_checkpoints(config.checkpoint_dir):
            raise DistnnError(
                f"{config.checkpoint_dir} already holds checkpoints: pass {config.name('resume')} "
                f"to continue that run, or choose another {config.name('checkpoint_dir')}"
            )
    return run


def check_target_measurable(target: Target, data: Dataset, flag: str) -> None:
    """DistnnError unless the run will measure what ``target`` watches."""
    if target.metric in ("accuracy", "test_loss") and data.x_test is None:
        raise DistnnError(
            f"{flag} {target} needs test data, and the data set has none "
            "(watch val_accuracy or val_loss with a validation split instead)"
        )
    if target.metric.endswith("accuracy") and not data.is_classification:
        raise DistnnError(f"{flag} {target}: the targets are vectors, so there is no accuracy")


def _misfit(ckpt: Checkpoint, trainer: Trainer) -> str | None:
    """What makes a checkpoint's position or optimizer state impossible for this run."""
    epoch, batch, step = (ckpt.position[k] for k in ("epoch", "batch_in_epoch", "step"))
    per_epoch = trainer.batches_per_epoch()
    if batch > per_epoch:  # == per_epoch: saved after the last step, before the epoch end
        return f"batch_in_epoch {batch}, of {per_epoch} batches per epoch"
    if step != epoch * per_epoch + batch:
        return f"step {step} is not epoch {epoch} × {per_epoch} batches + {batch}"
    try:  # on a copy: the schedule's own checks, without changing the run's schedule
        copy.copy(trainer.schedule).load_state_dict(ckpt.schedule_state)
    except DistnnError as e:
        return f"optimizer state: {e}"
    return None


def check_same_on_every_rank(run: Run, world: World) -> None:
    """Stop every rank, in one line, unless all were given the same options and data.

    Under ``mpirun`` each rank calls ``fit`` (or reads ``--dataset``) for itself; given
    other data on one rank, the run would train on the mix or die in a collective with a
    truncated message. Compared: the options, and a digest of every byte of the training,
    test and validation arrays (:mod:`distnn.parallel.agreement`).
    """
    data = run.data
    parts = {"options": json.dumps(run.config.to_dict(), sort_keys=True, default=str)}
    parts |= {"x": data.x, "y": data.y, "test_data": data.x_test, "test labels": data.y_test}
    if run.validation is not None:
        parts |= {"validation_data": run.validation.x, "validation targets": run.validation.y}
    check_same_everywhere(world, parts)


def warm_start(net: Network, path: str, what: str) -> None:
    """``net``'s parameters, and the input standardization they were trained with, from
    a saved model of the same shape (``--init-from``)."""
    model = Network.load(path)
    if model.sizes != net.sizes or model.activation_names != net.activation_names:
        raise DistnnError(
            f"{what} {path}: the model is {model.describe()}, this run trains {net.describe()}"
        )
    net.params[...] = model.params
    net.input_mean, net.input_std = model.input_mean, model.input_std


def _fit_to_network(
    data: Dataset, validation: Split | None, net: Network
) -> tuple[Dataset, Split | None]:
    """Check the data against ``net``'s input and output widths; widen class one-hots.

    A network may have more outputs than the classes its training labels show.
    """
    n_in, n_out = net.sizes[0], net.sizes[-1]
    if data.n_features != n_in:
        raise DistnnError(
            f"{data.name}: {data.n_features} features per row, but the network takes {n_in}"
        )
    if validation is not None and validation.x.shape[1] != n_in:
        raise DistnnError(
            f"validation_data: {validation.x.shape[1]} features per row, but the network "
            f"takes {n_in}"
        )
    if not data.is_classification:
        if data.n_outputs != n_out:
            raise DistnnError(
                f"{data.name}: targets have {data.n_outputs} columns, but the network has "
                f"{n_out} outputs"
            )
        return data, validation
    if data.n_outputs > n_out:
        raise DistnnError(
            f"{data.name}: labels go up to {data.n_outputs - 1}, but the network has only "
            f"{n_out} outputs"
        )
    if data.n_outputs < n_out:
        data = classification(
            data.name,
            data.x,
            data.labels,
            data.x_test,
            data.labels_test,
            n_out,
            data.x.dtype,
            data.notes,
            class_names=data.class_names,
        )
    if validation is not None and validation.labels is not None:
        if validation.labels.max() >= n_out:
            raise DistnnError(
                f"validation_data: labels go up to {validation.labels.max()}, but the network "
                f"has only {n_out} outputs"
            )
        validation = validation._replace(y=one_hot(validation.labels, n_out, data.x.dtype))
    return data, validation
