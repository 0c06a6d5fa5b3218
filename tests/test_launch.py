"""``python -m distnn.launch``: a supervisor that survives lost and frozen ranks with the
undisturbed run's bytes (``--deterministic``), and never retries what cannot succeed.

Faults come through real mechanisms: SIGKILL and SIGSTOP of a rank found by its pid,
a raising user schedule, a changed slots file, SIGTERM to the supervisor. Every job
runs under a hang guard; no assertion on how fast anything happens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import launch
from test_faults import HANG, digest, fault_env, finish, wait_for

from distnn.io.checkpoints import list_checkpoints, newest_step
from distnn.io.metrics_log import epoch_records, event_records
from distnn.supervisor.policy import Failure, Limits, RestartPolicy, world_size
from distnn.supervisor.stragglers import straggler

TESTS = Path(__file__).parent
# 4 epochs of 50 steps; a checkpoint every 10 steps. V = 4 virtual shards.
TRAIN = [
    "--dataset", "synthetic:2000:16:4", "--hidden", "24", "--batch-size", "40",
    "--epochs", "4", "--seed", "3", "--schedule", "fault_schedules:Slow", "--lr", "0.05",
    "--checkpoint-dir", "ck", "--checkpoint-every", "10", "--metrics", "m.jsonl",
    "--save", "m.npz", "--quiet",
]  # fmt: skip
DETERMINISTIC = [*TRAIN, "--deterministic"]
WATCH = ["--hang-timeout", "3", "--startup-timeout", "60", "--backoff", "0.1"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, str]:
    """The undisturbed runs' model bytes: deterministic (any ranks) and default (4 ranks)."""
    hashes = {}
    for mode, args, ranks in (("deterministic", DETERMINISTIC, 1), ("default", TRAIN, 4)):
        work = tmp_path_factory.mktemp(mode)
        result = launch(args, ranks=ranks, cwd=work, env=fault_env(work))
        assert result.returncode == 0, result.stderr
        hashes[mode] = digest(work / "m.npz")
    return hashes


