"""Strong and weak scaling of distnn, measured, then projected to thousands of ranks.

Runs the real CLI, ``mpiexec -n N python -m distnn.train …``, at N = 1, 2, 4, … ranks:

* strong scaling: the global batch B is fixed; each of N ranks gets a shard of B/N;
* weak scaling: each rank gets B samples; the global batch is N·B.

Throughput X(N) is the samples/s of ``--metrics``: the median of the epochs after the
first (warm-up), then the median over repeats. Speed-up S(N) = X(N) / X(1), efficiency
E(N) = S(N) / N; ideal is S = N, E = 1 (for weak scaling S is the scaled speed-up).

Then an Allreduce sweep (this script under mpiexec with --allreduce-sweep) gives the
latency α and per-byte cost β that perfmodel.py projects with.

    python scripts/scaling.py                                # about a minute on 2 cores
    python scripts/scaling.py --quick                        # seconds: a tiny net
    python scripts/scaling.py --model-only --alpha 1.5 --beta 10   # your cluster's α, 1/β
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perfmodel

from distnn.io.metrics_log import epoch_records

THREAD_VARIABLES = ("DISTNN_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
DEFAULTS = dict(repeats=3, batch=256, hidden="512,512", features=784, steps=64, epochs=4)
DEFAULTS |= dict(sweep_ranks="2,4", max_bytes=16 << 20)
QUICK = dict(repeats=1, batch=64, hidden="32", features=64, steps=64, epochs=3, ranks="1,2")
QUICK |= dict(sweep_ranks="2", max_bytes=64 << 10)


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options, with the defaults (or --quick's) filled in and the rank lists parsed."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = p.add_argument
    add("--quick", action="store_true", help="a tiny net, 1 repeat, 1–2 ranks: seconds")
    add("--ranks", help="rank counts to run (default: 1,2,4 and powers of 2 up to the cores)")
    add("--repeats", type=int, help="runs per rank count; medians are reported (default: 3)")
    add("--batch", type=int, help="strong: global batch; weak: batch per rank (default: 256)")
    add("--hidden", help="hidden widths of the measured net (default: 512,512)")
    add("--features", type=int, help="input width (default: 784); 10 classes")
    add("--steps", type=int, help="steps per epoch (default: 64): data = steps × global batch")
    add("--epochs", type=int, help="epochs per run, the first one warm-up (default: 4)")
    add("--train-args", default="--schedule sgd", help="distnn.train flags, default %(default)r")
    add("--threads", type=int, default=1, help="BLAS threads per rank (default: 1; 0: distnn's)")
    add("--launcher", default="mpiexec -n {n}", help="or e.g. 'srun --mpi=pmi2 -n {n}'")
    add("--cores", type=int, help="cores the ranks may use (default: this host's)")
    add("--sweep-ranks", help="rank counts of the Allreduce sweep (default: 2,4)")
    add("--max-bytes", type=int, help="largest Allreduce of the sweep (default: 16 MiB)")
    add("--timeout", type=float, default=600, help="seconds one job may take (default: 600)")
    add("--out-dir", type=Path, default="runs/scaling", help="CSVs (default: runs/scaling)")
    add("--plot-dir", type=Path, help="PNGs (default: --out-dir)")
    model = p.add_argument_group("performance model").add_argument
    model("--model-only", action="store_true", help="no runs: use --out-dir's CSVs and/or these")
    model("--alpha", type=float, help="latency α in µs (default: fitted)")
    model("--beta", type=float, help="bandwidth 1/β in GB/s (default: fitted)")
    model("--rate", type=float, help="samples/s of one rank (default: measured)")
    model("--params", type=int, help="the net to project (default: the measured one)")
    model("--max-ranks", type=int, default=4096, help="project up to this many (default: 4096)")
    add("--allreduce-sweep", metavar="JSON", help=argparse.SUPPRESS)  # the sweep's worker
    args = p.parse_args(argv)
    for key, value in {**DEFAULTS, **(QUICK if args.quick else {})}.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.cores = args.cores or usable_cores()
    if args.ranks is None:
        args.ranks = ",".join(str(2**k) for k in range(16) if 2**k <= max(4, args.cores))
    args.ranks = sorted({1, *map(int, args.ranks.split(","))})
    args.sweep_ranks = sorted(map(int, args.sweep_ranks.split(",")))
    args.plot_dir = args.plot_dir or args.out_dir
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the first one is warm-up")
    return args


def launch(args: argparse.Namespace, ranks: int, command: list[str]) -> None:
    """Run ``command`` on ``ranks`` ranks with the launcher, fixed BLAS threads, a timeout."""
    launcher = shlex.split(args.launcher.format(n=ranks))
    local = Path(sys.executable).with_name(launcher[0])  # the venv's mpiexec matches its mpi4py
    if "/" not in launcher[0] and local.exists():
        launcher[0] = str(local)
    env = dict(os.environ)
    if args.threads > 0:
        env.update(dict.fromkeys(THREAD_VARIABLES, str(args.threads)))
    full = [*launcher, sys.executable, *command]
    try:
        done = subprocess.run(full, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"scaling: {shlex.join(full)} took more than {args.timeout:g} s")
    if done.returncode != 0:
        sys.exit(f"scaling: {shlex.join(full)} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def train_rate(args: argparse.Namespace, ranks: int, global_batch: int, work: Path) -> float:
    """One training job's samples/s: the median of its epochs after the first."""
    metrics = work / f"metrics-{ranks}-{global_batch}.jsonl"
    metrics.unlink(missing_ok=True)
    dataset = f"synthetic:{args.steps * global_batch}:{args.features}:10"
    flags = f"--dataset {dataset} --hidden {args.hidden} --batch-size {global_batch} --quiet"
    flags += f" --epochs {args.epochs} --metrics {shlex.quote(str(metrics))} {args.train_args}"
    launch(args, ranks, ["-m", "distnn.train", *shlex.split(flags)])
    epochs = [r["samples_per_sec"] for r in epoch_records(str(metrics))]  # headers skipped
    return statistics.median(epochs[1:])


