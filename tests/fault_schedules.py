"""User schedules that inject faults, loaded by the CLI with ``--schedule fault_schedules:…``.

Set by the test through the environment: FAULT_RANK and FAULT_STEP (where
``Failing`` raises), STEP_DELAY (seconds ``Slow`` sleeps per step, so a job lasts
long enough to be signalled), PID_DIR (where each rank writes its pid).
"""

import os
import time

from mpi4py import MPI

from distnn.engine.schedules import SGD


class Slow(SGD):
    def __init__(self, lr):
        super().__init__(lr)
        self.rank = MPI.COMM_WORLD.Get_rank()
        self.delay = float(os.environ.get("STEP_DELAY", "0"))
        if "PID_DIR" in os.environ:
            path = os.path.join(os.environ["PID_DIR"], f"rank-{self.rank}")
            with open(path + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(path + ".tmp", path)

    def _step(self, grad, lr, out):
        time.sleep(self.delay)
        super()._step(grad, lr, out)


class Failing(Slow):
    def _step(self, grad, lr, out):
        if self.rank == int(os.environ["FAULT_RANK"]) and self.t == int(os.environ["FAULT_STEP"]):
            raise RuntimeError(f"injected fault at step {self.t}")
        super()._step(grad, lr, out)


def _leave(how: str) -> None:
    """Leave this rank the way ``how`` says (LEAVE_HOW): every one must end the job."""
    if how == "exception":
        raise RuntimeError("injected failure")
    if how == "exit0":
        raise SystemExit(0)
    if how == "exit3":
        raise SystemExit(3)
    if how == "os_exit0":
        os._exit(0)
    if how == "os_exit2":
        os._exit(2)
    if how == "keyboard":
        raise KeyboardInterrupt
    raise ValueError(how)


class Leaving(SGD):
    """Leaves on rank LEAVE_RANK, in its constructor (LEAVE_WHEN=setup) or at step 3."""

    def __init__(self, lr):
        super().__init__(lr)
        self.leaves = MPI.COMM_WORLD.Get_rank() == int(os.environ["LEAVE_RANK"])
        if self.leaves and os.environ["LEAVE_WHEN"] == "setup":
            _leave(os.environ["LEAVE_HOW"])

    def _step(self, grad, lr, out):
        if self.leaves and self.t == 3:
            _leave(os.environ["LEAVE_HOW"])
        super()._step(grad, lr, out)


class FailingLater(Slow):
    """Raises on rank FAULT_RANK FAULT_AFTER steps after each start (a crash loop that
    still makes progress between crashes, each time at another step)."""

    def _step(self, grad, lr, out):
        if not hasattr(self, "first"):
            self.first = self.t
        after = int(os.environ["FAULT_AFTER"])
        if self.rank == int(os.environ["FAULT_RANK"]) and self.t == self.first + after:
            raise RuntimeError(f"injected fault at step {self.t}")
        super()._step(grad, lr, out)


class Freezing(SGD):
    """Stops its own rank (SIGSTOP) on FREEZE_RANK while the run is being set up, after the
    start-up rendezvous: a rank frozen in setup, as by a stuck disk. Writes its pid first."""

    def __init__(self, lr):
        super().__init__(lr)
        rank = MPI.COMM_WORLD.Get_rank()
        with open(os.path.join(os.environ["PID_DIR"], f"rank-{rank}"), "w") as f:
            f.write(str(os.getpid()))
        if rank == int(os.environ["FREEZE_RANK"]):
            os.kill(os.getpid(), __import__("signal").SIGSTOP)


def _die(how: str) -> None:
    """End this rank the way ``how`` says (DIE_HOW), with no word from Python."""
    import ctypes
    import signal

    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "sigsegv":
        ctypes.string_at(0)  # a real segmentation fault, not a signal sent
    elif how == "os_exit":
        os._exit(3)
    elif how == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
        return  # asks the job to stop: the run goes on to the end of the step
    time.sleep(60)  # a signal is delivered at once; never reached


class Dying(Slow):
    """Rank DIE_RANK ends itself the way DIE_HOW says at step DIE_STEP, in a job's first
    attempt only (``distnn.launch`` sets DISTNN_ATTEMPT), so a restart runs clean."""

    def _step(self, grad, lr, out):
        first = os.environ.get("DISTNN_ATTEMPT", "1") == "1"
        if (
            first
            and self.rank == int(os.environ["DIE_RANK"])
            and self.t == int(os.environ["DIE_STEP"])
        ):
            _die(os.environ["DIE_HOW"])
        super()._step(grad, lr, out)
