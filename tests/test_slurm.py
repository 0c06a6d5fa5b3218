"""scripts/slurm/train.sbatch against a real single-node Slurm.

The module's fixture runs scripts/slurm/local-slurm.sh, which installs Debian's
slurmctld, slurmd, slurm-client and munge if they are missing (as root, with apt-get)
and starts them with a generated slurm.conf; the tests are skipped, with the reason,
where that cannot be done (not root, no apt-get, the install fails, or
DISTNN_SLURM_INSTALL=0 on a machine without Slurm). Every sbatch, srun and wait runs
under a timeout: an impossible request would otherwise wait in the queue forever.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import MPIEXEC

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "scripts" / "slurm" / "local-slurm.sh"
JOB_SCRIPT = ROOT / "scripts" / "slurm" / "train.sbatch"
TESTS = Path(__file__).parent
RANKS = 4
# The data and network of tests/test_faults.py: small, so a job takes a second or two.
COMMON = ["--dataset", "synthetic:400:8:3", "--hidden", "8", "--batch-size", "20", "--lr", "0.1"]

# Install + start took 7-16 s here from nothing installed (apt-get update included);
# the timeout allows for a slow mirror.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
# Every wait below is a hang guard, far above what a job takes on an idle machine (a
# few seconds): no test asserts how fast Slurm or a job is, only what happened.
HANG = 120


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """SLURM_CONF and PATH for a running local Slurm; the daemons stop after the module."""
    if sys.platform != "linux":
        pytest.skip("the local Slurm runs on Linux only")
    if os.geteuid() != 0:
        pytest.skip("starting slurmd (and installing Slurm) needs root")
    if os.environ.get("DISTNN_SLURM_INSTALL") == "0" and not shutil.which("slurmctld"):
        pytest.skip("Slurm is not installed and DISTNN_SLURM_INSTALL=0 forbids installing it")
    state = tmp_path_factory.mktemp("slurm")
    started = time.monotonic()
    try:
        setup = subprocess.run(
            [str(SETUP), "start", str(state)], capture_output=True, text=True, timeout=360
        )
    except subprocess.TimeoutExpired as e:
        subprocess.run([str(SETUP), "stop", str(state)], timeout=60)
        pytest.fail(f"local-slurm.sh start hung for 360 s:\n{e.stderr}")
    if setup.returncode == 3:
        pytest.skip(f"Slurm cannot be installed here: {setup.stderr.strip()[-500:]}")
    assert setup.returncode == 0, setup.stderr
    print(f"\nlocal Slurm up in {time.monotonic() - started:.1f} s")
    # The jobs inherit this environment (sbatch --export=ALL): the venv's python and
    # mpiexec first on PATH, the MPICH that mpi4py was built against.
    env = {
        **os.environ,
        "SLURM_CONF": str(state / "slurm.conf"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for name in [n for n in env if n.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
        if name != "SLURM_CONF":
            del env[name]  # a test run inside a real allocation must not leak it in
    yield env
    subprocess.run([str(SETUP), "stop", str(state)], timeout=60)


@pytest.fixture(autouse=True)
def no_jobs_left(slurm):
    """Cancel whatever a test left queued or running (e.g. after a timeout)."""
    yield
    subprocess.run(["scancel", "--user", str(os.geteuid())], env=slurm, timeout=30)


def overcommit() -> list[str]:
    """Four tasks on fewer CPUs need --overcommit (one CPU per task otherwise)."""
    return ["--overcommit"] if (os.cpu_count() or 1) < RANKS else []


def run(command, env, timeout, cwd=None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(map(str, command))} did not end in {timeout} s:\n{e.stderr}")


def sbatch_wait(slurm, tmp_path, args, extra_env=None, timeout=HANG + 60):
    """Submit train.sbatch and wait for its end; return (a result whose returncode is the
    job's exit code and stderr sbatch's, the job's log).

    Polls the job's state every 0.2 s rather than ``sbatch --wait``, whose own polling
    sleeps 2 s and then 8 s: a job of two seconds took ten.
    """
    env = {**slurm, **(extra_env or {})}
    command = [
        "sbatch",
        "--parsable",
        f"--chdir={tmp_path}",
        f"--output={tmp_path}/job-%j.out",
        *overcommit(),
        str(JOB_SCRIPT),
        *args,
    ]
    started = time.monotonic()
    submitted = run(command, env, 30, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    state = wait_until_finished(slurm, job_id, timeout)
    elapsed = time.monotonic() - started
    logs = sorted(tmp_path.glob("job-*.out"))
    log = logs[-1].read_text() if logs else ""
    print(f"\nsbatch train.sbatch, finished {state['JobState']}: {elapsed:.1f} s\n{log}")
    code, signal_number = (int(n) for n in state["ExitCode"].split(":"))  # "status:signal"
    status = 128 + signal_number if signal_number else code
    return subprocess.CompletedProcess(command, status, submitted.stdout, submitted.stderr), log


def wait_until_finished(slurm, job_id: str, timeout: float) -> dict:
    """The job's state once it has ended (polled every 0.2 s; a hang fails the test)."""
    deadline = time.monotonic() + timeout
    while (state := job_state(slurm, job_id))["JobState"] not in FINISHED:
        assert time.monotonic() < deadline, f"job still {state['JobState']} after {timeout} s"
        time.sleep(0.2)
    return state


def check_model(path: Path) -> None:
    with np.load(path) as f:
        assert {"W1", "b1", "W2", "b2"} <= set(f.files)
        assert f["W1"].shape == (8, 8) and f["W2"].shape == (3, 8)
        assert all(np.isfinite(f[k]).all() for k in ("W1", "b1", "W2", "b2"))


def test_sbatch_mpiexec_trains_and_checkpoints(slurm, tmp_path):
    result, log = sbatch_wait(slurm, tmp_path, [*COMMON, "--epochs", "3", "--save", "model.npz"])
    assert result.returncode == 0, result.stderr + log
    assert f"mpiexec -n {RANKS} python -m distnn.train --checkpoint-dir" in log
    assert f"{RANKS} rank(s)" in log
    assert "1 thread(s) per rank (from OPENBLAS_NUM_THREADS)" in log
    assert "done: test accuracy" in log
    assert "train.sbatch: distnn exited with status 0" in log
    check_model(tmp_path / "model.npz")
    # Checkpoints go to the shared default folder, named after the job.
    assert list((tmp_path / "checkpoints" / "distnn").glob("checkpoint-*.npz"))


def test_sbatch_srun_pmi2(slurm, tmp_path):
    result, log = sbatch_wait(
        slurm,
        tmp_path,
        [*COMMON, "--epochs", "3", "--save", "model.npz"],
        extra_env={"DISTNN_LAUNCH": "srun", "DISTNN_CHECKPOINT_DIR": str(tmp_path / "ck")},
    )
    assert result.returncode == 0, result.stderr + log
    assert f"srun --mpi=pmi2 --ntasks={RANKS}" in log
    assert f"{RANKS} rank(s)" in log  # one world, not four worlds of 1
    assert "done: test accuracy" in log
    check_model(tmp_path / "model.npz")
    assert list((tmp_path / "ck").glob("checkpoint-*.npz"))


def test_sbatch_without_resume_flags(slurm, tmp_path):
    """DISTNN_RESUME=0 leaves --checkpoint-dir and --resume out."""
    result, log = sbatch_wait(
        slurm, tmp_path, [*COMMON, "--epochs", "1"], extra_env={"DISTNN_RESUME": "0"}
    )
    assert result.returncode == 0, result.stderr + log
    assert "--resume" not in log and "--checkpoint-dir" not in log
    assert "done: test accuracy" in log
    assert not (tmp_path / "checkpoints").exists()


def test_plain_srun_is_refused_as_worlds_of_one(slurm, tmp_path):
    """srun without MPI support starts each task as its own world of 1: distnn stops."""
    result = run(
        [
            "srun",
            "--mpi=none",
            "--ntasks=2",
            *overcommit(),
            sys.executable,
            "-m",
            "distnn.train",
            *COMMON,
            "--epochs",
            "1",
        ],
        slurm,
        timeout=HANG,
        cwd=tmp_path,
    )
    print(result.stderr)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("distnn: error")]
    assert len(errors) == 2  # one per task
    assert all("SLURM_STEP_NUM_TASKS=2" in e and "world of 1" in e for e in errors)
    assert "srun --mpi=pmi2" in errors[0]
    assert "done:" not in result.stdout


