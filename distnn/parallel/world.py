"""The MPI world: rank, size, and the few collectives distnn uses. The only mpi4py user.

Every collective in the training loop uses mpi4py's buffer (upper-case) interface on
NumPy arrays, so nothing is pickled there; small objects (an error message, a
checkpoint's metadata) are broadcast by pickle outside it. Started without a launcher,
``MPI.COMM_WORLD`` is a world of one and every call below still works.

mpi4py is imported on first need (:func:`load_mpi`, by ``World()``), not with this
module: :func:`process_world` gives a command that may run alone (evaluate, predict,
``distnn.evaluate``) a :class:`LoneWorld` when no launcher started several processes,
so that it runs where mpi4py is missing or finds no MPI library to load.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import zlib
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import numpy as np

from distnn.errors import CollectiveError, DistnnError, ReplicaMismatchError
from distnn.parallel.launcher_env import launcher_tasks

# mpi4py's MPI module once load_mpi() has run (World() runs it); None until then. The
# methods below read this global as they read an imported module, at no extra cost.
MPI: Any = None

T = TypeVar("T")
REAL_EXIT = os._exit  # captured before failures_end_the_job wraps os._exit
ABORT_GRACE_S = 0.2


def load_mpi() -> Any:
    """mpi4py's MPI module, imported (and MPI initialized) on the first call.

    ImportError, naming the fix, when mpi4py is missing or finds no MPI library.
    """
    global MPI
    if MPI is None:
        try:
            from mpi4py import MPI as mpi
        except (ImportError, RuntimeError) as e:  # mpi4py's wheel found no MPI library
            raise ImportError(
                f"distnn needs an MPI library, and mpi4py found none "
                f"({(str(e).splitlines() or [type(e).__name__])[0]}): "
                "pip install 'distnn[mpich]' for the bundled MPICH, or load your system's "
                "MPI (e.g. module load openmpi) so that its libmpi is on LD_LIBRARY_PATH"
            ) from e
        MPI = mpi
    return MPI


class World:
    def __init__(self, comm: MPI.Comm | None = None) -> None:
        mpi = load_mpi()  # also when given a comm: the methods below use the module
        self.comm = mpi.COMM_WORLD if comm is None else comm
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

    def allgather(self, buf: np.ndarray) -> None:
        """Every rank's segment of ``buf`` on every rank, in place.

        ``buf`` is ``size`` equal segments in rank order; each rank has already written
        its own, and receives the others around it.
        """
        if self.size > 1:
            self.comm.Allgather(MPI.IN_PLACE, buf)

    def alltoall(self, send: np.ndarray, received: np.ndarray) -> None:
        """``send[q]`` to rank q, for every q; ``received[r]`` is what rank r sent here."""
        if self.size > 1:
            self.comm.Alltoall(send, received)
        else:
            np.copyto(received, send)

    def allreduce_max(self, buf: np.ndarray) -> None:
        """The element-wise maximum of ``buf`` over all ranks, in place."""
        if self.size > 1:
            self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.MAX)

    def bcast(self, buf: np.ndarray, root: int = 0) -> None:
        """Give every rank root's ``buf``, in place."""
        if self.size > 1:
            self.comm.Bcast(buf, root=root)

    def bcast_object(self, obj: T) -> T:
        """Rank 0's small picklable ``obj`` on every rank (never in the training loop)."""
        return self.comm.bcast(obj, root=0) if self.size > 1 else obj

    def gather_object(self, obj: T) -> list[T] | None:
        """Every rank's small picklable ``obj``, as a list on rank 0 (None elsewhere)."""
        return self.comm.gather(obj, root=0) if self.size > 1 else [obj]

    def bcast_arrays(self, arrays: dict[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
        """Rank 0's arrays on every rank: names, shapes and dtypes by pickle, data by Bcast.

        For a checkpoint: its parameter-sized arrays travel as raw buffers, not pickles.
        """
        if self.size == 1:
            return arrays
        layout = self.bcast_object(
            None if arrays is None else {k: (a.shape, a.dtype.str) for k, a in arrays.items()}
        )
        if layout is None:
            return None
        out = {}
        for key, (shape, dtype) in layout.items():
            buf = np.asarray(arrays[key], order="C") if self.is_root else np.empty(shape, dtype)
            if buf.size:
                self.comm.Bcast(buf.reshape(-1).view(np.uint8), root=0)
            out[key] = buf
        return out

    def post_object(self, obj: object, dest: int, tag: int) -> None:
        """Send a small picklable ``obj`` to rank ``dest`` without waiting: that rank may
        never come to receive it (the start-up rendezvous of
        :mod:`distnn.parallel.watchdog`)."""
        posted = self.__dict__.setdefault("_posted", [])
        posted.append(self.comm.isend(obj, dest=dest, tag=tag))
        MPI.Request.Testall(posted)

    def take_object(self, source: int, tag: int) -> tuple[bool, Any]:
        """``(True, obj)`` if rank ``source`` has sent an object with ``tag``, else
        ``(False, None)``; never waits."""
        if self.comm.Iprobe(source=source, tag=tag):
            return True, self.comm.recv(source=source, tag=tag)
        return False, None

    def agree(self, work: Callable[[], T]) -> T:
        """Run ``work()`` on every rank; if it raised DistnnError anywhere, raise it everywhere.

        Setup runs on every rank; this one small collective lets all ranks stop together
        instead of some waiting forever in the first Allreduce. The message is the
        lowest failing rank's, naming that rank when it is not rank 0.
        """
        result, message = None, None
        try:
            result = work()
        except DistnnError as e:
            message = str(e)
        error = self.gather_errors(message)
        if error is not None:
            raise CollectiveError(error)
        return result

    def on_root(self, work: Callable[[], T]) -> T | None:
        """Run ``work()`` on rank 0 only; a DistnnError there is raised on every rank.

        For what one process must do alone (write a file, read a checkpoint): the other
        ranks wait for its outcome, so none runs on when it failed. Returns rank 0's
        result there and None elsewhere.
        """
        result: Any = None
        failure = None
        if self.is_root:
            try:
                result = work()
            except DistnnError as e:
                failure = (str(e), e.exit_code)
        failure = self.bcast_object(failure)
        if failure is not None:
            error = CollectiveError(failure[0])
            error.exit_code = failure[1]  # e.g. a failed final save keeps its own status
            raise error
        return result

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

    def abort(self, code: int) -> NoReturn:
        """End every rank of the job with status ``code``; never returns."""
        self.comm.Abort(code)
        # MPICH's MPI_Abort can return on the rank that called it (seen on rank 0 under
        # hydra): the caller would then run on, unwind and report a second failure.
        REAL_EXIT(code)

    def say_and_abort(self, message: str, code: int) -> NoReturn:
        """Print ``message`` on stderr, then end the whole job with status ``code``.

        The pause lets the launcher forward the line before MPI_Abort tears the job
        down; without it the only explanation of the failure is sometimes lost.
        """
        sys.stderr.write(message)
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
        self.abort(code)

    @staticmethod
    def library_version() -> str:
        """The MPI library actually loaded, e.g. 'MPICH Version: 5.0.2'."""
        return " ".join(MPI.Get_library_version().split()[:3])


class LoneWorld(World):
    """A world of one process that needs no MPI: every collective is a no-op or a copy.

    What :func:`process_world` gives a process that no launcher started with others,
    so that predict and evaluate run where mpi4py cannot load an MPI library.
    """

    def __init__(self) -> None:  # no MPI: World's methods never reach comm at size 1
        self.comm = None
        self.rank, self.size = 0, 1

    def finish_allreduces(self, pending: list) -> None:
        pending.clear()  # start_allreduce_sum adds nothing in a world of one

    def abort(self, code: int) -> NoReturn:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed or broken stream
                stream.flush()
        REAL_EXIT(code)

    @staticmethod
    def library_version() -> str:
        return "none (one process, MPI not started)"


def process_world() -> World:
    """The world of this process: MPI's when a launcher started several, else a LoneWorld.

    Under mpiexec, mpirun or srun of several tasks this is ``World()``, as it always
    was; started alone (a script, a notebook, ``python -m distnn.evaluate``) it is a
    world of one that never imports mpi4py. Several tasks but no MPI library to load is
    a DistnnError (exit 2).
    """
    tasks = launcher_tasks()
    if tasks is None:
        return LoneWorld()
    try:
        return World()
    except ImportError as e:
        name, value = tasks
        raise DistnnError(f"{name}={value} says {value} tasks were started, but {e}") from None


def check_launch(world: World) -> None:
    """Refuse to train alone when a launcher evidently started several tasks.

    Under srun without MPI support, or an mpiexec of another MPI library than
    mpi4py's, every task sees a world of 1 and would silently train its own model.
    """
    if world.size != 1 or (world.comm is not None and world.comm != MPI.COMM_WORLD):
        return  # a world of one on purpose
    tasks = launcher_tasks()
    if tasks is not None:
        name, value = tasks
        raise DistnnError(
            f"{name}={value} says {value} tasks were started, but MPI sees a world of 1: "
            "the launcher and mpi4py's MPI library do not match (with Slurm use "
            "'srun --mpi=pmi2' or mpiexec from the same MPI as mpi4py)"
        )


def abort_if_shared(code: int) -> None:
    """End the whole MPI job with ``code`` if this process is one rank of several.

    For an error that leaves this rank outside the collectives the others may be waiting
    in (stdout closed on rank 0 while the others wait for its report). Does nothing in
    a world of one or when MPI was never started.
    """
    if MPI is None or not MPI.Is_initialized() or MPI.Is_finalized():
        return
    if MPI.COMM_WORLD.Get_size() > 1:
        MPI.COMM_WORLD.Abort(code)
