"""``python -m distnn.launch [options] -- <distnn.train options>``: train, and survive.

    python -m distnn.launch --max-ranks 4 -- --epochs 50 --checkpoint-dir ck --deterministic

One supervisor process (not an MPI rank) runs the training as ``mpiexec`` jobs (or
``srun`` ones) with ``--resume``, and restarts it from the newest checkpoint when a rank
dies or freezes, on as many ranks as the free slots allow, growing back when slots
return. The training options are checked here first: bad ones cost one line and
status 2, before any job starts.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from distnn.cli.options import CliParser, parse_config
from distnn.errors import DistnnError
from distnn.io.folder_lock import SHARE_VARIABLE, FolderLock
from distnn.io.safe_read import read_limited
from distnn.parallel.failures import stdout_to_devnull
from distnn.run.outputs import check_no_output_over_an_input, check_outputs_writable
from distnn.supervisor.policy import Limits
from distnn.supervisor.supervisor import HangLimits, Supervisor


def build_parser() -> argparse.ArgumentParser:
    limits, hang = Limits(), HangLimits()
    p = CliParser(
        prog="python -m distnn.launch",
        usage="%(prog)s [options] -- <python -m distnn.train options>",
        description="Run distnn.train under a supervisor that restarts it from its checkpoints "
        "when a rank dies or freezes, shrinking to the free slots and growing back.",
    )
    slurm = os.environ.get("SLURM_NTASKS", "")
    p.add_argument(
        "--min-ranks",
        type=int,
        default=1,
        metavar="N",
        help="fewest ranks to train on; fewer free slots: exit 75 (default: 1)",
    )
    p.add_argument(
        "--max-ranks",
        type=int,
        default=int(slurm) if slurm.isdigit() else None,
        metavar="N",
        help="most ranks (default: $SLURM_NTASKS; needed elsewhere)",
    )
    p.add_argument(
        "--slots-file",
        metavar="FILE",
        help="a file holding the number of slots free now, re-read while training "
        "(default: --max-ranks are always free)",
    )
    p.add_argument(
        "--launcher",
        choices=("mpiexec", "srun"),
        default="mpiexec",
        help="how each attempt starts its ranks (default: mpiexec)",
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        default=limits.max_restarts,
        metavar="N",
        help="restarts allowed within --restart-window (default: %(default)s)",
    )
    p.add_argument(
        "--restart-window",
        type=float,
        default=limits.window_s,
        metavar="S",
        help="seconds (default: %(default)s)",
    )
    p.add_argument(
        "--backoff",
        type=float,
        default=limits.backoff_s,
        metavar="S",
        help="first wait before a restart; doubles, ±50%% jitter (default: %(default)s)",
    )
    p.add_argument(
        "--no-progress-limit",
        type=int,
        default=limits.no_progress,
        metavar="N",
        help="give up after N attempts in a row with no newer checkpoint (default: %(default)s)",
    )
    p.add_argument(
        "--startup-failures",
        type=int,
        default=limits.startup_failures,
        metavar="N",
        help="give up after N attempts in a row that fail before "
        "their first step (default: %(default)s)",
    )
    p.add_argument(
        "--hang-timeout",
        type=float,
        default=hang.floor_s,
        metavar="S",
        help="the least time without a finished step that counts as a hang; the "
        f"limit is {hang.factor:g}× the longest step gap seen, if more "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=hang.startup_s,
        metavar="S",
        help="time from start to the first step (default: %(default)s)",
    )
    return p  # fmt: skip


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    ours, train = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    args = build_parser().parse_args(ours)
    checks = [
        (args.max_ranks is None, "--max-ranks N is needed outside a Slurm allocation"),
        (args.min_ranks < 1, f"--min-ranks must be at least 1, got {args.min_ranks}"),
        (args.max_ranks is not None and args.max_ranks < args.min_ranks,
         f"--max-ranks {args.max_ranks} is below --min-ranks {args.min_ranks}"),
        (args.max_restarts < 0, f"--max-restarts must be 0 or more, got {args.max_restarts}"),
        (not all(x > 0 for x in (args.restart_window, args.hang_timeout, args.startup_timeout)),
         "--restart-window, --hang-timeout and --startup-timeout must be positive"),
        (not args.backoff >= 0, f"--backoff must be 0 or more, got {args.backoff}"),
        (args.no_progress_limit < 1 or args.startup_failures < 1,
         "--no-progress-limit and --startup-failures must be at least 1"),
    ]  # fmt: skip
    for failed, message in checks:
        if failed:
            raise DistnnError(message)
    return args, train


def launcher(kind: str) -> tuple[str, ...]:
    if kind == "srun":
        if shutil.which("srun") is None:
            raise DistnnError("--launcher srun: no srun on PATH (is this a Slurm allocation?)")
        return ("srun", "--mpi=pmi2")
    here = shutil.which("mpiexec", path=str(Path(sys.executable).parent))
    found = here or shutil.which("mpiexec")
    if found is None:
        raise DistnnError("no mpiexec on PATH: pip install 'distnn[mpich]', or --launcher srun")
    return (found,)


def ranks_option(kind: str, n: int) -> list[str]:
    return ["-n", str(n)] if kind == "mpiexec" else [f"--ntasks={n}"]


def read_slots(path: str | None, default: int) -> int:
    """The slots free now: the first number in ``path``, or ``default``; an unreadable file
    counts as no change (the default), so a half-written file does not shrink the job."""
    if path is None:
        return default
    try:  # a regular file only, read without blocking: a FIFO must not stall the watch
        return int(read_limited(path, 4096, "a slots file").split()[0])
    except (DistnnError, OSError, ValueError, IndexError):
        return default


def say(line: str) -> None:
    """A line on stdout; if stdout is closed or full, the supervisor says so once on
    stderr and supervises on (the job's own output goes the same way)."""
    try:
        print(line, flush=True)
    except OSError as e:
        stdout_to_devnull()
        print(f"distnn.launch: stdout {e.strerror or e}: supervising on; events still go to "
              "--metrics", file=sys.stderr)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, train_args = parse(argv)
        config = parse_config(train_args)
        if not config.checkpoint_dir:
            raise DistnnError("distnn.launch needs --checkpoint-dir DIR among the training options")
        # The job's own start-time path checks, here first: the supervisor appends its
        # events to --metrics, and a bad output should cost no attempt.
        check_no_output_over_an_input(config, None, [])
        check_outputs_writable(config)
        command = launcher(args.launcher)
        # One run per folder, across every attempt: the jobs run under this lock.
        lock = FolderLock.take(config.checkpoint_dir, "--checkpoint-dir " + config.checkpoint_dir,
                               "distnn.launch")  # fmt: skip
    except DistnnError as e:
        print(f"distnn: error: {e}", file=sys.stderr)
        return e.exit_code
    os.environ[SHARE_VARIABLE] = lock.token
    supervisor = Supervisor(
        train_args,
        config.checkpoint_dir,
        config.metrics,
        args.min_ranks,
        args.max_ranks,
        config.virtual_shards if config.deterministic else None,
        launcher=lambda n: [*command, *ranks_option(args.launcher, n)],
        slots=lambda: read_slots(args.slots_file, args.max_ranks),
        limits=Limits(
            max_restarts=args.max_restarts, window_s=args.restart_window,
            backoff_s=args.backoff, no_progress=args.no_progress_limit,
            startup_failures=args.startup_failures,
        ),
        hang=HangLimits(floor_s=args.hang_timeout, startup_s=args.startup_timeout),
        say=say,
    )  # fmt: skip
    with lock:
        return supervisor.run()
