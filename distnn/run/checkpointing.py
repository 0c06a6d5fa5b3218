"""When a run checkpoints, and what it must match to resume: the fingerprint.

The checkpoint file itself (contents, atomic write, checks on load) is
:mod:`distnn.io.checkpoints`; this module decides when to write one (from the step
count, the same on every rank) and derives the fingerprint from the options declared
``fingerprint=True`` in :mod:`distnn.run.options`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from distnn.engine.network import Network
from distnn.errors import DistnnError
from distnn.io.checkpoints import Checkpoint, save_checkpoint
from distnn.parallel.heartbeat import Heartbeat
from distnn.parallel.timeline import CHECKPOINT
from distnn.parallel.trainer import Trainer
from distnn.parallel.world import World
from distnn.run.options import TrainConfig, declared

# The fingerprint's entries that the network and the data set give, not an option.
_NETWORK_AND_DATA = {
    "sizes": "network sizes",
    "activations": "activations",
    "loss": "loss",  # an option's name: see fingerprint_names
    "dtype": "dtype",
    "train_samples": "training samples",
    "data": "training data (content hash)",
    "num_params": "parameters",
}


def run_fingerprint(config: TrainConfig, net: Network, data_hash: str, train_samples: int) -> dict:
    """Everything that determines a run's result, as JSON values, for ``--resume`` to match:
    the network, the data, and every option declared ``fingerprint=True``.

    What may change on resume is left out: epochs, time limit, checkpoint cadence,
    output paths, verbosity, --overlap, and the number of ranks.
    """
    options = {f.name: getattr(config, f.name) for f, opt in declared() if opt.fingerprint}
    if not config.deterministic:  # the default mode has no virtual shards
        options["virtual_shards"] = None
    return {
        "sizes": list(net.sizes),
        "activations": list(net.activation_names),
        "loss": net.loss_fn.name,
        "dtype": net.dtype.name,
        **options,
        "train_samples": train_samples,
        "data": data_hash,
        "num_params": net.num_params,
    }


def fingerprint_names(config: TrainConfig) -> dict[str, str]:
    """How a message names each fingerprint entry: by the option that sets it."""
    names = _NETWORK_AND_DATA | {key: config.name(key) for key in ("loss", "dtype")}
    names |= {f.name: config.name(f.name) for f, opt in declared() if opt.fingerprint}
    names["virtual_shards"] = f"{config.name('deterministic')}/{config.name('virtual_shards')}"
    return names


class Checkpointer:
    """When to checkpoint: every ``every`` steps (0: never mid-epoch), at every epoch
    end, at the end and on preemption. Decided from the step count, the same on every
    rank; only rank 0 writes, and a failure to write stops every rank alike."""

    def __init__(
        self,
        directory: str,
        every: int,
        keep: int,
        config: dict,
        fingerprint: dict,
        world: World,
        run_state: Callable[[], tuple[dict, dict]],
        beat: Heartbeat | None = None,
    ) -> None:
        self.directory, self.every, self.keep = directory, every, keep
        self.config, self.fingerprint, self.world = config, fingerprint, world
        self.run_state = run_state  # the run's own (state, arrays) at this moment
        self.beat = beat  # tells a supervisor that a slow step is a checkpoint
        self.last_saved: tuple[int, int] | None = None  # (step, epoch) of the newest
        self.last_path: str | None = None

    def after_step(self, trainer: Trainer) -> None:
        if self.every and trainer.step % self.every == 0:
            self.save(trainer)

    def save(self, trainer: Trainer) -> None:
        position = (trainer.step, trainer.epoch)  # an epoch end moves on without a step
        if position == self.last_saved:
            return
        self.last_saved = position
        t0 = time.perf_counter()
        trainer.check_params(f"the checkpoint of step {trainer.step}")
        ckpt = Checkpoint(
            trainer.net.params,
            trainer.schedule.state_dict(),
            trainer.position(),
            self.config,
            self.fingerprint,
            *self.run_state(),
        )
        if self.beat is not None:
            self.beat.phase = "checkpoint"
        self.last_path = self.world.on_root(lambda: self._write(ckpt))
        if self.beat is not None:
            self.beat.phase = "train"
        if trainer.timeline.covers(trainer.step):
            trainer.timeline.add(CHECKPOINT, t0, time.perf_counter())

    def _write(self, ckpt: Checkpoint) -> str:
        try:
            return save_checkpoint(self.directory, ckpt, self.keep)
        except OSError as e:
            raise DistnnError(
                f"cannot write a checkpoint in {self.directory} ({e.strerror or e})"
            ) from None
