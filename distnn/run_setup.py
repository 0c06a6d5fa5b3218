"""Everything before a run's first step: data, splits, network, schedule, trainer, outputs.

:func:`prepare_run` runs on every rank and derives everything from the configuration
(and the arrays or network ``fit`` was given) alone, so the ranks agree without
talking; it starts no collective, so ``World.agree`` can gather its errors. Rank 0
also checks that every output can be written and finds the checkpoint to resume
from; :meth:`Run.restore` then gives every rank that checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from distnn.config import TrainConfig
from distnn.data import Dataset, load_dataset
from distnn.data.dataset import Source, classification, from_arrays
from distnn.data.preprocess import Split, fit_standardization, split_validation, standardize
from distnn.engine.lr_schedules import parse_lr_schedule
from distnn.engine.network import Network
from distnn.engine.schedules import GradientUpdateSchedule, make_schedule
from distnn.errors import DistnnError, SaveFailed
from distnn.io.checkpoints import (
    Checkpoint,
    content_hash,
    list_checkpoints,
    newest_valid_checkpoint,
    run_fingerprint,
)
from distnn.io.models import load_model, save_model
from distnn.io.outputs import atomic_write, check_no_clash, check_output_path, check_writable_dir
from distnn.parallel.memory import check_memory
from distnn.parallel.trainer import Trainer, make_reducer
from distnn.parallel.world import World, check_launch
from distnn.timeline import Timeline, parse_steps


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

    def write_outputs(self, world: World, newest_checkpoint: str | None) -> None:
        """The model and the configuration beside each output, by rank 0.

        If the model cannot be written (disk full, permissions), the trained parameters
        are never left only in memory: the newest checkpoint holds them, or else a rescue
        copy is written to the temporary folder; the error names where they are.
        """
        config = self.config

        def write() -> None:
            if config.save:
                try:
                    save_model(self.net, config.save)
                except (DistnnError, OSError) as e:
                    where = newest_checkpoint or rescue_copy(self.net)
                    raise SaveFailed(
                        f"--save {config.save}: {_reason(e)}; the trained parameters are in {where}"
                    ) from None
            write_config_beside(config, [config.save, config.metrics])

        world.on_root(write)


def _reason(e: Exception) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


def rescue_copy(net: Network) -> str:
    """The model written to a fresh file in the temporary folder; its path, or a reason."""
    try:
        fd, path = tempfile.mkstemp(prefix="distnn-rescued-", suffix=".npz")
        os.close(fd)
        save_model(net, path)
        return path
    except (DistnnError, OSError) as e:
        return f"no file either: the rescue copy failed too ({_reason(e)})"


def write_config_beside(config: TrainConfig, outputs: list[str | None]) -> None:
    """The resolved configuration as TOML next to each output (model.npz → model.toml)."""
    text = config.to_toml()
    for path in {os.path.splitext(p)[0] + ".toml" for p in outputs if p}:
        atomic_write(path, lambda f: f.write(text.encode()))


def prepare_run(
    config: TrainConfig,
    world: World,
    ranks_on_node: int,
    net: Network | None = None,
    arrays: dict | None = None,
    validation_data: tuple | None = None,
    schedule: GradientUpdateSchedule | None = None,
) -> Run:
    """Everything before the first step, on every rank; DistnnError on bad input."""
    config.validate()
    check_launch(world)
    inputs = config.inputs() if arrays is None else config.inputs()[1:]
    inputs += [("memory-mapped x", getattr(a, "filename", None)) for a in (arrays or {}).values()]
    check_no_clash(config.outputs(), inputs)  # before any work: inputs are never overwritten
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
        data, validation = split_validation(data, config.val_fraction, config.seed)
    if config.loss == "cross-entropy" and not data.is_classification:
        raise DistnnError("--loss cross-entropy needs class labels, but the targets are vectors")
    sizes = [data.n_features, *config.hidden, data.n_outputs] if net is None else net.sizes
    check_memory(config, sizes, ranks_on_node, world.size)
    if net is None:
        net = Network(
            sizes, config.layer_activations(), loss=config.loss, seed=config.seed,
            dtype=config.dtype,
        )  # fmt: skip
    if config.init_from:
        warm_start(net, config.init_from)
    data, validation = _fit_to_network(data, validation, net)
    net.is_classifier = data.is_classification
    if config.standardize:  # fitted on the training split only, saved with the model
        net.input_mean, net.input_std = fit_standardization(data.x)
        data = standardize(data, net.input_mean, net.input_std)
        if validation is not None:
            x_val = (validation.x - net.input_mean) / net.input_std
            validation = validation._replace(x=x_val.astype(net.dtype))

    steps_per_epoch = -(-len(data.x) // min(config.batch_size, len(data.x)))
    if schedule is None:
        lr = parse_lr_schedule(config.lr_schedule, config.lr, steps_per_epoch * config.epochs)
        schedule = make_schedule(config.schedule, lr)
    V = config.virtual_shards if config.deterministic else None
    reducer = make_reducer(net, world, overlap=config.overlap, virtual_shards=V)
    timeline = Timeline(world, config.trace, parse_steps(config.trace_steps))
    trainer = Trainer(net, schedule, data, world, config.batch_size, reducer, config.seed, timeline)
    if config.deterministic and world.size > config.virtual_shards:
        notes += (
            f"{world.size - config.virtual_shards} rank(s) idle: --deterministic "
            f"splits each batch into {config.virtual_shards} virtual shards; raise "
            "--virtual-shards to use them",
        )
    fingerprint = run_fingerprint(config, net, data_hash, len(data.x))
    run = Run(config, data, net, trainer, fingerprint, validation, notes=notes)
    if world.is_root:  # find out now, not after hours of training, that an output can't land
        files = ((config.save, "--save"), (config.metrics, "--metrics"), (config.trace, "--trace"))
        for path, what in files:
            if path:
                check_output_path(path, what)
        if config.checkpoint_dir:
            check_writable_dir(config.checkpoint_dir, "--checkpoint-dir", create=True)
            if config.resume:
                run.checkpoint, _, skipped = newest_valid_checkpoint(
                    config.checkpoint_dir, fingerprint
                )
                run.notes += tuple(f"skipped {reason}" for reason in skipped)
            elif list_checkpoints(config.checkpoint_dir):
                raise DistnnError(
                    f"{config.checkpoint_dir} already holds checkpoints: pass --resume to "
                    "continue that run, or choose another --checkpoint-dir"
                )
    return run


def warm_start(net: Network, path: str) -> None:
    """``net``'s parameters from a saved model of the same shape (``--init-from``)."""
    model = load_model(path)
    if model.sizes != net.sizes or model.activation_names != net.activation_names:
        raise DistnnError(
            f"--init-from {path}: the model is {model.describe()}, this run trains {net.describe()}"
        )
    net.params[...] = model.params


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
        validation = validation._replace(y=np.eye(n_out, dtype=data.x.dtype)[validation.labels])
    return data, validation
