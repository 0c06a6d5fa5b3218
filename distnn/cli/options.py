"""The command-line options of ``python -m distnn.train``, parsed into a TrainConfig.

argparse's own error exit would print the same message from every rank; this parser
raises DistnnError instead, which the CLI reports once, and prints help on rank 0 only.
"""

from __future__ import annotations

import argparse
import sys

from distnn import __version__
from distnn.config import TrainConfig, read_toml
from distnn.engine.schedules import SCHEDULES
from distnn.errors import DistnnError
from distnn.progress import LINE_SECONDS, PROGRESS_MODES


class CliParser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, and prints help on rank 0 only."""

    def __init__(self, *args, rank: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rank = rank

    def error(self, message: str):
        raise DistnnError(message)

    def _print_message(self, message, file=None):
        if self.rank == 0:
            super()._print_message(message, file)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        message = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def build_parser(rank: int = 0) -> argparse.ArgumentParser:
    d = TrainConfig()
    p = CliParser(
        prog="python -m distnn.train",
        rank=rank,
        description=(
            "Train a feed-forward network data-parallel over MPI. Run under "
            "'mpirun -n N' for N ranks, or alone for one."
        ),
    )
    p.add_argument(
        "--dataset",
        default=d.dataset,
        help="digits (embedded, default) | "
        "synthetic:SAMPLES:FEATURES:CLASSES | path to an .npz with x, y "
        "[, x_test, y_test]",
    )
    p.add_argument(
        "--hidden",
        type=_int_list,
        default=d.hidden,
        metavar="N,N,...",
        help="hidden layer widths (default: %(default)s); '' for none",
    )
    p.add_argument(
        "--activation",
        default=d.activation,
        help="σ of every layer: sigmoid, tanh, relu, leaky_relu, identity, softplus",
    )
    p.add_argument(
        "--activations",
        type=_name_list,
        default=None,
        metavar="A,A,...",
        help="σ per layer (hidden layers then output); overrides --activation",
    )
    p.add_argument(
        "--loss", default=d.loss, help="squared (default) | cross-entropy (softmax output)"
    )
    p.add_argument(
        "--schedule",
        default=d.schedule,
        help=f"{' | '.join(SCHEDULES)} | package.module:ClassName (default: %(default)s)",
    )
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate (default: %(default)s)")
    p.add_argument(
        "--lr-schedule",
        default=d.lr_schedule,
        help="constant | step:EVERY:GAMMA | "
        "exp:GAMMA | inverse:K | cosine[:MIN_LR], optionally +warmup:N",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="global batch size, split across ranks (default: %(default)s)",
    )
    p.add_argument("--epochs", type=int, default=d.epochs, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    p.add_argument("--dtype", default=d.dtype, help="float32 (default) | float64")
    p.add_argument("--save", metavar="MODEL.npz", help="write the trained model here")
    p.add_argument("--metrics", metavar="FILE.jsonl", help="write one JSON line per epoch")
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    p.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default=d.progress,
        help="progress within an epoch, on rank 0: a live bar, plain lines (for logs), "
        "or none; auto: a bar on a terminal, else lines (default: %(default)s)",
    )
    p.add_argument(
        "--log-every",
        type=int,
        default=d.log_every,
        metavar="STEPS",
        help=f"with lines: one line every STEPS steps (default: every {LINE_SECONDS:g} s)",
    )
    p.add_argument(
        "--trace",
        metavar="FILE.json",
        help="write where each rank's time went (data, compute, allreduce, update, evaluate, "
        "checkpoint) as a Chrome trace-event file for Perfetto or chrome://tracing",
    )
    p.add_argument(
        "--trace-steps",
        metavar="A:B",
        help="with --trace: trace steps A..B-1 only (bounds the file's size)",
    )
    p.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="also write each epoch's metrics as TensorBoard scalars to DIR (rank 0; "
        "needs pip install 'distnn[tensorboard]')",
    )
    p.add_argument("--verbose", action="store_true", help="log from every rank, with details")
    p.add_argument(
        "--config",
        metavar="RUN.toml",
        help="read options from a TOML file "
        "(options on the command line win); a run writes its own beside its outputs",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration as TOML and exit",
    )
    p.add_argument(
        "--label-column",
        metavar="NAME|INDEX",
        help="CSV data: the column holding the class (default: label, y, target, "
        "or the last column)",
    )
    p.add_argument(
        "--standardize",
        action="store_true",
        help="scale features to mean 0, std 1 with the training split's statistics "
        "(saved with the model, applied by predict)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        metavar="F",
        help="hold out this fraction of the training data for validation",
    )
    p.add_argument(
        "--patience",
        type=int,
        metavar="EPOCHS",
        help="early stopping: stop after EPOCHS epochs without a better val_loss, "
        "and keep the best weights (needs --val-fraction)",
    )
    p.add_argument(
        "--target-loss",
        type=float,
        metavar="LOSS",
        help="stop once an epoch's training loss is at most LOSS",
    )
    p.add_argument(
        "--max-time",
        type=float,
        metavar="SECONDS",
        help="stop after this much training time (checkpoint and save as usual)",
    )
    p.add_argument("--checkpoint-dir", metavar="DIR", help="write checkpoints here (rank 0)")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=d.checkpoint_every,
        metavar="STEPS",
        help="also checkpoint every STEPS updates (default: only at epoch ends, the end, "
        "and on SIGTERM/SIGINT)",
    )
    p.add_argument(
        "--keep-checkpoints",
        type=int,
        default=d.keep_checkpoints,
        metavar="K",
        help="keep the newest K checkpoints (default: %(default)s)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest valid checkpoint in --checkpoint-dir (start afresh "
        "if it holds none)",
    )
    p.add_argument(
        "--overlap",
        action="store_true",
        help="sum each layer's gradient with its own non-blocking Iallreduce while backprop "
        "continues below it (default: one Allreduce per step, faster on shared memory)",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="the same model to the last bit at any number of ranks: --virtual-shards "
        "gradients added in one fixed order on every rank, one BLAS thread per rank",
    )
    p.add_argument(
        "--virtual-shards",
        type=int,
        default=d.virtual_shards,
        metavar="V",
        help="with --deterministic: split each batch into V pieces, spread over the ranks "
        "(default: %(default)s; use at most V ranks)",
    )
    p.add_argument(
        "--init-from",
        metavar="MODEL.npz",
        help="warm start: begin from this saved model's parameters (same network shape); "
        "a new run, unlike --resume",
    )
    p.add_argument("--version", action="version", version=f"distnn {__version__}")
    return p


def toml_to_argv(options: dict) -> list[str]:
    """Options read from TOML as the command-line words that would give them."""
    argv = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif isinstance(value, tuple):
            argv += [flag, ",".join(map(str, value))]
        else:
            argv += [flag, str(value)]
    return argv


def parse_config(argv: list[str] | None, rank: int = 0) -> TrainConfig:
    """The run's configuration: defaults, then ``--config`` TOML, then the command line.

    TOML values pass through the same argparse conversions as typed options, so a bad
    value in a file gets the same one-line error as on the command line.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    first = CliParser(add_help=False, rank=rank)
    first.add_argument("--config")
    config_file = first.parse_known_args(argv)[0].config
    prefix = toml_to_argv(read_toml(config_file)) if config_file else []
    try:
        build_parser(rank).parse_args(prefix)  # so a bad value names its file
    except DistnnError as e:
        raise DistnnError(f"{config_file}: {e}") from None
    args = vars(build_parser(rank).parse_args(prefix + argv))
    args["config_file"] = args.pop("config")
    print_config = args.pop("print_config")
    config = TrainConfig(**args)
    config.validate()
    if print_config:
        if rank == 0:
            print(config.to_toml(), end="")
        raise SystemExit(0)
    return config