def measure_scaling(args: argparse.Namespace, work: Path) -> list[dict]:
    """Median samples/s, speed-up and efficiency per (mode, ranks); 1 rank is run once for both.

    Repeats are interleaved (every job once, then again), so drift on a shared host
    affects every rank count alike.
    """
    most = args.steps * args.batch * args.ranks[-1]  # samples of the largest weak run
    print(
        f"scaling: ranks {args.ranks} on {args.cores} cores (load {os.getloadavg()[0]:.1f}), "
        f"{args.threads} BLAS thread(s) per rank, net {args.features},{args.hidden},10, "
        f"batch {args.batch}; data sets up to {most * args.features * 4e-6:,.0f} MB per rank"
    )
    batches = {"strong": lambda n: args.batch, "weak": lambda n: n * args.batch}
    jobs = sorted({(n, batches[mode](n)) for mode in batches for n in args.ranks})
    rates: dict[tuple[int, int], list[float]] = {job: [] for job in jobs}
    for repeat in range(1, args.repeats + 1):
        for n, g in jobs:
            rates[(n, g)].append(train_rate(args, n, g, work))
            print(f"  {repeat}/{args.repeats}: {n} rank(s), batch {g}: {rates[(n, g)][-1]:,.0f}/s")
    params = perfmodel.param_count([args.features, *map(int, args.hidden.split(",")), 10])
    base = statistics.median(rates[(1, args.batch)])
    rows = []
    for mode, batch in batches.items():
        for n in args.ranks:
            runs = rates[(n, batch(n))]
            rate = statistics.median(runs)
            row = {"mode": mode, "ranks": n, "oversubscribed": n > args.cores}
            row |= {"global_batch": batch(n), "batch_per_rank": batch(n) / n, "params": params}
            row |= {"samples_per_sec": rate, "min_samples_per_sec": min(runs)}
            row |= {"max_samples_per_sec": max(runs), "step_ms": 1e3 * batch(n) / rate}
            row |= {"speedup": rate / base, "ideal_speedup": n, "efficiency": rate / base / n}
            rows.append(row | {"repeats": len(runs)})
    return rows


