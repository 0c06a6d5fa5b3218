"""``python -m distnn.scaling``: a time-to-accuracy sweep, its CSV, figures and report.

    python -m distnn.scaling --ranks 1,2 --batches 8..512 --lr-scaling none,sqrt \\
        --seeds 3 --target "accuracy>=0.95" --out runs/sweep
    python -m distnn.scaling --plot-only runs/sweep/runs.csv     # re-draw from the CSV

One process per rank count: ``mpiexec -n R`` (``--launcher``) runs this module again as
a worker that trains every cell of R ranks in a loop (:func:`distnn.scaling.sweep`),
appending a row per run to ``OUT/runs.csv``; then ``steps-to-target.png``,
``time-to-target.png`` and ``report.md`` are drawn from that CSV alone. A library
module rather than a script, so the sweep is importable from a notebook and installed
with distnn; ``scripts/scaling.py`` stays the throughput benchmark.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from distnn.cli.options import CliParser
from distnn.errors import DistnnError

THREAD_VARIABLES = ("DISTNN_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


def parser(rank: int = 0) -> CliParser:
    p = CliParser(prog="python -m distnn.scaling", description=__doc__.split("\n\n")[0], rank=rank)
    add = p.add_argument
    add("--ranks", default="1,2", help="rank counts: a list or LO..HI doubling (%(default)s)")
    add("--batches", default="8..512", help="global batches, likewise (default: %(default)s)")
    add("--lr-scaling", default="none,sqrt", help="lr rules to compare (default: %(default)s)")
    add("--seeds", default="3", help="a count (seeds 0..n-1) or a list (default: %(default)s)")
    add("--target", default="accuracy>=0.95", help="as distnn.train's (default: %(default)s)")
    add("--dataset", default="digits", help="as distnn.train's (default: %(default)s)")
    add("--hidden", default="32", help="hidden widths (default: %(default)s)")
    add("--activation", default="sigmoid", help="(default: %(default)s)")
    add("--schedule", default="adam", help="the optimizer (default: %(default)s)")
    add("--lr", type=float, default=0.01, help="the rate at --base-batch (default: %(default)s)")
    add("--base-batch", type=int, default=32, help="(default: %(default)s)")
    add("--epochs", type=int, default=100, help="at most, per run (default: %(default)s)")
    add("--eval-every", type=int, default=1, help="steps between evaluations (default: 1)")
    add(
        "--no-deterministic",
        action="store_true",
        help="the default reducer: faster, but steps then depend on the ranks",
    )
    add("--out", type=Path, default=Path("runs/sweep"), help="folder (default: %(default)s)")
    add("--launcher", default="mpiexec -n {n}", help="(default: %(default)r)")
    add("--threads", type=int, default=1, help="BLAS threads per rank (default: 1)")
    add("--timeout", type=float, default=3600, help="seconds per rank count (default: 3600)")
    add("--no-plot", action="store_true", help="the CSV and report only")
    add("--plot-only", type=Path, metavar="CSV", help="draw the figures and report of CSV")
    add("--plot-dir", type=Path, help="where they go (default: --out, or CSV's folder)")
    add("--worker", action="store_true", help=argparse.SUPPRESS)  # one rank count's process
    return p


def checked(argv: list[str], rank: int = 0):
    """The options, with the grid and target parsed (bad ones: DistnnError)."""
    from distnn.run.stopping import parse_target
    from distnn.scaling.grid import parse_grid

    args = parser(rank).parse_args(argv)
    args.grid = parse_grid(args.ranks, args.batches, args.lr_scaling, args.seeds)
    parse_target(args.target)
    try:
        args.hidden_sizes = tuple(int(h) for h in args.hidden.split(",") if h.strip())
    except ValueError:
        raise DistnnError(f"--hidden {args.hidden!r}: give widths like 32 or 64,32") from None
    for name in ("epochs", "eval_every", "base_batch", "threads"):
        if getattr(args, name) < (0 if name == "threads" else 1):
            raise DistnnError(f"--{name.replace('_', '-')} must be positive")
    if args.plot_only is not None and not args.plot_only.is_file():
        raise DistnnError(f"--plot-only {args.plot_only}: no such file")
    return args


def work(argv: list[str]) -> int:
    """The worker: this rank count's cells, appended to the CSV by rank 0."""
    from distnn.parallel.world import World
    from distnn.scaling.sweep import stderr_say, sweep

    world = World()
    args = checked(argv, world.rank)
    sweep(
        args.grid,
        args.target,
        args.dataset,
        hidden=args.hidden_sizes,
        activation=args.activation,
        epochs=args.epochs,
        eval_every=args.eval_every,
        base_batch=args.base_batch,
        deterministic=not args.no_deterministic,
        out=args.out / "runs.csv",
        world=world,
        say=stderr_say,
        lr=args.lr,
        schedule=args.schedule,
    )
    return 0


