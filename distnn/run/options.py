"""Every option of a run, declared once: :class:`TrainConfig`'s fields.

Each field carries an :class:`Option` in its metadata: its help, bounds, choices (from
the engine's own tables), whether ``--resume`` must match it (the fingerprint), whether
it names a file the run reads or writes, and whether it is set on the command line
only (the network's shape, which ``fit`` takes from the network it is given). The
CLI's parser (:mod:`distnn.cli.options`), ``fit``'s keywords (:mod:`distnn.api`), the
TOML files, the checkpoint fingerprint (:mod:`distnn.run.checkpointing`) and the path
checks (:mod:`distnn.run.outputs`) are all read off these declarations.

A config speaks its interface's language: ``spelling="cli"`` names options by flag
(``--batch-size``), ``spelling="fit"`` by keyword (``batch_size``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

from distnn.engine.activations import ACTIVATIONS
from distnn.engine.losses import LOSSES
from distnn.engine.lr_scaling import LR_SCALINGS
from distnn.errors import DistnnError
from distnn.parallel.timeline import parse_steps
from distnn.run import declaring
from distnn.run.declaring import (
    AT_LEAST_1,
    FRACTION,
    POSITIVE,
    POSITIVE_SECONDS,
    WIDTHS,
    ZERO_OR_MORE,
    Option,
    option,
)
from distnn.run.progress import PROGRESS_MODES
from distnn.run.stopping import parse_target

HIDDEN_ACTIVATIONS = tuple(a for a in ACTIVATIONS if a != "softmax")  # softmax: the loss's
DTYPES = ("float32", "float64")
DEFAULT_BATCH = 32  # --batch-size's default, and --base-batch's: the default --lr's batch


@dataclass
class TrainConfig:
    dataset: str = option(
        "digits",
        "digits (embedded, default) | synthetic:SAMPLES:FEATURES:CLASSES | an .npz with x, y "
        "[, x_test, y_test] | a folder of .npy or IDX files | a .csv[.gz]",
        path="input",
        cli_only=True,  # fit: its x
    )
    hidden: tuple[int, ...] = option(
        (32,),
        "hidden layer widths (default: %(default)s); '' for none",
        metavar="N,N,...",
        bound=WIDTHS,
        cli_only=True,
    )
    activation: str = option(
        "sigmoid",
        "σ of every layer: " + ", ".join(HIDDEN_ACTIVATIONS),
        choices=HIDDEN_ACTIVATIONS,
        cli_only=True,
    )
    activations: tuple[str, ...] | None = option(
        None,
        "σ per layer (hidden layers then output); overrides --activation",
        metavar="A,A,...",
        choices=HIDDEN_ACTIVATIONS,
        cli_only=True,
    )
    loss: str = option(
        "squared",
        "squared (default) | cross-entropy (softmax output)",
        choices=tuple(LOSSES),
        cli_only=True,
    )
    schedule: str = option(
        "adam",
        "the update rule: normalized | sgd | momentum | nesterov | adagrad | rmsprop | adam | "
        "package.module:ClassName (default: %(default)s)",
        fingerprint=True,
    )
    lr: float = option(
        0.01, "learning rate (default: %(default)s)", bound=POSITIVE, fingerprint=True
    )
    lr_schedule: str = option(
        "constant",
        "constant | step:EVERY:GAMMA | exp:GAMMA | inverse:K | cosine[:MIN_LR], "
        "optionally +warmup:N; EVERY and N in steps, or in epochs as 2ep, 0.5ep",
        fingerprint=True,
    )
    lr_scaling: str = option(
        "none",
        "scale --lr with the global batch B: linear (× B/B0, Goyal et al. 2017) | sqrt "
        "(× √(B/B0), Krizhevsky 2014) | none (default: %(default)s)",
        choices=LR_SCALINGS,
        fingerprint=True,
    )
    base_batch: int = option(
        DEFAULT_BATCH,
        "with --lr-scaling: the global batch B0 that --lr is tuned for (default: "
        "%(default)s, the default --batch-size, which the default --lr goes with)",
        metavar="B0",
        bound=AT_LEAST_1,
        fingerprint=True,
    )
    batch_size: int = option(
        DEFAULT_BATCH,
        "global batch size, split across ranks (default: %(default)s)",
        bound=AT_LEAST_1,
        fingerprint=True,
    )
    epochs: int = option(40, "default: %(default)s", bound=AT_LEAST_1, fit_default=10)
    seed: int = option(0, "default: %(default)s", bound=ZERO_OR_MORE, fingerprint=True)
    dtype: str = option("float32", "float32 (default) | float64", choices=DTYPES, cli_only=True)
    save: str | None = option(
        None, "write the trained model here", metavar="MODEL.npz", path="output"
    )
    metrics: str | None = option(
        None, "write one JSON line per epoch", metavar="FILE.jsonl", path="output"
    )
    quiet: bool = option(False, "print only the summary line", cli_only=True)  # fit: verbose
    checkpoint_dir: str | None = option(
        None, "write checkpoints here (rank 0)", metavar="DIR", path="output folder"
    )
    checkpoint_every: int = option(
        0,
        "also checkpoint every STEPS updates (default: only at epoch ends, the end, "
        "and on SIGTERM/SIGINT)",
        metavar="STEPS",
        bound=ZERO_OR_MORE,
    )
    keep_checkpoints: int = option(
        3, "keep the newest K checkpoints (default: %(default)s)", metavar="K", bound=AT_LEAST_1
    )
    resume: bool = option(
        False,
        "continue from the newest valid checkpoint in --checkpoint-dir (start afresh "
        "if it holds none)",
    )
    overlap: bool = option(
        False,
        "sum each layer's gradient with its own non-blocking Iallreduce while backprop "
        "continues below it (default: one Allreduce per step, faster on shared memory)",
    )
    deterministic: bool = option(
        False,
        "the same model to the last bit at any number of ranks: --virtual-shards "
        "gradients added in one fixed order on every rank, one BLAS thread per rank",
    )
    virtual_shards: int = option(
        4,
        "with --deterministic: split each batch into V pieces, spread over the ranks "
        "(default: %(default)s; use at most V ranks)",
        metavar="V",
        bound=AT_LEAST_1,
        fingerprint=True,  # when --deterministic: see fingerprint_value
    )
    label_column: str | None = option(
        None,
        "CSV data: the column holding the class (default: label, y, target, or the last column)",
        metavar="NAME|INDEX",
        fingerprint=True,
    )
    standardize: bool = option(
        False,
        "scale features to mean 0, std 1 with the training split's statistics "
        "(saved with the model, applied by predict)",
        fingerprint=True,
    )
    val_fraction: float = option(
        0.0,
        "hold out this fraction of the training data for validation",
        metavar="F",
        bound=FRACTION,
        fingerprint=True,
    )
    patience: int | None = option(
        None,
        "early stopping: stop after EPOCHS epochs without a better val_loss, "
        "and keep the best weights (needs --val-fraction)",
        metavar="EPOCHS",
        bound=AT_LEAST_1,
    )
    target_loss: float | None = option(
        None,
        "stop once an epoch's training loss is at most LOSS",
        metavar="LOSS",
        bound=ZERO_OR_MORE,
    )
    target: str | None = option(
        None,
        "stop once a metric reaches a target: accuracy>=0.97, test_loss<=0.05, "
        "val_accuracy, val_loss or loss (the training loss); checked at each evaluation",
        metavar="METRIC>=VALUE",
    )
    eval_every: int = option(
        0,
        "also evaluate the test (and validation) data every STEPS steps inside an epoch, "
        "as records with eval: true; 0: at each epoch's end only (default: %(default)s)",
        metavar="STEPS",
        bound=ZERO_OR_MORE,
    )
    max_time: float | None = option(
        None,
        "stop after this much training time (checkpoint and save as usual)",
        metavar="SECONDS",
        bound=POSITIVE_SECONDS,
    )
    verbose: bool = option(
        False, "log from every rank, with details", cli_only=True
    )  # fit: verbose=2
    init_from: str | None = option(
        None,
        "warm start: begin from this saved model's parameters (same network shape); "
        "a new run, unlike --resume",
        metavar="MODEL.npz",
        path="input",
    )
    config_file: str | None = option(
        None,
        "read options from a TOML file (options on the command line win); a run writes its "
        "own beside its outputs",
        metavar="RUN.toml",
        path="input",
        cli_only=True,
        flag="--config",
        in_toml=False,
    )
    progress: str = option(
        "auto",
        "progress within an epoch, on rank 0: a live bar, plain lines (for logs), or none; "
        "auto: a bar on a terminal, else lines (default: %(default)s)",
        choices=PROGRESS_MODES,
    )
    log_every: int = option(
        0,
        "with lines: one line every STEPS steps (default: every 10 s)",
        metavar="STEPS",
        bound=ZERO_OR_MORE,
    )
    tensorboard: str | None = option(
        None,
        "also write each epoch's metrics as TensorBoard scalars to DIR (rank 0; needs "
        "pip install 'distnn[tensorboard]')",
        metavar="DIR",
        path="output folder",
    )
    watchdog: float = option(
        120.0,
        "end the job (exit 77), naming the silent rank, when no step finishes for this "
        "long or 10× the longest gap between steps seen, whichever is more; 0: never "
        "(default: %(default)s)",
        metavar="SECONDS",
        bound=ZERO_OR_MORE,
    )
    trace: str | None = option(
        None,
        "write where each rank's time went (data, compute, allreduce, update, evaluate, "
        "checkpoint) as a Chrome trace-event file for Perfetto or chrome://tracing",
        metavar="FILE.json",
        path="output",
    )
    trace_steps: str | None = option(
        None, "with --trace: trace steps A..B-1 only (bounds the file's size)", metavar="A:B"
    )
    # Not options: how messages name options, and whether fit was given validation_data.
    spelling: str = field(default="cli", compare=False)
    validation_given: bool = field(default=False, compare=False)

    def name(self, key: str) -> str:
        """How this config's interface names option ``key``: ``--batch-size`` or ``batch_size``."""
        return flag_of(key) if self.spelling == "cli" else key

    def layer_activations(self) -> list[str]:
        """σ's name for each of the L layers."""
        n_layers = len(self.hidden) + 1
        return list(self.activations) if self.activations else [self.activation] * n_layers

    def check_values(self) -> None:
        """Raise DistnnError naming the first option out of its declared type, range or
        choices."""
        for f, opt in declared():
            declaring.check_value(TrainConfig, self.name(f.name), getattr(self, f.name), f, opt)

    def validate(self) -> None:
        """Raise DistnnError naming the first option out of its declared type, range or
        choices, then the first broken rule between options."""
        self.check_values()
        name = self.name
        if self.patience is not None and not (self.val_fraction or self.validation_given):
            raise DistnnError(
                f"{name('patience')} needs a validation split: give {name('val_fraction')} too"
                + ("" if self.spelling == "cli" else " or validation_data")
            )
        if self.target is not None:
            try:
                target = parse_target(self.target)
            except DistnnError as e:
                raise DistnnError(f"{name('target')}: {e}") from None
            if target.metric.startswith("val_") and not (
                self.val_fraction or self.validation_given
            ):
                raise DistnnError(
                    f"{name('target')} {target} needs a validation split: give "
                    f"{name('val_fraction')} too"
                    + ("" if self.spelling == "cli" else " or validation_data")
                )
        if self.deterministic and self.overlap:
            raise DistnnError(f"{name('deterministic')} and {name('overlap')} cannot be combined")
        if not self.deterministic and self.virtual_shards != default_of("virtual_shards"):
            raise DistnnError(
                f"{name('virtual_shards')} {self.virtual_shards} has no effect without "
                f"{name('deterministic')}"
            )
        if self.deterministic and self.virtual_shards > self.batch_size:
            raise DistnnError(
                f"{name('virtual_shards')} {self.virtual_shards} is more than "
                f"{name('batch_size')} {self.batch_size}: every batch would leave "
                f"{self.virtual_shards - self.batch_size} shards empty (use at most "
                f"{self.batch_size})"
            )
        if self.lr_scaling == "none" and self.base_batch != default_of("base_batch"):
            raise DistnnError(
                f"{name('base_batch')} {self.base_batch} has no effect without "
                f"{name('lr_scaling')} linear or sqrt"
            )
        if self.trace_steps is not None:
            if not self.trace:
                raise DistnnError(f"{name('trace_steps')} needs {name('trace')} FILE.json")
            try:
                parse_steps(self.trace_steps)
            except ValueError as e:
                raise DistnnError(f"{name('trace_steps')} {e}") from None
        if self.resume and self.init_from:
            raise DistnnError(
                f"{name('init_from')} starts a new run from a model; {name('resume')} continues "
                "a stopped one: give one of them"
            )
        if self.resume and not self.checkpoint_dir:
            raise DistnnError(f"{name('resume')} needs {name('checkpoint_dir')} DIR to resume from")
        if len(self.layer_activations()) != len(self.hidden) + 1:
            raise DistnnError(
                f"{name('activations')} gives {len(self.activations or ())} names for "
                f"{len(self.hidden) + 1} layers (hidden {','.join(map(str, self.hidden))} "
                "plus the output layer)"
            )

    def to_dict(self) -> dict:
        """The options (the run's configuration, as a checkpoint and a metrics file keep it)."""
        return {f.name: getattr(self, f.name) for f, _ in declared()}


