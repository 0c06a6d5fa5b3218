"""The rank that died is named: under plain ``mpiexec`` and under ``distnn.launch``, at 2
and 3 ranks, each rank in turn (rank 0 included), for every way of dying.

A user schedule (tests/fault_schedules.py ``Dying``) ends rank R at step 2 of the job's
first attempt: SIGKILL, a real segmentation fault, ``os._exit(3)``, or SIGTERM to that
rank alone. MPICH's hydra SIGKILLs every other rank within milliseconds, so today a rank
killed by a signal ends the job with hydra's status (9, 11) and no ``distnn:`` line at
all. Every job runs under a hang guard; nothing asserts how long it took.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import MPIEXEC, guarded_run

from distnn.io.metrics_log import event_records
from distnn.parallel.reducers import NUM_VOTES, Vote
from distnn.run.stopping import signalled

TESTS = Path(__file__).resolve().parent
HANG = 120.0
# 40 rows, batches of 10: 4 steps an epoch; rank R dies at step 2.
DATA = ["--dataset", "synthetic:40:4:2", "--hidden", "4", "--batch-size", "10", "--quiet"]
TRAIN = [*DATA, "--epochs", "3", "--schedule", "fault_schedules:Dying"]
POSITIONS = [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]  # (ranks, the rank that dies)


def expected(how: str, rank: int, pid: int) -> str:
    """The line that must name the rank, as a regular expression."""
    return {
        "sigkill": rf"distnn: rank {rank} \(pid {pid}\) died: killed by SIGKILL",
        "sigsegv": rf"distnn: rank {rank} \(pid {pid}\) died: killed by SIGSEGV",
        "os_exit": rf"distnn: rank {rank} called os\._exit\(3\)",
        "sigterm": rf"distnn: stopped on request after step \d+ \(SIGTERM, first to rank {rank}\)",
    }[how]


# hydra's status for a rank killed by a signal is the signal's number, as before
PLAIN_STATUS = {"sigkill": 9, "sigsegv": 11, "sigterm": 130}


def env_for(tmp_path: Path, how: str, rank: int) -> dict:
    return {
        **os.environ, "PYTHONPATH": str(TESTS), "PID_DIR": str(tmp_path),
        "DIE_HOW": how, "DIE_RANK": str(rank), "DIE_STEP": "2",
    }  # fmt: skip


def pid_of(tmp_path: Path, rank: int) -> int:
    return int((tmp_path / f"rank-{rank}").read_text())


def named_ranks(stderr: str) -> set[int]:
    """Every rank a ``distnn:`` line names as the one that died or was signalled."""
    pattern = r"^distnn: rank (\d+) |\((?:SIGTERM|SIGINT), first to rank (\d+)\)"
    found = set()
    for line in stderr.splitlines():
        if line.startswith("distnn:"):
            for match in re.finditer(pattern, line):
                found.add(int(match.group(1) or match.group(2)))
    return found


@pytest.mark.parametrize(("ranks", "rank"), POSITIONS)
@pytest.mark.parametrize("how", ["sigkill", "sigsegv", "os_exit", "sigterm"])
def test_plain_mpiexec_names_the_rank(tmp_path, how, ranks, rank):
    command = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "distnn.train", *TRAIN]
    result = guarded_run(command, HANG, env=env_for(tmp_path, how, rank), cwd=tmp_path)
    assert result.returncode != 0, result.stderr
    if how in PLAIN_STATUS:
        assert result.returncode == PLAIN_STATUS[how], (result.returncode, result.stderr)
    line = expected(how, rank, pid_of(tmp_path, rank))
    assert re.search(line, result.stderr, re.MULTILINE), result.stderr
    assert named_ranks(result.stderr) == {rank}, result.stderr  # no survivor blamed


@pytest.mark.parametrize(("ranks", "rank"), POSITIONS)
@pytest.mark.parametrize("how", ["sigkill", "sigsegv", "os_exit", "sigterm"])
def test_distnn_launch_names_the_rank(tmp_path, how, ranks, rank):
    """The supervisor's record of the attempt blames the rank (a signal stops the job with
    a checkpoint instead: exit 75, the rank named on the way through); no restart."""
    command = [
        sys.executable, "-m", "distnn.launch", "--max-ranks", str(ranks), "--max-restarts",
        "0", "--backoff", "0", "--", *TRAIN, "--checkpoint-dir", "ck", "--metrics", "m.jsonl",
    ]  # fmt: skip
    result = guarded_run(command, HANG, env=env_for(tmp_path, how, rank), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    pid = pid_of(tmp_path, rank)
    ends = [e for e in event_records(str(tmp_path / "m.jsonl")) if e["event"] == "attempt_end"]
    assert len(ends) == 1, output
    if how == "sigterm":
        assert result.returncode == 75 and ends[0]["outcome"] == "preempted", output
        assert re.search(expected(how, rank, pid), result.stderr, re.MULTILINE), output
        return
    assert ends[0]["outcome"] == "failed" and ends[0]["failed_ranks"] == [rank], json.dumps(ends)
    assert f"rank {rank} failed: " in ends[0]["cause"], ends[0]
    if how != "os_exit":
        name = "SIGKILL" if how == "sigkill" else "SIGSEGV"
        assert f"killed by {name} (pid {pid})" in ends[0]["cause"], ends[0]
    assert re.search(expected(how, rank, pid), result.stderr, re.MULTILINE), output
    assert named_ranks(result.stderr) == {rank}, output


@pytest.mark.parametrize("repeat", range(6))
def test_sigkill_of_rank_0_is_named_every_time(tmp_path, repeat):
    """The line is not a race won most of the time: the same kill, again and again."""
    command = [MPIEXEC, "-n", "3", sys.executable, "-m", "distnn.train", *TRAIN]
    result = guarded_run(command, HANG, env=env_for(tmp_path, "sigkill", 0), cwd=tmp_path)
    assert result.returncode == 9, result.stderr
    line = expected("sigkill", 0, pid_of(tmp_path, 0))
    assert len(re.findall(line, result.stderr)) == 1, result.stderr


def test_sigterm_to_the_watching_parent_reaches_the_rank(tmp_path):
    """``kill PID`` of either process of a rank asks it to stop: the parent, which only
    waits, passes SIGTERM on to the rank it watches."""
    env = {**os.environ, "PYTHONPATH": str(TESTS), "PID_DIR": str(tmp_path), "STEP_DELAY": "0.05"}
    args = [*DATA, "--epochs", "1000", "--schedule", "fault_schedules:Slow"]
    proc = subprocess.Popen(
        [MPIEXEC, "-n", "2", sys.executable, "-m", "distnn.train", *args],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + HANG
    while not (tmp_path / "rank-1").exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    with open(f"/proc/{pid_of(tmp_path, 1)}/stat") as f:
        parent = int(f.read().rsplit(")", 1)[1].split()[1])
    os.kill(parent, signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the job hung after SIGTERM to a rank's parent")
    assert proc.returncode == 130, err
    assert "(SIGTERM, first to rank 1)" in err, err


def votes(*asked: tuple[int, int]) -> np.ndarray:
    """The world's summed votes when each (rank, signal) in ``asked`` asked to stop."""
    summed = np.zeros(NUM_VOTES)
    for rank, signum in asked:
        summed[[Vote.SIGNAL, Vote.SIGNALLED_RANK, Vote.SIGNAL_NUMBER]] += (1, rank, signum)
    return summed


@pytest.mark.parametrize(
    ("asked", "said"),
    [
        ([(0, signal.SIGTERM)], "SIGTERM, first to rank 0"),
        ([(5, signal.SIGINT)], "SIGINT, first to rank 5"),
        (
            [(0, signal.SIGTERM), (1, signal.SIGTERM), (2, signal.SIGTERM)],
            "SIGTERM, first to 3 ranks",
        ),
        ([(0, signal.SIGINT), (1, signal.SIGTERM)], "SIGTERM/SIGINT, first to 2 ranks"),
    ],
)
def test_the_summed_votes_name_the_signal_and_the_rank(asked, said):
    assert signalled(votes(*asked)) == said
