"""distnn's training throughput side by side with PyTorch, scikit-learn and the BLAS ceiling.

    python scripts/bench.py                          # both workloads, 1 thread, all peers found
    python scripts/bench.py --threads 1,2 --ranks 1,2,4 --json runs/bench.json
    python scripts/bench.py --busy 1                 # a busy core elsewhere: the thread policy
    python scripts/bench.py --repeat 3               # medians of 3 interleaved rounds
    python scripts/bench.py --schedules adam         # the default rule only (default: sgd,adam)

Each measurement runs in a fresh process (under ``mpiexec -n R`` for R ranks) so thread
settings and peak memory do not leak between them. Peers that are not installed
(``pip install .[bench]``) are reported as missing, not faked. The ceiling ("blas") is
the best GFLOP/s of the matrix products of one training step, timed alone. Every
engine runs each update rule of ``--schedules`` (SGD, and Adam, distnn's default);
"vs distnn" compares rows of the same rule, and "step split" says where distnn's and
torch's mean step went: compute (forward and backward), update (the rule and θ −= step),
allreduce (with the wait for slower ranks), data (gathering the batch).

On a shared machine a neighbour's burst can slow one measurement: with ``--repeat N``
every row is measured in each of N rounds (round by round, so a burst hits one round
of every engine rather than every round of one), and the table shows each row's
median with its range; ratios are between medians of the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_workers import ENGINES, SCHEDULES, WORKLOADS

NOTES = {"sklearn": "cross-entropy loss (MLPClassifier's own)", "blas": "matrix products only"}
NOTES["distnn-overlap"] = "per-layer Iallreduce during backprop (--overlap)"
NOTES["distnn-det"] = "--deterministic, 4 virtual shards"
MODULES = {"torch": "torch", "sklearn": "sklearn", "blas": "numpy"}
MULTI_RANK = ("distnn", "distnn-overlap", "distnn-det", "torch")


def measure(engine: str, workload: str, threads: str, ranks: int, env: dict, schedule: str) -> dict:
    """Run one worker; its rank 0 prints one JSON line."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        engine,
        "--workload",
        workload,
        "--threads",
        threads,
        "--schedules",
        schedule,
    ]
    if ranks > 1:
        mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
        command = [mpiexec, "-n", str(ranks), *command]
    try:
        out = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, **env},
            check=True,
        ).stdout
    except subprocess.CalledProcessError as e:
        return {"error": (e.stderr.strip().splitlines() or ["failed"])[-1]}
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    return json.loads(out.strip().splitlines()[-1])


def plan(args) -> list[tuple[str, str, str, int, dict, str]]:
    """(engine, workload, threads, ranks, extra env, update rule) for every row of the table;
    the ceiling ("blas") once per workload and threads, as it runs no rule."""
    rows = []
    for workload in args.workloads:
        for threads in args.threads:
            for schedule in args.schedules:
                for engine in args.engines:
                    for ranks in args.ranks if engine in MULTI_RANK else [1]:
                        if engine == "distnn-overlap" and ranks == 1:
                            continue
                        once = schedule == args.schedules[0]
                        if engine == "blas" and (threads == "auto" or not once):
                            continue
                        rule = "-" if engine == "blas" else schedule
                        rows.append((engine, workload, threads, ranks, {}, rule))
    return rows


def split_text(split: dict | None) -> str:
    """'10.8ms c85 u14 a0 d1': the mean step and its phases in % (compute, update,
    allreduce, data)."""
    if not split:
        return f"{'':22}"
    total = sum(split.values())
    parts = " ".join(f"{p[0]}{100 * split[p] / total:.0f}" for p in PHASES_SHOWN)
    step = f"{total * 1e3:.2f}ms" if total < 0.1 else f"{total:.2f}s"
    return f"{step:>7} {parts:14}"


PHASES_SHOWN = ("compute", "update", "allreduce", "data")


