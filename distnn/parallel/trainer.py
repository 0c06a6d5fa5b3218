"""The data-parallel training loop: shard, backprop, Allreduce, schedule step.

Every rank holds the whole network and the whole data set. Each global batch is
cut into one shard per rank (sizes differ by at most one sample); each rank runs
backprop over its shard into a flat gradient buffer, one Allreduce sums the
buffers, and every rank's schedule turns the same global gradient into the same
step, so the replicas never drift apart (MATH.md, Data parallelism).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from distnn.data.load import Dataset
from distnn.engine.network import Network
from distnn.engine.schedules import GradientUpdateSchedule
from distnn.errors import DivergenceError, Preempted
from distnn.io.checkpoints import Checkpoint
from distnn.parallel.world import World

# The step's one Allreduce carries the shard gradients and, in extra slots after
# them, the shard loss, this rank's stop request (a signal) and whether rank 0's
# clock passed the time limit: agreeing on the loss and on whether to stop costs no
# message of its own, and no rank decides on its own clock.
LOSS_SLOT, STOP_SLOT, TIME_SLOT, NUM_EXTRA_SLOTS = 0, 1, 2, 3


class TimeLimitReached(Exception):
    """Raised on every rank after the step in which rank 0's clock passed the deadline."""


def shard_bounds(batch_size: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [lo, hi) of a global batch that ``rank`` of ``size`` works on."""
    return rank * batch_size // size, (rank + 1) * batch_size // size


def epoch_permutation(n_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the training set in ``epoch``: the same on every rank."""
    return np.random.default_rng([seed, epoch]).permutation(n_samples)


@dataclass
class EpochResult:
    epoch: int
    loss: float  # mean training loss over the epoch's batches
    samples_per_sec: float
    elapsed_s: float
    test_loss: float | None = None
    accuracy: float | None = None

    def as_record(self) -> dict:
        return dict(vars(self))


class Trainer:
    def __init__(
        self,
        net: Network,
        schedule: GradientUpdateSchedule,
        data: Dataset,
        world: World,
        batch_size: int,
        seed: int = 0,
        overlap: bool = False,
    ) -> None:
        self.net, self.schedule, self.data, self.world = net, schedule, data, world
        self.batch_size = min(batch_size, len(data.x))
        self.seed = seed
        # Position in the data: all a checkpoint needs besides params and schedule state.
        self.epoch = 0  # epochs completed
        self.batch_in_epoch = 0  # batches done in the epoch under way
        self.epoch_loss_sum = 0.0  # Σ batch loss × batch size so far in that epoch
        self.step = 0  # updates since the start of training
        self.stop_requested = False  # set by a signal handler; agreed on in the next step
        self.deadline: float | None = None  # time.perf_counter() value; read on rank 0 only
        self.on_step: list[Callable[[Trainer, int, float], None]] = []

        shard_rows = self.shard_rows()
        self.ws = net.workspace(max(shard_rows, self.workspace_rows()))
        self.x_shard = np.empty((shard_rows, net.sizes[0]), net.dtype)
        self.y_shard = np.empty((shard_rows, net.sizes[-1]), net.dtype)
        self.step_buffer = np.zeros(net.num_params + NUM_EXTRA_SLOTS, net.dtype)
        self.grad = self.step_buffer[: net.num_params]
        self.extras = self.step_buffer[net.num_params :]
        # With ``overlap``, each layer's gradient is summed by its own non-blocking
        # Iallreduce, started while backprop goes on to the layers below (as DDP's buckets).
        self.overlap = overlap and world.size > 1
        self.buckets = [self.step_buffer[s] for s in net.layer_slices()]
        self.pending: list = []

        world.bcast(net.params)  # rank 0's initialization becomes everyone's

    def shard_rows(self) -> int:
        """Rows of the largest piece of a batch this rank backprops at once: ceil(B/P)."""
        return -(-self.batch_size // self.world.size)

    def workspace_rows(self) -> int:
        """Rows the workspace must also hold for evaluation (its chunks reuse it)."""
        return 1

    def train_step(self, batch: np.ndarray) -> float:
        """One update from the global batch ``batch`` (row indices); returns its mean loss."""
        # Shard: this rank's rows of the global batch, gathered into preallocated buffers.
        lo, hi = shard_bounds(len(batch), self.world.rank, self.world.size)
        n = hi - lo
        x, y = self.x_shard[:n], self.y_shard[:n]
        np.take(self.data.x, batch[lo:hi], axis=0, out=x)
        np.take(self.data.y, batch[lo:hi], axis=0, out=y)

        # Backprop: this shard's share of ∇ of the batch-mean loss (MATH.md, Cost),
        # born in the buffer we send.
        scale = 1.0 / len(batch)
        if self.overlap:
            loss = self.net.backprop(x, y, self.grad, self.ws, scale, self._send_layer)
        else:
            loss = self.net.backprop(x, y, self.grad, self.ws, scale)
        self.extras[LOSS_SLOT] = loss * scale
        self.extras[STOP_SLOT] = self.stop_requested
        self.extras[TIME_SLOT] = self.time_is_up()

        # Allreduce: the global batch's gradient, the same on every rank.
        if self.overlap:
            self.world.start_allreduce_sum(self.extras, self.pending)
            self.world.finish_allreduces(self.pending)
        else:
            self.world.allreduce_sum(self.step_buffer)
        loss = float(self.extras[LOSS_SLOT])
        if not math.isfinite(loss):  # the same Allreduce result on every rank
            raise DivergenceError(
                f"the loss became {loss} at step {self.step + 1} (epoch {self.epoch + 1}): "
                "training diverged; is the learning rate too high?"
            )

        # Schedule step: identical on every rank, so the replicas stay identical.
        self.net.params -= self.schedule(self.grad)
        self.step += 1
        return loss

    def time_is_up(self) -> bool:
        return (
            self.world.rank == 0
            and self.deadline is not None
            and time.perf_counter() > self.deadline
        )

    def _send_layer(self, ell: int) -> None:
        self.world.start_allreduce_sum(self.buckets[ell - 1], self.pending)

    def train_epoch(self) -> EpochResult:
        """The rest of the current epoch (all of it, unless resumed mid-epoch).

        Raises Preempted on every rank after the step in which any rank asked to
        stop, with the position advanced past that step, ready to checkpoint.
        """
        order = epoch_permutation(len(self.data.x), self.seed, self.epoch)
        n_batches = -(-len(order) // self.batch_size)
        start, first = time.perf_counter(), self.batch_in_epoch
        for b in range(first, n_batches):
            batch = order[b * self.batch_size : (b + 1) * self.batch_size]
            loss = self.train_step(batch)
            self.batch_in_epoch, self.epoch_loss_sum = (
                b + 1,
                self.epoch_loss_sum + loss * len(batch),
            )
            for hook in self.on_step:
                hook(self, n_batches, loss)
            if self.extras[STOP_SLOT] > 0:  # the same Allreduce result on every rank
                raise Preempted(f"stopped on request after step {self.step}")
            if self.extras[TIME_SLOT] > 0:
                raise TimeLimitReached(f"time limit reached after step {self.step}")
        elapsed = time.perf_counter() - start
        self.check_params(f"epoch {self.epoch + 1}")
        result = EpochResult(
            epoch=self.epoch + 1,
            loss=self.epoch_loss_sum / len(order),
            samples_per_sec=(len(order) - first * self.batch_size) / max(elapsed, 1e-9),
            elapsed_s=elapsed,
        )
        self.epoch, self.batch_in_epoch, self.epoch_loss_sum = self.epoch + 1, 0, 0.0
        if self.data.x_test is not None:
            result.test_loss, result.accuracy = self.evaluate(
                self.data.x_test, self.data.y_test, self.data.labels_test
            )
        return result

    def check_params(self, where: str) -> None:
        """Once an epoch and before each checkpoint: replicas equal, parameters finite.

        A non-finite gradient shows as a non-finite loss one step later; this check
        makes sure no checkpoint ever holds such parameters.
        """
        if not np.isfinite(self.net.params).all():  # identical on every rank
            raise DivergenceError(
                f"the parameters became non-finite by step {self.step} ({where}): "
                "training diverged; is the learning rate too high?"
            )
        self.world.check_in_sync(self.net.params, f"at {where}")

    def checkpoint(self, config: dict, shape: dict) -> Checkpoint:
        """This rank's view of the run, enough to continue it exactly."""
        return Checkpoint(
            params=self.net.params,
            schedule_state=self.schedule.state_dict(),
            epoch=self.epoch,
            batch_in_epoch=self.batch_in_epoch,
            epoch_loss_sum=self.epoch_loss_sum,
            step=self.step,
            config=config,
            shape=shape,
        )

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue from ``ckpt`` (the same on every rank)."""
        self.net.params[...] = ckpt.params
        self.schedule.load_state_dict(ckpt.schedule_state)
        self.epoch, self.batch_in_epoch = ckpt.epoch, ckpt.batch_in_epoch
        self.epoch_loss_sum, self.step = ckpt.epoch_loss_sum, ckpt.step

    def evaluate(
        self, x: np.ndarray, y: np.ndarray, labels: np.ndarray | None
    ) -> tuple[float, float | None]:
        """Mean loss and accuracy (None for regression) over all rows, split across ranks."""
        lo, hi = shard_bounds(len(x), self.world.rank, self.world.size)
        totals = np.zeros(2, np.float64)  # loss sum, correct predictions
        chunk = self.ws.max_rows
        for start in range(lo, hi, chunk):
            stop = min(start + chunk, hi)
            a = self.net.feed_forward(x[start:stop], self.ws)
            scratch = self.ws.D[-1][: stop - start]
            totals[0] += self.net.loss_fn.value(a, y[start:stop], scratch)
            if labels is not None:
                totals[1] += np.count_nonzero(a.argmax(axis=1) == labels[start:stop])
        self.world.allreduce_sum(totals)
        accuracy = totals[1] / len(x) if labels is not None else None
        return totals[0] / len(x), accuracy
