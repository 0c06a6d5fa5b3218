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
