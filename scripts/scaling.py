"""Strong and weak scaling of distnn, measured, then projected to thousands of ranks.

Runs the real CLI, ``mpiexec -n N python -m distnn.train …``, at N = 1, 2, 4, … ranks:

* strong scaling: the global batch B is fixed; each of N ranks gets a shard of B/N;
* weak scaling: each rank gets B samples; the global batch is N·B.

Throughput X(N) is the samples/s of ``--metrics``: the median of the epochs after the
first (warm-up), then the median over repeats. Speed-up S(N) = X(N) / X(1), efficiency
E(N) = S(N) / N; ideal is S = N, E = 1 (for weak scaling S is the scaled speed-up).

Every measured point is a median over n ≥ 3 repeats with a bootstrap 95% interval, and
every run's phase split (data, compute, wait, transfer, update per step) and the load at its
start and end are kept (runs.csv). Then an Allreduce sweep (this script under mpiexec with
--allreduce-sweep, repeated while it is not monotone) gives each rank count its own latency
α and per-byte cost β, and the 1-rank runs the compute model α_c + β_c·b; each measured
point is predicted from them, a miss flagged, and the projection to thousands of ranks
drawn with its band and labelled validated or unvalidated (scaling_check.py). The
throughput workload is synthetic data the network cannot learn: it measures speed only.

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
from itertools import pairwise
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perfmodel
import scaling_fit
from scaling_check import table
from scaling_model import model, write_report
from scaling_plots import plot_scaling

from distnn.io.metrics_log import epoch_records
from distnn.run import provenance

THREAD_VARIABLES = ("DISTNN_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
PHASES = ("data_s", "compute_s", "wait_s", "transfer_s", "update_s")
DEFAULTS = dict(repeats=3, batch=256, hidden="512,512", features=784, steps=64, epochs=4)
DEFAULTS |= dict(sweep_ranks="2,4", max_bytes=16 << 20)
QUICK = dict(repeats=3, batch=64, hidden="32", features=64, steps=64, epochs=3, ranks="1,2")
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
    add("--quick", action="store_true", help="a tiny net, 3 repeats, 1–2 ranks: a minute")
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
    add("--sweep-tries", type=int, default=3, help="sweeps per rank count while not monotone (3)")
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
    if args.repeats < 3 and not args.model_only:
        p.error("--repeats must be at least 3: every point is a median with an interval")
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


def train_run(args: argparse.Namespace, ranks: int, global_batch: int, work: Path) -> dict:
    """One training job: its samples/s and per-step phase split (medians of the epochs
    after the first, the warm-up), and the load average at its start and end."""
    metrics = work / f"metrics-{ranks}-{global_batch}.jsonl"
    metrics.unlink(missing_ok=True)
    dataset = f"synthetic:{args.steps * global_batch}:{args.features}:10"
    flags = f"--dataset {dataset} --hidden {args.hidden} --batch-size {global_batch} --quiet"
    flags += f" --epochs {args.epochs} --metrics {shlex.quote(str(metrics))} {args.train_args}"
    row = {"ranks": ranks, "global_batch": global_batch, "shard": -(-global_batch // ranks)}
    row |= {"run_start_load": provenance.load_average()}
    launch(args, ranks, ["-m", "distnn.train", *shlex.split(flags)])
    records = epoch_records(str(metrics))  # headers skipped
    steps = [b["step"] - a["step"] for a, b in pairwise(records)]
    later = records[1:]
    row["samples_per_sec"] = statistics.median(r["samples_per_sec"] for r in later)
    row["step_s"] = global_batch / row["samples_per_sec"]
    for phase in PHASES:  # seconds per step, rank 0's (wait + transfer = its Allreduce)
        row[phase] = statistics.median(
            r.get(phase, 0.0) / k for r, k in zip(later, steps, strict=True)
        )
    return row | {"run_end_load": provenance.load_average(), "oversubscribed": ranks > args.cores}


def jobs_of(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(ranks, global batch) of every job: strong and weak at each rank count, and one rank
    at each strong shard (and B/2), which the compute fit t = α_c + β_c·b needs."""
    jobs = {(n, args.batch) for n in args.ranks} | {(n, n * args.batch) for n in args.ranks}
    shards = {-(-args.batch // n) for n in args.ranks} | {max(1, args.batch // 2)}
    return sorted(jobs | {(1, b) for b in shards})


def measure_runs(args: argparse.Namespace, work: Path) -> list[dict]:
    """Every job --repeats times, interleaved (every job once, then again), so drift on a
    shared host affects every rank count alike: one row per run."""
    most = args.steps * args.batch * args.ranks[-1]  # samples of the largest weak run
    print(
        f"scaling: ranks {args.ranks} on {args.cores} cores (load {os.getloadavg()[0]:.1f}), "
        f"{args.threads} BLAS thread(s) per rank, net {args.features},{args.hidden},10, "
        f"batch {args.batch}; data sets up to {most * args.features * 4e-6:,.0f} MB per rank"
    )
    runs = []
    for repeat in range(1, args.repeats + 1):
        for n, g in jobs_of(args):
            runs.append(train_run(args, n, g, work) | {"repeat": repeat})
            print(f"  {repeat}/{args.repeats}: {n} rank(s), batch {g}: "
                  f"{runs[-1]['samples_per_sec']:,.0f}/s")  # fmt: skip
    return runs


def summarize(args: argparse.Namespace, runs: list[dict]) -> list[dict]:
    """Per (mode, ranks): the median samples/s over n repeats with its bootstrap 95%
    interval, and the speed-up and efficiency (both medians resampled) with theirs."""
    params = perfmodel.param_count([args.features, *map(int, args.hidden.split(",")), 10])
    rates = {}
    for r in runs:
        rates.setdefault((r["ranks"], r["global_batch"]), []).append(r["samples_per_sec"])
    base = rates[(1, args.batch)]
    rows = []
    for mode, batch in {"strong": lambda n: args.batch, "weak": lambda n: n * args.batch}.items():
        for n in args.ranks:
            mine = rates[(n, batch(n))]
            row = {"mode": mode, "ranks": n, "oversubscribed": n > args.cores, "n": len(mine)}
            row |= {"global_batch": batch(n), "batch_per_rank": batch(n) / n, "params": params}
            x, x_low, x_high = scaling_fit.median_interval(mine)
            s, s_low, s_high = scaling_fit.ratio_interval(mine, base)
            row |= {"samples_per_sec": x, "samples_per_sec_low": x_low}
            row |= {"samples_per_sec_high": x_high, "step_ms": 1e3 * batch(n) / x}
            row |= {"speedup": s, "speedup_low": s_low, "speedup_high": s_high}
            row |= {"efficiency": s / n, "efficiency_low": s_low / n}
            rows.append(row | {"efficiency_high": s_high / n, "ideal_speedup": n})
    return rows


def measure_allreduce(args: argparse.Namespace, work: Path) -> list[dict]:
    """The Allreduce sweep at each of --sweep-ranks, repeated (up to --sweep-tries) while
    it is not monotone in the message size: rows of (ranks, try, bytes, seconds)."""
    rows = []
    for n in args.sweep_ranks:
        out = work / f"allreduce-{n}.json"
        for attempt in range(1, args.sweep_tries + 1):
            launch(
                args, n, [__file__, "--allreduce-sweep", str(out), f"--max-bytes={args.max_bytes}"]
            )
            sweep = json.loads(out.read_text())
            row = {"ranks": n, "oversubscribed": n > args.cores, "try": attempt}
            rows += [row | {"bytes": b, "seconds": t} for b, t in sweep]
            if not (problem := scaling_fit.monotone_problem(sweep, n)):
                break
            print(f"  {problem}: try {attempt} of {args.sweep_tries}")
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
    info = provenance.machine() | provenance.moment("start_")
    if args.model_only:
        scaling, sweep, runs = (
            read_csv(args.out_dir / f"{n}.csv") for n in ("scaling", "allreduce", "runs")
        )
    else:
        warn(args, info["start_load"])
        with tempfile.TemporaryDirectory() as tmp:
            runs = measure_runs(args, Path(tmp))
            sweep = measure_allreduce(args, Path(tmp))
        scaling = summarize(args, runs)
        info |= provenance.moment("end_")
        warn(args, info["end_load"])
        write_csv(args.out_dir / "runs.csv", [r | info for r in runs])
        write_csv(args.out_dir / "allreduce.csv", [r | info for r in sweep])
    found = model(args, scaling, sweep, runs)
    if scaling:
        print("\n".join(table(scaling)))
        write_csv(
            args.out_dir / "scaling.csv",
            [r | info for r in scaling] if not args.model_only else scaling,
        )
        plot_scaling(scaling, args.cores, args.plot_dir / "scaling.png")
    write_report(args.out_dir, scaling, found, info)
    if found["projection"]:
        validated = {"validated": found["validated"]}
        write_csv(args.out_dir / "projection.csv", [r | validated for r in found["projection"]])
    if found["projection"] is None:
        sys.exit(f"scaling: {found['title']}")
    print(
        f"written: {args.out_dir}/{{runs,scaling,allreduce,projection}}.csv, fits.json, report.md"
    )


def warn(args: argparse.Namespace, load: float | None) -> None:
    """The load warning for the most ranks that have a core each."""
    ranks = max([n for n in args.ranks if n <= args.cores], default=1)
    if line := provenance.load_warning(load, ranks):
        print(f"scaling: {line}", file=sys.stderr)


if __name__ == "__main__":
    main()
