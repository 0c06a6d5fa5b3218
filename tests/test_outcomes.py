"""The supervisor's decisions without a process: how an attempt ended (classify), what
the supervisor then exits with, the failure record a rank leaves for it, and the hang
limit both judges share. Each rule is one case; tests/test_launch.py shows the same
decisions through real jobs."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest

from distnn.errors import (
    EXIT_BAD_INPUT,
    EXIT_CHECKPOINT_FAILED,
    EXIT_DIVERGED,
    EXIT_HUNG,
    EXIT_INTERRUPTED,
    EXIT_OUT_OF_SYNC,
    EXIT_PREEMPTED,
    EXIT_SAVE_FAILED,
)
from distnn.parallel.failure_report import (
    FAILURE_FILE_VARIABLE,
    MAX_BYTES,
    MAX_MESSAGE,
    RankFailure,
    read_report,
    report,
)
from distnn.parallel.heartbeat import SUPERVISOR_FACTOR, WATCHDOG_FACTOR, stall_limit
from distnn.supervisor.outcomes import (
    Facts,
    Hang,
    Outcome,
    Request,
    Verdict,
    classify,
    exit_status,
)
from distnn.supervisor.policy import Failure, Limits, RestartPolicy

RAISED = RankFailure(2, "exception", "RuntimeError: injected fault at step 7")


# --- classify: one case per rule, in the order they are tried --------------------------


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (Facts(0), Verdict(Outcome.DONE, "training finished")),
        (
            Facts(EXIT_PREEMPTED, Request.STOP),
            (Outcome.STOPPED, "checkpointed on request (stopped)"),
        ),
        (Facts(EXIT_PREEMPTED, Request.GROW), (Outcome.GROWN, "checkpointed on request (grown)")),
        (Facts(EXIT_PREEMPTED), (Outcome.PREEMPTED, "stopped by a signal from outside")),
        (
            Facts(143, Request.STOP, checkpoint_after=20),  # SIGTERM before its handler
            (Outcome.STOPPED, "stopped on request; the newest checkpoint resumes the run"),
        ),
        (Facts(EXIT_BAD_INPUT), (Outcome.FINAL, "distnn.train ended with status 2")),
        (
            Facts(1, reported=RAISED, silent_rank=0),  # the rank's own word beats the beats
            (Outcome.FAILED, "rank 2 failed: RuntimeError: injected fault at step 7; "
             "job status 1", (2,)),
        ),
        (
            Facts(137, silent_rank=3),  # SIGKILLed: no word, its beats stopped first
            (Outcome.FAILED, "rank 3 went silent first; job status 137", (3,)),
        ),
        (Facts(1), (Outcome.FAILED, "a rank ended; job status 1")),
        (Facts(None), (Outcome.FAILED, "a rank ended; job status None")),
    ],
)  # fmt: skip
def test_each_way_an_attempt_ends(facts, expected):
    assert classify(facts) == Verdict(*expected)


@pytest.mark.parametrize(
    "status",
    [
        EXIT_BAD_INPUT,
        EXIT_CHECKPOINT_FAILED,
        EXIT_DIVERGED,
        EXIT_OUT_OF_SYNC,
        EXIT_SAVE_FAILED,
        EXIT_INTERRUPTED,
    ],
)
def test_statuses_no_restart_changes_are_final(status):
    verdict = classify(Facts(status, reported=RAISED))
    assert verdict.outcome is Outcome.FINAL and not verdict.outcome.is_failure
    assert exit_status(verdict.outcome, status) == status


@pytest.mark.parametrize("status", [1, 137, EXIT_HUNG, -9])
def test_other_statuses_are_failures_to_restart(status):
    verdict = classify(Facts(status))
    assert verdict.outcome is Outcome.FAILED and verdict.outcome.is_failure
    assert exit_status(verdict.outcome, status) is None


def test_a_hang_is_a_hang_whatever_the_status():
    hang = Hang((3,), "rank 3 went silent (frozen or gone) at step 40")
    for status in (0, 1, -9, EXIT_PREEMPTED, EXIT_BAD_INPUT):
        verdict = classify(Facts(status, Request.GROW, hang=hang, reported=RAISED))
        assert verdict == Verdict(Outcome.HUNG, hang.cause, (3,))
    assert Outcome.HUNG.is_failure


def test_a_stop_asked_for_without_a_checkpoint_is_not_a_stop():
    """Killed by our SIGTERM before any checkpoint: nothing to resume, so not 'stopped'."""
    assert classify(Facts(143, Request.STOP, checkpoint_after=0)).outcome is Outcome.FAILED
    assert classify(Facts(143, Request.GROW, checkpoint_after=20)).outcome is Outcome.FAILED
    assert classify(Facts(EXIT_BAD_INPUT, Request.STOP)).outcome is Outcome.FINAL


@pytest.mark.parametrize(
    ("outcome", "status", "expected"),
    [
        (Outcome.DONE, 0, 0), (Outcome.FINAL, EXIT_DIVERGED, EXIT_DIVERGED),
        (Outcome.STOPPED, EXIT_PREEMPTED, EXIT_PREEMPTED), (Outcome.STOPPED, 143, EXIT_PREEMPTED),
        (Outcome.PREEMPTED, EXIT_PREEMPTED, EXIT_PREEMPTED), (Outcome.GROWN, EXIT_PREEMPTED, None),
        (Outcome.FAILED, 1, None), (Outcome.HUNG, None, None),
    ],
)  # fmt: skip
def test_which_outcomes_end_the_supervisor_and_how(outcome, status, expected):
    assert exit_status(outcome, status) == expected


def test_the_record_says_what_it_always_said():
    """The values are the attempt_end records' "outcome" field: readers depend on them."""
    assert {o.value for o in Outcome} == {
        "done", "failed", "hang", "grown", "stopped", "preempted", "final"
    }  # fmt: skip


