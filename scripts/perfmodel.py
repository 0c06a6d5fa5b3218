"""A performance model of one data-parallel training step, and the fit of its network terms.

One step on p ranks computes backprop over a shard of b samples on every rank, then
sums the flat float32 gradient (n = 4 · params bytes) with one Allreduce:

    t(p)     = t_comp(b) + t_ar(n, p)
    t_comp   = b / r                                  r: samples/s of one rank
    ring     t_ar = 2(p−1)·α + 2(p−1)/p · n·β          reduce-scatter, then allgather
    tree     t_ar = ⌈log2 p⌉ · (α + n·β)               recursive doubling / binomial tree

α is the time per message (latency, s) and β the time per byte (s/B; 1/β is a bandwidth).
Both Allreduce terms vanish at p = 1.

Strong scaling fixes the global batch B (shard b = ⌈B/p⌉); weak scaling fixes the shard
(b = B, global batch G = p·B). Either way the throughput is X(p) = G / t(p), the speed-up
S(p) = X(p) / X(1) = X(p) / r and the parallel efficiency E(p) = S(p) / p.

Assumptions: compute and communication do not overlap (distnn's default: one Allreduce
after backprop); r does not depend on the shard size (optimistic for small shards, where
per-step overhead and smaller matrix products cost more per sample); every rank gets a
core of its own; α and β do not depend on p (on a real cluster they change where the
ranks spill from one node to many).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

BYTES_PER_PARAM = 4  # the gradient is float32
MODES = ("strong", "weak")


def param_count(layers: Sequence[int]) -> int:
    """Weights and biases of a dense net with these layer widths: Σ_ℓ (n_{ℓ−1} + 1)·n_ℓ."""
    return sum((n_in + 1) * n_out for n_in, n_out in pairwise(layers))


def ring_allreduce(nbytes: float, p: int, alpha: float, beta: float) -> float:
    """Seconds of a ring Allreduce of ``nbytes`` over p ranks: 2(p−1)·α + 2(p−1)/p · n·β."""
    return 2 * (p - 1) * alpha + 2 * (p - 1) / p * nbytes * beta


def tree_allreduce(nbytes: float, p: int, alpha: float, beta: float) -> float:
    """Seconds of a recursive-doubling (or tree) Allreduce: ⌈log2 p⌉ · (α + n·β)."""
    return math.ceil(math.log2(p)) * (alpha + nbytes * beta)


ALLREDUCE: dict[str, Callable[[float, int, float, float], float]] = {
    "ring": ring_allreduce,
    "tree": tree_allreduce,
}


def fit_alpha_beta(points: Iterable[tuple[float, int, float]]) -> tuple[float, float]:
    """α (s) and β (s/B) of the ring model from measured (bytes, ranks, seconds).

    Linear least squares in (α, β) on the relative error, Σ ((t_ring(n, p) − t) / t)², so
    the microseconds of small messages weigh as much as the milliseconds of large ones.
    A coefficient that comes out negative is pinned at 0 and the other one refitted.
    """
    rows = [(n, p, t) for n, p, t in points if p > 1 and t > 0]
    if len(rows) < 2:
        raise ValueError("need Allreduce timings at 2 or more sizes on more than one rank")
    n, p, t = (np.array(column, dtype=float) for column in zip(*rows, strict=True))
    design = np.column_stack([2 * (p - 1), 2 * (p - 1) / p * n]) / t[:, None]
    ones = np.ones_like(t)
    coef = np.linalg.lstsq(design, ones, rcond=None)[0]
    if coef.min() < 0:
        keep = int(np.argmax(coef))
        column = design[:, keep]
        coef = np.zeros(2)
        coef[keep] = max(0.0, float(column @ ones / (column @ column)))
    return float(coef[0]), float(coef[1])


@dataclass(frozen=True)
class Step:
    """One projected training step: its parts, throughput, speed-up and efficiency."""

    mode: str  # "strong" or "weak"
    algorithm: str  # "ring" or "tree"
    ranks: int
    shard: int  # samples per rank
    global_batch: int
    gradient_bytes: int
    compute_s: float
    comm_s: float
    step_s: float
    samples_per_sec: float
    speedup: float
    efficiency: float


def project_step(
    mode: str,
    algorithm: str,
    p: int,
    *,
    params: int,
    batch: int,
    rate: float,
    alpha: float,
    beta: float,
) -> Step | None:
    """The step at p ranks (see the module's formulas); None where strong scaling runs out of
    samples (p > B: some rank would get none)."""
    if mode == "strong":
        if p > batch:
            return None
        shard, global_batch = math.ceil(batch / p), batch
    else:
        shard, global_batch = batch, batch * p
    compute = shard / rate
    nbytes = BYTES_PER_PARAM * params
    comm = ALLREDUCE[algorithm](nbytes, p, alpha, beta)
    throughput = global_batch / (compute + comm)
    speedup = throughput / rate
    return Step(
        mode=mode,
        algorithm=algorithm,
        ranks=p,
        shard=shard,
        global_batch=global_batch,
        gradient_bytes=nbytes,
        compute_s=compute,
        comm_s=comm,
        step_s=compute + comm,
        samples_per_sec=throughput,
        speedup=speedup,
        efficiency=speedup / p,
    )


def project(ranks: Sequence[int], **model: Any) -> list[Step]:
    """Every (mode, algorithm, p) step that exists; ``model`` is project_step's keywords."""
    return [
        step
        for mode in MODES
        for algorithm in ALLREDUCE
        for p in ranks
        if (step := project_step(mode, algorithm, p, **model)) is not None
    ]


def describe_network(alpha: float, beta: float) -> str:
    """α in µs and β as the bandwidth 1/β in GB/s, the units MPI benchmarks print."""
    bandwidth = f"{1 / beta / 1e9:.2f} GB/s" if beta > 0 else "∞"
    return f"α = {alpha * 1e6:.2f} µs, β = 1/({bandwidth})"


def format_table(steps: Sequence[Step]) -> str:
    """The projection as a text table: one line per rank count, strong and weak side by side."""
    by = {(s.mode, s.algorithm, s.ranks): s for s in steps}
    batch = {s.mode: s.global_batch if s.mode == "strong" else s.shard for s in steps}

    def cell(mode: str, algorithm: str, p: int, field: str, spec: str, width: int) -> str:
        step = by.get((mode, algorithm, p))
        return f"{getattr(step, field):>{width}{spec}}" if step else f"{'—':>{width}}"

    strong = f"strong: {batch.get('strong')} global"
    lines = [
        f"{'':5} {'Allreduce ms':>15} │ {strong:<19} │ weak: {batch.get('weak')} per rank",
        f"{'ranks':>5} {'ring':>7} {'tree':>7} │ {'shard':>5} {'E ring':>6} {'E tree':>6} "
        f"│ {'E ring':>6} {'E tree':>6} {'samples/s ring':>14} {'tree':>12}",
    ]
    for p in sorted({s.ranks for s in steps}):
        comm = [(by.get(("weak", a, p)) or by[("strong", a, p)]).comm_s for a in ALLREDUCE]
        lines.append(
            f"{p:>5} {comm[0] * 1e3:>7.3f} {comm[1] * 1e3:>7.3f} │ "
            f"{cell('strong', 'ring', p, 'shard', 'd', 5)} "
            f"{cell('strong', 'ring', p, 'efficiency', '.1%', 6)} "
            f"{cell('strong', 'tree', p, 'efficiency', '.1%', 6)} │ "
            f"{cell('weak', 'ring', p, 'efficiency', '.1%', 6)} "
            f"{cell('weak', 'tree', p, 'efficiency', '.1%', 6)} "
            f"{cell('weak', 'ring', p, 'samples_per_sec', ',.0f', 14)} "
            f"{cell('weak', 'tree', p, 'samples_per_sec', ',.0f', 12)}"
        )
    return "\n".join(lines)


def message_sizes(max_bytes: int) -> list[int]:
    """Allreduce message sizes of the sweep: 4 B, 16 B, 64 B, … (powers of 4) up to max_bytes."""
    return [4**k for k in range(1, 64) if 4**k <= max_bytes]


def allreduce_sweep(sizes: Sequence[int], blocks: int = 5) -> list[tuple[int, float]] | None:
    """Seconds per Allreduce (float32 sum, in place) of each message size on MPI.COMM_WORLD.

    Per size: 2 warm-up calls, then ``blocks`` timed blocks of k calls (k = 500 for small
    messages, down to 8 for the largest), each block after a Barrier. A rank's time is the
    median of its block means, the size's time the slowest rank's. The result, a list of
    (bytes, seconds), is returned on rank 0 and None on the others.
    """
    from mpi4py import MPI  # only the sweep's worker processes start MPI

    comm = MPI.COMM_WORLD
    results = []
    for nbytes in sizes:
        buf = np.zeros(nbytes // BYTES_PER_PARAM, dtype=np.float32)  # zeros: sums stay finite
        calls = max(8, min(500, (64 << 20) // nbytes))
        for _ in range(2):
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        means = []
        for _ in range(blocks):
            comm.Barrier()
            start = time.perf_counter()
            for _ in range(calls):
                comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            means.append((time.perf_counter() - start) / calls)
        results.append((nbytes, comm.allreduce(float(np.median(means)), op=MPI.MAX)))
    return results if comm.rank == 0 else None


@cache
def pyplot() -> ModuleType | None:
    """matplotlib.pyplot (headless), or None with a one-line note if it isn't installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install '.[plot]'): CSV only, no plots")
        return None
    return plt


def plot_projection(
    steps: Sequence[Step],
    measured: Sequence[dict],
    sweep: Sequence[dict],
    network: tuple[float, float],
    path: Path,
) -> None:
    """The model's figure: (a) the Allreduce sweep and its fitted ring model, (b) projected
    efficiency and (c) throughput against ranks, with the measured points (hollow where the
    ranks were oversubscribed)."""
    if (plt := pyplot()) is None:
        return
    fig, (ax_ar, ax_eff, ax_x) = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")
    sizes = np.array(message_sizes(max([r["bytes"] for r in sweep], default=16 << 20)))
    for i, p in enumerate(sorted({r["ranks"] for r in sweep}) or [2, 4]):
        rows = [r for r in sweep if r["ranks"] == p]
        over = bool(rows) and rows[0]["oversubscribed"]
        label = f"{p} ranks" + (", oversubscribed" if over else "")
        style = {"color": f"C{i}", "mfc": "none" if over else None, "label": label}
        ax_ar.loglog([r["bytes"] for r in rows], [r["seconds"] for r in rows], "o", **style)
        model = ring_allreduce(sizes, p, *network)
        ax_ar.loglog(sizes, model, "-", color=f"C{i}", lw=1, label=f"ring model, {p} ranks")
    ax_ar.axvline(
        steps[0].gradient_bytes,
        color="k",
        ls=":",
        label=f"gradient, {steps[0].gradient_bytes / 1e6:.2f} MB",
    )
    ranks = sorted({s.ranks for s in steps})
    rate = steps[0].samples_per_sec / steps[0].speedup  # X(1) = r
    ax_eff.plot(ranks, [1.0] * len(ranks), "k:", label="ideal")
    ax_x.plot(ranks, [rate * p for p in ranks], "k:", label="ideal")
    panels = ((ax_eff, "efficiency"), (ax_x, "samples_per_sec"))
    for mode, color in (("strong", "C0"), ("weak", "C1")):
        for algorithm, dash in (("ring", "-"), ("tree", "--")):
            line = [s for s in steps if s.mode == mode and s.algorithm == algorithm]
            style = {"color": color, "ls": dash, "label": f"{mode}, {algorithm} model"}
            for ax, key in panels:
                ax.plot([s.ranks for s in line], [getattr(s, key) for s in line], **style)
        for over in (False, True):
            points = [r for r in measured if r["mode"] == mode and r["oversubscribed"] == over]
            label = f"{mode}, measured" + (", oversubscribed" if over else "")
            style = {"color": color, "mfc": "none" if over else color, "label": label}
            for ax, key in panels if points else ():
                ax.plot([r["ranks"] for r in points], [r[key] for r in points], "o", **style)
    ax_ar.set(xlabel="message (bytes)", ylabel="seconds per Allreduce")
    ax_ar.set_title(f"Allreduce, ring model: {describe_network(*network)}")
    ax_eff.set(ylabel="parallel efficiency E", ylim=(0, 1.05), title="projected efficiency")
    ax_x.set(ylabel="samples/s", yscale="log", title="projected throughput")
    ticks = [p for p in ranks if p.bit_length() % 2]  # 1, 4, 16, …
    for ax in (ax_eff, ax_x):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(p) for p in ticks])
        ax.set_xlabel("ranks p")
    for ax in (ax_ar, ax_eff, ax_x):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"plot: {path}")
