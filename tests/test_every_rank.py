"""Every rank, before it can hang (issue 24 part 3): a rank that never comes to ``fit``,
comes once less, or freezes while the run starts ends the job in one line (exit 77), and
a rank 0 frozen at any moment is named by rank 1. Hang guards only; no timing asserts.

Families: start-up (a rank absent from a run, as a script written for one rank does),
setup (a rank frozen during setup), rank 0 (rank 0 frozen early, repeated: the race
where rank 1 had not yet heard rank 0 finish a step and never judged).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import MPIEXEC, error_lines, guarded_run
from test_faults import fault_env, wait_for
from test_launch import DETERMINISTIC, alive, checkpoint_step, rank_pid

from distnn.errors import EXIT_HUNG

HANG = float(os.environ.get("DISTNN_HANG_GUARD", 120))  # seconds; a hang fails the test

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from mpi4py import MPI
    import distnn

    absent, fits = int(sys.argv[1]), int(sys.argv[2])
    rank = MPI.COMM_WORLD.Get_rank()
    x = np.random.default_rng(0).normal(size=(64, 4)); y = (x[:, 0] > 0).astype(int)
    for _ in range(fits - (rank == absent)):
        distnn.fit(distnn.Network([4, 8, 2], seed=0), x, y, epochs=2, verbose=0, watchdog=0.5)
    """
)


def _kill_left(tmp_path, ranks: int) -> None:
    for r in range(ranks):
        path = tmp_path / f"rank-{r}"
        if path.exists() and alive(pid := int(path.read_text())):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize(
    ("ranks", "absent", "fits"),
    [(2, 1, 1), (2, 0, 1), (3, 2, 1), (3, 0, 1), (2, 1, 2), (3, 0, 2)],
    ids=["2-rank1-never", "2-rank0-never", "3-rank2-never", "3-rank0-never",
         "2-rank1-once-less", "3-rank0-once-less"],
)  # fmt: skip
def test_startup_a_rank_that_never_comes_ends_the_job(tmp_path, ranks, absent, fits):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    command = [MPIEXEC, "-n", str(ranks), sys.executable, str(script), str(absent), str(fits)]
    result = guarded_run(command, timeout=HANG, cwd=tmp_path)
    assert result.returncode != 0, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert f"rank {absent} did not start" in lines[0] and "watchdog" in lines[0], lines
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("ranks", "frozen"), [(2, 1), (2, 0), (3, 2), (3, 0)])
def test_setup_a_rank_frozen_while_starting_ends_the_job(tmp_path, ranks, frozen):
    args = [*DETERMINISTIC, "--schedule", "fault_schedules:Freezing", "--watchdog", "1"]
    env = {**os.environ, **fault_env(tmp_path, FREEZE_RANK=str(frozen))}
    command = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "distnn.train", *args]
    try:
        result = guarded_run(command, timeout=HANG, cwd=tmp_path, env=env)
    finally:
        _kill_left(tmp_path, ranks)
    assert result.returncode == EXIT_HUNG, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and f"rank {frozen} went silent" in lines[0], result.stderr


@pytest.mark.parametrize("attempt", range(6))
def test_rank0_frozen_early_is_named_every_time(tmp_path, attempt):
    """Fast steps, rank 0 stopped once two checkpoints exist: on main about one try in
    two hung (rank 1 had not heard rank 0 finish a step, so it never judged)."""
    args = [*DETERMINISTIC, "--checkpoint-every", "20", "--watchdog", "3"]  # the later wins
    env = {**os.environ, **fault_env(tmp_path, STEP_DELAY="0")}
    command = [MPIEXEC, "-n", "3", sys.executable, "-m", "distnn.train", *args]
    job = subprocess.Popen(command, cwd=tmp_path, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_for(lambda: (tmp_path / "rank-0").exists() and checkpoint_step(tmp_path) >= 40)
        os.kill(rank_pid(tmp_path, 0), signal.SIGSTOP)
        try:
            _, err = job.communicate(timeout=HANG)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rank 0 frozen: the job hung for {HANG} s")
    finally:
        job.kill()
        _kill_left(tmp_path, 3)
    assert job.returncode == EXIT_HUNG, err
    lines = error_lines(err)
    assert len(lines) == 1 and "rank 0 went silent" in lines[0], err
