"""Checkpoints: everything needed to continue a run exactly, and nothing that needs pickle.

A checkpoint is an ``.npz`` holding the parameters, the schedule's state (keys
``schedule/…``), the position in the data (completed epochs, batches done in the
current epoch — the data order itself is re-derived from the seed and the epoch),
the run's configuration as JSON, the run's *fingerprint* (everything that determines
its result: network, loss, schedule and its learning rate, batch, seed, dtype,
deterministic mode, preprocessing, and a hash of the training data's content), the
run's own state (early stopping, wall time so far), and a format version. None of it
depends on the number of ranks, so a run stopped on 4 ranks continues on 1 or 2.

Rank 0 writes it atomically (temporary file, fsync, rename: see ``distnn.io.outputs``) as
``checkpoint-<step>.npz`` and keeps the newest ``keep``. Loading never unpickles, so a
crafted file cannot run code; a damaged or incompatible file is refused with its
name, and ``--resume`` falls back to the next newest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from distnn.errors import DistnnError
from distnn.io.outputs import atomic_savez
from distnn.io.safe_read import read_npz

FORMAT_VERSION = 2  # 2: run_state (early stopping, wall time); full fingerprint
_NAME = re.compile(r"^checkpoint-(\d+)\.npz$")


@dataclass
class Checkpoint:
    """One checkpoint's contents, as the trainer saves and restores them."""

    params: np.ndarray
    schedule_state: dict
    position: dict  # Trainer.position(): epoch, batch_in_epoch, epoch_loss_sum, step
    config: dict
    fingerprint: dict  # what must match to resume: see run_fingerprint
    run_state: dict  # JSON scalars of the run's own state (wall_s, early stopping)
    run_arrays: dict  # its arrays (early stopping's best parameters)


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


def newest_step(directory: str) -> int:
    """The step of the newest checkpoint file in ``directory`` (by its name); 0 if none."""
    newest = list_checkpoints(directory)
    return int(_NAME.match(os.path.basename(newest[0])).group(1)) if newest else 0


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
        "run_state": np.array(json.dumps(ckpt.run_state)),
    }
    for key, value in ckpt.run_arrays.items():
        arrays[f"run/{key}"] = np.asarray(value)
    for key, value in ckpt.schedule_state.items():
        arrays[f"schedule/{key}"] = np.asarray(value)
    path = checkpoint_path(directory, ckpt.position["step"])
    atomic_savez(path, arrays)
    for old in list_checkpoints(directory)[keep:]:
        os.unlink(old)
    return path


def load_checkpoint(
    path: str, expected: dict, names: Mapping[str, str] | None = None
) -> Checkpoint:
    """Read and check one checkpoint; DistnnError naming ``path`` if it cannot be used.

    ``expected`` is this run's fingerprint; a difference is named as ``names`` says
    (the option that sets each entry), else by its key.
    """
    try:
        arrays = read_npz(path, "checkpoint")  # sizes checked before anything is read
    except OSError as e:
        raise DistnnError(f"{path}: not a readable checkpoint ({e.strerror or e})") from None
    try:
        version = int(arrays["format_version"])
        if version > FORMAT_VERSION:
            raise DistnnError(
                f"{path}: checkpoint format {version} is newer than this distnn reads "
                f"({FORMAT_VERSION}); upgrade distnn"
            )
        fingerprint = _json_object(arrays["shape"])
        ckpt = Checkpoint(
            params=arrays["params"],
            schedule_state={
                key.removeprefix("schedule/"): value
                for key, value in arrays.items()
                if key.startswith("schedule/")
            },
            position={
                "epoch": _count(arrays["epoch"]),
                "batch_in_epoch": _count(arrays["batch_in_epoch"]),
                "epoch_loss_sum": float(arrays["epoch_loss_sum"]),
                "step": _count(arrays["step"]),
            },
            config=_json_object(arrays["config"]),
            fingerprint=fingerprint,
            run_state=_json_object(arrays["run_state"]) if "run_state" in arrays else {},
            run_arrays={
                key.removeprefix("run/"): value
                for key, value in arrays.items()
                if key.startswith("run/")
            },
        )
    except KeyError as e:
        raise DistnnError(f"{path}: not a distnn checkpoint (missing {e})") from None
    except RecursionError:
        raise DistnnError(f"{path}: damaged checkpoint (JSON nested too deeply)") from None
    except (TypeError, ValueError, OverflowError) as e:
        raise DistnnError(f"{path}: damaged checkpoint ({type(e).__name__}: {e})") from None
    differences = [
        f"{(names or {}).get(key, key)} {fingerprint[key]} there, {want} here"
        for key, want in expected.items()
        if key in fingerprint and fingerprint[key] != want  # format 1 lacks some keys
    ]
    if differences:
        raise DistnnError(
            f"{path}: written by another run ({'; '.join(differences)}); resume continues "
            "the same run only: start a new --checkpoint-dir, with --init-from MODEL to "
            "begin from trained weights"
        )
    if ckpt.params.ndim != 1 or ckpt.params.size != expected.get("num_params", -1):
        raise DistnnError(f"{path}: damaged checkpoint (parameter buffer of {ckpt.params.size})")
    for key, a in [("params", ckpt.params), *((f"run/{k}", v) for k, v in ckpt.run_arrays.items())]:
        if a.shape != ckpt.params.shape or a.dtype.kind != "f" or not np.isfinite(a).all():
            raise DistnnError(
                f"{path}: damaged checkpoint ('{key}' is not {ckpt.params.size} finite numbers)"
            )
    state = ckpt.run_state
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in state.values()) or (
        ckpt.run_arrays and not {"best_loss", "best_epoch", "waited"} <= state.keys()
    ):
        raise DistnnError(f"{path}: damaged checkpoint (run state {json.dumps(state)[:200]})")
    return ckpt


def _json_object(a: np.ndarray) -> dict:
    """The JSON object a 0-d string array holds; ValueError/RecursionError if it is not one."""
    if a.ndim != 0 or a.dtype.kind != "U":
        raise ValueError(f"expected one JSON string, found {a.dtype} {a.shape}")
    value = json.loads(str(a))  # RecursionError for absurd nesting
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, found {type(value).__name__}")
    return value


def _count(a: np.ndarray) -> int:
    """A non-negative integer held by a 0-d integer array."""
    if a.ndim != 0 or a.dtype.kind not in "iu" or int(a) < 0:
        raise ValueError(f"expected a count, found {a.dtype} {a.shape}")
    return int(a)


def content_hash(*arrays: np.ndarray | None, block_bytes: int = 1 << 26) -> str:
    """A hash of the arrays' shapes and bytes, read in blocks (memory-mapped data stays so)."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        h.update(repr((a.shape, a.dtype.str)).encode())
        rows = max(1, block_bytes // max(1, a[:1].nbytes))
        for lo in range(0, len(a), rows):
            h.update(np.ascontiguousarray(a[lo : lo + rows]).data)
    return h.hexdigest()


def newest_valid_checkpoint(
    directory: str, expected: dict, names: Mapping[str, str] | None = None
) -> tuple[Checkpoint | None, str | None, list[str]]:
    """The newest checkpoint in ``directory`` that loads and fits this run.

    Returns (checkpoint, its path, one message per newer file that was skipped). With
    files present but none usable, raises DistnnError listing why each was refused.
    """
    skipped = []
    for path in list_checkpoints(directory):
        try:
            return load_checkpoint(path, expected, names), path, skipped
        except DistnnError as e:
            skipped.append(str(e))
    if skipped:
        raise DistnnError("no usable checkpoint: " + "; ".join(skipped))
    return None, None, skipped