def launch(args, ranks: int, argv: list[str]) -> None:
    """One worker process group of ``ranks`` ranks (no launcher for one rank)."""
    command = [sys.executable, "-m", "distnn.scaling", "--worker", *argv, "--ranks", str(ranks)]
    if ranks > 1:
        launcher = shlex.split(args.launcher.format(n=ranks))
        local = Path(sys.executable).with_name(launcher[0])  # the venv's, matching mpi4py
        if "/" not in launcher[0] and local.exists():
            launcher[0] = str(local)
        command = [*launcher, *command]
    env = dict(os.environ)
    if args.threads:
        env.update(dict.fromkeys(THREAD_VARIABLES, str(args.threads)))
    print(f"scaling: {shlex.join(command)}", file=sys.stderr, flush=True)
    try:
        done = subprocess.run(command, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        raise DistnnError(f"{ranks} rank(s) took more than --timeout {args.timeout:g} s") from None
    if done.returncode != 0:
        raise DistnnError(f"the {ranks}-rank sweep failed (exit {done.returncode})")


def draw(csv_path: Path, folder: Path, plot: bool = True) -> None:
    """The report and (with matplotlib) the figures of ``csv_path``, into ``folder``."""
    from distnn.scaling.report import report
    from distnn.scaling.sweep import read_runs

    rows = read_runs(csv_path)
    if not rows:
        raise DistnnError(f"{csv_path}: no runs")
    (folder / "report.md").write_text(report(rows))
    if plot:
        try:
            from distnn.scaling.plots import steps_figure, time_figure
        except ImportError:
            print(
                "scaling: no matplotlib (pip install 'distnn[plot]'): no figures", file=sys.stderr
            )
            return
        steps_figure(rows, folder / "steps-to-target.png")
        time_figure(rows, folder / "time-to-target.png")
    print(f"scaling: wrote {folder}/report.md" + (" and its figures" if plot else ""))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:
        rest = [a for a in argv if a != "--worker"]
        try:
            return work(rest)
        except DistnnError as e:
            print(f"distnn: error: {e}", file=sys.stderr)
            return e.exit_code
    try:
        args = checked(argv)
        if args.plot_only is not None:
            folder = args.plot_dir or args.plot_only.parent
            folder.mkdir(parents=True, exist_ok=True)
            draw(args.plot_only, folder, not args.no_plot)
            return 0
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "runs.csv").unlink(missing_ok=True)
        forwarded = _without(argv, "--ranks")
        for ranks in args.grid.ranks:
            launch(args, ranks, forwarded)
        folder = args.plot_dir or args.out
        folder.mkdir(parents=True, exist_ok=True)
        draw(args.out / "runs.csv", folder, not args.no_plot)
    except DistnnError as e:
        print(f"distnn: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def _without(argv: list[str], flag: str) -> list[str]:
    """``argv`` less ``flag`` and its value (as ``--flag V`` or ``--flag=V``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
