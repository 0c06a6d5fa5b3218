"""Every way out of one rank ends the whole job: within seconds, with one message, and a
status that says what happened (never 0, never 2, which means bad input).

A user schedule (tests/fault_schedules.py) leaves rank 0 or rank 1 of ``mpiexec -n 2``
during setup or at step 3: by an exception, ``sys.exit(0)``, ``sys.exit(3)``,
``os._exit(0)``, ``os._exit(2)`` or ``KeyboardInterrupt``. The hang guard is the
subprocess timeout; no assertion is made on how long it took.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MPIEXEC, launch

TESTS = Path(__file__).resolve().parent
ARGS = ["--dataset", "synthetic:200:4:3", "--hidden", "5", "--epochs", "3", "--save", "m.npz"]
WAYS = ["exception", "exit0", "exit3", "os_exit0", "os_exit2", "keyboard"]


@pytest.mark.parametrize("when", ["setup", "step"])
@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("how", WAYS)
def test_one_rank_leaving_ends_the_job(tmp_path, how, rank, when):
    env = {"PYTHONPATH": str(TESTS), "LEAVE_HOW": how, "LEAVE_RANK": str(rank),
           "LEAVE_WHEN": when}  # fmt: skip
    result = launch([*ARGS, "--schedule", "fault_schedules:Leaving"], ranks=2, env=env,
                    cwd=tmp_path, timeout=120)  # fmt: skip
    if how == "exception" and when == "setup":  # a schedule that cannot be built: bad input
        assert result.returncode == 2 and "cannot construct schedule" in result.stderr
    else:
        assert result.returncode not in (0, 2), (result.returncode, result.stderr)
    messages = [line for line in result.stderr.splitlines() if line.startswith("distnn:")]
    assert 1 <= len(messages) <= 2, result.stderr  # the rank's line (+ a 2nd Ctrl-C's)
    assert not (tmp_path / "m.npz").exists()


def test_a_signal_during_setup_stops_after_the_first_step(tmp_path):
    """SIGTERM while the data loads: one step, a checkpoint, exit 75; without a
    checkpoint folder, exit 130 (nothing to resume)."""
    for extra, status in ((["--checkpoint-dir", "ck"], 75), ([], 130)):
        proc = subprocess.Popen(
            [MPIEXEC, "-n", "2", sys.executable, "-m", "distnn.train", *ARGS, *extra,
             "--schedule", "fault_schedules:Slow"],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(TESTS), "PID_DIR": str(tmp_path),
                               "STEP_DELAY": "0.05"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not (tmp_path / "rank-1").exists():  # the schedule exists: setup under way
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.01)
        os.kill(int((tmp_path / "rank-1").read_text()), signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("the job hung after SIGTERM")
        assert proc.returncode == status, err
        # the signal lands while setup ends or in the first step (STEP_DELAY is 50 ms)
        assert "after step 1 (" in err or "after step 2 (" in err, err
        (tmp_path / "rank-1").unlink()
    assert len(list((tmp_path / "ck").glob("checkpoint-00000000[12].npz"))) == 1