def test_progress_is_a_newer_checkpoint():
    assert Facts(1, checkpoint_before=10, checkpoint_after=20).progressed
    assert not Facts(1, checkpoint_before=20, checkpoint_after=20).progressed


# --- the failure record a rank leaves ---------------------------------------------------


def test_a_rank_reports_and_the_supervisor_reads_it(tmp_path, monkeypatch):
    path = tmp_path / "attempt-1.json"
    monkeypatch.setenv(FAILURE_FILE_VARIABLE, str(path))
    report(1, "exception", "ValueError: bad\n  value\tthere")
    assert read_report(str(path), 2) == RankFailure(1, "exception", "ValueError: bad value there")
    assert os.listdir(tmp_path) == ["attempt-1.json"]  # no temporary left behind
    assert read_report(str(path), 1) is None  # rank 1 is not in a world of one


def test_the_first_report_wins(tmp_path, monkeypatch):
    path = tmp_path / "attempt-1.json"
    monkeypatch.setenv(FAILURE_FILE_VARIABLE, str(path))
    report(3, "exception", "first")
    report(0, "exit", "second, as the job came down")
    assert read_report(str(path), 4) == RankFailure(3, "exception", "first")


def test_ranks_reporting_at_once_leave_one_whole_record(tmp_path, monkeypatch):
    path = tmp_path / "attempt-1.json"
    monkeypatch.setenv(FAILURE_FILE_VARIABLE, str(path))
    threads = [threading.Thread(target=report, args=(r, "exception", "x" * 200)) for r in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    found = read_report(str(path), 16)
    assert found is not None and found.message == "x" * 200
    assert os.listdir(tmp_path) == ["attempt-1.json"]


def test_reporting_never_raises(tmp_path, monkeypatch):
    monkeypatch.delenv(FAILURE_FILE_VARIABLE, raising=False)
    report(0, "exception", "no supervisor: nothing written")
    monkeypatch.setenv(FAILURE_FILE_VARIABLE, str(tmp_path / "gone" / "attempt-1.json"))
    report(0, "exception", "a rank on another host: no such directory")
    assert os.listdir(tmp_path) == []


def test_a_long_message_is_cut_to_one_bounded_line(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    monkeypatch.setenv(FAILURE_FILE_VARIABLE, str(path))
    report(0, "exception", "word\n" * 1000)
    message = read_report(str(path), 1).message
    assert len(message) == MAX_MESSAGE and "\n" not in message and message.endswith("…")


@pytest.mark.parametrize(
    "content",
    [
        b"", b"not json", b"[]", b"\xff\xfe", b"1e999",
        b'{"rank": 0, "kind": "exception"}',
        b'{"rank": 0, "kind": "exception", "message": "m", "extra": 1}',
        b'{"rank": -1, "kind": "exception", "message": "m"}',
        b'{"rank": 4, "kind": "exception", "message": "m"}',
        b'{"rank": true, "kind": "exception", "message": "m"}',
        b'{"rank": 0.0, "kind": "exception", "message": "m"}',
        b'{"rank": 0, "kind": "reboot", "message": "m"}',
        b'{"rank": 0, "kind": ["exception"], "message": "m"}',
        b'{"rank": 0, "kind": "exception", "message": 7}',
        b'{"rank": 0, "kind": "exception", "message": "' + b"m" * MAX_BYTES + b'"}',
        b"[" * 100_000,
    ],
)  # fmt: skip
def test_a_malformed_record_is_no_report(tmp_path, content):
    path = tmp_path / "r.json"
    path.write_bytes(content)
    assert read_report(str(path), 4) is None


def test_what_is_not_a_regular_file_is_no_report(tmp_path):
    assert read_report(str(tmp_path / "missing"), 4) is None
    assert read_report(str(tmp_path), 4) is None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # would block a plain open() forever
    assert read_report(str(fifo), 4) is None
    real = tmp_path / "real.json"
    real.write_text(json.dumps({"rank": 0, "kind": "exit", "message": "m"}))
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert read_report(str(link), 4) is None  # a planted link is not the rank's record
    assert stat.S_ISREG(os.stat(real).st_mode) and read_report(str(real), 4) is not None


# --- the hang limit, and the policy's reset ---------------------------------------------


def test_both_judges_share_the_hang_rule_the_supervisor_first():
    assert stall_limit(60.0, SUPERVISOR_FACTOR, 1.0) == 60.0  # the floor
    assert stall_limit(60.0, SUPERVISOR_FACTOR, 20.0) == 100.0  # the measured gap
    for gap in (0.0, 1.0, 20.0, 100.0):  # with the defaults' floors, 60 s and 120 s
        assert stall_limit(60.0, SUPERVISOR_FACTOR, gap) < stall_limit(120.0, WATCHDOG_FACTOR, gap)


def test_growing_resets_the_backoff_not_the_budget():
    policy = RestartPolicy(Limits(max_restarts=2, backoff_s=1, backoff_cap_s=100))
    for step in (1, 2):
        assert policy.after(Failure("f", step, progressed=True, started=True), now=0) is None
    assert min(policy.backoff() for _ in range(50)) >= 1.0  # 2 s ± 50%
    policy.reset_backoff()
    assert max(policy.backoff() for _ in range(50)) <= 1.5  # the first wait again
    assert "2 restarts" in policy.after(Failure("f", 3, True, True), now=0)


def test_limits_are_built_by_name():
    with pytest.raises(TypeError):
        Limits(3, 60.0)  # positional: which is which?


class _FakeWorld:
    """Two ranks; aborting raises instead of ending the process."""

    rank, size = 1, 2

    def say_and_abort(self, message: str, code: int):
        raise SystemExit(code)


@pytest.mark.parametrize(
    ("fail", "kind", "message"),
    [
        (lambda: (_ for _ in ()).throw(RuntimeError("injected\nfailure")), "exception",
         "RuntimeError: injected failure"),
        (lambda: os._exit(3), "exit", "called os._exit(3) during the run"),
        (lambda: (_ for _ in ()).throw(KeyboardInterrupt()), "interrupted",
         "a second Ctrl-C: no checkpoint"),
    ],
)  # fmt: skip
def test_the_rank_that_ends_the_job_leaves_its_record(tmp_path, monkeypatch, fail, kind, message):
    from distnn.parallel.failures import failures_end_the_job

    path = tmp_path / "attempt-1.json"
    monkeypatch.setenv(FAILURE_FILE_VARIABLE, str(path))
    with pytest.raises(SystemExit), failures_end_the_job(_FakeWorld()):
        fail()
    assert read_report(str(path), 2) == RankFailure(1, kind, message)
