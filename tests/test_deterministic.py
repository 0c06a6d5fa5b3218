"""--deterministic: the same model to the last bit at 1, 2, 3 and 4 ranks, and across resumes."""

import hashlib
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import launch
from mpi4py import MPI

import distnn
from distnn import Network
from distnn.data.load import load_dataset
from distnn.engine import fused
from distnn.engine.schedules import SGD, Adam
from distnn.io.metrics_log import epoch_records
from distnn.parallel.ordered_sum import OrderedSum, tree_cover
from distnn.parallel.trainer import Trainer, make_reducer
from distnn.parallel.world import World

# batch 50 splits unevenly over 3 and 4 ranks, and into 4 virtual shards of 12 or 13 rows
RUN = [
    "--dataset",
    "synthetic:500:10:3",
    "--hidden",
    "16,8",
    "--batch-size",
    "50",
    "--schedule",
    "adam",
    "--lr",
    "0.02",
    "--quiet",
]


def weights_digest(path: Path) -> str:
    with np.load(path, allow_pickle=False) as f:
        blob = b"".join(f[k].tobytes() for k in sorted(f.files) if k[0] in "Wb")
    return hashlib.sha256(blob).hexdigest()


def metrics(path: Path) -> list[dict]:
    return epoch_records(str(path))


def test_same_bits_at_1_2_3_4_ranks(tmp_path):
    digests, evaluations = {}, {}
    for ranks in (1, 2, 3, 4):
        out, log = tmp_path / f"r{ranks}.npz", tmp_path / f"r{ranks}.jsonl"
        result = launch(
            [*RUN, "--epochs", "4", "--deterministic", "--save", str(out), "--metrics", str(log)],
            ranks=ranks,
        )
        assert result.returncode == 0, result.stderr
        digests[ranks] = weights_digest(out)
        evaluations[ranks] = [(m["loss"], m["test_loss"], m["accuracy"]) for m in metrics(log)]
    assert len(set(digests.values())) == 1, digests
    assert all(e == evaluations[1] for e in evaluations.values()), evaluations