def measure_allreduce(args: argparse.Namespace, work: Path) -> list[dict]:
    """The Allreduce sweep at each of --sweep-ranks: rows of (ranks, bytes, seconds)."""
    rows = []
    for n in args.sweep_ranks:
        out = work / f"allreduce-{n}.json"
        launch(args, n, [__file__, "--allreduce-sweep", str(out), f"--max-bytes={args.max_bytes}"])
        row = {"ranks": n, "oversubscribed": n > args.cores}
        rows += [row | {"bytes": b, "seconds": t} for b, t in json.loads(out.read_text())]
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows of one kind (dicts with the same keys) as a CSV with a header."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    """The rows of a CSV written by write_csv, with numbers and booleans; [] if there's none."""
    if not path.exists():
        return []

    def value(text: str) -> object:
        try:
            return json.loads(text.lower())  # 3, 2.5, 1e-05, true, false
        except json.JSONDecodeError:
            return text  # strong, weak

    with path.open() as f:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def print_scaling(rows: list[dict], cores: int) -> None:
    """The measured table: medians over repeats, their spread, speed-up and efficiency."""
    head = ("mode", "ranks", "global batch", "samples/s (min–max)", "speed-up", "efficiency")
    print("{:<7}{:>6}{:>13}{:>29}{:>10}{:>11}".format(*head))
    for r in rows:
        spread = f"({r['min_samples_per_sec']:,.0f}–{r['max_samples_per_sec']:,.0f})"
        print(
            f"{r['mode']:<7}{r['ranks']:>5}{'*' if r['oversubscribed'] else ' '}"
            f"{r['global_batch']:>13}{r['samples_per_sec']:>11,.0f} {spread:>17}"
            f"{r['speedup']:>10.2f}{r['efficiency']:>11.1%}"
        )
    if any(r["oversubscribed"] for r in rows):
        print(f"* oversubscribed: more ranks than the {cores} cores")


def plot_scaling(rows: list[dict], cores: int, path: Path) -> None:
    """Speed-up and efficiency against ranks, strong and weak, with the ideal; ranks past
    the cores (oversubscribed) shaded."""
    if (plt := perfmodel.pyplot()) is None:
        return
    fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    ranks = sorted({r["ranks"] for r in rows})
    for mode, color in (("strong", "C0"), ("weak", "C1")):
        mine = [r for r in rows if r["mode"] == mode]
        kind = "global batch" if mode == "strong" else "batch per rank"
        label = f"{mode}, {kind} {mine[0]['global_batch']}"
        for ax, key in ((ax_s, "speedup"), (ax_e, "efficiency")):
            ax.plot(ranks, [r[key] for r in mine], "o-", color=color, label=label)
    ax_s.plot(ranks, ranks, "k--", lw=1, label="ideal")
    ax_e.axhline(1, color="k", ls="--", lw=1, label="ideal")
    ax_s.set(ylabel="speed-up X(N) / X(1)", title="distnn scaling (median of repeats)")
    ax_e.set(ylabel="efficiency speed-up / N", ylim=(0, 1.1), title="parallel efficiency")
    for ax in (ax_s, ax_e):
        if ranks[-1] > cores:
            over = f"oversubscribed (> {cores} cores)"
            ax.axvspan(cores * 1.2, ranks[-1] * 1.2, color="0.9", label=over)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="ranks N", xticks=ranks, xticklabels=[str(n) for n in ranks])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"plot: {path}")


