"""One run's configuration: the object the CLI fills and checkpoints record."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from distnn.activations import ACTIVATIONS
from distnn.errors import DistnnError
from distnn.losses import LOSSES


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
    deterministic: bool = False  # the same bits at any number of ranks (deterministic.py)
    virtual_shards: int = 4

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
        if self.virtual_shards < 1:
            raise DistnnError(f"--virtual-shards must be at least 1, got {self.virtual_shards}")
        if self.deterministic and self.overlap:
            raise DistnnError("--deterministic and --overlap cannot be combined")
        if self.keep_checkpoints < 1:
            raise DistnnError(f"--keep-checkpoints must be at least 1, got {self.keep_checkpoints}")
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
