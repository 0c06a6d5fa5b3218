"""Every way out of one rank ends the whole job, so no rank waits in a collective forever.

An exception on one rank only (a bug, a user callback's error, ``sys.exit``,
``os._exit``, a second Ctrl-C) is reported once, naming the rank, and the MPI world is
aborted; a supervisor also gets the report as a record
(:mod:`distnn.parallel.failure_report`). A :class:`~distnn.errors.CollectiveError` is
raised on every rank alike and passes through. A BrokenPipeError that reaches here (a
serial command's output, a user callback's ``print`` into a closed stdout) ends the job
quietly with status 1; the run's own lines never raise it: :mod:`distnn.run.progress`
keeps training when stdout closes or fills.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from distnn.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, CollectiveError, one_line
from distnn.parallel.failure_report import report
from distnn.parallel.world import REAL_EXIT, World


def stdout_to_devnull() -> None:
    """After a failed write to stdout (EPIPE, ENOSPC): what is left in its buffer, and
    whatever is written to it later, goes nowhere, quietly.

    Python flushes stdout on exit; without this that flush fails again and prints
    "Exception ignored … BrokenPipeError" (https://docs.python.org/3/library/signal.html#note-on-sigpipe).
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, ValueError, OSError):  # stdout replaced by an object
        pass
    finally:
        os.close(devnull)


def _broken_pipe_ends_the_job(world: World) -> NoReturn:
    """This rank's stdout was closed (``| head``): every rank ends, without a traceback."""
    stdout_to_devnull()
    sys.stderr.flush()
    world.abort(EXIT_BROKEN_PIPE)


def _rank_failed(world: World, exc_type, exc, tb) -> None:
    """One rank's unexpected exception: its traceback once, then the whole job ends."""
    if issubclass(exc_type, BrokenPipeError):  # stdout closed early: not a failure to show
        _broken_pipe_ends_the_job(world)
    details = "".join(traceback.format_exception(exc_type, exc, tb))
    report(world.rank, "exception", f"{exc_type.__name__}: {one_line(exc)}")
    world.say_and_abort(f"distnn: rank {world.rank} failed, aborting the job:\n{details}", 1)


@contextmanager
def failures_end_the_job(world: World) -> Iterator[None]:
    """Inside: an exception that not every rank raises together ends the whole job.

    A CollectiveError is raised on every rank alike (decided on shared values), so it
    passes through; anything else on one rank of several (a bug, a user callback's
    error, SystemExit, KeyboardInterrupt) would leave the others waiting in their next
    collective forever: it is printed once, naming the rank, and the world is aborted.
    """
    real_exit, pid = REAL_EXIT, os.getpid()  # the real one even if contexts nest

    def exit_ends_the_job(status: int) -> None:
        if os.getpid() != pid:  # a forked child (multiprocessing) leaving as it should
            real_exit(status)
        message = f"distnn: rank {world.rank} called os._exit({status}) during the run\n"
        report(world.rank, "exit", f"called os._exit({status}) during the run")
        if world.size > 1:
            world.say_and_abort(message, 1)
        sys.stderr.write(message)
        sys.stderr.flush()
        real_exit(status or 1)  # 0 means "the run finished": not true here

    os._exit = exit_ends_the_job  # user code (a schedule, a callback) runs inside
    try:
        yield
    except CollectiveError:
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, no checkpoint
        if world.size == 1:
            raise
        report(world.rank, "interrupted", "a second Ctrl-C: no checkpoint")
        for signum in (signal.SIGINT, signal.SIGTERM):  # a third one cannot turn it into 1
            signal.signal(signum, signal.SIG_IGN)
        world.say_and_abort(
            f"distnn: rank {world.rank} interrupted: ending the job\n", EXIT_INTERRUPTED
        )
    except BrokenPipeError:  # stdout closed early: quiet, as distnn.cli.run ends a world of one
        if world.size == 1:
            raise
        _broken_pipe_ends_the_job(world)
    except BaseException as e:
        if world.size == 1:
            raise
        _rank_failed(world, type(e), e, e.__traceback__)
    finally:
        os._exit = real_exit


def install_abort_on_error(world: World) -> None:
    """Make any uncaught exception end the whole job, not just this rank.

    Without this, one rank's exception leaves the others blocked in their next
    Allreduce forever. The error is printed once, naming the rank.
    """
    if world.size == 1:
        return

    sys.excepthook = lambda exc_type, exc, tb: _rank_failed(world, exc_type, exc, tb)
