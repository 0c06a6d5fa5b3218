"""What measuring the gradient noise scale costs per step, on the benchmark workloads.

    python scripts/noise_cost.py --deterministic     # one rank, 4 virtual shards
    mpirun -n 2 python scripts/noise_cost.py          # two ranks, default mode

Builds the trainer a run builds and times blocks of steps with the estimate on and off,
interleaved in one process (so a busy machine slows both alike), and prints the median
ratio over the blocks with its spread. On a machine too busy for a 2% difference to show
in whole steps, the second figure isolates the estimate's own work (the pieces' and the
batch's dot products and the bookkeeping, timed alone, once per ``NOISE_EVERY`` steps)
against the median step. The issue's bar: within 2% of a step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from distnn.data import load_dataset
from distnn.engine.network import Network
from distnn.engine.schedules import make_schedule
from distnn.parallel.noise_scale import NOISE_EVERY
from distnn.parallel.threads import configure_blas_threads
from distnn.parallel.trainer import Trainer, make_reducer
from distnn.parallel.world import World

WORKLOADS = {  # as scripts/bench.py's: (sizes, batch, data)
    "compute": ([784, 512, 512, 10], 256, "synthetic:4096:784:10"),
    "overhead": ([64, 32, 10], 32, "digits"),
}


def step_times(trainer: Trainer, world: World, measure: bool, steps: int) -> float:
    trainer.noise.measures = measure  # off: the reducer is never asked for the norms
    order, B = trainer.epoch_order(), trainer.batch_size
    world.allreduce_sum(np.zeros(1))  # start together
    t0 = time.perf_counter()
    for s in range(steps):
        lo = (s * B) % (len(order) - B)
        trainer.train_step(order[lo : lo + B])
    return (time.perf_counter() - t0) / steps


def estimate_work(trainer: Trainer, reps: int = 2000) -> float:
    """Seconds of one measurement's extra work: each piece's |g_v|², |G_B|², the sums."""
    grads = np.atleast_2d(trainer.reducer.piece_grads)
    grad, noise = trainer.reducer.grad, trainer.noise
    t0 = time.perf_counter()
    for _ in range(reps):
        total = sum(float(np.dot(g, g)) for g in grads)
        noise.add(total / len(grads), 0.5, float(np.dot(grad, grad)), 8)
    return (time.perf_counter() - t0) / reps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", choices=WORKLOADS, nargs="*", default=list(WORKLOADS))
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--blocks", type=int, default=15)
    args = p.parse_args()
    world = World()
    configure_blas_threads(world.local_size(), fixed=1)
    for name in args.workload:
        sizes, batch, spec = WORKLOADS[name]
        data = load_dataset(spec, 0, "float32")
        net = Network(sizes, "sigmoid", seed=0)
        reducer = make_reducer(net, world, virtual_shards=4 if args.deterministic else None)
        trainer = Trainer(net, make_schedule("adam", 1e-4), data, world, batch, reducer)
        steps = 20 if name == "compute" else 400
        step_times(trainer, world, True, steps)  # warm up
        ratios, on_times = [], []
        for _ in range(args.blocks):
            on = step_times(trainer, world, True, steps)
            off = step_times(trainer, world, False, steps)
            ratios.append(on / off)
            on_times.append(on)
        own = estimate_work(trainer) / NOISE_EVERY
        if world.is_root:
            q = np.quantile(ratios, [0.25, 0.75])
            print(
                f"{name}: {world.size} rank(s){' deterministic' if args.deterministic else ''}: "
                f"step {statistics.median(on_times) * 1e3:.3f} ms; with the estimate / without: "
                f"median {statistics.median(ratios):.4f} (quartiles {q[0]:.4f}–{q[1]:.4f}, "
                f"n={len(ratios)} blocks of {steps} steps); the estimate's own work "
                f"{own * 1e6:.2f} µs a step, {own / statistics.median(on_times):.2%} of it"
            )


if __name__ == "__main__":
    main()
