"""When a run checkpoints, and what it must match to resume: the fingerprint.

The checkpoint file itself (contents, atomic write, checks on load) is
:mod:`distnn.io.checkpoints`; this module decides when to write one (from the step
count, the same on every rank) and derives the fingerprint from the options declared
``fingerprint=True`` in :mod:`distnn.run.options`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable

from distnn.engine.network import Network
from distnn.errors import CheckpointFailed, DistnnError
from distnn.io.checkpoints import Checkpoint, clear_debris, list_checkpoints, save_checkpoint
from distnn.io.outputs import rescue_copy
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
    rank; only rank 0 writes, and whether it wrote is broadcast, so every rank agrees.

    Trouble writing a checkpoint (a full or unwritable folder, a folder where the file
    goes) is not bad input: rank 0 warns once on stderr, training goes on, and the next
    checkpoint tries again. ``failure`` says why the newest attempt failed (None once
    one succeeds): the run's end then rescues the model and ends with
    :data:`~distnn.errors.EXIT_CHECKPOINT_FAILED` (:mod:`distnn.run.outputs`).
    """

    def __init__(
        self,
        directory: str,
        every: int,
        keep: int,
        config: dict,
        fingerprint: dict,
        world: World,
        snapshot_run_state: Callable[[], tuple[dict, dict]],
        beat: Heartbeat | None = None,
    ) -> None:
        self.directory, self.every, self.keep = directory, every, keep
        self.config, self.fingerprint, self.world = config, fingerprint, world
        self.snapshot_run_state = snapshot_run_state  # the run's own (state, arrays) now
        self.beat = beat  # tells a supervisor that a slow step is a checkpoint
        self.last_saved: tuple[int, int] | None = None  # (step, epoch) of the newest
        self.last_path: str | None = None  # on rank 0: the newest checkpoint written
        self.failure: str | None = None  # why the newest attempt failed; every rank
        self.warned = False

    def after_step(self, trainer: Trainer) -> None:
        if self.every and trainer.step % self.every == 0:
            self.save(trainer)

    def save(self, trainer: Trainer, last: bool = False) -> None:
        """Checkpoint where ``trainer`` stands (once per position). ``last``: the run
        stops here, so a failed write ends it (CheckpointFailed, the model rescued)."""
        position = (trainer.step, trainer.epoch)  # an epoch end moves on without a step
        if position == self.last_saved:
            return
        t0 = time.perf_counter()
        trainer.check_params(f"the checkpoint of step {trainer.step}")
        ckpt = Checkpoint(
            trainer.net.params,
            trainer.schedule.state_dict(),
            trainer.position(),
            self.config,
            self.fingerprint,
            *self.snapshot_run_state(),
        )
        if self.beat is not None:
            self.beat.phase = "checkpoint"
        written = self._write(ckpt) if self.world.is_root else None
        self.failure = self.world.bcast_object(written[1] if written else None)
        if self.beat is not None:
            self.beat.phase = "train"
        if self.failure is None:
            self.last_saved = position
            if written:
                self.last_path = written[0]
        elif last:  # every rank knows it failed; rank 0 knows where the parameters went
            ending = self.world.bcast_object(
                self.failed_end(trainer.net) if self.world.is_root else None
            )
            raise CheckpointFailed(f"stopped on request after step {trainer.step}, but {ending}")
        if trainer.timeline.covers(trainer.step):
            trainer.timeline.add(CHECKPOINT, t0, time.perf_counter())

    def failed_end(self, net: Network, where: str | None = None) -> str:
        """On rank 0, a run's end after its last checkpoint failed, in words: where the
        parameters are (``where``, else a rescue copy written now) and which checkpoint
        is the newest."""
        try:
            older = [p for p in list_checkpoints(self.directory) if os.path.isfile(p)][:1]
        except OSError:  # the folder itself gone unreadable
            older = []
        newest = f"the newest checkpoint is the older {older[0]}" if older else "there is none"
        return (
            f"its last checkpoint could not be written in {self.directory} ({self.failure}); "
            f"the parameters are in {where or rescue_copy(net.save)}; {newest}"
        )

    def _write(self, ckpt: Checkpoint) -> tuple[str | None, str | None]:
        """(path, None) once written, (None, why) if not; warns once, on rank 0."""
        try:
            clear_debris(self.directory)  # a killed writer's; ours are gone after a save
            return save_checkpoint(self.directory, ckpt, self.keep), None
        except (OSError, DistnnError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if not self.warned:
            self.warned = True
            with contextlib.suppress(OSError, ValueError):  # a closed stderr
                print(
                    f"distnn: warning: cannot write a checkpoint in {self.directory} "
                    f"({reason}): training goes on, and each checkpoint tries again",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
        return None, reason
