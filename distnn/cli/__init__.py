"""The command lines: train, evaluate, predict, plot, and what they share.

:func:`interrupts_end_quietly` runs first in every ``python -m distnn.COMMAND``, before
NumPy or MPI is imported: a Ctrl-C or SIGTERM that arrives while a command starts (or
in a command that has nothing to checkpoint) ends each rank with status 130 and one
line from rank 0, instead of a traceback from every rank. ``train`` replaces it with
its own handlers (finish the step, checkpoint, exit 75) while it trains.
"""

import os
import signal
import sys

from distnn.errors import EXIT_INTERRUPTED  # a module without imports: loads nothing heavy

# Where launchers put a process's rank, read before MPI is started.
_RANK_VARIABLES = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID")


def _launcher_rank() -> int:
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def _end_quietly(signum: int, frame: object) -> None:
    if _launcher_rank() == 0:
        name = signal.Signals(signum).name
        os.write(2, f"distnn: {name}: stopped; nothing to save yet (exit 130)\n".encode())
    os._exit(EXIT_INTERRUPTED)


def interrupts_end_quietly() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _end_quietly)


def run(command: str) -> None:
    """``python -m distnn.COMMAND``: quiet interrupts, then the command's ``main``."""
    interrupts_end_quietly()
    from importlib import import_module

    sys.exit(import_module(f"distnn.cli.{command}").main())


def train_entry() -> None:
    """The ``distnn-train`` console script."""
    run("train")
