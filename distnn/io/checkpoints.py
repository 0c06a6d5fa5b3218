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
``checkpoint-<step>.npz`` and keeps the newest ``keep``; the folder is locked to one run
(:mod:`distnn.io.folder_lock`), so every temporary file of a checkpoint found there
outside a save is a killed writer's debris, and is removed (:func:`clear_debris`).
Loading never unpickles, so a crafted file cannot run code; every field is checked (the
fingerprint names this run, positions and counts are possible, every state array is
the parameters' size and finite), a damaged or incompatible file is refused with its
name, and ``--resume`` falls back to the next newest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from distnn.errors import DistnnError
from distnn.io.outputs import atomic_savez
from distnn.io.safe_read import read_npz

FORMAT_VERSION = 2  # 2: run_state (early stopping, wall time); full fingerprint
_NAME = re.compile(r"^checkpoint-(\d+)\.npz$")
# atomic_write's temporary file for a checkpoint: ".tmp-" + mkstemp's 8 characters + name
_DEBRIS = re.compile(r"^\.tmp-\w{8}checkpoint-\d+\.npz$")
_MAX_COUNT = 2**53  # steps and epochs beyond this are no run's (and lose float exactness)
# What every checkpoint's fingerprint holds, from format 1 on; an older distnn may lack
# later options' entries, but never these.
_ALWAYS_FINGERPRINTED = ("sizes", "activations", "loss", "schedule", "train_samples", "num_params")


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
        if os.path.isfile(old) and not os.path.islink(old):  # never a folder put there
            os.unlink(old)
    return path


def clear_debris(directory: str) -> list[str]:
    """Remove the temporary files of checkpoints whose writer was killed; their names.

    Only with the folder's lock held and no save under way: then no live writer owns one.
    """
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for name in names:
        path = os.path.join(directory, name)
        if _DEBRIS.match(name) and os.path.isfile(path) and not os.path.islink(path):
            try:
                os.unlink(path)
                removed.append(name)
            except OSError:
                pass  # the save that follows reports a folder it cannot write
    return removed


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
    always = (*_ALWAYS_FINGERPRINTED, "data") if version >= 2 else _ALWAYS_FINGERPRINTED
    lacking = [key for key in always if key in expected and key not in fingerprint]
    if lacking:  # an empty fingerprint says nothing about whose run it was
        raise DistnnError(f"{path}: damaged checkpoint (its fingerprint lacks {lacking})")
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
    for key, a in ckpt.schedule_state.items():
        if key != "t" and (a.shape != ckpt.params.shape or a.dtype.kind != "f"
                           or not np.isfinite(a).all()):  # fmt: skip
            raise DistnnError(
                f"{path}: damaged checkpoint (optimizer state '{key}' is not "
                f"{ckpt.params.size} finite numbers)"
            )
    if "t" in ckpt.schedule_state:
        _count(ckpt.schedule_state["t"], path, "optimizer step")
    if not np.isfinite(ckpt.position["epoch_loss_sum"]):
        raise DistnnError(f"{path}: damaged checkpoint (epoch_loss_sum is not finite)")
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


def _count(a: np.ndarray, path: str | None = None, what: str = "a count") -> int:
    """A non-negative integer below 2**53 held by a 0-d integer array.

    ValueError, or with ``path`` a DistnnError naming the file and ``what``.
    """
    a = np.asarray(a)
    if a.ndim != 0 or a.dtype.kind not in "iu" or not 0 <= int(a) < _MAX_COUNT:
        found = int(a) if a.ndim == 0 and a.dtype.kind in "iu" else f"{a.dtype} {a.shape}"
        if path is not None:
            raise DistnnError(f"{path}: damaged checkpoint ({what} {found})")
        raise ValueError(f"expected a count below 2**53, found {found}")
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
    directory: str,
    expected: dict,
    names: Mapping[str, str] | None = None,
    fits: Callable[[Checkpoint], str | None] = lambda ckpt: None,
) -> tuple[Checkpoint | None, str | None, list[str]]:
    """The newest checkpoint in ``directory`` that loads and fits this run.

    ``fits(ckpt)``: what the run itself finds wrong with a loaded checkpoint (a position
    past its epoch, an optimizer state its schedule refuses), None if nothing.
    Returns (checkpoint, its path, one message per newer file that was skipped). With
    files present but none usable, raises DistnnError listing why each was refused.
    """
    skipped = []
    for path in list_checkpoints(directory):
        try:
            ckpt = load_checkpoint(path, expected, names)
            wrong = fits(ckpt)
            if wrong:
                raise DistnnError(f"{path}: damaged checkpoint ({wrong})")
            return ckpt, path, skipped
        except DistnnError as e:
            skipped.append(str(e))
    if skipped:
        raise DistnnError("no usable checkpoint: " + "; ".join(skipped))
    return None, None, skipped
