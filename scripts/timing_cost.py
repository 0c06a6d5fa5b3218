"""What measuring the time split costs per step, against a step of the overhead workload.

    python scripts/timing_cost.py

Times the clock reads and sums that ``Trainer.train_step`` adds (issue: at most 2% on
the overhead-bound workload), and the median step time of the benchmark's overhead
workload (64-32-10, batch 32, digits, SGD) on one rank, and prints their ratio.
"""

import timeit
from time import perf_counter

import numpy as np

import distnn
from distnn.parallel.timeline import Timeline


class Sums:
    data_s = compute_s = allreduce_s = update_s = 0.0
    step = 5


def measured(t: Sums = Sums(), timeline: Timeline = Timeline(None, None, range(0))) -> None:  # noqa: B008
    t0 = perf_counter()
    t1 = perf_counter()
    t2 = perf_counter()
    t3 = perf_counter()
    t4 = perf_counter()
    t.data_s += t1 - t0
    t.compute_s += t2 - t1
    t.allreduce_s += t3 - t2
    t.update_s += t4 - t3
    timeline.covers(t.step)


def main() -> None:
    n = 200_000
    cost = min(timeit.repeat(measured, number=n, repeat=5)) / n
    net = distnn.Network([64, 32, 10], seed=0)
    history = distnn.fit(net, "digits", epochs=6, batch_size=32, schedule="sgd", verbose=0)
    step = 32 / float(np.median([r["samples_per_sec"] for r in history[1:]]))
    print(
        f"measuring: {cost * 1e6:.2f} µs per step; overhead-workload step: {step * 1e6:.1f} µs; "
        f"cost {cost / step:.2%}"
    )


if __name__ == "__main__":
    main()
