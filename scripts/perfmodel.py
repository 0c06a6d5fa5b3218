"""A performance model of one data-parallel training step, and the fit of its network terms.

One step on p ranks computes backprop over a shard of b samples on every rank, then
sums the flat float32 gradient (n = 4 · params bytes) with one Allreduce:

    t(p)     = t_comp(b) + t_ar(n, p)
    t_comp   = α_c + β_c·b                            per step, plus per sample (one rank)
    ring     t_ar = 2(p−1)·α + 2(p−1)/p · n·β          reduce-scatter, then allgather
    tree     t_ar = ⌈log2 p⌉ · (α + n·β)               recursive doubling / binomial tree

α is the time per message (latency, s) and β the time per byte (s/B; 1/β is a bandwidth).
Both Allreduce terms vanish at p = 1.

Strong scaling fixes the global batch B (shard b = ⌈B/p⌉); weak scaling fixes the shard
(b = B, global batch G = p·B). Either way the throughput is X(p) = G / t(p), the speed-up
S(p) = X(p) / X(1) (X(1) = B / t_comp(B)) and the parallel efficiency E(p) = S(p) / p.

Assumptions: compute and communication do not overlap (distnn's default: one Allreduce
after backprop); the per-step cost α_c and per-sample cost β_c measured at one rank hold
on every rank (no rank waits for a slower one); every rank gets a core of its own; α and
β do not depend on p beyond the rank count they were fitted at (on a real cluster they
change where the ranks spill from one node to many). scaling_fit.py fits all four with
their uncertainty and checks the predictions against the measurements.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
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
    alpha: float,
    beta: float,
    alpha_c: float = 0.0,
    beta_c: float | None = None,
    rate: float | None = None,
) -> Step | None:
    """The step at p ranks (see the module's formulas); None where strong scaling runs out of
    samples (p > B: some rank would get none). The compute model is ``alpha_c`` (s per
    step) and ``beta_c`` (s per sample), or ``rate`` alone (β_c = 1/rate, α_c = 0)."""
    if beta_c is None:
        if rate is None:
            raise ValueError("give beta_c (and alpha_c) or rate")
        beta_c = 1 / rate
    if mode == "strong":
        if p > batch:
            return None
        shard, global_batch = math.ceil(batch / p), batch
    else:
        shard, global_batch = batch, batch * p
    compute = alpha_c + beta_c * shard
    nbytes = BYTES_PER_PARAM * params
    comm = ALLREDUCE[algorithm](nbytes, p, alpha, beta)
    throughput = global_batch / (compute + comm)
    speedup = throughput / (batch / (alpha_c + beta_c * batch))  # X(p) / X(1)
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
