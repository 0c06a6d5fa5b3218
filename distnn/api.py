"""``distnn.fit``: train a network from Python, alone or under ``mpirun``.

    net = distnn.Network([64, 32, 10], activations="sigmoid", seed=0)
    history = distnn.fit(net, "digits", epochs=10)

``fit`` turns its keyword arguments into the one :class:`~distnn.config.TrainConfig`
the CLI builds from its options, and runs :func:`distnn.training.train_config`, the
CLI's code path: the same options and seed give the same bytes either way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from distnn.config import TrainConfig
from distnn.engine.network import Network
from distnn.engine.schedules import GradientUpdateSchedule
from distnn.parallel.world import World
from distnn.training import History, train_config


def fit(
    net: Network,
    x: np.ndarray | str,
    y: np.ndarray | None = None,
    *,
    schedule: str | GradientUpdateSchedule = "adam",
    lr: float = 0.01,
    lr_schedule: str = "constant",
    batch_size: int = 32,
    epochs: int = 10,
    seed: int = 0,
    test_data: tuple[np.ndarray, np.ndarray] | None = None,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    val_fraction: float = 0.0,
    standardize: bool = False,
    label_column: str | None = None,
    target_loss: float | None = None,
    max_time: float | None = None,
    patience: int | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 0,
    keep_checkpoints: int = 3,
    resume: bool = False,
    deterministic: bool = False,
    virtual_shards: int = 4,
    overlap: bool = False,
    save: str | None = None,
    metrics: str | None = None,
    callbacks: Sequence[Any] = (),
    verbose: int = 1,
    progress: str = "auto",
    log_every: int = 0,
    tensorboard: str | None = None,
    trace: str | None = None,
    trace_steps: str | None = None,
    world: World | None = None,
) -> History:
    """Train ``net`` in place, data-parallel over every rank of ``world`` (default: all).

    ``x`` is an array of rows (memory-mapped welcome) with ``y`` integer class labels
    (1-D) or target rows (2-D), or a data set spec as ``--dataset`` takes it
    ("digits", "synthetic:N:F:C", a file or folder), with ``y`` None. The options mean
    what the CLI's options of the same names mean (``python -m distnn.train --help``);
    ``schedule`` may also be a :class:`GradientUpdateSchedule` instance. ``callbacks``
    are objects with ``on_epoch_end(record)`` and optionally ``on_step(step, loss)``,
    called on every rank. ``verbose``: 0 silent, 1 progress on rank 0, 2 every rank;
    ``progress`` ("auto", "bar", "lines", "none") and ``log_every`` say how rank 0
    shows progress within an epoch (on stdout). Returns the :class:`History`.
    """
    world = World() if world is None else world
    spec = x if isinstance(x, str | os.PathLike) else "arrays"
    names = list(net.activation_names)
    if names[-1] == "softmax":  # cross-entropy's output; the config names a σ for every layer
        names[-1] = names[0] if len(names) > 1 else "sigmoid"
    config = TrainConfig(
        dataset=os.fspath(spec),
        hidden=tuple(net.sizes[1:-1]),
        activation=names[0],
        activations=tuple(names) if len(set(names)) > 1 else None,
        loss=net.loss_fn.name,
        schedule=schedule if isinstance(schedule, str) else _class_path(schedule),
        lr=lr,
        lr_schedule=lr_schedule,
        batch_size=batch_size,
        epochs=epochs,
        seed=seed,
        dtype=net.dtype.name,
        save=save,
        metrics=metrics,
        quiet=verbose == 0,
        verbose=verbose >= 2,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=keep_checkpoints,
        resume=resume,
        overlap=overlap,
        deterministic=deterministic,
        virtual_shards=virtual_shards,
        label_column=label_column,
        standardize=standardize,
        val_fraction=val_fraction,
        patience=patience,
        target_loss=target_loss,
        max_time=max_time,
        progress=progress,
        log_every=log_every,
        tensorboard=tensorboard,
        trace=trace,
        trace_steps=trace_steps,
    )
    arrays = None if spec != "arrays" else {"x": x, "y": y}
    if arrays is not None and test_data is not None:
        arrays["x_test"], arrays["y_test"] = test_data
    return train_config(
        config,
        world,
        net=net,
        arrays=arrays,
        validation_data=validation_data,
        schedule=None if isinstance(schedule, str) else schedule,
        callbacks=callbacks,
    )


def _class_path(obj: object) -> str:
    return f"{type(obj).__module__}:{type(obj).__qualname__}"


def _class_path(obj: object) -> str:
    return f"{type(obj).__module__}:{type(obj).__qualname__}"
