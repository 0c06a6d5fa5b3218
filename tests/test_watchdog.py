"""A frozen rank under plain mpirun (no supervisor) ends the job with exit 77 and one
line naming it, instead of hanging forever; the newest checkpoint stays valid, and a
run that is merely slow is left alone. Faults: SIGSTOP of a rank found by its pid."""

from __future__ import annotations

import os
import signal

import pytest
from conftest import launch
from test_faults import digest, fault_env, finish, start_job, wait_for
from test_launch import DETERMINISTIC, alive, checkpoint_step, rank_pid

from distnn.errors import EXIT_HUNG


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("undisturbed")
    result = launch(DETERMINISTIC, ranks=1, cwd=work, env=fault_env(work))
    assert result.returncode == 0, result.stderr
    return digest(work / "m.npz")


@pytest.mark.parametrize(("ranks", "frozen"), [(2, 1), (2, 0), (3, 2), (3, 0), (3, 1)])
def test_a_frozen_rank_ends_the_job_naming_it(tmp_path, undisturbed, ranks, frozen):
    env = fault_env(tmp_path, STEP_DELAY="0.02")
    job = start_job([*DETERMINISTIC, "--watchdog", "2"], ranks, env, tmp_path)
    wait_for(lambda: checkpoint_step(tmp_path) >= 20 and (tmp_path / f"rank-{frozen}").exists())
    pids = [rank_pid(tmp_path, r) for r in range(ranks)]
    os.kill(pids[frozen], signal.SIGSTOP)
    try:
        status, _, err = finish(job)
        wait_for(lambda: not any(alive(p) for p in pids))  # the frozen one too: none is left
    finally:  # only if the test failed
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert status == EXIT_HUNG, err
    lines = [line for line in err.splitlines() if line.startswith("distnn: error")]
    assert len(lines) == 1, err
    assert f"rank {frozen} went silent" in lines[0] and "--watchdog 2" in lines[0], lines
    assert "Traceback" not in err
    # The newest checkpoint is whole: resuming (on any number of ranks) ends with the
    # bytes of the run that never froze.
    resumed = launch([*DETERMINISTIC, "--resume"], ranks=2, cwd=tmp_path, env=fault_env(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    assert digest(tmp_path / "m.npz") == undisturbed


def test_slow_steps_are_not_a_hang(tmp_path):
    """The limit follows the measured steps: 0.3 s steps never trip a 1 s floor."""
    args = [*DETERMINISTIC, "--epochs", "1", "--watchdog", "1", "--batch-size", "400"]
    result = launch(args, ranks=2, cwd=tmp_path, env=fault_env(tmp_path, STEP_DELAY="0.3"))
    assert result.returncode == 0, result.stderr
    assert "went silent" not in result.stderr


def test_watchdog_option_is_checked():
    result = launch(["--watchdog", "-1"])
    assert result.returncode == 2 and "--watchdog must be 0 or more" in result.stderr


def test_heartbeats_thin_out_with_the_world_size():
    """A listener hears about 4,000 beats a second at most, whatever the world size."""
    from distnn.parallel.heartbeat import INTERVAL_S, interval_for

    assert interval_for(2) == INTERVAL_S
    for ranks in (250, 1000, 4096, 65536):
        assert ranks / interval_for(ranks) <= 4000
