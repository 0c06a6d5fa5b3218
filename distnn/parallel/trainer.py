"""The data-parallel training step: shard, backprop, reduce, schedule step.

Every rank holds the whole network and the whole data set. Each global batch is
cut into pieces (one per rank, or ``--deterministic``'s virtual shards); each rank
runs backprop over its pieces into the buffers its reducer sends, the reducer sums
them across the world, and every rank's schedule turns the same global gradient into
the same step, so the replicas never drift apart (MATH.md, Data parallelism).

The Trainer holds the position in the data (what a checkpoint needs besides the
parameters and the schedule's state). It does not decide when to stop: the owner of
the run (:func:`distnn.run.loop.train_config`, through
:class:`~distnn.run.stopping.StopRules`) writes this rank's votes into ``votes`` before
each step and reads the world's sums there after it.
"""

from __future__ import annotations

import math
from time import perf_counter

import numpy as np

from distnn.data.dataset import Dataset
from distnn.engine.network import Network
from distnn.engine.update_schedule import GradientUpdateSchedule
from distnn.errors import DivergenceError, ScheduleError
from distnn.parallel.evaluation import EVAL_CHUNK, evaluate_sharded
from distnn.parallel.noise_scale import NOISE_EVERY, NoiseScale, piece_scales
from distnn.parallel.ordered_sum import OrderedSum
from distnn.parallel.reducers import FusedAllreduce, OverlappedAllreduce, Reducer, shard_bounds
from distnn.parallel.timeline import EVALUATE, Timeline
from distnn.parallel.world import World


