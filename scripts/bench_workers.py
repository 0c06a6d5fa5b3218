"""One measurement each, run in a process of its own by ``scripts/bench.py``.

Every engine trains the same network (distnn's defaults: sigmoid layers, squared loss
Σ_i (a_i − y_i)² averaged over the batch) with the same update rule (``SCHEDULES``: plain
SGD, or Adam, distnn's default rule, with its default lr) on the same in-memory data
with the same batch and thread count; throughput is samples/s over whole epochs after
one warm-up epoch. scikit-learn's MLPClassifier can only use softmax + cross-entropy:
the table says so.

distnn and torch also report where a step's time goes (``split``: mean seconds per step
in data, compute, allreduce and update), measured over the timed epochs.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import resource
import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Workload:
    name: str
    sizes: tuple[int, ...]
    batch: int  # per rank: the global batch is batch × ranks (weak scaling)
    dataset: str
    epochs: int  # timed epochs, after one warm-up epoch
    lr: float = 0.05  # SGD's; Adam runs at distnn's default lr (ADAM_LR)

    def flops_per_sample(self) -> float:
        """Multiply-adds ×2 of one sample's forward and backward passes (matrix products only).

        Forward z(ℓ) = W(ℓ)a(ℓ-1): n_ℓ·n_{ℓ-1}; ∂C/∂W(ℓ): n_ℓ·n_{ℓ-1}; ∂C/∂a(ℓ-1) for ℓ ≥ 2.
        """
        pairs = list(zip(self.sizes[:-1], self.sizes[1:], strict=True))
        return 2.0 * (2 * sum(m * n for m, n in pairs) + sum(m * n for m, n in pairs[1:]))


SCHEDULES = ("sgd", "adam")  # the update rules every engine can run
ADAM_LR = 0.01  # distnn's default --lr (with its default --schedule adam)
PHASES = ("data", "compute", "allreduce", "update")


def rule_lr(w: Workload, schedule: str) -> float:
    return ADAM_LR if schedule == "adam" else w.lr


WORKLOADS = {
    "compute": Workload("compute", (784, 512, 512, 10), 256, "synthetic:60000:784:10", 3),
    "overhead": Workload("overhead", (64, 32, 10), 32, "digits", 40),
    "quick": Workload("quick", (64, 32, 10), 32, "synthetic:2000:64:10", 3),
}


def rss_mb() -> float:
    """This process's resident memory now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _blas_threads() -> int:
    from threadpoolctl import threadpool_info

    return max(
        (lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"), default=1
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def training_data(w: Workload):
    from distnn.data.load import load_dataset

    data = load_dataset(w.dataset, seed=0)
    return dataclasses.replace(data, x_test=None, y_test=None, labels_test=None)


def run_distnn(
    w: Workload,
    threads: int | None,
    schedule: str = "sgd",
    overlap: bool = False,
    deterministic: bool = False,
) -> dict:
    """distnn through its public API: ``fit`` on the training arrays, a warm-up epoch first."""
    import distnn
    from distnn.engine.schedules import make_schedule
    from distnn.parallel.world import World

    world = World()
    if threads is not None:
        os.environ["DISTNN_NUM_THREADS"] = str(threads)  # fit's thread policy reads it
    data = training_data(w)
    net = distnn.Network(list(w.sizes), "sigmoid", seed=0)
    setup_rss = []

    class AfterWarmUp:
        def on_epoch_end(self, record: dict) -> None:
            if record["epoch"] == 1:  # caches warm, buffers touched
                setup_rss.append(rss_mb())

    y = data.labels if data.labels is not None else data.y
    history = distnn.fit(
        net,
        data.x,
        y,
        schedule=make_schedule(schedule, rule_lr(w, schedule)),
        batch_size=w.batch * world.size,
        epochs=1 + w.epochs,
        overlap=overlap,
        deterministic=deterministic,
        verbose=0,
        callbacks=[AfterWarmUp()],
        world=world,
    )
    rates = [record["samples_per_sec"] for record in history[1:]]
    steps = history[-1]["step"] - history[0]["step"]
    split = {p: sum(r[f"{p}_s"] for r in history[1:]) / steps for p in PHASES}  # rank 0's
    growth = rss_mb() - setup_rss[0]  # steady-state steps should keep nothing
    worst = np.array([peak_rss_mb(), growth])
    world.allreduce_max(worst)
    peak, growth = worst.tolist()
    return {
        "samples_per_sec": float(np.median(rates)),
        "threads": _blas_threads(),  # as fit's thread policy set them
        "ranks": world.size,
        "peak_rss_mb": peak,
        "rss_growth_mb": growth,
        "split": split,
        "note": f"RSS +{growth:.1f} MB in timed epochs; params {net.params.nbytes / 2**20:.1f} MB",
        "rank0": world.rank == 0,
    }


def run_torch(w: Workload, threads: int | None, schedule: str = "sgd") -> dict:
    import torch

    rank, size = int(os.environ.get("PMI_RANK", 0)), int(os.environ.get("PMI_SIZE", 1))
    torch.set_num_threads(threads or os.cpu_count() or 1)
    data = training_data(w)
    layers: list = []
    for m, n in zip(w.sizes[:-1], w.sizes[1:], strict=True):
        layers += [torch.nn.Linear(m, n), torch.nn.Sigmoid()]
    model = torch.nn.Sequential(*layers)
    if size > 1:  # DistributedDataParallel over gloo on loopback, one process per MPI rank
        import torch.distributed as dist

        port = os.environ.get("BENCH_TORCH_PORT", "29533")
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size
        )
        model = torch.nn.parallel.DistributedDataParallel(model)
    # torch's defaults besides lr, as distnn's Adam (β 0.9, 0.999, ε 1e-8 after the root)
    rule = torch.optim.Adam if schedule == "adam" else torch.optim.SGD
    opt = rule(model.parameters(), lr=rule_lr(w, schedule))
    X, Y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    generator = torch.Generator().manual_seed(0)
    global_batch = w.batch * size
    seconds = dict.fromkeys(PHASES, 0.0)  # with DDP the allreduce is inside backward

    def epoch() -> float:
        start, order = time.perf_counter(), torch.randperm(len(X), generator=generator)
        for b in range(0, len(X), global_batch):
            t0 = time.perf_counter()
            idx = order[b : b + global_batch]
            lo, hi = rank * len(idx) // size, (rank + 1) * len(idx) // size
            xb, yb = X[idx[lo:hi]], Y[idx[lo:hi]]
            t1 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = ((model(xb) - yb) ** 2).sum(dim=1).mean()
            loss.backward()
            t2 = time.perf_counter()
            opt.step()
            t3 = time.perf_counter()
            seconds["data"] += t1 - t0
            seconds["compute"] += t2 - t1
            seconds["update"] += t3 - t2
        return len(X) / (time.perf_counter() - start)

    epoch()
    seconds.update(dict.fromkeys(PHASES, 0.0))
    rates = [epoch() for _ in range(w.epochs)]
    steps = w.epochs * -(-len(X) // global_batch)
    return {
        "samples_per_sec": float(np.median(rates)),
        "threads": torch.get_num_threads(),
        "ranks": size,
        "peak_rss_mb": peak_rss_mb(),
        "split": {p: t / steps for p, t in seconds.items()},
        "note": "allreduce inside compute (DDP)" if size > 1 else "",
        "rank0": rank == 0,
    }


def run_sklearn(w: Workload, threads: int | None, schedule: str = "sgd") -> dict:
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    data = training_data(w)
    threadpool_limits(threads or os.cpu_count() or 1, user_api="blas")
    model = MLPClassifier(
        hidden_layer_sizes=w.sizes[1:-1],
        activation="logistic",
        solver=schedule,
        batch_size=w.batch,
        learning_rate_init=rule_lr(w, schedule),
        momentum=0.0,
        shuffle=True,
        random_state=0,
    )
    classes = np.arange(w.sizes[-1])

    def epoch() -> float:
        start = time.perf_counter()
        model.partial_fit(data.x, data.labels, classes=classes)
        return len(data.x) / (time.perf_counter() - start)

    epoch()
    rates = [epoch() for _ in range(w.epochs)]
    return {
        "samples_per_sec": float(np.median(rates)),
        "threads": threads or os.cpu_count(),
        "ranks": 1,
        "peak_rss_mb": peak_rss_mb(),
        "rank0": True,
    }


def run_blas(w: Workload, threads: int | None, schedule: str = "sgd") -> dict:
    """The ceiling: the very matrix products of one training step, timed alone, best of many
    (no update rule: ``schedule`` is not used)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads or os.cpu_count() or 1, user_api="blas")
    rng = np.random.default_rng(0)
    B, sizes = w.batch, w.sizes
    W = [rng.standard_normal((n, m)).astype(np.float32) for m, n in itertools.pairwise(sizes)]
    A = [rng.standard_normal((B, n)).astype(np.float32) for n in sizes]
    D = [rng.standard_normal((B, n)).astype(np.float32) for n in sizes]
    G = [np.empty_like(Wl) for Wl in W]

    def products() -> None:
        for ell, Wl in enumerate(W):
            np.matmul(A[ell], Wl.T, out=A[ell + 1])
        for ell in range(len(W) - 1, -1, -1):
            np.matmul(D[ell + 1].T, A[ell], out=G[ell])
            if ell > 0:
                np.matmul(D[ell + 1], W[ell], out=D[ell])

    best, deadline = float("inf"), time.perf_counter() + 4.0
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        products()
        best = min(best, time.perf_counter() - start)
    return {
        "samples_per_sec": B / best,
        "threads": threads or os.cpu_count(),
        "ranks": 1,
        "peak_rss_mb": peak_rss_mb(),
        "rank0": True,
    }


def run_distnn_overlap(w: Workload, threads: int | None, schedule: str = "sgd") -> dict:
    return run_distnn(w, threads, schedule, overlap=True)


def run_distnn_deterministic(w: Workload, threads: int | None, schedule: str = "sgd") -> dict:
    return run_distnn(w, threads, schedule, deterministic=True)


ENGINES = {
    "distnn": run_distnn,
    "distnn-overlap": run_distnn_overlap,
    "distnn-det": run_distnn_deterministic,
    "torch": run_torch,
    "sklearn": run_sklearn,
    "blas": run_blas,
}
