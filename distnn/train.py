"""``python -m distnn.train``: train a network data-parallel on every MPI rank.

    mpirun -n 4 python -m distnn.train              # embedded digits, default network
    python -m distnn.train --dataset data.npz --hidden 128,64 --save model.npz

Setup (options, data, network) runs on every rank; errors found there are printed
once by rank 0 and every rank exits with status 2. During training, an error that
every rank sees at the same step (divergence, replicas out of sync) ends all ranks
cleanly; anything else aborts the whole job, so no rank waits forever.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass

from mpi4py import MPI

from distnn import __version__
from distnn.checkpoint import Checkpoint, Checkpointer, list_checkpoints, newest_valid_checkpoint
from distnn.comm import World, check_launch, install_abort_on_error
from distnn.config import TrainConfig
from distnn.data import Dataset, load_dataset
from distnn.deterministic import DeterministicTrainer
from distnn.errors import EXIT_PREEMPTED, CollectiveError, DistnnError, Preempted
from distnn.lr_schedules import parse_lr_schedule
from distnn.model_io import save_model
from distnn.network import Network
from distnn.options import parse_config
from distnn.progress import MetricsLog, Progress
from distnn.schedules import make_schedule
from distnn.threads import blas_name, configure_blas_threads
from distnn.trainer import Trainer


@dataclass
class Run:
    """What setup hands to the training loop."""

    config: TrainConfig
    data: Dataset
    net: Network
    trainer: Trainer
    shape: dict  # what a checkpoint must match to be resumed here
    resume_from: Checkpoint | None = None
    notes: tuple[str, ...] = ()


def setup(config: TrainConfig, world: World) -> Run:
    """Everything before the first step, on every rank; raises DistnnError on bad input.

    Only rank 0 looks for a checkpoint; ``main`` broadcasts what it found.
    """
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
    if config.deterministic:
        trainer = DeterministicTrainer(
            net,
            schedule,
            data,
            world,
            config.batch_size,
            seed=config.seed,
            virtual_shards=config.virtual_shards,
        )
    else:
        trainer = Trainer(
            net, schedule, data, world, config.batch_size, seed=config.seed, overlap=config.overlap
        )
    shape = {
        "sizes": net.sizes,
        "activations": net.activation_names,
        "loss": net.loss_fn.name,
        "schedule": config.schedule,
        "train_samples": len(data.x),
        "num_params": net.num_params,
    }
    run = Run(config, data, net, trainer, shape, notes=data.notes)
    if config.deterministic and world.size > config.virtual_shards:
        run.notes += (
            f"{world.size - config.virtual_shards} rank(s) idle: --deterministic "
            f"splits each batch into {config.virtual_shards} virtual shards; raise "
            "--virtual-shards to use them",
        )
    if config.checkpoint_dir and world.is_root:
        if config.resume:
            run.resume_from, _, skipped = newest_valid_checkpoint(config.checkpoint_dir, shape)
            run.notes += tuple(f"skipped {reason}" for reason in skipped)
        elif list_checkpoints(config.checkpoint_dir):
            raise DistnnError(
                f"{config.checkpoint_dir} already holds checkpoints: pass --resume to continue "
                "that run, or choose another --checkpoint-dir"
            )
    return run


def header(run: Run, world: World, threads: str) -> str:
    config, data, net = run.config, run.data, run.net
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
        + (
            f" | deterministic, {config.virtual_shards} virtual shards"
            if config.deterministic
            else ""
        )
    )


def stop_on_signals(trainer: Trainer) -> None:
    """SIGTERM (Slurm, kill) or SIGINT (Ctrl-C): finish the step, checkpoint, exit 75.

    The request rides in the next step's Allreduce, so all ranks stop after the same
    step. A second signal gets the default action, for a user who cannot wait.
    """

    def request_stop(signum, frame):
        trainer.stop_requested = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


def train(run: Run, world: World) -> dict:
    """The epoch loop, from wherever the run stands; returns the last epoch's record."""
    config, trainer = run.config, run.trainer
    show = world.is_root and not config.quiet
    progress = Progress(config.epochs, config.batch_size, enabled=show)
    if progress.live:
        trainer.on_step.append(progress.step)
    checkpoints = None
    if config.checkpoint_dir:
        checkpoints = Checkpointer(
            config.checkpoint_dir,
            config.checkpoint_every,
            config.keep_checkpoints,
            config.to_dict(),
            run.shape,
            writer=world.is_root,
        )
        trainer.on_step.append(checkpoints.after_step)
    metrics = MetricsLog(
        config.metrics if world.is_root else None, append=run.resume_from is not None
    )
    start, record = time.perf_counter(), None
    try:
        for epoch in range(trainer.epoch + 1, config.epochs + 1):
            progress.start_epoch(epoch)
            record = trainer.train_epoch().as_record()
            record["elapsed_s"] = time.perf_counter() - start
            metrics.write(record)
            progress.end_epoch(record)
            if checkpoints:
                checkpoints.save(trainer)
    except Preempted:
        if checkpoints:
            checkpoints.save(trainer)
        raise
    finally:
        metrics.close()
    if record is None:  # resumed a run that had already finished
        record = final_record(trainer)
    if config.save and world.is_root:
        save_model(trainer.net, config.save)
    return record


def final_record(trainer: Trainer) -> dict:
    data = trainer.data
    loss, _ = trainer.evaluate(data.x, data.y, None)
    record = {"epoch": trainer.epoch, "loss": loss, "samples_per_sec": 0.0}
    if data.x_test is not None:
        record["test_loss"], record["accuracy"] = trainer.evaluate(
            data.x_test, data.y_test, data.labels_test
        )
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
        # Deterministic mode fixes one BLAS thread: a product's bits may depend on it.
        fixed = 1 if config.deterministic else None
        threads, source = configure_blas_threads(world.local_size(), fixed=fixed)
        run = setup(config, world)
    except DistnnError as e:
        error = str(e)
    error = world.gather_errors(error)
    if error is not None:
        if world.is_root:
            print(f"distnn: error: {error}", file=sys.stderr)
        return DistnnError.exit_code

    # Rank 0 read the checkpoint; every rank continues from the same one.
    run.resume_from = world.comm.bcast(run.resume_from) if world.size > 1 else run.resume_from
    if run.resume_from is not None:
        run.trainer.restore(run.resume_from)
    if world.is_root and not config.quiet:
        print(header(run, world, f"{threads} thread(s) per rank ({source})"), file=sys.stderr)
        for note in run.notes:
            print(f"note: {note}", file=sys.stderr)
        if run.resume_from is not None:
            print(
                f"resuming at epoch {run.trainer.epoch + 1}, step {run.trainer.step}",
                file=sys.stderr,
            )
    stop_on_signals(run.trainer)
    try:
        record = train(run, world)
    except Preempted as e:
        if world.is_root:
            where = (
                f"checkpoint in {config.checkpoint_dir}"
                if config.checkpoint_dir
                else ("no --checkpoint-dir, so this run's progress is lost")
            )
            print(
                f"distnn: {e}; {where}; run again with --resume to continue "
                f"(exit {EXIT_PREEMPTED})",
                file=sys.stderr,
            )
        return e.exit_code
    except CollectiveError as e:  # raised on every rank at the same step
        if world.is_root:
            print(f"distnn: error: {e}", file=sys.stderr)
        return e.exit_code
    if world.is_root:
        print(summary_line(record, world, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
