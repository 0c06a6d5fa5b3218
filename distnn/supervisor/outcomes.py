"""How an attempt ended, decided from facts alone: no job, no listener, no clock.

The supervisor gathers what it knows when a job is over (its exit status, what it asked
the job to do, the hang it tore the job down for, the rank that reported its failure,
the rank whose heartbeats stopped first, the newest checkpoint) into :class:`Facts`;
:func:`classify` turns them into an :class:`Outcome` and a one-line cause, and
:func:`exit_status` says whether the outcome ends the supervisor and with what status.
Each rule is a case of ``tests/test_outcomes.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from distnn.errors import (
    EXIT_BAD_INPUT,
    EXIT_CHECKPOINT_FAILED,
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_OUT_OF_SYNC,
    EXIT_PREEMPTED,
    EXIT_SAVE_FAILED,
)
from distnn.parallel.failure_report import RankFailure

# A job that ends so has nothing a restart would change.
FINAL_STATUSES = frozenset(
    {
        EXIT_BAD_INPUT, EXIT_CHECKPOINT_FAILED, EXIT_DIVERGED, EXIT_OUT_OF_SYNC,
        EXIT_SAVE_FAILED, EXIT_INTERRUPTED,
    }
)  # fmt: skip


class Outcome(Enum):
    """How one attempt ended; the value is what its ``attempt_end`` record says."""

    DONE = "done"  # training finished
    FAILED = "failed"  # a rank raised, died or ended the job: restart, if the policy allows
    HUNG = "hang"  # no step for too long: torn down; restart, if the policy allows
    GROWN = "grown"  # checkpointed when asked, to restart on more ranks
    STOPPED = "stopped"  # checkpointed when asked: the supervisor got SIGTERM or SIGINT
    PREEMPTED = "preempted"  # checkpointed on a signal from outside (exit 75)
    FINAL = "final"  # a status no restart changes (bad input, divergence, …)

    @property
    def is_failure(self) -> bool:
        """An attempt the restart policy counts, whose steps past the checkpoint are lost."""
        return self in (Outcome.FAILED, Outcome.HUNG)


class Request(Enum):
    """Why the supervisor sent the job SIGTERM (every rank checkpoints and exits 75)."""

    STOP = "stop"  # the supervisor itself was asked to stop
    GROW = "grow"  # more slots are free: restart on more ranks


@dataclass(frozen=True)
class Hang:
    """The watch's diagnosis when it tore a job down for taking too long."""

    ranks: tuple[int, ...]  # the silent or stuck ranks, if it could tell
    cause: str  # one line


@dataclass(frozen=True)
class Facts:
    """What the supervisor knows once a job is over."""

    status: int | None  # the launcher's exit status
    asked: Request | None = None  # why the supervisor sent SIGTERM, if it did
    hang: Hang | None = None  # why the job was torn down, if it hung
    reported: RankFailure | None = None  # the record of the rank that ended the job
    silent_rank: int | None = None  # the rank whose heartbeats stopped clearly first
    checkpoint_before: int = 0  # the newest checkpoint's step when the attempt started
    checkpoint_after: int = 0  # … and when it ended
    stepped: bool = False  # the job finished at least one step

    @property
    def progressed(self) -> bool:
        """The attempt left a newer checkpoint than it started from."""
        return self.checkpoint_after > self.checkpoint_before


class Verdict(NamedTuple):
    outcome: Outcome
    cause: str  # one line
    ranks: tuple[int, ...] = ()  # the ranks to blame, when known


_ASKED = {Request.STOP: Outcome.STOPPED, Request.GROW: Outcome.GROWN}


def classify(facts: Facts) -> Verdict:
    """How the attempt ended and why, in one line; the first rule that holds decides."""
    status, asked = facts.status, facts.asked
    if facts.hang is not None:
        return Verdict(Outcome.HUNG, facts.hang.cause, facts.hang.ranks)
    if status == 0:
        return Verdict(Outcome.DONE, "training finished")
    if status == EXIT_PREEMPTED and asked is not None:
        return Verdict(_ASKED[asked], f"checkpointed on request ({_ASKED[asked].value})")
    if status == EXIT_PREEMPTED:
        return Verdict(Outcome.PREEMPTED, "stopped by a signal from outside")
    if asked is Request.STOP and facts.checkpoint_after > 0:
        # It went down another way (SIGTERM before it could checkpoint), but a checkpoint
        # resumes it: a stop asked for is a stop, not a failure to restart.
        return Verdict(Outcome.STOPPED, "stopped on request; the newest checkpoint resumes the run")
    if status in FINAL_STATUSES:
        return Verdict(Outcome.FINAL, f"distnn.train ended with status {status}")
    tail = f"; job status {status}"
    if facts.reported is not None:  # the rank's own word: it raised, or called os._exit
        rank = facts.reported.rank
        return Verdict(
            Outcome.FAILED, f"rank {rank} failed: {facts.reported.message}{tail}", (rank,)
        )
    if facts.silent_rank is not None:  # died without a word (SIGKILL, a lost node)
        rank = facts.silent_rank
        return Verdict(Outcome.FAILED, f"rank {rank} went silent first{tail}", (rank,))
    return Verdict(Outcome.FAILED, f"a rank ended{tail}")


def exit_status(outcome: Outcome, status: int | None) -> int | None:
    """The supervisor's exit status when ``outcome`` ends the run (the job's ``status``
    where it says why); None when the supervisor goes on (a restart, a growth)."""
    if outcome is Outcome.DONE:
        return 0
    if outcome is Outcome.FINAL:
        return status
    if outcome in (Outcome.STOPPED, Outcome.PREEMPTED):
        return EXIT_PREEMPTED  # a checkpoint to resume from: requeue
    return None
