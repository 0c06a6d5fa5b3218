"""Faults injected through real mechanisms: a raising user schedule, SIGKILL, SIGTERM, SIGINT."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import MPIEXEC, error_lines, launch

from distnn.io.checkpoints import list_checkpoints

TESTS = Path(__file__).parent
COMMON = ["--dataset", "synthetic:400:8:3", "--hidden", "8", "--batch-size", "20", "--lr", "0.1"]


def fault_env(tmp_path, **extra) -> dict:
    return {"PYTHONPATH": str(TESTS), "PID_DIR": str(tmp_path), **extra}


def start_job(args, ranks, env, cwd):
    command = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "distnn.train", *args]
    return subprocess.Popen(
        command,
        cwd=cwd,
        env={**os.environ, **env},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


# Hang guards only: a loaded machine may be slow, so no test asserts how fast a job
# reacts, only that it ends (well within these) with the right outcome.
HANG = 120.0


def wait_for(predicate, timeout=HANG):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the job")
        time.sleep(0.05)


def finish(proc, timeout=HANG):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"job hung for {timeout} s after the fault")
    return proc.returncode, out, err


def weights(path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files if k[0] in "Wb"}


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize(("ranks", "failing"), [(2, 1), (4, 3), (2, 0), (4, 0)])
def test_exception_on_one_rank_ends_the_whole_job(tmp_path, ranks, failing):
    """Reported once, also on rank 0 (whose MPI_Abort may return under hydra)."""
    env = fault_env(tmp_path, FAULT_RANK=str(failing), FAULT_STEP="5")
    # The job must end (launch fails the test on a hang) and say why; how fast it
    # aborts is reported, not asserted.
    start = time.monotonic()
    result = launch(
        [*COMMON, "--epochs", "50", "--schedule", "fault_schedules:Failing"],
        ranks=ranks,
        env=env,
        cwd=tmp_path,
        timeout=HANG,
    )
    print(f"exception on rank {failing} to job exit: {time.monotonic() - start:.1f} s")
    assert result.returncode != 0
    assert result.stderr.count("failed, aborting the job") == 1, result.stderr
    assert result.stderr.count(f"distnn: rank {failing} failed") == 1, result.stderr
    assert "injected fault at step 5" in result.stderr
    assert "done:" not in result.stdout, "the other ranks trained on"


@pytest.mark.parametrize("ranks", [2, 4])
def test_sigkill_of_one_rank_ends_the_job_and_keeps_the_checkpoint(tmp_path, ranks):
    args = [
        *COMMON,
        "--epochs",
        "1000",
        "--schedule",
        "fault_schedules:Slow",
        "--checkpoint-dir",
        "ck",
        "--checkpoint-every",
        "10",
    ]
    proc = start_job(args, ranks, fault_env(tmp_path, STEP_DELAY="0.01"), tmp_path)
    wait_for(lambda: len(list_checkpoints(str(tmp_path / "ck"))) >= 2)
    victim = int((tmp_path / f"rank-{ranks - 1}").read_text())
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    code, _, _ = finish(proc)
    print(f"SIGKILL to job exit at {ranks} ranks: {time.monotonic() - killed_at:.3f} s")
    assert code != 0
    newest = list_checkpoints(str(tmp_path / "ck"))[0]
    resumed = launch(
        [
            *COMMON,
            "--epochs",
            "1",
            "--checkpoint-dir",
            "ck",
            "--resume",
            "--schedule",
            "fault_schedules:Slow",
        ],
        ranks=2,
        env=fault_env(tmp_path),
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "skipped" not in resumed.stdout, f"{newest} was damaged: {resumed.stdout}"


@pytest.mark.parametrize(
    "ranks, target, sig",
    [
        (2, "rank", signal.SIGTERM),
        (4, "rank", signal.SIGINT),
        (2, "launcher", signal.SIGTERM),
        (2, "launcher", signal.SIGINT),
    ],
)
def test_preemption_checkpoints_and_resume_is_bitwise(tmp_path, ranks, target, sig):
    args = [*COMMON, "--epochs", "6", "--schedule", "fault_schedules:Slow"]
    whole = launch(
        [*args, "--save", "whole.npz"], ranks=ranks, cwd=tmp_path, env=fault_env(tmp_path)
    )
    assert whole.returncode == 0, whole.stderr

    ck = ["--checkpoint-dir", "ck", "--save", "resumed.npz"]
    proc = start_job([*args, *ck], ranks, fault_env(tmp_path, STEP_DELAY="0.01"), tmp_path)
    wait_for(lambda: list_checkpoints(str(tmp_path / "ck")))  # first epoch done
    pid = proc.pid if target == "launcher" else int((tmp_path / "rank-1").read_text())
    os.kill(pid, sig)
    signalled = time.monotonic()
    code, _, err = finish(proc)
    print(f"{sig.name} to {target} → exit at {ranks} ranks: {time.monotonic() - signalled:.3f} s")
    assert code == 75, err
    assert "--resume" in err and not (tmp_path / "resumed.npz").exists()

    resumed = launch([*args, *ck, "--resume"], ranks=ranks, cwd=tmp_path, env=fault_env(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(tmp_path / "whole.npz"), weights(tmp_path / "resumed.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a), "resume is not bit-for-bit"


def test_a_preempted_deterministic_run_resumes_on_other_ranks_to_the_same_bits(tmp_path):
    """SIGTERM mid-run on 5 ranks (the Alltoall transport), resume on 3: the model of an
    uninterrupted 2-rank run, byte for byte."""
    args = [*COMMON, "--epochs", "6", "--schedule", "fault_schedules:Slow", "--deterministic"]
    whole = launch([*args, "--save", "whole.npz"], ranks=2, cwd=tmp_path, env=fault_env(tmp_path))
    assert whole.returncode == 0, whole.stderr

    ck = ["--checkpoint-dir", "ck", "--save", "resumed.npz"]
    proc = start_job([*args, *ck], 5, fault_env(tmp_path, STEP_DELAY="0.01"), tmp_path)
    wait_for(lambda: list_checkpoints(str(tmp_path / "ck")))  # first epoch done
    os.kill(int((tmp_path / "rank-1").read_text()), signal.SIGTERM)
    code, _, err = finish(proc)
    assert code == 75, err

    resumed = launch([*args, *ck, "--resume"], ranks=3, cwd=tmp_path, env=fault_env(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(tmp_path / "whole.npz"), weights(tmp_path / "resumed.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a), "resume is not bit-for-bit"


def test_resume_on_another_number_of_ranks(tmp_path):
    args = [*COMMON, "--schedule", "sgd", "--quiet"]
    whole = launch([*args, "--epochs", "3", "--save", "whole.npz"], ranks=4, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    first = launch([*args, "--epochs", "2", "--checkpoint-dir", "ck"], ranks=4, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    for ranks in (1, 2, 4):
        ckdir = tmp_path / f"ck{ranks}"
        ckdir.mkdir()
        newest = list_checkpoints(str(tmp_path / "ck"))[0]
        (ckdir / Path(newest).name).write_bytes(Path(newest).read_bytes())
        out = f"r{ranks}.npz"
        resumed = launch(
            [*args, "--epochs", "3", "--checkpoint-dir", str(ckdir), "--resume", "--save", out],
            ranks=ranks,
            cwd=tmp_path,
        )
        assert resumed.returncode == 0, resumed.stderr
        a, b = weights(tmp_path / "whole.npz"), weights(tmp_path / out)
        for k in a:
            if ranks == 4:
                assert np.array_equal(a[k], b[k])
            else:
                np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5)


def test_truncated_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    args = [*COMMON, "--schedule", "sgd", "--checkpoint-dir", "ck"]
    assert launch([*args, "--epochs", "3"], cwd=tmp_path).returncode == 0
    paths = list_checkpoints(str(tmp_path / "ck"))
    data = Path(paths[0]).read_bytes()
    Path(paths[0]).write_bytes(data[: len(data) // 2])
    before = digest(paths[1])
    result = launch([*args, "--epochs", "3", "--resume"], ranks=2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"skipped ck/{Path(paths[0]).name}" in result.stdout
    assert digest(paths[1]) == before


def test_divergence_stops_with_a_clear_error_and_keeps_good_checkpoints(tmp_path):
    args = [
        "--dataset",
        "synthetic:400:8:3",
        "--activation",
        "relu",
        "--activations",
        "relu,identity",
        "--schedule",
        "sgd",
        "--lr",
        "1e4",
        "--epochs",
        "50",
        "--checkpoint-dir",
        "ck",
        "--checkpoint-every",
        "1",
    ]
    result = launch(args, ranks=2, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    (line,) = error_lines(result.stderr)
    assert "diverged" in line and "learning rate" in line and "step" in line
    for path in list_checkpoints(str(tmp_path / "ck")):
        with np.load(path) as f:
            assert np.all(np.isfinite(f["params"]))


def test_a_gradient_that_overflows_adams_state_is_divergence_without_numpy_warnings(tmp_path):
    """Adam's v (an average of g²) turns inf while the weights stay finite (each step is then
    m/∞ = 0): once an exit 0 with a frozen model and a NumPy warning from every rank."""
    args = ["--activation", "relu", "--schedule", "adam", "--lr", "1e6", "--epochs", "3"]
    result = launch([*args, "--quiet"], ranks=2, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    (line,) = error_lines(result.stderr)
    assert "overflowed the schedule's state 'v'" in line and "learning rate" in line
    assert "Warning" not in result.stderr, result.stderr
