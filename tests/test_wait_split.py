"""An epoch's Allreduce seconds split into waiting for the slowest rank and the transfer:
a rank delayed by a known sleep per step shows up as ``wait_s`` on the others."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from conftest import MPIEXEC, guarded_run

DELAY_S, STEPS = 0.02, 30

SCRIPT = textwrap.dedent(
    f"""
    import json, sys, time
    import distnn
    from distnn.parallel.world import World

    world = World()

    class Late:  # rank 1 arrives {DELAY_S} s late at every step's Allreduce
        def on_epoch_end(self, record):
            pass

        def on_step(self, step, loss):
            if world.rank == 1:
                time.sleep({DELAY_S})

    net = distnn.Network([64, 8, 10], seed=0)
    history = distnn.fit(net, "digits", epochs=1, batch_size=48, callbacks=[Late()],
                         verbose=0, world=world)
    if world.rank == 0:
        print(json.dumps(history[0]))
    """
)


@pytest.mark.slow
def test_a_late_rank_shows_as_wait_not_transfer(tmp_path):
    script = tmp_path / "late.py"
    script.write_text(SCRIPT)
    done = guarded_run([MPIEXEC, "-n", "2", sys.executable, str(script)], timeout=240)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    steps = record["step"]
    assert steps == STEPS
    assert record["wait_s"] + record["transfer_s"] == pytest.approx(record["allreduce_s"])
    # rank 0 waited for rank 1's sleep at every step but the first
    assert record["wait_s"] >= 0.8 * DELAY_S * (steps - 1)
    assert record["transfer_s"] < record["wait_s"]  # the sleep is not counted as transfer


def test_one_rank_never_waits():
    import distnn

    net = distnn.Network([64, 8, 10], seed=0)
    (record,) = distnn.fit(net, "digits", epochs=1, verbose=0)
    assert record["wait_s"] == 0.0
    assert record["transfer_s"] == record["allreduce_s"]
