"""``python -m distnn.train``: train a network data-parallel on every MPI rank.

    mpirun -n 4 python -m distnn.train              # embedded digits, default network
    python -m distnn.train --dataset data.npz --hidden 128,64 --save model.npz

Setup (options, data, network) runs on every rank; errors found there are printed
once by rank 0 and every rank exits with status 2. During training, an error that
every rank sees at the same step (divergence, replicas out of sync) ends all ranks
cleanly; anything else aborts the whole job, so no rank waits forever.
"""

from __future__ import annotations

import argparse
import sys
import time

from mpi4py import MPI

from distnn import __version__
from distnn.comm import World, check_launch, install_abort_on_error
from distnn.config import TrainConfig
from distnn.data import Dataset, load_dataset
from distnn.errors import CollectiveError, DistnnError
from distnn.lr_schedules import parse_lr_schedule
from distnn.model_io import save_model
from distnn.network import Network
from distnn.progress import MetricsLog, Progress
from distnn.schedules import SCHEDULES, make_schedule
from distnn.threads import blas_name, configure_blas_threads
from distnn.trainer import Trainer


class _Parser(argparse.ArgumentParser):
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
    p = _Parser(
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
    p.add_argument("--version", action="version", version=f"distnn {__version__}")
    return p


def parse_config(argv: list[str] | None, rank: int = 0) -> TrainConfig:
    args = build_parser(rank).parse_args(argv)
    config = TrainConfig(**vars(args))
    config.validate()
    return config


def setup(config: TrainConfig, world: World) -> tuple[Dataset, Network, Trainer]:
    """Everything before the first step; raises DistnnError on bad input."""
    check_launch(world)
    data = load_dataset(config.dataset, seed=config.seed, dtype=config.dtype)
    sizes = [data.n_features, *config.hidden, data.n_outputs]
    if config.loss == "cross-entropy" and not data.is_classification:
        raise DistnnError("--loss cross-entropy needs class labels, but the targets are vectors")
    net = Network(
        sizes, config.layer_activations(), loss=config.loss, seed=config.seed, dtype=config.dtype
    )
    steps_per_epoch = -(-len(data.x) // min(config.batch_size, len(data.x)))
    lr = parse_lr_schedule(config.lr_schedule, config.lr, steps_per_epoch * config.epochs)
    schedule = make_schedule(config.schedule, lr)
    return data, net, Trainer(net, schedule, data, world, config.batch_size, seed=config.seed)


def header(config: TrainConfig, world: World, data: Dataset, net: Network, threads: str) -> str:
    test = f", {len(data.x_test)} test" if data.x_test is not None else ""
    layers = " → ".join(map(str, net.sizes))
    mpi = " ".join(MPI.Get_library_version().split()[:3])  # e.g. "MPICH Version: 5.0.2"
    return (
        f"distnn {__version__} | {mpi} | "
        f"{world.size} rank(s) | BLAS {blas_name()}, {threads}\n"
        f"data {data.name}: {len(data.x)} train{test}, {data.n_features} features | "
        f"network {layers} ({', '.join(net.activation_names)}; {net.loss_fn.name} loss; "
        f"{net.num_params:,} params) | {config.schedule} lr {config.lr} "
        f"({config.lr_schedule}) | batch {config.batch_size} | {config.epochs} epochs"
    )


def run(config: TrainConfig, world: World, data: Dataset, trainer: Trainer) -> dict:
    """The epoch loop; returns the summary of the last epoch."""
    show = world.is_root and not config.quiet
    progress = Progress(config.epochs, config.batch_size, enabled=show)
    if progress.live:
        trainer.on_step = progress.step
    metrics = MetricsLog(config.metrics if world.is_root else None)
    start = time.perf_counter()
    try:
        for epoch in range(1, config.epochs + 1):
            progress.start_epoch(epoch)
            record = trainer.train_epoch().as_record()
            record["elapsed_s"] = time.perf_counter() - start
            metrics.write(record)
            progress.end_epoch(record)
    finally:
        metrics.close()
    if config.save and world.is_root:
        save_model(trainer.net, config.save)
    return record


def summary_line(record: dict, world: World, total_s: float) -> str:
    acc = record.get("accuracy")
    accuracy = f"test accuracy {acc:.2%}" if acc is not None else "test accuracy n/a"
    test_loss = record.get("test_loss")
    test = f", test loss {test_loss:.4f}" if test_loss is not None else ""
    return (
        f"done: {accuracy}, final loss {record['loss']:.4f}{test}, "
        f"{record['samples_per_sec']:,.0f} samples/s on {world.size} rank(s), "
        f"{total_s:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    world = World()
    install_abort_on_error(world)
    start = time.perf_counter()
    error = None
    try:
        config = parse_config(argv, world.rank)
        threads, source = configure_blas_threads(world.local_size())
        data, net, trainer = setup(config, world)
    except DistnnError as e:
        error = str(e)
    error = world.gather_errors(error)
    if error is not None:
        if world.is_root:
            print(f"distnn: error: {error}", file=sys.stderr)
        return DistnnError.exit_code

    if world.is_root and not config.quiet:
        print(
            header(config, world, data, net, f"{threads} thread(s) per rank ({source})"),
            file=sys.stderr,
        )
        for note in data.notes:
            print(f"note: {note}", file=sys.stderr)
    try:
        record = run(config, world, data, trainer)
    except CollectiveError as e:  # raised on every rank at the same step
        if world.is_root:
            print(f"distnn: error: {e}", file=sys.stderr)
        return e.exit_code
    if world.is_root:
        print(summary_line(record, world, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