def epoch_permutation(n_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the training set in ``epoch``: the same on every rank."""
    return np.random.default_rng([seed, epoch]).permutation(n_samples)


def check_schedule_step(step: object, params: np.ndarray, name: str) -> None:
    """ScheduleError unless ``step`` can update ``params``: same shape and dtype, finite.

    Every rank computes the same step from the same gradient, so all raise together.
    """
    if not isinstance(step, np.ndarray):
        problem = f"returned {type(step).__name__}, not a NumPy array"
    elif step.shape != params.shape:
        problem = f"returned shape {step.shape}, the parameters have {params.shape}"
    elif step.dtype != params.dtype:
        problem = f"returned dtype {step.dtype}, the parameters are {params.dtype}"
    elif not np.isfinite(step).all():
        problem = "returned NaN or infinite values"
    else:
        return
    raise ScheduleError(f"schedule {name}: its first step {problem}")


def make_reducer(
    net: Network, world: World, overlap: bool = False, virtual_shards: int | None = None
) -> Reducer:
    """The reducer for a run: shard-ordered with ``virtual_shards``, overlapped, or fused."""
    if virtual_shards is not None:
        return OrderedSum(net.num_params, net.dtype, world, virtual_shards)
    if overlap and world.size > 1:
        return OverlappedAllreduce(net.num_params, net.dtype, world, net.layer_slices())
    return FusedAllreduce(net.num_params, net.dtype, world)


class Trainer:
    """Steps through the epochs of one data set; everything it uses comes in here."""

    def __init__(
        self,
        net: Network,
        schedule: GradientUpdateSchedule,
        data: Dataset,
        world: World,
        batch_size: int,
        reducer: Reducer,
        seed: int = 0,
        timeline: Timeline | None = None,
    ) -> None:
        self.net, self.schedule, self.data, self.world = net, schedule, data, world
        self.reducer = reducer
        self.batch_size = min(batch_size, len(data.x))
        self.seed = seed
        # Position in the data: all a checkpoint needs besides params and schedule state.
        self.epoch = 0  # epochs completed
        self.batch_in_epoch = 0  # batches done in the epoch under way
        self.epoch_loss_sum = 0.0  # Σ batch loss × batch size so far in that epoch
        self.step = 0  # updates since the start of training
        self.votes = reducer.votes  # this rank's votes, then the world's sums after each step
        # Where this rank's time goes, summed since the last ``take_phase_times``; plain
        # floats, so measuring allocates nothing and costs a few clock reads a step.
        self.data_s = self.compute_s = self.allreduce_s = self.update_s = 0.0
        self.timeline = timeline if timeline is not None else Timeline(world, None, range(0))
        # The gradient noise scale, from each piece's gradient and the batch's (a second
        # batch size exists only with more than one piece per batch).
        self.noise = NoiseScale(measures=reducer.num_pieces > 1)
        self._noise_B, self._inv_b_small, self._pieces_used = 0, 0.0, 1

        # This rank's rows of a batch: one block, or a stack of one block per virtual shard.
        piece_rows = -(-self.batch_size // reducer.num_pieces)
        if reducer.stacked:
            lead = (len(reducer.my_pieces), piece_rows)
            self.ws = net.workspace(piece_rows, pieces=len(reducer.my_pieces))
            self.eval_ws = net.workspace(EVAL_CHUNK)
        else:
            lead = (piece_rows,)
            self.ws = self.eval_ws = net.workspace(max(piece_rows, EVAL_CHUNK))
        self.x_piece = np.zeros((*lead, net.sizes[0]), net.dtype)
        self.y_piece = np.zeros((*lead, net.sizes[-1]), net.dtype)
        self._layouts: dict[int, tuple] = {}

    def batches_per_epoch(self) -> int:
        return -(-len(self.data.x) // self.batch_size)

    def samples_seen(self) -> int:
        """Samples trained on since the start of training (every batch but an epoch's
        last is full, so this follows from the position alone)."""
        n = len(self.data.x)
        return self.epoch * n + min(self.batch_in_epoch * self.batch_size, n)

    def epoch_order(self) -> np.ndarray:
        """The row order of the epoch under way."""
        return epoch_permutation(len(self.data.x), self.seed, self.epoch)

    def train_step(self, batch: np.ndarray) -> float:
        """One update from the global batch ``batch`` (row indices); its mean loss.

        ``votes`` (slots: :class:`~distnn.parallel.reducers.Vote`) holds this rank's votes
        before the step and their sums over the world after it, the same on every rank.
        """
        reducer, B = self.reducer, len(batch)
        scale = 1.0 / B  # backprop gives this rank's share of ∇ of the batch mean (MATH.md)
        t0 = perf_counter()

        # Shard: this rank's piece(s) of the batch, gathered into preallocated buffers.
        x, y, padding = self.take_shard(batch)
        t1 = perf_counter()

        # Backprop over every piece in one call, born in the buffers the reducer sends.
        reducer.piece_losses[...] = self.net.backprop(
            x, y, reducer.piece_grads, self.ws, scale, reducer.layer_done, padding
        )
        t2 = perf_counter()

        # Reduce: the global batch's gradient, loss, votes (and, every NOISE_EVERY steps,
        # the pieces' squared gradient norms for the noise scale).
        measure = self.noise.measures and self.step % NOISE_EVERY == 0
        if measure and self._noise_B != B:
            self._measure_noise_at(B)
        reducer.measure_norms = measure
        loss_sum, pieces_sqnorm = reducer.reduce()
        loss = loss_sum * scale
        t3 = perf_counter()
        if not math.isfinite(loss):
            raise DivergenceError(
                f"the loss or gradient became non-finite at step {self.step + 1} (epoch "
                f"{self.epoch + 1}): training diverged; is the learning rate too high?"
            )

        # Schedule step: identical on every rank, so the replicas stay identical.
        if self.step == 0:  # a user schedule's bad step: one line, not a NumPy traceback
            step = self.schedule(reducer.grad)
            check_schedule_step(step, self.net.params, type(self.schedule).__name__)
            self.net.params -= step
        else:  # θ −= step, in one pass for the built-in rules (the same bits)
            self.schedule.apply(reducer.grad, self.net.params)
        if measure:  # |G_B|² beside the pieces': the noise scale's two sizes
            big = float(np.dot(reducer.grad, reducer.grad))
            self.noise.add(pieces_sqnorm / self._pieces_used, self._inv_b_small, big, B)
        t4 = perf_counter()
        self.step += 1
        self.batch_in_epoch += 1
        self.epoch_loss_sum += loss * B
        self.data_s += t1 - t0
        self.compute_s += t2 - t1
        self.allreduce_s += t3 - t2  # with the wait for slower ranks: a straggler shows here
        self.update_s += t4 - t3
        if self.timeline.covers(self.step):
            self.timeline.add_step(t0, t1, t2, t3, t4)
        return loss

    def _measure_noise_at(self, B: int) -> None:
        """For batches of ``B`` rows: each own piece's norm weight, the mean of 1/b_v over
        the pieces that hold rows, and how many do."""
        reducer = self.reducer
        bounds = [shard_bounds(B, v, reducer.num_pieces) for v in range(reducer.num_pieces)]
        used = [hi - lo for lo, hi in bounds if hi > lo]
        self._inv_b_small = sum(1.0 / b for b in used) / len(used)
        self._pieces_used, self._noise_B = len(used), B
        mine = [bounds[v] for v in reducer.my_pieces]
        reducer.norm_scales[...] = piece_scales(B, mine)

    def take_phase_times(self) -> tuple[float, float, float, float]:
        """This rank's (data, compute, allreduce, update) seconds since the last call."""
        times = (self.data_s, self.compute_s, self.allreduce_s, self.update_s)
        self.data_s = self.compute_s = self.allreduce_s = self.update_s = 0.0
        return times

    def take_shard(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
        """This rank's rows of ``batch`` as backprop takes them, and the stack's padding.

        One piece: rows [lo, hi) of the batch. Stacked virtual shards: one block of
        ⌈B/V⌉ rows per shard; a shorter shard's extra rows are zeros, listed in the
        padding as (index in the stack, real rows). One ``take`` when the rank's shards
        are equal and fill their blocks (every full batch when V divides B). The indices
        are in range, so mode="clip" changes nothing but spares ``take`` a temporary copy.
        """
        data = self.data
        layout = self._layouts.get(len(batch))
        if layout is None:
            layout = self._layouts[len(batch)] = self._layout(len(batch))
        lo, hi, x, y, rows_x, rows_y, pieces, padding = layout
        if pieces is None:  # one contiguous block of rows
            data.x.take(batch[lo:hi], axis=0, out=rows_x, mode="clip")
            data.y.take(batch[lo:hi], axis=0, out=rows_y, mode="clip")
            return x, y, padding
        for i, (p_lo, p_hi) in enumerate(pieces):
            data.x.take(batch[p_lo:p_hi], axis=0, out=x[i, : p_hi - p_lo], mode="clip")
            data.y.take(batch[p_lo:p_hi], axis=0, out=y[i, : p_hi - p_lo], mode="clip")
            x[i, p_hi - p_lo :], y[i, p_hi - p_lo :] = 0.0, 0.0
        return x, y, padding

    def _layout(self, B: int) -> tuple:
        """For batches of ``B`` rows: (lo, hi, x, y, x and y as 2-D rows, per-piece bounds
        or None for one contiguous take, padding)."""
        reducer = self.reducer
        bounds = [shard_bounds(B, v, reducer.num_pieces) for v in reducer.my_pieces]
        lo, hi = (bounds[0][0], bounds[-1][1]) if bounds else (0, 0)
        if not reducer.stacked:
            x, y = self.x_piece[: hi - lo], self.y_piece[: hi - lo]
            return lo, hi, x, y, x, y, None, ()
        rows = -(-B // reducer.num_pieces)
        x, y = self.x_piece[:, :rows], self.y_piece[:, :rows]
        padding = [(i, b - a) for i, (a, b) in enumerate(bounds) if b - a < rows]
        if not padding and rows == self.x_piece.shape[1]:  # contiguous: one take
            rows_x, rows_y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
            return lo, hi, x, y, rows_x, rows_y, None, ()
        return lo, hi, x, y, None, None, bounds, padding

    def end_epoch(self) -> float:
        """Close the epoch under way; its mean training loss."""
        loss = self.epoch_loss_sum / len(self.data.x)
        self.epoch, self.batch_in_epoch, self.epoch_loss_sum = self.epoch + 1, 0, 0.0
        self.check_params(f"epoch {self.epoch}")
        return loss

    def check_params(self, where: str) -> None:
        """Once an epoch and before each checkpoint: replicas equal, parameters and the
        schedule's state finite.

        A non-finite gradient shows as a non-finite loss one step later; this check
        makes sure no checkpoint ever holds such parameters.
        """
        if not np.isfinite(self.net.params).all():  # identical on every rank
            raise DivergenceError(
                f"the parameters became non-finite by step {self.step} ({where}): "
                "training diverged; is the learning rate too high?"
            )
        for name in self.schedule.state_arrays:  # Adam's v, an average of g²: inf freezes a weight
            state = getattr(self.schedule, name)
            if state is not None and not np.isfinite(state).all():
                raise DivergenceError(
                    f"the gradient overflowed the schedule's state {name!r} by step "
                    f"{self.step} ({where}): training diverged; is the learning rate too high?"
                )
        self.world.check_in_sync(self.net.params, f"at {where}")

    def position(self) -> dict:
        """Where the run stands in the data: with params and schedule state, a checkpoint."""
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_loss_sum": self.epoch_loss_sum,
            "step": self.step,
        }

    def restore(self, params: np.ndarray, schedule_state: dict, position: dict) -> None:
        """Continue from a checkpoint's contents (the same on every rank)."""
        self.net.params[...] = params
        self.schedule.load_state_dict(schedule_state)
        self.epoch, self.batch_in_epoch = position["epoch"], position["batch_in_epoch"]
        self.epoch_loss_sum, self.step = position["epoch_loss_sum"], position["step"]

    def evaluate(
        self, x: np.ndarray, y: np.ndarray, labels: np.ndarray | None
    ) -> tuple[float, float | None]:
        """Mean loss and accuracy (None for regression), the same bits at any world size."""
        t0 = perf_counter()
        result = evaluate_sharded(self.net, [(x, y, labels)], self.world, self.eval_ws)
        if self.timeline.covers(self.step):
            self.timeline.add(EVALUATE, t0, perf_counter())
        return result.loss, result.accuracy
