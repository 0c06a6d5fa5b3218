"""One run's configuration: the object the CLI, TOML files and checkpoints all share."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
from dataclasses import dataclass

from distnn.engine.activations import ACTIVATIONS
from distnn.engine.losses import LOSSES
from distnn.errors import DistnnError
from distnn.progress import PROGRESS_MODES
from distnn.timeline import parse_steps


@dataclass
class TrainConfig:
    dataset: str = "digits"
    hidden: tuple[int, ...] = (32,)
    activation: str = "sigmoid"
    activations: tuple[str, ...] | None = None  # one per layer; overrides ``activation``
    loss: str = "squared"
    schedule: str = "adam"
    lr: float = 0.01
    lr_schedule: str = "constant"
    batch_size: int = 32  # global: summed over all ranks
    epochs: int = 40
    seed: int = 0
    dtype: str = "float32"
    save: str | None = None
    metrics: str | None = None
    quiet: bool = False
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0  # steps; 0: only at epoch ends, the end, and on preemption
    keep_checkpoints: int = 3
    resume: bool = False
    overlap: bool = False  # per-layer Iallreduce during backprop instead of one Allreduce
    deterministic: bool = False  # the same bits at any number of ranks (ordered_sum.py)
    virtual_shards: int = 4
    label_column: str | None = None  # CSV data: the column holding the class
    standardize: bool = False  # scale features by the training split's mean and std
    val_fraction: float = 0.0  # carve a validation split from the training data
    patience: int | None = None  # early stopping: epochs without a better val_loss
    target_loss: float | None = None  # stop once an epoch's training loss is this low
    max_time: float | None = None  # seconds of training, measured on rank 0's clock
    verbose: bool = False
    init_from: str | None = None  # warm start: the parameters of a saved model
    # The --config file this came from: an input, never overwritten; not itself an option.
    config_file: str | None = None
    progress: str = "auto"  # within an epoch: auto, bar, lines, none (distnn.progress)
    log_every: int = 0  # ``lines``: a line every N steps; 0: every LINE_SECONDS
    tensorboard: str | None = None  # also write TensorBoard scalars to this folder
    trace: str | None = None  # a Chrome trace-event file of where each rank's time went
    trace_steps: str | None = None  # "A:B": the steps the trace covers

    def layer_activations(self) -> list[str]:
        """σ's name for each of the L layers."""
        n_layers = len(self.hidden) + 1
        return list(self.activations) if self.activations else [self.activation] * n_layers

    def validate(self) -> None:
        """Raise DistnnError naming the first option out of range."""
        if self.batch_size < 1:
            raise DistnnError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.epochs < 1:
            raise DistnnError(f"--epochs must be at least 1, got {self.epochs}")
        if not self.lr > 0 or self.lr == float("inf"):
            raise DistnnError(f"--lr must be a positive number, got {self.lr}")
        if any(width < 1 for width in self.hidden):
            raise DistnnError(f"--hidden widths must be positive, got {self.hidden}")
        if self.checkpoint_every < 0:
            raise DistnnError(f"--checkpoint-every must be 0 or more, got {self.checkpoint_every}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise DistnnError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.patience is not None and self.patience < 1:
            raise DistnnError(f"--patience must be at least 1, got {self.patience}")
        if self.patience is not None and self.val_fraction == 0:
            raise DistnnError("--patience needs a validation split: give --val-fraction too")
        if self.target_loss is not None and not self.target_loss >= 0:
            raise DistnnError(f"--target-loss must be 0 or more, got {self.target_loss}")
        if self.max_time is not None and not (self.max_time > 0 and math.isfinite(self.max_time)):
            raise DistnnError(
                f"--max-time must be a positive number of seconds, got {self.max_time}"
            )
        if self.progress not in PROGRESS_MODES:
            raise DistnnError(
                f"--progress must be one of {', '.join(PROGRESS_MODES)}, got {self.progress!r}"
            )
        if self.log_every < 0:
            raise DistnnError(f"--log-every must be 0 or more, got {self.log_every}")
        if self.virtual_shards < 1:
            raise DistnnError(f"--virtual-shards must be at least 1, got {self.virtual_shards}")
        if self.deterministic and self.overlap:
            raise DistnnError("--deterministic and --overlap cannot be combined")
        if not self.deterministic and self.virtual_shards != TrainConfig.virtual_shards:
            raise DistnnError(
                f"--virtual-shards {self.virtual_shards} has no effect without --deterministic"
            )
        if self.keep_checkpoints < 1:
            raise DistnnError(f"--keep-checkpoints must be at least 1, got {self.keep_checkpoints}")
        if self.trace_steps is not None:
            if not self.trace:
                raise DistnnError("--trace-steps needs --trace FILE.json")
            try:
                parse_steps(self.trace_steps)
            except ValueError as e:
                raise DistnnError(str(e)) from None
        if self.resume and self.init_from:
            raise DistnnError(
                "--init-from starts a new run from a model; --resume continues a stopped one: "
                "give one of them"
            )
        if self.resume and not self.checkpoint_dir:
            raise DistnnError("--resume needs --checkpoint-dir DIR to resume from")
        if self.loss not in LOSSES:
            raise DistnnError(f"unknown --loss {self.loss!r} (choose from {', '.join(LOSSES)})")
        if self.dtype not in ("float32", "float64"):
            raise DistnnError(f"--dtype must be float32 or float64, got {self.dtype!r}")
        names = self.layer_activations()
        for name in names:
            if name not in ACTIVATIONS or name == "softmax":
                valid = ", ".join(a for a in ACTIVATIONS if a != "softmax")
                raise DistnnError(f"unknown activation {name!r} (choose from {valid})")
        if len(names) != len(self.hidden) + 1:
            raise DistnnError(
                f"--activations gives {len(names)} names for {len(self.hidden) + 1} layers "
                f"(hidden {','.join(map(str, self.hidden))} plus the output layer)"
            )

    def outputs(self) -> list[tuple[str, str | None]]:
        """Every path this run writes, as (what a message calls it, path)."""
        written = [("--save", self.save), ("--metrics", self.metrics)]
        beside = {
            os.path.splitext(path)[0] + ".toml": what for what, path in written if path
        }  # one file when --save and --metrics share a stem
        return [
            *written,
            ("--checkpoint-dir", self.checkpoint_dir),
            ("--tensorboard", self.tensorboard),
            ("--trace", self.trace),
            *((f"the configuration written beside {what}", p) for p, what in beside.items()),
        ]

    def inputs(self) -> list[tuple[str, str | None]]:
        """Every path this run reads, as (what a message calls it, path)."""
        dataset = self.dataset
        is_file = not (dataset == "digits" or dataset.startswith("synthetic"))
        return [
            ("--dataset", dataset if is_file else None),
            ("--config", self.config_file),
            ("--init-from", self.init_from),
        ]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The configuration as a TOML file ``--config`` reads back (unset options left out)."""
        lines = ["# distnn run configuration: python -m distnn.train --config THIS_FILE"]
        for key, value in self.to_dict().items():
            if value is None or key == "config_file":
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, (tuple, list)):
                text = json.dumps(list(value))
            else:  # JSON's strings and numbers are valid TOML
                text = json.dumps(value)
            lines.append(f"{key} = {text}")
        return "\n".join(lines) + "\n"


def read_toml(path: str) -> dict:
    """Options from a TOML file, by field name (``batch-size`` and ``batch_size`` alike)."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise DistnnError(f"{path}: no such configuration file") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DistnnError(f"{path}: not a valid TOML file ({e})") from None
    fields = {f.name: f for f in dataclasses.fields(TrainConfig) if f.name != "config_file"}
    options = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in fields:
            raise DistnnError(f"{path}: unknown option {key!r} (valid: {', '.join(fields)})")
        options[name] = tuple(value) if isinstance(value, list) else value
    return options