# The options by group, as ``--help`` and docs/options.md show them; every declared
# option is in exactly one (tests/test_declaration.py).
GROUPS: dict[str, tuple[str, ...]] = {
    "data": ("dataset", "label_column", "standardize", "val_fraction"),
    "network": ("hidden", "activation", "activations", "loss", "dtype", "init_from"),
    "optimisation": (
        "schedule", "lr", "lr_schedule", "lr_scaling", "base_batch", "batch_size", "seed",
    ),
    "run length and stopping": (
        "epochs", "target", "eval_every", "target_loss", "max_time", "patience",
    ),
    "outputs and logging": (
        "save", "metrics", "tensorboard", "progress", "log_every", "quiet", "verbose",
        "config_file",
    ),
    "checkpoints and faults": (
        "checkpoint_dir", "checkpoint_every", "keep_checkpoints", "resume", "watchdog",
    ),
    "parallel and determinism": ("deterministic", "virtual_shards"),
    "performance": ("overlap", "trace", "trace_steps"),
}  # fmt: skip


def declared() -> Iterator[tuple[dataclasses.Field, Option]]:
    """Every option of a run, in declaration order, with its declaration."""
    for f in dataclasses.fields(TrainConfig):
        if "option" in f.metadata:
            yield f, f.metadata["option"]


def fit_default_of(f: dataclasses.Field, opt: Option) -> object:
    """``fit``'s default for an option: the CLI's, unless declared otherwise."""
    return f.default if opt.fit_default is None else opt.fit_default


def flag_of(key: str) -> str:
    opt = TrainConfig.__dataclass_fields__[key].metadata.get("option")
    return (opt and opt.flag) or "--" + key.replace("_", "-")


def default_of(key: str) -> object:
    return TrainConfig.__dataclass_fields__[key].default


def value_type(f: dataclasses.Field) -> tuple[type, type | None]:
    """The option's type without ``None``: (int, None), or (tuple, int) for a tuple of int."""
    return declaring.value_type(TrainConfig, f)
