"""A command on every rank of the MPI test session, in process: the several-rank cases of
the refusal matrices, without an ``mpiexec`` and an interpreter per rank for each case.

The in-process MPI session (``mpiexec -n 2`` and ``-n 4`` ``python -m pytest --with-mpi
-m mpi``) runs each test on every rank; :func:`run_on_every_rank` runs ``python -m
MODULE ARGS`` there through the CLI's own entry (:func:`conftest.run_in_process`) on
COMM_WORLD, as the ranks of one job would, and gathers every rank's status and output.
What a job's processes add beyond that (the launcher's exit status, the dead-rank
watch) keeps a few cases of its own as real ``mpiexec`` jobs in the serial files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import error_lines, print_past_capture, run_in_process

# The ranks of the session are the job: the dead-rank watch would fork pytest itself.
NO_DEATH_WATCH = {"DISTNN_DEATH_WATCH": "0"}


def _comm():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def run_on_every_rank(
    args: list[str], cwd: Path, module: str = "distnn.train"
) -> list[subprocess.CompletedProcess]:
    """``python -m MODULE ARGS`` on every rank of the session at once; each rank's result,
    in rank order, on every rank."""
    hook, saved = sys.excepthook, {k: os.environ.get(k) for k in NO_DEATH_WATCH}
    os.environ.update(NO_DEATH_WATCH)
    try:
        mine = run_in_process(args, cwd, module)
    except Exception:
        # As the command's own abort-on-error hook would: the other ranks may be waiting
        # in one of its collectives, so the whole session ends now, with this traceback.
        rank = _comm().Get_rank()
        print_past_capture(f"rank {rank}: {' '.join(args)} raised:\n{traceback.format_exc()}")
        _comm().Abort(1)
    finally:
        sys.excepthook = hook  # the command's abort-on-error hook ends with it
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return _comm().allgather(mine)


def assert_refused_as_one_job(
    results: list[subprocess.CompletedProcess], words: str, status: int = 2
) -> str:
    """What a refused job shows: ``status`` on every rank, one ``distnn: error`` line in
    all (rank 0's) naming ``words``, no traceback; that line."""
    assert [r.returncode for r in results] == [status] * len(results), [r.stderr for r in results]
    lines = [line for r in results for line in error_lines(r.stderr)]
    assert len(lines) == 1 and error_lines(results[0].stderr) == lines, [r.stderr for r in results]
    assert words in lines[0], lines[0]
    assert not any("Traceback" in r.stderr for r in results), results[0].stderr
    return lines[0]


@contextlib.contextmanager
def shared_folder() -> Iterator[Path]:
    """A fresh folder every rank of the session sees (rank 0 makes and removes it)."""
    comm = _comm()
    path = tempfile.mkdtemp(prefix="distnn-ranks-") if comm.Get_rank() == 0 else None
    path = Path(comm.bcast(path, root=0))
    try:
        yield path
    finally:
        comm.Barrier()
        if comm.Get_rank() == 0:
            shutil.rmtree(path, ignore_errors=True)


def on_rank_0(make: Callable[[], object]) -> None:
    """``make()`` on rank 0 alone, the others waiting until it is done (an error there
    fails the test on every rank instead of leaving the others to wait)."""
    comm = _comm()
    error = None
    if comm.Get_rank() == 0:
        try:
            make()
        except Exception as e:  # reported on every rank below
            error = repr(e)
    error = comm.bcast(error, root=0)
    if error is not None:
        pytest.fail(f"rank 0 could not prepare the files: {error}")