@pytest.mark.skipif((os.cpu_count() or 1) >= RANKS, reason="only with fewer CPUs than ranks")
def test_more_tasks_than_cpus_without_overcommit_never_starts(slurm, tmp_path):
    """The gotcha behind --overcommit: Slurm queues the job, which then waits forever
    (for a second node the partition does not have); hence a timeout on every wait."""
    submitted = run(
        ["sbatch", "--parsable", f"--ntasks={RANKS}", str(JOB_SCRIPT)], slurm, 30, cwd=tmp_path
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    # The scheduler runs every second or so, sooner or later on a loaded machine: poll
    # until it has given the job its reason, which must be that the job cannot fit; the
    # job stays PENDING throughout.
    cannot_fit = ("PartitionConfig", "Resources", "PartitionNodeLimit")
    deadline = time.monotonic() + HANG
    while (state := job_state(slurm, job_id))["Reason"] not in cannot_fit:
        assert state["JobState"] == "PENDING", state
        assert time.monotonic() < deadline, f"no scheduling decision in {HANG} s: {state}"
        time.sleep(0.2)
    assert state["JobState"] == "PENDING", state


def job_state(slurm, job_id: str) -> dict:
    shown = run(["scontrol", "-o", "show", "job", job_id], slurm, timeout=30)
    assert shown.returncode == 0, shown.stderr
    return dict(f.split("=", 1) for f in shown.stdout.split() if "=" in f)


SLOW = [*COMMON, "--schedule", "fault_schedules:Slow", "--epochs", "5", "--save", "model.npz"]
FINISHED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OOM")


def signal_after_first_epoch(slurm, tmp_path, scancel_args, launch="mpiexec"):
    """Submit a slow job, run `scancel SCANCEL_ARGS JOBID` once it has trained an epoch,
    wait until the job has ended; return (final state, log, seconds from submission)."""
    # Slow sleeps per step so the job is still training when the signal comes: 100
    # steps of 20 ms, two to three seconds a run.
    env = {**slurm, "PYTHONPATH": str(TESTS), "STEP_DELAY": "0.02", "DISTNN_LAUNCH": launch}
    started = time.monotonic()
    submitted = run(
        [
            "sbatch",
            "--parsable",
            f"--chdir={tmp_path}",
            f"--output={tmp_path}/job-%j.out",
            *overcommit(),
            str(JOB_SCRIPT),
            *SLOW,
        ],
        env,
        timeout=30,
        cwd=tmp_path,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    log_path = tmp_path / f"job-{job_id}.out"

    deadline = time.monotonic() + HANG
    while "epoch 1/5" not in (log_path.read_text() if log_path.exists() else ""):
        if time.monotonic() > deadline:
            state = job_state(slurm, job_id)
            log = log_path.read_text() if log_path.exists() else "(no log)"
            pytest.fail(f"the job did not train its first epoch in {HANG} s: {state}\n{log}")
        time.sleep(0.05)
    signalled = run(["scancel", *scancel_args, job_id], slurm, timeout=30)
    assert signalled.returncode == 0, signalled.stderr

    state = wait_until_finished(slurm, job_id, HANG + 60)
    log = log_path.read_text()
    state["JobId"] = job_id
    return state, log, time.monotonic() - started


@pytest.mark.parametrize("launch", ["mpiexec", "srun"])
def test_signalled_job_checkpoints_requeues_and_resumes(slurm, tmp_path, launch):
    """SIGTERM to the job's steps, what `--signal=TERM@120` sends 120 s before the time
    limit: the ranks checkpoint and exit 75, the job requeues itself, the rerun resumes
    and ends with bit-for-bit the model of a run that never stopped."""
    state, log, elapsed = signal_after_first_epoch(slurm, tmp_path, ["--signal=TERM"], launch)
    job_id = state["JobId"]
    print(f"\nsubmitted, signalled, requeued and finished in {elapsed:.1f} s\n{log}")
    assert state["JobState"] == "COMPLETED", log
    assert state["ExitCode"] == "0:0"
    assert state["Restarts"] == "1"
    assert "distnn: stopped on request after step" in log
    assert "train.sbatch: distnn exited with status 75" in log
    assert f"requeueing job {job_id}" in log
    assert f"job {job_id} (restart 1)" in log
    assert "resuming at epoch" in log
    assert log.rstrip().endswith("train.sbatch: distnn exited with status 0")

    # The same training, never stopped, on as many ranks and BLAS threads.
    uninterrupted = [*SLOW[:-1], "reference.npz", "--quiet"]
    reference = run(
        [MPIEXEC, "-n", str(RANKS), sys.executable, "-m", "distnn.train", *uninterrupted],
        {**os.environ, "PYTHONPATH": str(TESTS), "OPENBLAS_NUM_THREADS": "1"},
        timeout=HANG,
        cwd=tmp_path,
    )
    assert reference.returncode == 0, reference.stderr
    with np.load(tmp_path / "model.npz") as got, np.load(tmp_path / "reference.npz") as want:
        for key in ("W1", "b1", "W2", "b2"):
            assert np.array_equal(got[key], want[key]), key


def test_cancelled_job_stays_cancelled(slurm, tmp_path):
    """`scancel JOBID`: SIGTERM to every process of the job, SIGKILL KillWait later.
    The job script must not requeue a job that is being cancelled.

    The ranks should also checkpoint and exit 75 within the grace time, but with the
    mpiexec launch each rank gets SIGTERM twice, from slurmstepd and from mpiexec
    (which got one too and passes it on), and distnn takes a second SIGTERM as "stop
    now" (the default action) if distnn did not ignore a repeated SIGTERM: it does, so every
    rank checkpoints and exits 75."""
    state, log, _ = signal_after_first_epoch(slurm, tmp_path, [])
    print(f"\n{log}")
    assert state["JobState"] == "CANCELLED", log
    assert state["Restarts"] == "0"
    assert "requeueing" not in log
    assert not (tmp_path / "model.npz").exists()
    # Epoch-end checkpoints are there either way.
    assert list((tmp_path / "checkpoints" / "distnn").glob("checkpoint-*.npz"))
    assert "distnn exited with status 75" in log, log
    assert "distnn: stopped on request after step" in log
    assert "checkpoint written; job is" in log and "not requeued" in log