def table(results: list[dict]) -> str:
    """One line per measurement; ratios against distnn at the same threads and ranks.

    "of BLAS" is the share of the ceiling reached per core in use: samples/s over
    (ceiling × min(ranks, cores)), as ranks beyond the core count share cores.
    """
    cores = os.cpu_count() or 1
    ceiling = {
        (r["workload"], r["threads_asked"]): r["samples_per_sec"]
        for r in results
        if r["engine"] == "blas" and "error" not in r
    }
    ours = {
        (r["workload"], r["threads_asked"], r["ranks"], r["schedule"]): r["samples_per_sec"]
        for r in results
        if r["engine"] == "distnn" and "error" not in r
    }
    head = (
        f"{'workload':9} {'engine':14} {'rule':5} {'threads':>7} {'ranks':>5} {'samples/s':>11} "
        f"{'GFLOP/s':>8} {'of BLAS':>7} {'vs distnn':>9} {'step split (%)':22} {'peak RSS':>9}"
        "  note"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(
                f"{r['workload']:9} {r['engine']:14} {r['schedule']:5} {r['threads_asked']:>7} "
                f"{r['ranks']:>5}  -- {r['error']}"
            )
            continue
        best = ceiling.get((r["workload"], r["threads_asked"]))
        if best is None:
            best = ceiling.get((r["workload"], str(r["threads"])))
        base = ours.get((r["workload"], r["threads_asked"], r["ranks"], r["schedule"]))
        per_core = r["samples_per_sec"] / min(r["ranks"], cores)
        frac = f"{per_core / best:7.0%}" if best else f"{'':7}"
        ratio = f"{r['samples_per_sec'] / base:8.2f}x" if base else f"{'':9}"
        lines.append(
            f"{r['workload']:9} {r['engine']:14} {r['schedule']:5} {r['threads']:>7} "
            f"{r['ranks']:>5} {r['samples_per_sec']:11,.0f} {r['gflops']:8.1f} {frac} {ratio} "
            f"{split_text(r.get('split'))} {r['peak_rss_mb']:7.0f}MB  {r.get('note', '')}"
        )
    return "\n".join(lines)


def refuse_unknown(prog: str, kind: str, names: Iterable[str], known: Iterable[str]) -> None:
    """Exit with status 2 and one line if a name in ``names`` is not in ``known``.

    Called before any measurement: an unknown name used to surface only as a KeyError
    (a table row, or a traceback) after the other measurements had run. One line
    without argparse's usage block, like distnn's own commands' errors.
    """
    known = list(known)
    for name in names:
        if name not in known:
            choices = ", ".join(known)
            message = f"{prog}: error: unknown {kind} {name!r} (choose from {choices})"
            print(message, file=sys.stderr)
            sys.exit(2)


def measure_row(row: tuple, round_: int, rounds: int) -> dict:
    """One measurement of one row of the plan, labelled for the table."""
    engine, workload, threads, ranks, env, schedule = row
    if importlib.util.find_spec(MODULES.get(engine, "distnn")) is None:
        r = {"error": f"{engine} not installed (pip install .[bench])"}
    else:
        r = measure(engine, workload, threads, ranks, env, schedule)
    notes = [NOTES.get(engine, ""), r.get("note", "")]
    r.update(
        engine=engine,
        workload=workload,
        threads_asked=threads,
        schedule=schedule,
        ranks=r.get("ranks", ranks),
        note="; ".join(n for n in notes if n),
    )
    if "error" not in r:
        r["gflops"] = r["samples_per_sec"] * WORKLOADS[workload].flops_per_sample() / 1e9
    label = f" (round {round_ + 1}/{rounds})" if rounds > 1 else ""
    print(
        f"measured {engine} {workload} {schedule} threads={threads} ranks={ranks}{label}: "
        f"{r.get('samples_per_sec', r.get('error'))}",
        file=sys.stderr,
    )
    return r


def median_of(runs: tuple[dict, ...]) -> dict:
    """The run with the median samples/s (the lower middle of an even count), its range
    in the note; the first error if any run failed."""
    failed = [r for r in runs if "error" in r]
    if failed or len(runs) == 1:
        return failed[0] if failed else runs[0]
    ordered = sorted(runs, key=lambda r: r["samples_per_sec"])
    median = dict(ordered[(len(ordered) - 1) // 2])
    low, high = ordered[0]["samples_per_sec"], ordered[-1]["samples_per_sec"]
    spread = f"median of {len(runs)}, range {low:,.0f}–{high:,.0f}"
    median["note"] = "; ".join(n for n in (spread, median.get("note", "")) if n)
    median["samples_per_sec_runs"] = [r["samples_per_sec"] for r in runs]
    if "split" in median:  # each phase's median over the rounds: a burst skews one round
        median["split"] = {
            p: float(sorted(r["split"][p] for r in runs)[(len(runs) - 1) // 2])
            for p in median["split"]
        }
    return median


def busy_loop(cores: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--workloads",
        type=lambda s: s.split(","),
        default=["compute", "overhead"],
        help=f"comma-separated: {', '.join(WORKLOADS)}",
    )
    p.add_argument(
        "--engines",
        type=lambda s: s.split(","),
        default=list(ENGINES),
        help=f"comma-separated: {', '.join(ENGINES)} (default: all)",
    )
    p.add_argument(
        "--schedules",
        type=lambda s: s.split(","),
        default=list(SCHEDULES),
        help=f"comma-separated update rules: {', '.join(SCHEDULES)} (default: both)",
    )
    p.add_argument(
        "--threads",
        type=lambda s: s.split(","),
        default=["1"],
        help="BLAS/torch threads per process; 'auto' is distnn's default policy",
    )
    p.add_argument(
        "--ranks",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1],
        help="ranks for distnn (and torch DDP); batch per rank stays fixed",
    )
    p.add_argument("--busy", type=int, default=0, help="keep N cores busy meanwhile")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure every row in N interleaved rounds; report the median (default 1)",
    )
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--workload", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:  # inside one measurement process
        threads = None if args.threads[0] == "auto" else int(args.threads[0])
        result = ENGINES[args.worker](WORKLOADS[args.workload], threads, args.schedules[0])
        if result.pop("rank0"):
            print(json.dumps(result))
        return

    # The options whose names index a table of bench_workers, checked before the busy
    # cores start and before the first (possibly long) measurement.
    refuse_unknown(p.prog, "workload", args.workloads, WORKLOADS)
    refuse_unknown(p.prog, "engine", args.engines, ENGINES)
    refuse_unknown(p.prog, "schedule", args.schedules, SCHEDULES)
    if args.repeat < 1:
        print(f"{p.prog}: error: --repeat must be at least 1, got {args.repeat}", file=sys.stderr)
        sys.exit(2)
    hogs = busy_loop(args.busy)
    rounds: list[list[dict]] = []
    try:
        for round_ in range(args.repeat):
            rounds.append([measure_row(row, round_, args.repeat) for row in plan(args)])
    finally:
        for hog in hogs:
            hog.kill()
    results = [median_of(runs) for runs in zip(*rounds, strict=True)]
    busy = f", {args.busy} core(s) kept busy" if args.busy else ""
    print(
        f"# {os.cpu_count()} cores{busy}; batch per rank: "
        + ", ".join(f"{k} {WORKLOADS[k].batch}" for k in args.workloads)
    )
    print(table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
