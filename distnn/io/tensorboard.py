"""``--tensorboard DIR``: each record's numbers as TensorBoard scalars, written by rank 0.

Through tensorboardX, an optional extra (``pip install 'distnn[tensorboard]'``): a
small pure-Python writer of TensorBoard's event files that needs neither TensorFlow
nor PyTorch. Each numeric key of a record becomes one scalar series against the global
step (so a resumed run continues the same curves), under a group that TensorBoard shows
as one section: ``loss/train``, ``loss/test``, ``accuracy/test``, ``speed/…``,
``noise/…``, ``time/…``. An ``--eval-every`` record adds its test and validation points to
the same curves. At the end the run's hyperparameters and final numbers go to the HParams
dashboard (``DIR/hparams``), so runs of a sweep written under one folder compare there.
"""

from __future__ import annotations

from typing import Any

from distnn.errors import DistnnError

INSTALL_HINT = "pip install 'distnn[tensorboard]' (or: pip install tensorboardX)"
# Record keys and their tags; keys not listed (the x axis, constants, slowest_rank: an
# index, not a curve) are not written.
TAGS = {
    "loss": "loss/train",
    "test_loss": "loss/test",
    "val_loss": "loss/val",
    "accuracy": "accuracy/test",
    "val_accuracy": "accuracy/val",
    "lr": "optim/lr",
    "samples_per_sec": "speed/samples_per_sec",
    "goodput": "speed/goodput",
    "noise_scale": "noise/noise_scale",
    "grad_norm_sq": "noise/grad_norm_sq",
    "grad_trace": "noise/grad_trace",
    "steps_ratio": "noise/steps_ratio",
    "efficiency": "noise/efficiency",
}
TIME_KEYS = ("data_s", "compute_s", "compute_s_max", "allreduce_s", "update_s",
             "startup_s", "train_s", "eval_s", "checkpoint_s", "elapsed_s", "wall_s")  # fmt: skip
TAGS |= {key: f"time/{key}" for key in TIME_KEYS}
EVALUATION_KEYS = ("test_loss", "val_loss", "accuracy", "val_accuracy")
# The options shown as hyperparameters (scalars and names the HParams dashboard can sort).
HPARAMS = ("schedule", "lr", "lr_schedule", "lr_scaling", "batch_size", "epochs", "seed",
           "hidden", "activation", "loss", "deterministic", "target")  # fmt: skip


class TensorBoardLog:
    """An event file in ``logdir``; ``write(record)`` adds one point to each series."""

    def __init__(self, logdir: str) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise DistnnError(f"--tensorboard needs tensorboardX: {INSTALL_HINT}") from None
        try:
            self.writer = SummaryWriter(logdir=logdir)
        except OSError as e:
            raise DistnnError(f"--tensorboard {logdir}: {e.strerror or e}") from None
        self.hparams: dict[str, Any] = {}
        self.last: dict[str, Any] | None = None

    def write_text(self, tag: str, text: str) -> None:
        """A note beside the curves (the run's header: versions, configuration)."""
        self.writer.add_text(tag, text)
        self.writer.flush()

    def write_header(self, record: dict[str, Any], text: str) -> None:
        """The header record: as text, and its options as the run's hyperparameters."""
        self.write_text("run", text)
        config = record.get("config", {})
        self.hparams = {k: _hparam(config[k]) for k in HPARAMS if k in config}
        self.hparams["ranks"] = record.get("ranks", 1)

    def write(self, record: dict[str, Any]) -> None:
        step = record["step"]
        keys = EVALUATION_KEYS if record.get("eval") else TAGS
        for key in keys:
            value = record.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(TAGS[key], value, global_step=step)
        if not record.get("eval"):
            self.last = record
        self.writer.flush()  # a preempted job keeps every epoch written so far

    def close(self) -> None:
        if self.last is not None and self.hparams:
            final = {"step": self.last["step"], "samples": self.last.get("samples")}
            final |= {k: self.last.get(k) for k in ("loss", "test_loss", "accuracy", "noise_scale")}
            metrics = {f"hparam/{k}": float(v) for k, v in final.items() if v is not None}
            self.writer.add_hparams(self.hparams, metrics, name="hparams")
        self.writer.close()


def _hparam(value: object) -> bool | str | float | int:
    """A value the HParams dashboard takes: numbers and booleans as they are, else text."""
    if value is None:
        return "none"
    return value if isinstance(value, bool | int | float | str) else str(value)
