"""In-process MPI tests: run with `mpiexec -n 2` and `-n 4` `python -m pytest --with-mpi -m mpi`."""

import itertools

import numpy as np
import pytest
from mpi4py import MPI

from distnn import Network
from distnn.data.load import load_dataset
from distnn.engine.schedules import make_schedule
from distnn.errors import ReplicaMismatchError
from distnn.parallel.trainer import Trainer, shard_bounds
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
    data = load_dataset("synthetic:300:12:3", seed=1)
    net = Network([12, 10, 3], "tanh", seed=4)
    trainer = Trainer(
        net, make_schedule(schedule, 0.05), data, world, batch_size, seed=2, overlap=overlap
    )
    for _ in range(epochs):
        trainer.train_epoch()
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
