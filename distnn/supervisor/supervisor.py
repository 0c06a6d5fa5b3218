"""The supervisor's loop: run an attempt, watch it, decide, run the next.

    choose the world size from the free slots → start the job with --resume →
    watch its heartbeats (hang? grow back?) → classify how it ended → restart,
    give up, or stop — and record each of these as an event

Every event is a line on stdout and a record (``{"event": …}``) in the run's
``--metrics`` file, written between attempts (never while rank 0 writes there).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from distnn.errors import EXIT_GAVE_UP, EXIT_PREEMPTED
from distnn.io.checkpoints import newest_step
from distnn.parallel.beat_codec import KEY_VARIABLE, new_key
from distnn.parallel.heartbeat import (
    ADDRESS_VARIABLE,
    ATTEMPT_VARIABLE,
    HeartbeatListener,
    interval_for,
)
from distnn.supervisor.events import EventLog
from distnn.supervisor.policy import FINAL_STATUSES, Failure, Limits, RestartPolicy, world_size
from distnn.supervisor.processes import Job, become_subreaper
from distnn.supervisor.stragglers import count_lines, straggler

POLL_S = 0.05
TEARDOWN_GRACE_S = 3.0  # from SIGTERM to SIGKILL when the job is torn down


@dataclass
class Watch:
    """How long a job may go without finishing a step."""

    hang_floor_s: float = 60.0  # never less than this
    hang_factor: float = 5.0  # × the longest gap between steps seen so far
    startup_s: float = 300.0  # from start to the first finished step


@dataclass
class Attempt:
    number: int
    ranks: int
    from_step: int
    started: float
    ended: float = 0.0
    status: int | None = None
    outcome: str = ""  # done, failed, hang, grown, stopped, preempted, final
    cause: str = ""
    failed_ranks: list[int] = field(default_factory=list)
    reached: int = 0
    first_step_at: float | None = None
    detection_s: float = 0.0


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
        watch: Watch,
        say: Callable[[str], None] = print,
    ) -> None:
        self.train_args = train_args
        self.checkpoint_dir, self.metrics = checkpoint_dir, metrics
        self.min_ranks, self.max_ranks, self.virtual_shards = min_ranks, max_ranks, virtual_shards
        self.launcher, self.slots = launcher, slots
        self.policy, self.watch = RestartPolicy(limits), watch
        self.log = EventLog(metrics, say)
        self.stop_signal: int | None = None
        self.attempts: list[Attempt] = []
        self.longest_gap = 0.0  # between two steps, over every attempt so far
        # The run's heartbeat secret: its ranks sign their beats with it (given in the
        # environment, never on a command line), and the job's processes carry it.
        self.key = new_key()

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        become_subreaper()
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        listener = HeartbeatListener(self.key)
        try:
            return self._loop(listener)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            listener.sock.close()
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
            self._record(attempt)
            if attempt.outcome == "done":
                return self._end(0, "training finished")
            if attempt.outcome in ("final", "preempted", "stopped"):
                return self._end(attempt.status or EXIT_PREEMPTED, attempt.cause)
            if attempt.outcome == "grown":
                self.policy.succeeded()
                continue
            failure = Failure(
                attempt.cause,
                attempt.reached,
                progressed=self._checkpoint_step() > attempt.from_step,
                started=attempt.first_step_at is not None,
            )
            reason = self.policy.after(failure)
            if reason is not None:
                self.log.event("give_up", f"giving up: {reason}", reason=reason)
                return self._end(EXIT_GAVE_UP, f"gave up: {reason}")
            delay = self.policy.backoff()
            self.log.event("backoff", f"restarting in {delay:.1f} s", seconds=round(delay, 3))
            self._sleep(delay)

    def _attempt(self, listener: HeartbeatListener, number: int, ranks: int) -> Attempt:
        """One attempt, start to end: start, watch, make sure nothing is left, classify."""
        attempt = Attempt(number, ranks, self._checkpoint_step(), time.monotonic())
        job = self._start(attempt, listener)
        lines_before = count_lines(self.metrics)
        asked = self._watch(job, listener, attempt)
        listener.poll()
        job.kill_rest(listener.local_pids())  # what a dead launcher left behind
        attempt.ended, attempt.status = time.monotonic(), job.poll()
        attempt.reached = max(listener.step, self._checkpoint_step())  # beats lag ≤ 0.25 s
        attempt.first_step_at = listener.first_advance_at
        self.longest_gap = max(self.longest_gap, listener.longest_gap)
        if not attempt.outcome:
            self._classify(attempt, asked, listener, job)
        self._report_straggler(number, lines_before)
        return attempt

    def _start(self, attempt: Attempt, listener: HeartbeatListener) -> Job:
        number, ranks = attempt.number, attempt.ranks
        listener.reset(str(number), attempt.from_step, interval_for(ranks), ranks)
        env = {
            **os.environ, ADDRESS_VARIABLE: listener.address, ATTEMPT_VARIABLE: str(number),
            KEY_VARIABLE: self.key.hex(),
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

    def _watch(self, job: Job, listener: HeartbeatListener, attempt: Attempt) -> str | None:
        """Until the job ends: stop it on request, grow it when slots return, tear it down
        when it hangs. Returns why we asked it to stop (SIGTERM), if we did."""
        asked = None
        while job.poll() is None:
            time.sleep(POLL_S)
            listener.poll()
            if asked is None and self.stop_signal is not None:
                asked = "stopped"
                job.signal_all(signal.SIGTERM)  # every rank checkpoints, exits 75
            elif asked is None and listener.first_advance_at and self._grows(attempt):
                asked = "grown"  # through the SIGTERM → checkpoint path: no step lost
                job.signal_all(signal.SIGTERM)
            limit = self._hung(listener, attempt)
            if limit:
                attempt.failed_ranks, attempt.cause = listener.diagnose(attempt.ranks)
                attempt.outcome, attempt.detection_s = "hang", listener.stalled_for()
                self.log.event(
                    "hang", f"no step for {attempt.detection_s:.1f} s (limit {limit:.1f} s): "
                    f"{attempt.cause}; tearing the job down",
                    attempt=attempt.number, ranks=attempt.failed_ranks,
                    detection_s=round(attempt.detection_s, 3),
                )  # fmt: skip
                job.end(TEARDOWN_GRACE_S, listener.local_pids())
                break
        return asked

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

    def _classify(
        self, attempt: Attempt, asked: str | None, listener: HeartbeatListener, job: Job
    ) -> None:
        status = attempt.status
        if status == 0:
            attempt.outcome, attempt.cause = "done", "training finished"
        elif status == EXIT_PREEMPTED and asked:
            attempt.outcome, attempt.cause = asked, f"checkpointed on request ({asked})"
        elif status == EXIT_PREEMPTED:
            attempt.outcome, attempt.cause = "preempted", "stopped by a signal from outside"
        elif asked == "stopped" and self._checkpoint_step() > 0:  # stopped before training
            attempt.outcome, attempt.status = "stopped", EXIT_PREEMPTED
            attempt.cause = "stopped on request; the newest checkpoint resumes the run"
        elif status in FINAL_STATUSES:
            attempt.outcome, attempt.cause = "final", f"distnn.train ended with status {status}"
        else:
            attempt.outcome = "failed"
            rank, told = job.failure()
            if rank is not None:  # it raised: its own report names it, and the step is its own
                attempt.failed_ranks, attempt.cause = [rank], f"rank {rank} failed: {told}"
                attempt.reached = (
                    listener.beats[rank].step if rank in listener.beats else attempt.reached
                )
            elif (silent := listener.first_silent()) is not None:
                attempt.failed_ranks, attempt.cause = [silent], f"rank {silent} went silent first"
            else:
                attempt.cause = "a rank ended"
            attempt.cause += f"; job status {status}"
            last_beats = [b.at for b in listener.beats.values()]
            if last_beats:  # from the failure (the first rank to fall silent) to knowing
                attempt.detection_s = max(attempt.ended - min(last_beats), 0.0)

    def _hung(self, listener: HeartbeatListener, attempt: Attempt) -> float | None:
        """The limit the job exceeded without finishing a step, or None."""
        watch = self.watch
        if listener.first_advance_at is None:
            limit = watch.startup_s
            waited = time.monotonic() - attempt.started
        else:
            limit = max(
                watch.hang_floor_s, watch.hang_factor * max(self.longest_gap, listener.longest_gap)
            )
            waited = listener.stalled_for()
        return limit if waited > limit else None

    # --- world size, checkpoints, events ---------------------------------------------

    def _size(self) -> int | None:
        return world_size(self.slots(), self.min_ranks, self.max_ranks, self.virtual_shards)

    def _checkpoint_step(self) -> int:
        return newest_step(self.checkpoint_dir)

    def _record(self, a: Attempt) -> None:
        lost = max(a.reached - self._checkpoint_step(), 0) if a.outcome in ("failed", "hang") else 0
        previous = self.attempts[-2] if len(self.attempts) > 1 else None
        downtime = (a.first_step_at - previous.ended) if previous and a.first_step_at else None
        self.log.event(
            "attempt_end",
            f"attempt {a.number} ended: {a.outcome} ({a.cause}) at step {a.reached}"
            + (f", {lost} step(s) lost" if lost else ""),
            attempt=a.number, ranks=a.ranks, outcome=a.outcome, status=a.status,
            cause=a.cause, failed_ranks=a.failed_ranks, from_step=a.from_step,
            reached=a.reached, lost_steps=lost, detection_s=round(a.detection_s, 3),
            downtime_before_s=None if downtime is None else round(downtime, 3),
            wall_s=round(a.ended - a.started, 3),
        )  # fmt: skip

    def _end(self, status: int, why: str) -> int:
        wall = time.monotonic() - self.log.started
        training = sum(
            a.ended - a.first_step_at for a in self.attempts if a.first_step_at is not None
        )
        restarts = sum(a.outcome in ("failed", "hang") for a in self.attempts)
        self.log.event(
            "summary",
            f"{why}; {len(self.attempts)} attempt(s), {restarts} failure(s); training "
            f"{training / wall:.0%} of {wall:.1f} s wall time (exit {status})",
            status=status, attempts=len(self.attempts), failures=restarts,
            wall_s=round(wall, 3), training_s=round(training, 3),
        )  # fmt: skip
        return status

    def _stop(self, signum: int, frame: object) -> None:
        self.stop_signal = signum

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.stop_signal is None and time.monotonic() < deadline:
            time.sleep(POLL_S)
