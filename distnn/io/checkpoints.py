"""Checkpoints: everything needed to continue a run exactly, and nothing that needs pickle.

A checkpoint is an ``.npz`` holding the parameters, the schedule's state (keys
``schedule/…``), the position in the data (completed epochs, batches done in the
current epoch — the data order itself is re-derived from the seed and the epoch),
the run's configuration as JSON, what the run was trained on (network and data
shapes), the run's elapsed wall time (``wall_s``, so that the metrics' clock goes on
across resumes) and a format version. Format 1 (before ``wall_s``) still loads, with
an elapsed time of 0. None of it depends on the number of ranks, so a run
stopped on 4 ranks continues on 1 or 2.

Rank 0 writes it atomically (temporary file, fsync, rename: see ``distnn.io.outputs``) as
``checkpoint-<step>.npz`` and keeps the newest ``keep``. Loading never unpickles, so a
crafted file cannot run code; a damaged or incompatible file is refused with its
name, and ``--resume`` falls back to the next newest.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from distnn.errors import DistnnError
from distnn.io.outputs import atomic_savez

FORMAT_VERSION = 2  # 2: wall_s
_NAME = re.compile(r"^checkpoint-(\d+)\.npz$")


@dataclass
class Checkpoint:
    """One checkpoint's contents, as the trainer saves and restores them."""

    params: np.ndarray
    schedule_state: dict
    position: dict  # Trainer.position(): epoch, batch_in_epoch, epoch_loss_sum, step
    config: dict
    fingerprint: dict  # what must match to resume: network and data shapes, schedule
    wall_s: float = 0.0  # seconds of the run so far, over all its starts


def checkpoint_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"checkpoint-{step:09d}.npz")


def list_checkpoints(directory: str) -> list[str]:
    """Checkpoint files in ``directory``, newest (highest step) first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), name) for name in names if (m := _NAME.match(name))]
    return [os.path.join(directory, name) for _, name in sorted(found, reverse=True)]


def save_checkpoint(directory: str, ckpt: Checkpoint, keep: int) -> str:
    """Write ``ckpt`` atomically, then delete all but the newest ``keep``; return its path."""
    arrays = {
        "format_version": np.array(FORMAT_VERSION),
        "params": ckpt.params,
        "epoch": np.array(ckpt.position["epoch"]),
        "batch_in_epoch": np.array(ckpt.position["batch_in_epoch"]),
        "epoch_loss_sum": np.array(ckpt.position["epoch_loss_sum"], np.float64),
        "step": np.array(ckpt.position["step"]),
        "config": np.array(json.dumps(ckpt.config)),
        "shape": np.array(json.dumps(ckpt.fingerprint)),  # the file's name for it
        "wall_s": np.array(ckpt.wall_s, np.float64),
    }
    for key, value in ckpt.schedule_state.items():
        arrays[f"schedule/{key}"] = np.asarray(value)
    path = checkpoint_path(directory, ckpt.position["step"])
    atomic_savez(path, arrays)
    for old in list_checkpoints(directory)[keep:]:
        os.unlink(old)
    return path


def load_checkpoint(path: str, expected: dict) -> Checkpoint:
    """Read and check one checkpoint; DistnnError naming ``path`` if it cannot be used."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DistnnError(f"{path}: not a readable checkpoint ({e})") from None
    try:
        version = int(arrays["format_version"])
        if version > FORMAT_VERSION:
            raise DistnnError(
                f"{path}: checkpoint format {version} is newer than this distnn reads "
                f"({FORMAT_VERSION}); upgrade distnn"
            )
        fingerprint = json.loads(str(arrays["shape"]))
        ckpt = Checkpoint(
            params=arrays["params"],
            schedule_state={
                key.removeprefix("schedule/"): value
                for key, value in arrays.items()
                if key.startswith("schedule/")
            },
            position={
                "epoch": int(arrays["epoch"]),
                "batch_in_epoch": int(arrays["batch_in_epoch"]),
                "epoch_loss_sum": float(arrays["epoch_loss_sum"]),
                "step": int(arrays["step"]),
            },
            config=json.loads(str(arrays["config"])),
            fingerprint=fingerprint,
            wall_s=float(arrays["wall_s"]) if "wall_s" in arrays else 0.0,  # format 1: none
        )
    except KeyError as e:
        raise DistnnError(f"{path}: not a distnn checkpoint (missing {e})") from None
    except (TypeError, ValueError) as e:
        raise DistnnError(f"{path}: damaged checkpoint ({e})") from None
    for key, want in expected.items():
        have = fingerprint.get(key)
        if have != want:
            raise DistnnError(
                f"{path}: incompatible checkpoint: {key} is {have}, this run has {want}"
            )
    if ckpt.params.ndim != 1 or ckpt.params.size != expected.get("num_params", -1):
        raise DistnnError(f"{path}: damaged checkpoint (parameter buffer of {ckpt.params.size})")
    return ckpt


def newest_valid_checkpoint(
    directory: str, expected: dict
) -> tuple[Checkpoint | None, str | None, list[str]]:
    """The newest checkpoint in ``directory`` that loads and fits this run.

    Returns (checkpoint, its path, one message per newer file that was skipped). With
    files present but none usable, raises DistnnError listing why each was refused.
    """
    skipped = []
    for path in list_checkpoints(directory):
        try:
            return load_checkpoint(path, expected), path, skipped
        except DistnnError as e:
            skipped.append(str(e))
    if skipped:
        raise DistnnError("no usable checkpoint: " + "; ".join(skipped))
    return None, None, skipped


class Checkpointer:
    """When to checkpoint: every ``every`` steps (0: never mid-epoch), at every epoch
    end, at the end and on preemption. Decided from the step count, the same on every
    rank; only rank 0 writes, and a failure to write stops every rank alike.
    ``wall_clock()`` gives the run's elapsed seconds, stored with each checkpoint."""

    def __init__(
        self,
        directory: str,
        every: int,
        keep: int,
        config: dict,
        fingerprint: dict,
        world,
        wall_clock: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.directory, self.every, self.keep = directory, every, keep
        self.config, self.fingerprint, self.world = config, fingerprint, world
        self.wall_clock = wall_clock
        self.last_saved: tuple[int, int] | None = None  # (step, epoch) of the newest
        self.last_path: str | None = None

    def after_step(self, trainer) -> None:
        if self.every and trainer.step % self.every == 0:
            self.save(trainer)

    def save(self, trainer) -> None:
        position = (trainer.step, trainer.epoch)  # an epoch end moves on without a step
        if position == self.last_saved:
            return
        self.last_saved = position
        trainer.check_params(f"the checkpoint of step {trainer.step}")
        ckpt = Checkpoint(
            trainer.net.params,
            trainer.schedule.state_dict(),
            trainer.position(),
            self.config,
            self.fingerprint,
            self.wall_clock(),
        )
        self.last_path = self.world.on_root(lambda: self._write(ckpt))

    def _write(self, ckpt: Checkpoint) -> str:
        try:
            return save_checkpoint(self.directory, ckpt, self.keep)
        except OSError as e:
            raise DistnnError(
                f"cannot write a checkpoint in {self.directory} ({e.strerror or e})"
            ) from None