def test_elastic_resume_gives_the_same_bits(tmp_path):
    whole = launch(
        [*RUN, "--epochs", "4", "--deterministic", "--save", "whole.npz"], ranks=4, cwd=tmp_path
    )
    assert whole.returncode == 0, whole.stderr
    first = launch(
        [
            *RUN,
            "--epochs",
            "2",
            "--deterministic",
            "--checkpoint-dir",
            "ck",
            "--checkpoint-every",
            "7",
        ],
        ranks=6,  # beyond 4 ranks the Alltoall transport, and 2 ranks idle (V = 4)
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr
    for ranks in (1, 2, 3):
        ck = tmp_path / f"ck{ranks}"
        ck.mkdir()
        for path in (tmp_path / "ck").iterdir():
            (ck / path.name).write_bytes(path.read_bytes())
        resumed = launch(
            [
                *RUN,
                "--epochs",
                "4",
                "--deterministic",
                "--checkpoint-dir",
                str(ck),
                "--resume",
                "--save",
                f"r{ranks}.npz",
            ],
            ranks=ranks,
            cwd=tmp_path,
        )
        assert resumed.returncode == 0, resumed.stderr
        assert weights_digest(tmp_path / f"r{ranks}.npz") == weights_digest(
            tmp_path / "whole.npz"
        ), f"resumed at {ranks} ranks differs"


def test_default_mode_is_not_bitwise_across_world_sizes(tmp_path):
    """What --deterministic buys: without it, 1 and 4 ranks agree only to rounding."""
    for ranks in (1, 4):
        result = launch(
            [*RUN, "--epochs", "4", "--save", f"d{ranks}.npz"], ranks=ranks, cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
    a, b = np.load(tmp_path / "d1.npz"), np.load(tmp_path / "d4.npz")
    diff = max(float(np.abs(a[k] - b[k]).max()) for k in a.files if k[0] in "Wb")
    print(f"default mode, 1 vs 4 ranks after 4 epochs: max weight difference {diff:.3g}")
    assert weights_digest(tmp_path / "d1.npz") != weights_digest(tmp_path / "d4.npz")
    assert 0 < diff < 1e-3


@pytest.mark.parametrize("virtual_shards", [1, 3, 4, 5, 8])
def test_ordered_sum_is_the_pairwise_tree_over_shards_and_within_its_bound(virtual_shards):
    """The global gradient is, bit for bit, the documented tree over separately computed
    shard gradients, and within Higham's bound γ_h·Σ|g_v| of their exact sum."""
    V, B = virtual_shards, 64
    data = load_dataset("synthetic:200:6:3", seed=3)
    net = Network([6, 9, 3], "tanh", seed=1)
    world = World(MPI.COMM_SELF)
    reducer = OrderedSum(net.num_params, net.dtype, world, virtual_shards=V)
    trainer = Trainer(net, SGD(0.1), data, world, B, reducer)
    order = np.arange(200)
    for step in range(3):
        batch = order[step * B : (step + 1) * B]
        shards = []
        for v in range(V):  # each shard alone, in a workspace of its own
            lo, hi = v * B // V, (v + 1) * B // V
            g = np.empty_like(net.params)
            net.backprop(
                data.x[batch[lo:hi]], data.y[batch[lo:hi]], g, net.workspace(hi - lo), 1 / B
            )
            shards.append(g)
        trainer.train_step(batch)
        want = reference_tree(shards).tobytes()
        assert reducer.grad.tobytes() == want, f"step {step}: not the tree's bits"
        exact = np.sum([g.astype(np.float64) for g in shards], axis=0)
        h = max(1, (V - 1).bit_length())
        u = 2.0**-24
        bound = h * u / (1 - h * u) * np.sum([np.abs(g.astype(np.float64)) for g in shards], axis=0)
        assert (np.abs(reducer.grad - exact) <= bound).all(), f"step {step}: outside the bound"


class ThreadRank:
    """One rank of a world of threads: the collectives OrderedSum uses, through
    shared memory, so the simulation runs the reducer's own ``reduce``."""

    def __init__(self, rank: int, size: int, posted: list, barrier: threading.Barrier) -> None:
        self.rank, self.size, self.posted, self.barrier = rank, size, posted, barrier

    def allgather(self, buf: np.ndarray) -> None:
        segments = buf.reshape(self.size, -1)
        self.posted[self.rank] = segments[self.rank].copy()
        self.barrier.wait()
        segments[...] = self.posted
        self.barrier.wait()  # nobody posts again before everyone has read

    def allreduce_sum(self, buf: np.ndarray) -> None:
        """Each rank adds in its own order, itself first: MPI fixes no order."""
        self.posted[self.rank] = buf.copy()
        self.barrier.wait()
        for r in [*range(self.rank + 1, self.size), *range(self.rank)]:
            np.add(buf, self.posted[r], out=buf)
        self.barrier.wait()

    def alltoall(self, send: np.ndarray, received: np.ndarray) -> None:
        self.posted[self.rank] = send.reshape(self.size, -1).copy()  # one chunk per rank
        self.barrier.wait()
        received.reshape(self.size, -1)[...] = [message[self.rank] for message in self.posted]
        self.barrier.wait()


def run_threads(works: list) -> None:
    """Each of ``works`` on a thread of its own, all at once; the first failure is raised."""
    errors = []

    def guarded(work):
        try:
            work()
        except BaseException as e:  # re-raised below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(work,)) for work in works]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a simulated rank hung"
    if errors:
        raise errors[0]


def reference_tree(shards: list[np.ndarray]) -> np.ndarray:
    """The documented pairwise tree, written out plainly: g_i += g_(i+s), s = 1, 2, 4, …"""
    tree, stride = [g.copy() for g in shards], 1
    while stride < len(tree):
        for i in range(0, len(tree) - stride, 2 * stride):
            tree[i] = tree[i] + tree[i + stride]
        stride *= 2
    return tree[0]


@pytest.mark.parametrize("n", [37, 5003], ids=["short", "blocks"])  # fused_sums.c's BLOCK
@pytest.mark.parametrize("scatter", [False, True, None], ids=["allgather", "alltoall", "auto"])
@pytest.mark.parametrize("V", range(1, 10))
def test_every_world_size_computes_the_same_tree(V, scatter, n):
    """For every P (up to V + 2: ranks without shards) and every transport (auto: the
    Allreduce of two ranks holding the root's two children, when V is a power of two),
    the subtree covers partition the shards, and ``reduce`` gives the reference's bits
    on every rank, whether its additions run as the fused kernel's one pass or as NumPy
    calls."""
    rng = np.random.default_rng(V)
    scales = 10.0 ** rng.integers(-6, 6, V)  # shards of very different sizes
    shards = [(rng.standard_normal(n) * c).astype(np.float32) for c in scales]
    want = reference_tree(shards).tobytes()
    for P in range(1, V + 3):
        posted, barrier = [None] * P, threading.Barrier(P, timeout=30)
        worlds = [ThreadRank(r, P, posted, barrier) for r in range(P)]
        ranks = [OrderedSum(n, np.dtype(np.float32), w, V, scatter) for w in worlds]
        covered = sorted(v for r in ranks for v in r.my_pieces)
        assert covered == list(range(V))
        for r in ranks:
            own = r.my_pieces
            cover = tree_cover(own.start, own.stop, V)
            spans = [range(i, min(i + (1 << s), V)) for i, s in cover]
            assert [v for span in spans for v in span] == list(own), f"V={V} P={P}: {cover}"
            r.piece_grads[...] = np.reshape(shards[own.start : own.stop], (-1, n))
            r.votes[...] = [r.world.rank, 1, 2, 3, r.world.rank * 2]
        run_threads([r.reduce for r in ranks])
        pair = scatter is None and P == 2 and V > 1 and V & (V - 1) == 0
        assert all(r.pair == pair for r in ranks), f"V={V} P={P}"
        for r in ranks:
            assert r.grad.tobytes() == want, f"V={V} P={P} rank {r.world.rank}"
            fusable = fused.LIBRARY is not None and not r.scatter and r.local_ops
            assert isinstance(r.run_local, fused.SumPlan) == bool(fusable)
            want_votes = [P * (P - 1) / 2, P, 2 * P, 3 * P, P * (P - 1)]
            assert r.votes.tolist() == want_votes, "votes not summed over ranks"


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize(
    ("V", "scatter"),
    [(5, False), (5, True), (4, None)],
    ids=["allgather", "alltoall", "auto"],  # auto, V = 4: the Allreduce on 2 ranks
)
def test_every_transport_gives_one_ranks_bits_and_sums_the_votes(V, scatter):
    """The parameters, each step's loss and the noise scale's measurements (every
    NOISE_EVERY steps, from the shards' |g_v|²) are one rank's bits."""
    data = load_dataset("synthetic:300:12:3", seed=2)

    def train(world: World, scatter: bool | None) -> tuple[bytes, list, list, dict]:
        net = Network([12, 10, 3], "tanh", seed=4)
        reducer = OrderedSum(net.num_params, net.dtype, world, V, scatter)
        trainer = Trainer(net, SGD(0.1), data, world, 37, reducer)
        order, votes, losses = trainer.epoch_order(), [], []
        for step, lo in enumerate(range(0, 300, 37)):
            trainer.votes[:] = [world.rank == 0, step % 2 == 1, world.rank == 1, world.rank, 15]
            losses.append(trainer.train_step(order[lo : lo + 37]))
            votes.append(reducer.votes.tolist())
        return net.params.tobytes(), votes, losses, trainer.noise.take()

    world = World()
    params, votes, losses, noise = train(world, scatter)
    alone = train(World(MPI.COMM_SELF), None)
    assert (params, losses, noise) == (alone[0], alone[2], alone[3])
    ranks_sum, size = world.size * (world.size - 1) // 2, world.size
    want = [
        [1, size * (step % 2), int(size > 1), ranks_sum, 15 * size] for step in range(len(votes))
    ]
    assert votes == want


@pytest.mark.mpi(min_size=2)
def test_deterministic_trainer_matches_one_rank_bitwise():
    def train(world):
        net = Network([12, 10, 3], "tanh", seed=4)
        history = distnn.fit(
            net,
            "synthetic:300:12:3",
            schedule="sgd",
            lr=0.1,
            batch_size=37,
            epochs=2,
            seed=2,
            deterministic=True,
            virtual_shards=5,
            verbose=0,
            world=world,
        )
        return net.params.tobytes(), [(r["loss"], r["test_loss"], r["accuracy"]) for r in history]

    assert train(World()) == train(World(MPI.COMM_SELF))


@pytest.mark.parametrize("deterministic", [False, True])
def test_steady_state_steps_allocate_nothing_that_grows(deterministic):
    """Every buffer of a step exists after the first steps: full and short batches alike."""
    data = load_dataset("synthetic:4000:64:10", seed=0)
    peaks = []
    for B in (64, 1024):
        net = Network([64, 128, 64, 10], "relu", seed=0)
        world = World(MPI.COMM_SELF)
        reducer = make_reducer(net, world, virtual_shards=4 if deterministic else None)
        trainer = Trainer(net, Adam(0.01), data, world, B, reducer)
        batches = [np.arange(i * B, (i + 1) * B) for i in range(3)] + [np.arange(3 * B, 3 * B + 37)]
        for batch in batches:  # warm up: each batch size seen once
            trainer.train_step(batch)
        tracemalloc.start()
        for batch in batches * 2:
            trainer.train_step(batch)
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert current < 4096, f"{current} B kept after steady-state steps"
        peaks.append(peak)
    # NumPy's casting buffers are fixed (8192 elements); a batch of rows is 256 KiB here.
    assert peaks[0] < 96 * 1024 and peaks[1] < peaks[0] + 16 * 1024, peaks