def fit_network(sweep: list[dict]) -> tuple[float, float]:
    """Print α, β fitted at each sweep's rank count; return the fit over the sweeps that had
    a core per rank (or over all of them, if none had)."""
    for n in sorted({r["ranks"] for r in sweep}):
        rows = [r for r in sweep if r["ranks"] == n]
        fit = perfmodel.fit_alpha_beta((r["bytes"], n, r["seconds"]) for r in rows)
        tag = " (oversubscribed)" if rows[0]["oversubscribed"] else ""
        print(f"Allreduce fit at {n} ranks{tag}: {perfmodel.describe_network(*fit)}")
    used = [r for r in sweep if not r["oversubscribed"]] or sweep
    return perfmodel.fit_alpha_beta((r["bytes"], r["ranks"], r["seconds"]) for r in used)


def model(args: argparse.Namespace, scaling: list[dict], sweep: list[dict]) -> None:
    """Fit (or take) α, β and r; print, write and plot the projection to --max-ranks."""
    if (args.alpha is None or args.beta is None) and not sweep:
        sys.exit("scaling: no Allreduce sweep to fit: measure one, or pass --alpha and --beta")
    alpha, beta = fit_network(sweep) if sweep else (0.0, 0.0)
    alpha = alpha if args.alpha is None else args.alpha * 1e-6
    beta = beta if args.beta is None else 1 / (args.beta * 1e9)
    base = next((r for r in scaling if r["mode"] == "strong" and r["ranks"] == 1), None)
    if base is None and (args.rate is None or args.params is None):
        sys.exit("scaling: nothing measured at 1 rank: measure, or pass --rate and --params")
    params = args.params or base["params"]
    rate = args.rate or base["samples_per_sec"] * base["params"] / params  # r ∝ 1 / params
    ranks = [2**k for k in range(args.max_ranks.bit_length()) if 2**k <= args.max_ranks]
    steps = perfmodel.project(
        ranks, params=params, batch=args.batch, rate=rate, alpha=alpha, beta=beta
    )
    print(
        f"\nprojection: {params:,} params ({4 * params / 1e6:.2f} MB gradient), batch "
        f"{args.batch}, r = {rate:,.0f} samples/s per rank, "
        f"{perfmodel.describe_network(alpha, beta)}"
    )
    print(perfmodel.format_table(steps))
    write_csv(args.out_dir / "projection.csv", [asdict(s) for s in steps])
    same = base is not None and params == base["params"] and args.batch == base["global_batch"]
    perfmodel.plot_projection(
        steps, scaling if same else [], sweep, (alpha, beta), args.plot_dir / "scaling-model.png"
    )


def main(argv: list[str] | None = None) -> None:
    """Measure (unless --model-only), then model; or be one rank of the Allreduce sweep."""
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows as it happens, also in a pipe
    if args.allreduce_sweep:  # a worker of the sweep, under mpiexec
        results = perfmodel.allreduce_sweep(perfmodel.message_sizes(args.max_bytes))
        if results is not None:
            Path(args.allreduce_sweep).write_text(json.dumps(results))
        return
    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.plot_dir.mkdir(parents=True, exist_ok=True)
    if args.model_only:
        scaling = read_csv(args.out_dir / "scaling.csv")
        sweep = read_csv(args.out_dir / "allreduce.csv")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            scaling = measure_scaling(args, Path(tmp))
            sweep = measure_allreduce(args, Path(tmp))
        write_csv(args.out_dir / "scaling.csv", scaling)
        write_csv(args.out_dir / "allreduce.csv", sweep)
        plot_scaling(scaling, args.cores, args.plot_dir / "scaling.png")
    if scaling:
        print_scaling(scaling, args.cores)
    model(args, scaling, sweep)
    names = "projection" if args.model_only else "{scaling,allreduce,projection}"
    print(f"written: {args.out_dir}/{names}.csv")


if __name__ == "__main__":
    main()
