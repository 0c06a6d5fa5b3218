"""The MPI world as the trainer sees it: rank, size, and the few collectives it uses.

Every collective here uses mpi4py's buffer (upper-case) interface on NumPy arrays,
so nothing is pickled in the training loop. Started without a launcher,
``MPI.COMM_WORLD`` is a world of one and every call below still works.
"""

from __future__ import annotations

import os
import sys
import traceback
import zlib

import numpy as np
from mpi4py import MPI

from distnn.errors import DistnnError, ReplicaMismatchError

# Variables a launcher sets to the number of tasks it started (SLURM_STEP_NUM_TASKS is
# set by srun, not by sbatch's batch script, which is a single process).
_LAUNCHER_SIZE_VARIABLES = (
    "PMI_SIZE",
    "PMIX_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "MPI_LOCALNRANKS",
    "SLURM_STEP_NUM_TASKS",
)


class World:
    def __init__(self, comm: MPI.Comm | None = None) -> None:
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def allreduce_sum(self, buf: np.ndarray) -> None:
        """Sum ``buf`` over all ranks, in place."""
        if self.size > 1:
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)

    def start_allreduce_sum(self, buf: np.ndarray, pending: list[MPI.Request]) -> None:
        """Begin summing ``buf`` in place without waiting; the request joins ``pending``.

        Testing the pending requests lets MPI progress them while the caller computes.
        """
        if self.size > 1:
            pending.append(self.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM))
            MPI.Request.Testall(pending)

    def finish_allreduces(self, pending: list[MPI.Request]) -> None:
        MPI.Request.Waitall(pending)
        pending.clear()

    def bcast(self, buf: np.ndarray, root: int = 0) -> None:
        """Give every rank root's ``buf``, in place."""
        if self.size > 1:
            self.comm.Bcast(buf, root=root)

    def gather_errors(self, message: str | None) -> str | None:
        """The first rank's error message, if any rank had one; the same on every rank.

        Setup runs on every rank; this one small collective lets all ranks agree
        to stop together instead of some waiting forever in the first Allreduce.
        """
        messages = self.comm.allgather(message) if self.size > 1 else [message]
        for rank, msg in enumerate(messages):
            if msg is not None:
                return msg if rank == 0 else f"{msg} (on rank {rank})"
        return None

    def setup_failed(self, message: str | None) -> bool:
        """Agree on ``gather_errors``; rank 0 prints the one line. True if the job must stop."""
        error = self.gather_errors(message)
        if error is not None and self.is_root:
            print(f"distnn: error: {error}", file=sys.stderr)
        return error is not None

    def check_in_sync(self, params: np.ndarray, where: str) -> None:
        """Stop every rank if the replicas' parameters differ (checksum MIN vs MAX)."""
        if self.size == 1:
            return
        crc = zlib.crc32(params)
        extremes = np.array([crc, -crc], dtype=np.int64)
        self.comm.Allreduce(MPI.IN_PLACE, extremes, op=MPI.MAX)
        if extremes[0] != -extremes[1]:
            raise ReplicaMismatchError(
                f"replicas out of sync {where}: parameter checksums differ across ranks"
            )

    def local_size(self) -> int:
        """Number of ranks sharing this node (and its cores) with this one."""
        if self.size == 1:
            return 1
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            return node.Get_size()
        finally:
            node.Free()

    def abort(self, code: int) -> None:
        self.comm.Abort(code)


def check_launch(world: World) -> None:
    """Refuse to train alone when a launcher evidently started several tasks.

    Under srun without MPI support, or an mpiexec of another MPI library than
    mpi4py's, every task sees a world of 1 and would silently train its own model.
    """
    if world.size != 1:
        return
    for name in _LAUNCHER_SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            raise DistnnError(
                f"{name}={value} says {value} tasks were started, but MPI sees a world of 1: "
                "the launcher and mpi4py's MPI library do not match (with Slurm use "
                "'srun --mpi=pmi2' or mpiexec from the same MPI as mpi4py)"
            )


def install_abort_on_error(world: World) -> None:
    """Make any uncaught exception end the whole job, not just this rank.

    Without this, one rank's exception leaves the others blocked in their next
    Allreduce forever. The error is printed once, naming the rank.
    """
    if world.size == 1:
        return

    def hook(exc_type, exc, tb):
        details = "".join(traceback.format_exception(exc_type, exc, tb))
        sys.stderr.write(f"distnn: rank {world.rank} failed, aborting the job:\n{details}")
        sys.stderr.flush()
        world.abort(1)

    sys.excepthook = hook
