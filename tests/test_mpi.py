"""In-process MPI tests: run with `mpiexec -n 2` and `-n 4` `python -m pytest --with-mpi -m mpi`."""

import itertools

import numpy as np
import pytest
from mpi4py import MPI

import distnn
from distnn import Network
from distnn.errors import CollectiveError, ReplicaMismatchError
from distnn.parallel.reducers import shard_bounds
from distnn.parallel.world import World

pytestmark = pytest.mark.mpi(min_size=2)


def test_allreduce_sums_every_ranks_buffer():
    world = World()
    buf = np.arange(5, dtype=np.float32) + world.rank
    world.allreduce_sum(buf)
    expected = world.size * np.arange(5) + sum(range(world.size))
    np.testing.assert_array_equal(buf, expected)


def test_shards_cover_the_batch_and_differ_by_at_most_one():
    world = World()
    for batch in (1, world.size - 1, world.size, 7, 32, 33):
        bounds = [shard_bounds(batch, r, world.size) for r in range(world.size)]
        assert bounds[0][0] == 0 and bounds[-1][1] == batch
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
        sizes = [hi - lo for lo, hi in bounds]
        assert max(sizes) - min(sizes) <= 1


def train(
    world: World, batch_size: int, schedule: str = "adam", epochs: int = 2, overlap: bool = False
) -> Network:
    net = Network([12, 10, 3], "tanh", seed=4)
    distnn.fit(
        net,
        "synthetic:300:12:3",
        schedule=schedule,
        lr=0.05,
        batch_size=batch_size,
        epochs=epochs,
        seed=2,
        overlap=overlap,
        verbose=0,
        world=world,
    )
    return net


@pytest.mark.parametrize("batch_size", [1, 3, 32, 1000])
def test_replicas_identical_and_equal_to_one_rank(batch_size):
    """Every rank ends with the same bits; the same run on one rank agrees to rounding."""
    world = World()
    net = train(world, batch_size)
    everyone = world.comm.allgather(net.params.tobytes())
    assert all(params == everyone[0] for params in everyone)
    alone = train(World(MPI.COMM_SELF), batch_size)
    np.testing.assert_allclose(net.params, alone.params, rtol=0, atol=5e-5)


@pytest.mark.parametrize("batch_size", [3, 64])
def test_overlapped_allreduce_matches_the_fused_one(batch_size):
    world = World()
    fused = train(world, batch_size, schedule="sgd")
    overlapped = train(world, batch_size, schedule="sgd", overlap=True)
    everyone = world.comm.allgather(overlapped.params.tobytes())
    assert all(params == everyone[0] for params in everyone)
    np.testing.assert_allclose(overlapped.params, fused.params, rtol=0, atol=1e-6)


def test_replica_mismatch_stops_every_rank():
    world = World()
    params = np.ones(10, np.float32)
    world.check_in_sync(params, "now")  # in sync: no error
    if world.rank == world.size - 1:
        params[3] += 1e-3
    with pytest.raises(ReplicaMismatchError, match="out of sync"):
        world.check_in_sync(params, "now")


def test_one_ranks_setup_error_reaches_every_rank():
    world = World()
    message = "bad file" if world.rank == world.size - 1 else None
    agreed = world.gather_errors(message)
    assert agreed == f"bad file (on rank {world.size - 1})"
    assert world.gather_errors(None) is None


def test_fit_raises_one_ranks_bad_input_on_every_rank(tmp_path):
    """A data file only the last rank cannot read: every rank raises the same error."""
    world = World()
    path = tmp_path / f"data-{world.rank}.npz"  # tmp_path differs per rank
    x = np.zeros((20, 4), np.float32)
    rows = 20 if world.rank < world.size - 1 else 19
    np.savez(path, x=x, y=np.arange(rows) % 2)
    with pytest.raises(CollectiveError, match=rf"on rank {world.size - 1}"):
        distnn.fit(Network([4, 3, 2]), str(path), epochs=1, verbose=0, world=world)


def test_fit_and_evaluate_from_arrays_agree_on_every_rank():
    """The API on arrays: every rank ends with the same network and the same report."""
    world = World()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((203, 5)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    net = Network([5, 8, 2], "tanh", loss="cross-entropy", seed=1)
    history = distnn.fit(net, x, y, epochs=3, batch_size=16, verbose=0, world=world)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    report = distnn.evaluate(net, x, y, world=world)
    everyone = world.comm.allgather((net.params.tobytes(), report["loss"], history[-1]["loss"]))
    assert all(item == everyone[0] for item in everyone)
    assert report["accuracy"] > 0.8 and sum(map(sum, report["confusion_matrix"])) == 203
