"""A run's outputs: checked before any work, written at the end, never lost.

The paths come from the options declared ``path=`` in :mod:`distnn.run.options`; the
file-level mechanics (atomic writes, resolving and comparing paths) are
:mod:`distnn.io.outputs`'.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from distnn.data.load import dataset_path
from distnn.engine.network import Network
from distnn.errors import CheckpointFailed, DistnnError, SaveFailed
from distnn.io.outputs import (
    atomic_write,
    check_no_clash,
    check_output_path,
    check_writable_dir,
    refuse_special,
    rescue_copy,
)
from distnn.parallel.world import World
from distnn.run.config_file import to_toml
from distnn.run.options import TrainConfig, declared

if TYPE_CHECKING:  # for the annotation only
    from distnn.run.checkpointing import Checkpointer


def declared_paths(config: TrainConfig, role: str) -> list[tuple[str, str | None]]:
    """The declared paths of one role ("input", "output", "output folder"), as
    (what a message calls it, path); a data set spec counts only if it is a file."""
    found = []
    for f, opt in declared():
        path = getattr(config, f.name)
        if opt.path == role:
            where = dataset_path(path) if f.name == "dataset" and path else path
            found.append((config.name(f.name), where))
    return found


def config_copies(config: TrainConfig) -> list[tuple[str, str]]:
    """The run's configuration written beside its model and metrics files
    (model.npz → model.toml), as (what a message calls it, path); one file where the
    two share a stem."""
    beside = {
        os.path.splitext(path)[0] + ".toml": config.name(key)
        for key in ("save", "metrics")
        if (path := getattr(config, key))
    }
    return [(f"the configuration written beside {what}", p) for p, what in beside.items()]


def output_paths(config: TrainConfig) -> list[tuple[str, str | None]]:
    """Every path the run writes, as (what a message calls it, path)."""
    return [
        *declared_paths(config, "output"),
        *declared_paths(config, "output folder"),
        *config_copies(config),
    ]


def input_paths(config: TrainConfig, dataset: bool = True) -> list[tuple[str, str | None]]:
    """Every path the run reads, as (what a message calls it, path); ``dataset`` False
    when the data came as arrays (fit), not from the spec's file."""
    inputs = declared_paths(config, "input")
    return [(w, p) for w, p in inputs if dataset or w != config.name("dataset")]


def check_no_output_over_an_input(
    config: TrainConfig, arrays: dict | None, on_disk: list[tuple[str, str | None]]
) -> None:
    """Refuse, before any work, an output that would land on an input or another output,
    or that exists as a device, FIFO, socket or a link to one (``--save /dev/null``,
    ``--trace /dev/stdout``, ``--checkpoint-dir`` a link to a device): every output
    file, output folder and configuration file beside them, on every rank.

    ``arrays``: fit's arrays instead of a data set spec (so ``dataset`` reads no file);
    ``on_disk``: the files behind memory-mapped arrays, inputs too.
    """
    for what, path in declared_paths(config, "output folder"):
        if path:
            refuse_special(path, f"{what} {path}", folder=True)
    check_no_clash(output_paths(config), input_paths(config, dataset=arrays is None) + on_disk)


def check_outputs_writable(config: TrainConfig) -> None:
    """On rank 0: every output file could be written, every output folder exists (made)."""
    for what, path in declared_paths(config, "output"):
        if path:
            check_output_path(path, what)
    if config.checkpoint_dir:  # made now; TensorBoard makes its own folder
        check_writable_dir(config.checkpoint_dir, config.name("checkpoint_dir"), create=True)


def write_outputs(
    config: TrainConfig, net: Network, world: World, checkpoints: Checkpointer | None
) -> None:
    """The model and the configuration beside each output, by rank 0.

    If the model cannot be written (disk full, permissions), the trained parameters
    are never left only in memory: the newest checkpoint holds them, or else a rescue
    copy is written to the temporary folder; the error names where they are. If the
    run's last checkpoint failed, the model is saved (or rescued) all the same and the
    run ends with CheckpointFailed, naming where it is.
    """
    failed = checkpoints is not None and checkpoints.failure is not None

    def write() -> str | None:
        if config.save:
            try:
                net.save(config.save)
            except (DistnnError, OSError) as e:
                current = None if failed or checkpoints is None else checkpoints.last_path
                raise SaveFailed(
                    f"{config.name('save')} {config.save}: {_reason(e)}; the trained "
                    f"parameters are in {current or rescue_copy(net.save)}"
                ) from None
        text = to_toml(config)
        for _, path in config_copies(config):
            atomic_write(path, lambda f: f.write(text.encode()))
        return checkpoints.failed_end(net, config.save) if failed else None

    ending = world.bcast_object(world.on_root(write))
    if failed:  # known on every rank: the checkpoints' outcome is broadcast
        raise CheckpointFailed(f"training ended, but {ending}")


def _reason(e: Exception) -> str:
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)