def supervise(tmp_path, args, env=None, **extra_env) -> subprocess.Popen:
    command = [sys.executable, "-m", "distnn.launch", *args]
    environment = {**os.environ, **fault_env(tmp_path, STEP_DELAY="0.02"), **extra_env}
    environment.update(env or {})
    return subprocess.Popen(
        command, cwd=tmp_path, env=environment, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def checkpoint_step(tmp_path) -> int:
    return newest_step(str(tmp_path / "ck"))


def rank_pid(tmp_path, rank: int) -> int:
    return int((tmp_path / f"rank-{rank}").read_text())


def events(tmp_path) -> list[dict]:
    return event_records(str(tmp_path / "m.jsonl"))


def outcomes(tmp_path) -> list[str]:
    return [e["outcome"] for e in events(tmp_path) if e["event"] == "attempt_end"]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for_progress(tmp_path, step: int) -> None:
    wait_for(lambda: checkpoint_step(tmp_path) >= step and (tmp_path / "rank-0").exists())


def test_sigkill_of_one_rank_restarts_to_the_undisturbed_bytes(tmp_path, reference):
    proc = supervise(tmp_path, ["--max-ranks", "4", *WATCH, "--", *DETERMINISTIC])
    wait_for_progress(tmp_path, 20)
    victim = rank_pid(tmp_path, 2)
    os.kill(victim, signal.SIGKILL)
    status, out, err = finish(proc)
    assert status == 0, out + err
    assert digest(tmp_path / "m.npz") == reference["deterministic"]
    assert outcomes(tmp_path) == ["failed", "done"], out
    failed = next(e for e in events(tmp_path) if e.get("outcome") == "failed")
    assert failed["reached"] >= 20 and failed["lost_steps"] >= 0
    summary = events(tmp_path)[-1]
    assert summary["event"] == "summary" and 0 < summary["training_s"] <= summary["wall_s"]
    assert "training" in out and not alive(victim)
    plotted = launch(["m.jsonl", "-o", "c.png"], cwd=tmp_path, module="distnn.plot")
    assert plotted.returncode == 0 and "4 epoch(s)" in plotted.stdout, (
        plotted.stderr
    )  # events skipped
    assert [r["epoch"] for r in epoch_records(str(tmp_path / "m.jsonl"))][-1] == 4


def test_shrink_to_the_free_slots_and_grow_back(tmp_path, reference):
    slots = tmp_path / "slots"
    slots.write_text("4\n")
    proc = supervise(
        tmp_path, ["--max-ranks", "4", "--slots-file", str(slots), *WATCH, "--", *DETERMINISTIC]
    )
    wait_for_progress(tmp_path, 20)
    slots.write_text("3\n")  # V = 4: 3 slots run 2 ranks
    os.kill(rank_pid(tmp_path, 1), signal.SIGKILL)
    wait_for(lambda: '"ranks": 2' in (tmp_path / "m.jsonl").read_text())
    shrunk_at = checkpoint_step(tmp_path)
    wait_for(lambda: checkpoint_step(tmp_path) >= shrunk_at + 20)
    slots.write_text("4\n")
    status, out, err = finish(proc)
    assert status == 0, out + err
    assert digest(tmp_path / "m.npz") == reference["deterministic"]
    starts = [e["ranks"] for e in events(tmp_path) if e["event"] == "attempt"]
    assert starts == [4, 2, 4], out
    assert outcomes(tmp_path) == ["failed", "grown", "done"], out
    grown = next(e for e in events(tmp_path) if e.get("outcome") == "grown")
    assert grown["lost_steps"] == 0


def test_a_frozen_rank_is_detected_torn_down_and_replaced(tmp_path, reference):
    proc = supervise(tmp_path, ["--max-ranks", "4", *WATCH, "--", *DETERMINISTIC])
    wait_for_progress(tmp_path, 20)
    frozen = rank_pid(tmp_path, 3)
    os.kill(frozen, signal.SIGSTOP)
    try:
        status, out, err = finish(proc)
    finally:
        if alive(frozen):
            os.kill(frozen, signal.SIGKILL)
    assert status == 0, out + err
    assert digest(tmp_path / "m.npz") == reference["deterministic"]
    hang = next(e for e in events(tmp_path) if e["event"] == "hang")
    assert hang["ranks"] == [3], hang
    assert "rank 3 went silent" in out
    assert outcomes(tmp_path) == ["hang", "done"]
    assert not alive(frozen)  # torn down, SIGKILL included


def test_sigterm_to_the_supervisor_checkpoints_and_exits_75(tmp_path, reference):
    proc = supervise(tmp_path, ["--max-ranks", "4", *WATCH, "--", *DETERMINISTIC])
    wait_for_progress(tmp_path, 20)
    proc.send_signal(signal.SIGTERM)
    status, out, err = finish(proc)
    assert status == 75, out + err
    assert outcomes(tmp_path) == ["stopped"]
    pids = [rank_pid(tmp_path, r) for r in range(4)]
    assert not any(alive(p) for p in pids)
    resumed = launch([*DETERMINISTIC, "--resume"], ranks=2, cwd=tmp_path, env=fault_env(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    assert digest(tmp_path / "m.npz") == reference["deterministic"]


def test_sigkill_of_the_supervisor_leaves_no_rank_training_unwatched(tmp_path, reference):
    proc = supervise(tmp_path, ["--max-ranks", "4", *WATCH, "--", *DETERMINISTIC])
    wait_for_progress(tmp_path, 20)
    pids = [rank_pid(tmp_path, r) for r in range(4)]
    proc.kill()
    finish(proc)
    wait_for(lambda: not any(alive(p) for p in pids))  # the launcher got SIGTERM: ranks stop
    resumed = launch([*DETERMINISTIC, "--resume"], ranks=3, cwd=tmp_path, env=fault_env(tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    assert digest(tmp_path / "m.npz") == reference["deterministic"]


def test_default_mode_skips_and_repeats_no_batch(tmp_path, reference):
    """Restarted on the same 4 ranks, the default mode ends with the bytes of the run that
    never stopped: every batch trained once, in order."""
    proc = supervise(tmp_path, ["--max-ranks", "4", *WATCH, "--", *TRAIN])
    wait_for_progress(tmp_path, 30)
    os.kill(rank_pid(tmp_path, 1), signal.SIGKILL)
    status, out, err = finish(proc)
    assert status == 0, out + err
    assert outcomes(tmp_path) == ["failed", "done"]
    assert digest(tmp_path / "m.npz") == reference["default"]


@pytest.mark.parametrize(
    ("train", "status"),
    [
        (["--dataset", "missing.npz"], 2),  # bad data: found by the job
        (["--activation", "identity", "--lr", "10", "--schedule", "sgd"], 3),  # diverges
    ],
)
def test_what_cannot_succeed_is_not_retried(tmp_path, train, status):
    proc = supervise(tmp_path, ["--max-ranks", "2", *WATCH, "--", *TRAIN, *train])
    code, out, err = finish(proc)
    assert code == status, out + err
    assert outcomes(tmp_path) == ["final"], out
    assert out.count("distnn.launch: attempt 1:") == 1 and "attempt 2" not in out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--max-ranks", "2", "--", *TRAIN, "--epochs", "0"], "--epochs"),
        (["--max-ranks", "2", "--", "--epochs", "2"], "needs --checkpoint-dir"),
        (["--", *TRAIN], "--max-ranks"),
        (["--max-ranks", "2", "--min-ranks", "3", "--", *TRAIN], "below --min-ranks"),
        (["--max-ranks", "x", "--", *TRAIN], "--max-ranks"),
        (["--max-ranks", "2", "--", *TRAIN, "--metrics", "/dev/null"], "--metrics /dev/null"),
        (["--max-ranks", "2", "--", *TRAIN, "--save", "ck"], "--save ck"),
    ],
)
def test_bad_options_start_nothing(tmp_path, args, words):
    proc = supervise(tmp_path, args)
    code, out, err = finish(proc)
    assert code == 2, out + err
    lines = [line for line in err.splitlines() if line.startswith("distnn: error")]
    assert len(lines) == 1 and words in lines[0], err
    assert not (tmp_path / "ck").exists() and "attempt" not in out


def test_srun_outside_slurm_is_one_line(tmp_path):
    only_python = {"PATH": str(Path(sys.executable).parent)}  # no srun there
    proc = supervise(
        tmp_path, ["--max-ranks", "2", "--launcher", "srun", "--", *TRAIN], only_python
    )
    code, out, err = finish(proc)
    assert code == 2 and "no srun on PATH" in err and "Traceback" not in err, err
    assert "attempt" not in out


def test_a_crash_loop_ends_after_the_budget_with_checkpoints_intact(tmp_path):
    args = ["--max-ranks", "2", "--max-restarts", "2", *WATCH, "--"]
    train = [*TRAIN, "--schedule", "fault_schedules:FailingLater", "--checkpoint-every", "2"]
    proc = supervise(tmp_path, [*args, *train], FAULT_RANK="1", FAULT_AFTER="5")
    status, out, err = finish(proc)
    assert status == 76, out + err
    assert outcomes(tmp_path) == ["failed", "failed", "failed"], out
    ends = [e for e in events(tmp_path) if e["event"] == "attempt_end"]
    for end in ends:  # named by the failing rank's own record, not guessed from stderr
        assert end["failed_ranks"] == [1], end
        assert end["cause"].startswith("rank 1 failed: RuntimeError: injected fault at step")
    assert events(tmp_path)[-2]["event"] == "give_up"
    assert "--max-restarts 2" in out
    with np.load(list_checkpoints(str(tmp_path / "ck"))[0]) as newest:
        assert int(newest["step"]) >= 12 and np.isfinite(newest["params"]).all()
    mended = fault_env(tmp_path, FAULT_RANK="1", FAULT_AFTER="100000")  # the bug fixed
    resumed = launch([*train, "--resume"], ranks=2, cwd=tmp_path, env=mended)
    assert resumed.returncode == 0, resumed.stderr  # the checkpoints resume


def test_the_same_failure_at_the_same_step_twice_gives_up(tmp_path):
    train = [*TRAIN, "--schedule", "fault_schedules:Failing", "--checkpoint-every", "100"]
    proc = supervise(tmp_path, ["--max-ranks", "2", *WATCH, "--", *train],
                     FAULT_RANK="0", FAULT_STEP="7")  # fmt: skip
    status, out, err = finish(proc)
    assert status == 76, out + err
    assert outcomes(tmp_path) == ["failed", "failed"]
    assert "the same failure twice" in out
    assert "rank 0 failed: RuntimeError: injected fault at step 7; job status" in out


def test_below_min_ranks_exits_75_for_a_requeue(tmp_path):
    slots = tmp_path / "slots"
    slots.write_text("1\n")
    proc = supervise(tmp_path, ["--max-ranks", "4", "--min-ranks", "2",
                                "--slots-file", str(slots), "--", *TRAIN])  # fmt: skip
    status, out, err = finish(proc, timeout=HANG)
    assert status == 75, out + err
    assert "fewer than --min-ranks 2" in out and "attempt 1" not in out


# --- the rules alone ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("slots", "low", "high", "V", "expected"),
    [
        (4, 1, 4, 4, 4), (3, 1, 4, 4, 2), (3, 1, 4, None, 3), (8, 1, 6, 4, 4),
        (1, 2, 4, None, None), (3, 3, 4, 4, None), (6, 1, 8, 6, 6), (5, 1, 8, 6, 3),
    ],
)  # fmt: skip
def test_world_size_is_the_largest_that_fits(slots, low, high, V, expected):
    assert world_size(slots, low, high, V) == expected


def test_restart_budget_window_and_backoff():
    policy = RestartPolicy(Limits(max_restarts=2, window_s=10, backoff_s=1, backoff_cap_s=3))
    failure = lambda step: Failure("status 1", step, progressed=True, started=True)  # noqa: E731
    assert policy.after(failure(5), now=0) is None
    assert policy.after(failure(9), now=1) is None
    assert "2 restarts within 10 s" in policy.after(failure(13), now=2)
    assert policy.after(failure(17), now=20) is None  # the window moved on
    waits = [policy.backoff() for _ in range(200)]
    assert min(waits) >= 1.5 and max(waits) <= 4.5  # capped at 3 s, ±50%
    assert len({round(w, 6) for w in waits}) > 100  # jittered


def test_no_progress_and_startup_limits():
    policy = RestartPolicy(Limits(no_progress=2, startup_failures=5))
    assert policy.after(Failure("a", 1, progressed=False, started=True)) is None
    assert "wrote no newer checkpoint" in policy.after(Failure("b", 2, False, True))
    policy = RestartPolicy(Limits(startup_failures=2))
    assert policy.after(Failure("a", 0, progressed=True, started=False)) is None
    assert "before their first step" in policy.after(Failure("b", 0, True, False))


def test_a_slots_file_that_is_no_number_or_no_file_changes_nothing(tmp_path):
    from distnn.cli.launch import read_slots

    (tmp_path / "half").write_text("")
    (tmp_path / "words").write_text("many\n")
    (tmp_path / "three").write_text("3 slots\n")
    os.mkfifo(tmp_path / "fifo")  # would block a plain open() forever
    for name in ("half", "words", "fifo", "missing"):
        assert read_slots(str(tmp_path / name), 4) == 4, name
    assert read_slots(str(tmp_path / "three"), 4) == 3
    assert read_slots(None, 4) == 4


def test_a_straggler_is_reported_from_the_epoch_records(tmp_path):
    path = tmp_path / "m.jsonl"
    records = [{"header": True}] + [
        {"epoch": e, "compute_s": 1.0, "compute_s_max": 2.0, "slowest_rank": 3} for e in (1, 2, 3)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert straggler(str(path), 0) == (3, 2.0, 3, 3)
    assert straggler(str(path), 3) is None  # one epoch is no evidence
    even = [{"epoch": e, "compute_s": 1.0, "compute_s_max": 1.1, "slowest_rank": e % 4}
            for e in range(8)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in even))
    assert straggler(str(path), 0) is None


def test_a_closed_stdout_does_not_stop_the_supervisor(tmp_path, reference):
    proc = supervise(tmp_path, ["--max-ranks", "2", *WATCH, "--", *DETERMINISTIC])
    proc.stdout.readline()  # the first attempt's line, then nobody reads any more
    proc.stdout.close()
    try:
        err = proc.stderr.read()
        status = proc.wait(timeout=HANG)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the supervisor hung after its stdout closed")
    assert status == 0, err
    assert err.count("distnn.launch: stdout") == 1 and "Traceback" not in err, err
    assert digest(tmp_path / "m.npz") == reference["deterministic"]
    assert events(tmp_path)[-1]["status"] == 0
