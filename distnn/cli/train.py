"""``python -m distnn.train``: train a network data-parallel on every MPI rank.

    mpirun -n 4 python -m distnn.train              # embedded digits, default network
    python -m distnn.train --dataset data.npz --hidden 128,64 --save model.npz

Setup (options, data, network) runs on every rank; errors found there are printed
once by rank 0 and every rank exits with status 2. During training, an error that
every rank sees at the same step (divergence, replicas out of sync) ends all ranks
cleanly; anything else aborts the whole job, so no rank waits forever.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

from mpi4py import MPI

from distnn import __version__
from distnn.cli.options import parse_config
from distnn.config import TrainConfig
from distnn.errors import EXIT_PREEMPTED, CollectiveError, DistnnError, Preempted
from distnn.parallel.threads import blas_name, configure_blas_threads, usable_cores
from distnn.parallel.trainer import Trainer
from distnn.parallel.world import World, install_abort_on_error
from distnn.session_tmp import Run, setup, train

log = logging.getLogger("distnn")


def setup_logging(world: World, verbose: bool) -> None:
    """Rank 0 speaks; with --verbose every rank does, each line prefixed with its rank."""
    handler = logging.StreamHandler(sys.stderr)
    prefix = f"[rank {world.rank}] " if verbose and world.size > 1 else ""
    handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    if verbose:
        log.setLevel(logging.DEBUG)
    else:
        log.setLevel(logging.INFO if world.is_root else logging.WARNING)


def write_config_beside(config: TrainConfig, outputs: list[str | None]) -> None:
    """The resolved configuration as TOML next to each output (model.npz → model.toml)."""
    for path in {os.path.splitext(p)[0] + ".toml" for p in outputs if p}:
        with open(path, "w", encoding="utf-8") as f:
            f.write(config.to_toml())


def header(run: Run, world: World, threads: str) -> str:
    config, data, net = run.config, run.data, run.net
    test = f", {len(data.x_test)} test" if data.x_test is not None else ""
    mpi = " ".join(MPI.Get_library_version().split()[:3])  # e.g. "MPICH Version: 5.0.2"
    return (
        f"distnn {__version__} | {mpi} | "
        f"{world.size} rank(s) | BLAS {blas_name()}, {threads}\n"
        f"data {data.name}: {len(data.x)} train{test}, {data.n_features} features | "
        f"network {net.describe()} | {config.schedule} lr {config.lr} "
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
    step. A second Ctrl-C stops at once, for a user who cannot wait; a repeated SIGTERM
    does not, because on `scancel` each rank gets one from Slurm and one from mpiexec.
    """

    def request_stop(signum, frame):
        trainer.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)


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
        ranks_on_node = world.local_size()
        threads, source = configure_blas_threads(ranks_on_node, fixed=fixed)
        run = setup(config, world)
    except DistnnError as e:
        error = str(e)
    if world.setup_failed(error):
        return DistnnError.exit_code

    # Rank 0 read the checkpoint; every rank continues from the same one.
    run.resume_from = world.comm.bcast(run.resume_from) if world.size > 1 else run.resume_from
    if run.resume_from is not None:
        run.trainer.restore(run.resume_from)
    setup_logging(world, config.verbose)
    if config.quiet and not config.verbose:
        log.setLevel(logging.WARNING)
    log.info(header(run, world, f"{threads} thread(s) per rank ({source})"))
    if ranks_on_node > usable_cores():
        log.info(
            f"note: {ranks_on_node} ranks share {usable_cores()} cores on this node "
            "(oversubscribed): each step waits for ranks taking turns on a core; "
            "one rank per core is faster"
        )
    for note in run.notes:
        log.info(f"note: {note}")
    if run.resume_from is not None:
        log.info(f"resuming at epoch {run.trainer.epoch + 1}, step {run.trainer.step}")
    log.debug(f"rank {world.rank}: {len(run.trainer.data.x)} training rows, pid {os.getpid()}")
    if world.is_root:
        write_config_beside(config, [config.metrics])
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
        write_config_beside(config, [config.save, config.metrics])
        if run.stop_reason:
            log.info(f"stopped early: {run.stop_reason}")
        print(summary_line(record, world, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
