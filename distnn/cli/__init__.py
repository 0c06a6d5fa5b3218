"""The command lines: train, evaluate, predict, plot, and what they share.

:func:`interrupts_end_quietly` runs first in every ``python -m distnn.COMMAND``, before
NumPy or MPI is imported: a Ctrl-C or SIGTERM that arrives while a command starts (or
in a command that has nothing to checkpoint) ends each rank with status 130 and one
line from rank 0, instead of a traceback from every rank. ``train`` replaces it with
its own handlers (finish the step, checkpoint, exit 75) while it trains.
"""

import contextlib
import errno
import os
import signal
import sys

from distnn.errors import EXIT_INTERRUPTED  # a module without imports: loads nothing heavy
from distnn.parallel.launcher_env import launcher_rank, launcher_tasks

# The commands a launcher runs as ranks of one job.
RANK_COMMANDS = frozenset({"train", "evaluate", "predict"})


def _end_quietly(signum: int, frame: object) -> None:
    if launcher_rank() == 0:
        name = signal.Signals(signum).name
        os.write(2, f"distnn: {name}: stopped; nothing to save yet (exit 130)\n".encode())
    os._exit(EXIT_INTERRUPTED)


def interrupts_end_quietly() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _end_quietly)


def status_decided() -> None:
    """From here on SIGINT and SIGTERM are ignored: the job's status is decided (and may
    be printed already), so a late Ctrl-C or a second SIGTERM (``scancel``) cannot
    change it.

    Python's finalization resets handlers that are Python functions to the default,
    and only then does mpi4py call MPI_Finalize, which waits for the other ranks: a
    signal landing there killed the rank, and mpiexec (hydra) reported the signal's
    number (2 for SIGINT) as the job's status although "exit 130" was printed. An
    ignored signal stays ignored through finalization.
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: nothing to do
            signal.signal(signum, signal.SIG_IGN)


def run(command: str) -> None:
    """``python -m distnn.COMMAND``: quiet interrupts, then the command's ``main``.

    A stdout closed early (``| head``) ends a serial command (predict, evaluate, plot,
    ``--help``) quietly, with status 1 and no traceback, as in Python's recipe
    (https://docs.python.org/3/library/signal.html#note-on-sigpipe); a full one (``>
    /dev/full``) likewise, with one line ``distnn: error: stdout: No space left on
    device``. On one rank of several it ends the whole job, so that no other rank waits
    for it. Training is not ended by either: :mod:`distnn.run.progress` handles its own
    stdout, says so once on stderr, and the run ends with its own status.
    """
    interrupts_end_quietly()
    _check_working_directory()
    if command in RANK_COMMANDS and launcher_tasks() is not None:
        from distnn.cli.death_watch import keep_death_watch

        keep_death_watch(launcher_rank())  # a rank killed by a signal is named
    from importlib import import_module

    try:
        try:
            status = import_module(f"distnn.cli.{command}").main()
            status_decided()
        finally:  # also after --help's SystemExit: a failing flush is caught below
            sys.stdout.flush()
    except BrokenPipeError:
        _stdout_failed("")
    except OSError as e:  # a full stdout (> /dev/full): files fail as DistnnError instead
        if e.errno != errno.ENOSPC:
            raise
        _stdout_failed(f"distnn: error: stdout: {e.strerror}\n")
    sys.exit(status)


def _check_working_directory() -> None:
    """Status 2 and one line from launcher rank 0 if the working directory is gone.

    A shell left in a deleted folder still starts commands there, but ``os.getcwd()``
    raises, and with it every relative path, the default outputs beside them and the
    checks that outputs land on no input. Refused before MPI starts, on every rank alike
    (the launcher started them all in that folder), instead of a traceback mid-run.
    """
    try:
        os.getcwd()
    except OSError as e:
        if launcher_rank() == 0:
            why = "it was deleted" if e.errno == errno.ENOENT else (e.strerror or str(e))
            os.write(
                2,
                f"distnn: error: the working directory cannot be used ({why}): cd to an "
                "existing directory and run again\n".encode(),
            )
        sys.exit(2)


def _stdout_failed(message: str) -> None:
    """stdout took no more: ``message`` (if any) on stderr, status 1 on every rank."""
    from distnn.errors import EXIT_BROKEN_PIPE
    from distnn.parallel.failures import stdout_to_devnull
    from distnn.parallel.world import abort_if_shared

    stdout_to_devnull()
    if message and launcher_rank() == 0:
        with contextlib.suppress(OSError):
            os.write(2, message.encode())
    abort_if_shared(EXIT_BROKEN_PIPE)
    sys.exit(EXIT_BROKEN_PIPE)


def train_entry() -> None:
    """The ``distnn-train`` console script."""
    run("train")


def command_world():
    """The world of a command that may also run alone (evaluate, predict): MPI's under a
    launcher of several tasks, else one that needs no MPI library. Several tasks but no
    MPI to join them: one line from launcher rank 0, and every task exits with 2."""
    from distnn.errors import DistnnError
    from distnn.parallel.failures import install_abort_on_error
    from distnn.parallel.world import process_world

    try:
        world = process_world()
    except DistnnError as e:  # each task is alone: launcher rank 0 speaks for them
        if launcher_rank() == 0:
            print(f"distnn: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    install_abort_on_error(world)
    return world
