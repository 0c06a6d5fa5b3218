"""The supervisor's loop: run an attempt, watch it, decide, run the next.

    choose the world size from the free slots → start the job with --resume →
    oversee it by its heartbeats (hang? grow back?) → gather the facts of how it
    ended and classify them (:mod:`distnn.supervisor.outcomes`) → restart, give up,
    or stop — and record each of these as an event

Every event is a line on stdout and a record (``{"event": …}``) in the run's
``--metrics`` file, written between attempts (never while rank 0 writes there).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from distnn.errors import EXIT_GAVE_UP, EXIT_PREEMPTED
from distnn.io.checkpoints import newest_step
from distnn.parallel.beat_codec import KEY_VARIABLE, new_key
from distnn.parallel.failure_report import FAILURE_FILE_VARIABLE, read_report
from distnn.parallel.heartbeat import (
    ADDRESS_VARIABLE,
    ATTEMPT_VARIABLE,
    SUPERVISOR_FACTOR,
    HeartbeatListener,
    interval_for,
    stall_limit,
)
from distnn.supervisor.events import Attempt, EventLog
from distnn.supervisor.outcomes import Facts, Hang, Outcome, Request, classify, exit_status
from distnn.supervisor.policy import Failure, Limits, RestartPolicy, world_size
from distnn.supervisor.processes import Job, become_subreaper
from distnn.supervisor.stragglers import count_lines, straggler

POLL_S = 0.05
TEARDOWN_GRACE_S = 3.0  # from SIGTERM to SIGKILL when the job is torn down


@dataclass(kw_only=True)
class HangLimits:
    """How long a job may go without finishing a step, by name."""

    floor_s: float = 60.0  # never less than this (--hang-timeout)
    factor: float = SUPERVISOR_FACTOR  # × the longest gap between steps seen so far
    startup_s: float = 300.0  # from start to the first finished step (--startup-timeout)


class Supervisor:
    """Runs ``python -m distnn.train ARGS --resume`` until it finishes, restarting it."""

    def __init__(
        self,
        train_args: list[str],
        checkpoint_dir: str,
        metrics: str | None,
        min_ranks: int,
        max_ranks: int,
        virtual_shards: int | None,
        launcher: Callable[[int], list[str]],
        slots: Callable[[], int],
        limits: Limits,
        hang: HangLimits,
        say: Callable[[str], None] = print,
    ) -> None:
        self.train_args = train_args
        self.checkpoint_dir, self.metrics = checkpoint_dir, metrics
        self.min_ranks, self.max_ranks, self.virtual_shards = min_ranks, max_ranks, virtual_shards
        self.launcher, self.slots = launcher, slots
        self.policy, self.hang = RestartPolicy(limits), hang
        self.log = EventLog(metrics, say)
        self.stop_signal: int | None = None
        self.attempts: list[Attempt] = []
        self.longest_gap = 0.0  # between two steps, over every attempt so far
        # The run's heartbeat secret: its ranks sign their beats with it (given in the
        # environment, never on a command line), and the job's processes carry it.
        self.key = new_key()
        self.reports = ""  # a directory only this user enters: the ranks' failure records

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        become_subreaper()
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        listener = HeartbeatListener(self.key)
        self.reports = tempfile.mkdtemp(prefix="distnn-launch-")  # mode 0700
        try:
            return self._loop(listener)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            listener.sock.close()
            shutil.rmtree(self.reports, ignore_errors=True)
            self.log.flush()

    def _loop(self, listener: HeartbeatListener) -> int:
        while True:
            if self.stop_signal is not None:
                name = signal.Signals(self.stop_signal).name
                return self._end(
                    EXIT_PREEMPTED, f"{name} between attempts; the newest checkpoint resumes it"
                )
            ranks = self._size()
            if ranks is None:
                return self._end(
                    EXIT_PREEMPTED,
                    f"{self.slots()} slot(s) free, fewer than --min-ranks {self.min_ranks}: "
                    "requeue to continue",
                )
            attempt = self._attempt(listener, len(self.attempts) + 1, ranks)
            self.attempts.append(attempt)
            self.log.attempt_end(self.attempts, self._checkpoint_step())
            status = exit_status(attempt.outcome, attempt.status)
            if status is not None:
                return self._end(status, attempt.cause)
            if attempt.outcome is Outcome.GROWN:
                self.policy.reset_backoff()
                continue
            facts = attempt.facts
            failure = Failure(
                attempt.cause, attempt.reached, progressed=facts.progressed, started=facts.stepped
            )
            reason = self.policy.after(failure)
            if reason is not None:
                self.log.event("give_up", f"giving up: {reason}", reason=reason)
                return self._end(EXIT_GAVE_UP, f"gave up: {reason}")
            delay = self.policy.backoff()
            self.log.event("backoff", f"restarting in {delay:.1f} s", seconds=round(delay, 3))
            self._sleep(delay)

    def _attempt(self, listener: HeartbeatListener, number: int, ranks: int) -> Attempt:
        """One attempt, start to end: start, oversee, make sure nothing is left, classify."""
        attempt = Attempt(number, ranks, self._checkpoint_step(), time.monotonic())
        report = os.path.join(self.reports, f"attempt-{number}.json")
        job = self._start(attempt, listener, report)
        lines_before = count_lines(self.metrics)
        asked, hang = self._oversee(job, listener, attempt)
        listener.poll()
        job.kill_rest(listener.local_pids())  # what a dead launcher left behind
        attempt.ended, attempt.status = time.monotonic(), job.poll()
        after = self._checkpoint_step()
        attempt.reached = max(listener.step, after)  # beats lag ≤ 0.25 s
        attempt.first_step_at = listener.first_advance_at
        self.longest_gap = max(self.longest_gap, listener.longest_gap)
        attempt.facts = Facts(
            attempt.status, asked, hang, read_report(report, ranks), listener.first_silent(),
            checkpoint_before=attempt.from_step, checkpoint_after=after,
            stepped=listener.first_advance_at is not None,
        )  # fmt: skip
        attempt.outcome, attempt.cause, blamed = classify(attempt.facts)
        attempt.failed_ranks = list(blamed)
        if attempt.outcome is Outcome.FAILED:
            self._time_the_failure(attempt, listener)
        self._report_straggler(number, lines_before)
        return attempt

    def _start(self, attempt: Attempt, listener: HeartbeatListener, report: str) -> Job:
        number, ranks = attempt.number, attempt.ranks
        listener.reset(str(number), attempt.from_step, interval_for(ranks), ranks)
        env = {
            **os.environ, ADDRESS_VARIABLE: listener.address, ATTEMPT_VARIABLE: str(number),
            KEY_VARIABLE: self.key.hex(), FAILURE_FILE_VARIABLE: report,
        }  # fmt: skip
        train = [*self.train_args, *(() if "--resume" in self.train_args else ("--resume",))]
        shown = " ".join([*self.launcher(ranks), "python -m distnn.train", *train])
        self.log.event(
            "attempt", f"attempt {number}: {ranks} rank(s) from step {attempt.from_step}: {shown}",
            attempt=number, ranks=ranks, from_step=attempt.from_step,
        )  # fmt: skip
        self.log.flush()  # the job is not running yet: nobody else writes the file
        command = [*self.launcher(ranks), sys.executable, "-m", "distnn.train", *train]
        return Job(command, env, mark=f"{KEY_VARIABLE}={self.key.hex()}")

    def _oversee(
        self, job: Job, listener: HeartbeatListener, attempt: Attempt
    ) -> tuple[Request | None, Hang | None]:
        """Until the job ends: stop it on request, grow it when slots return, tear it down
        when it hangs. Returns why we sent it SIGTERM, if we did, and the hang, if any."""
        asked = None
        while job.poll() is None:
            time.sleep(POLL_S)
            listener.poll()
            if asked is None and self.stop_signal is not None:
                asked = Request.STOP
                job.signal_all(signal.SIGTERM)  # every rank checkpoints, exits 75
            elif asked is None and listener.first_advance_at and self._grows(attempt):
                asked = Request.GROW  # through the SIGTERM → checkpoint path: no step lost
                job.signal_all(signal.SIGTERM)
            limit = self._hung(listener, attempt)
            if limit:
                ranks, cause = listener.diagnose(attempt.ranks)
                attempt.detection_s = listener.stalled_for()
                self.log.event(
                    "hang", f"no step for {attempt.detection_s:.1f} s (limit {limit:.1f} s): "
                    f"{cause}; tearing the job down",
                    attempt=attempt.number, ranks=ranks, detection_s=round(attempt.detection_s, 3),
                )  # fmt: skip
                job.end(TEARDOWN_GRACE_S, listener.local_pids())
                return asked, Hang(tuple(ranks), cause)
        return asked, None

    def _grows(self, attempt: Attempt) -> bool:
        slots = self.slots()
        if (
            world_size(slots, self.min_ranks, self.max_ranks, self.virtual_shards) or 0
        ) <= attempt.ranks:
            return False
        self.log.event(
            "grow", f"{slots} slot(s) free: checkpointing to grow from {attempt.ranks} rank(s)",
            attempt=attempt.number, slots=slots,
        )  # fmt: skip
        return True

    def _report_straggler(self, number: int, lines_before: int) -> None:
        slow = straggler(self.metrics, lines_before)
        if slow:
            rank, ratio, count, epochs = slow
            self.log.event(
                "straggler", f"straggler: rank {rank} computed {ratio:.1f}× as long as rank 0, "
                f"slowest in {count} of {epochs} epochs (reported, not restarted)",
                attempt=number, rank=rank, ratio=round(ratio, 2),
            )  # fmt: skip

    def _time_the_failure(self, attempt: Attempt, listener: HeartbeatListener) -> None:
        """When it failed: the step of the rank that reported it (its own), and how long
        from its first rank falling silent to knowing."""
        reported = attempt.facts.reported
        if reported is not None and reported.rank in listener.beats:
            # Its beats lag its steps (up to a beat interval): never before a checkpoint
            # the attempt wrote.
            own = listener.beats[reported.rank].step
            attempt.reached = max(own, attempt.facts.checkpoint_after)
        last_beats = [b.at for b in listener.beats.values()]
        if last_beats:
            attempt.detection_s = max(attempt.ended - min(last_beats), 0.0)

    def _hung(self, listener: HeartbeatListener, attempt: Attempt) -> float | None:
        """The limit the job exceeded without finishing a step, or None."""
        hang = self.hang
        if listener.first_advance_at is None:
            limit = hang.startup_s
            waited = time.monotonic() - attempt.started
        else:
            gap = max(self.longest_gap, listener.longest_gap)  # over every attempt so far
            limit = stall_limit(hang.floor_s, hang.factor, gap)
            waited = listener.stalled_for()
        return limit if waited > limit else None

    # --- world size, checkpoints -----------------------------------------------------

    def _size(self) -> int | None:
        return world_size(self.slots(), self.min_ranks, self.max_ranks, self.virtual_shards)

    def _checkpoint_step(self) -> int:
        return newest_step(self.checkpoint_dir)

    def _end(self, status: int, why: str) -> int:
        self.log.summary(self.attempts, status, why)
        return status

    def _stop(self, signum: int, frame: object) -> None:
        self.stop_signal = signum

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.stop_signal is None and time.monotonic() < deadline:
            time.sleep(POLL_S)
