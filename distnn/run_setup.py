"""Everything before a run's first step: data, splits, network, schedule, trainer, outputs.

:func:`prepare_run` runs on every rank and derives everything from the configuration
(and the arrays or network ``fit`` was given) alone, so the ranks agree without
talking; it starts no collective, so ``World.agree`` can gather its errors. Rank 0
also checks that every output can be written and finds the checkpoint to resume
from; :meth:`Run.restore` then gives every rank that checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from distnn.config import TrainConfig
from distnn.data import Dataset, load_dataset
from distnn.data.dataset import Source, classification, from_arrays
from distnn.data.preprocess import Split, fit_standardization, split_validation, standardize
from distnn.engine.lr_schedules import parse_lr_schedule
from distnn.engine.network import Network
from distnn.engine.schedules import GradientUpdateSchedule, make_schedule
from distnn.errors import DistnnError
from distnn.io.checkpoints import Checkpoint, list_checkpoints, newest_valid_checkpoint
from distnn.io.models import save_model
from distnn.io.outputs import check_output_path, check_writable_dir
from distnn.parallel.trainer import Trainer, make_reducer
from distnn.parallel.world import World, check_launch


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

    def restore(self, world: World) -> None:
        """Every rank continues from the checkpoint rank 0 found (if any)."""
        ckpt = self.checkpoint
        arrays = None
        if ckpt is not None:
            arrays = {"params": ckpt.params}
            arrays |= {f"schedule/{k}": np.asarray(v) for k, v in ckpt.schedule_state.items()}
        arrays = world.bcast_arrays(arrays)  # raw buffers: parameter-sized, never pickled
        position = world.bcast_object(None if ckpt is None else ckpt.position)
        if arrays is None:
            return
        state = {k.removeprefix("schedule/"): v for k, v in arrays.items() if k != "params"}
        self.trainer.restore(arrays["params"], state, position)
        self.resumed = True

    def write_outputs(self, world: World) -> None:
        """The model and the configuration beside each output, by rank 0."""
        config = self.config

        def write() -> None:
            if config.save:
                try:
                    save_model(self.net, config.save)
                except OSError as e:
                    raise DistnnError(f"--save {config.save}: {e.strerror or e}") from None
            write_config_beside(config, [config.save, config.metrics])

        world.on_root(write)


def write_config_beside(config: TrainConfig, outputs: list[str | None]) -> None:
    """The resolved configuration as TOML next to each output (model.npz → model.toml)."""
    for path in {os.path.splitext(p)[0] + ".toml" for p in outputs if p}:
        with open(path, "w", encoding="utf-8") as f:
            f.write(config.to_toml())


def prepare_run(
    config: TrainConfig,
    world: World,
    net: Network | None = None,
    arrays: dict | None = None,
    validation_data: tuple | None = None,
    schedule: GradientUpdateSchedule | None = None,
) -> Run:
    """Everything before the first step, on every rank; DistnnError on bad input."""
    config.validate()
    check_launch(world)
    if arrays is None:
        data = load_dataset(config.dataset, config.seed, config.dtype, config.label_column)
    else:
        data = from_arrays(Source("arrays"), arrays, np.dtype(config.dtype))
    notes = data.notes
    validation = None
    if validation_data is not None:
        x_val, y_val = validation_data
        val = from_arrays(Source("validation_data"), {"x": x_val, "y": y_val}, data.x.dtype)
        validation = Split(val.x, val.y, val.labels)
    elif config.val_fraction:
        data, validation = split_validation(data, config.val_fraction, config.seed)
    if config.loss == "cross-entropy" and not data.is_classification:
        raise DistnnError("--loss cross-entropy needs class labels, but the targets are vectors")
    if net is None:
        net = Network(
            [data.n_features, *config.hidden, data.n_outputs],
            config.layer_activations(),
            loss=config.loss,
            seed=config.seed,
            dtype=config.dtype,
        )
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
    trainer = Trainer(net, schedule, data, world, config.batch_size, reducer, seed=config.seed)
    if config.deterministic and world.size > config.virtual_shards:
        notes += (
            f"{world.size - config.virtual_shards} rank(s) idle: --deterministic "
            f"splits each batch into {config.virtual_shards} virtual shards; raise "
            "--virtual-shards to use them",
        )
    fingerprint = {
        "sizes": net.sizes,
        "activations": net.activation_names,
        "loss": net.loss_fn.name,
        "schedule": config.schedule,
        "train_samples": len(data.x),
        "num_params": net.num_params,
    }
    run = Run(config, data, net, trainer, fingerprint, validation, notes=notes)
    if world.is_root:  # find out now, not after hours of training, that an output can't land
        for path, what in ((config.save, "--save"), (config.metrics, "--metrics")):
            if path:
                check_output_path(path, what, create=True)
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
        )
    if validation is not None and validation.labels is not None:
        if validation.labels.max() >= n_out:
            raise DistnnError(
                f"validation_data: labels go up to {validation.labels.max()}, but the network "
                f"has only {n_out} outputs"
            )
        validation = validation._replace(y=np.eye(n_out, dtype=data.x.dtype)[validation.labels])
    return data, validation
