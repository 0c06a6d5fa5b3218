"""Bit-for-bit reproducible training on any number of ranks (``--deterministic``).

Floating-point addition is not associative, so with an ordinary Allreduce the last
bits of the gradient depend on how the batch was split and in which order partial
sums met: the same seed on 2 and on 4 ranks gives different weights. Here it cannot:

1. Every global batch of B rows is cut into V *virtual shards*, rows
   [vB/V, (v+1)B/V) for v = 0..V-1, with V fixed by the configuration and never by
   the world size P. Rank r computes shards v ∈ [rV/P, (r+1)V/P), each with its own
   backprop call: the same matrix shapes and one BLAS thread, so the same bits on
   any rank of any world size.
2. The shard gradients g_v become integers with one scale shared by all ranks:
   m = max_v ‖g_v‖_∞ (one small Allreduce MAX), s = 2^k with k = 62 − c − e,
   c = ⌈log₂ V⌉, e = ⌈log₂ m⌉. Then q_v = trunc(s·g_v) is computed exactly in float64
   (a power-of-two scale of a float32), |q_v| ≤ 2^(62−c), and Σ_v q_v ≤ V·2^(62−c) ≤ 2^62
   fits an int64 in any order: integer addition is associative.
3. One Allreduce SUM of the int64 partial sums; g = Σ_v q_v / s, rounded once to float32.

Rounding: truncation loses less than 1/s per shard and element, so
|g − Σ_v g_v| < V/s = V·2^(c+e−62) ≤ 2^(2c+1−62)·m: below 2^-57·m for the default
V = 4 (c = 2), below 2^-53·m for V ≤ 16, so at least 29 binary orders under float32's
resolution of the gradient's largest entry (2^-24·m). The fixed point changes nothing
float32 can represent beyond what the final rounding does anyway.

The per-shard losses and the test-set evaluation use the same idea with a simpler
tool: each shard (or fixed 256-row chunk) owns one float64 slot of a vector that
is zero elsewhere; an Allreduce SUM of x + 0 + … + 0 is exact, and the slots are
then added in index order on every rank.
"""

from __future__ import annotations

import math

import numpy as np
from mpi4py import MPI

from distnn.errors import DivergenceError
from distnn.parallel.trainer import STOP_SLOT, TIME_SLOT, Trainer, shard_bounds

EVAL_CHUNK = 256  # rows per evaluation chunk, fixed so results do not depend on P
INT_BITS = 62  # headroom under int64's 63 value bits
BLOCK = 1 << 15  # elements quantized at a time: scale, convert and add while in cache


class DeterministicTrainer(Trainer):
    """A Trainer whose every result is the same bits at any number of ranks."""

    def __init__(self, *args, virtual_shards: int = 4, **kwargs) -> None:
        self.virtual_shards = V = virtual_shards  # read by shard_rows() during setup
        super().__init__(*args, **kwargs)
        net = self.net
        self.mine = range(*shard_bounds(V, self.world.rank, self.world.size))
        self.largest = np.zeros(1, np.float64)
        # One float gradient per local shard: the scale needs every shard's max first.
        self.shard_grads = np.empty((len(self.mine), net.num_params), net.dtype)
        self.quantized = np.empty(BLOCK, np.int64)
        self.int_buffer = np.zeros(net.num_params + 2, np.int64)  # Σ q_v, stop, time up
        self.int_sum = self.int_buffer[: net.num_params]
        self.shard_losses = np.zeros(V, np.float64)
        self.bits = math.ceil(math.log2(V)) if V > 1 else 0

    def shard_rows(self) -> int:
        """One virtual shard at a time: ceil(B/V) rows, whatever the world size."""
        return -(-self.batch_size // self.virtual_shards)

    def workspace_rows(self) -> int:
        return EVAL_CHUNK

    def train_step(self, batch: np.ndarray) -> float:
        """One update from the global batch ``batch``; returns its mean loss."""
        V, B, comm = self.virtual_shards, len(batch), self.world.comm
        # Shards and backprop: each of this rank's virtual shards on its own.
        self.shard_losses.fill(0.0)
        largest = 0.0
        for i, v in enumerate(self.mine):
            lo, hi = shard_bounds(B, v, V)
            x, y = self.x_shard[: hi - lo], self.y_shard[: hi - lo]
            np.take(self.data.x, batch[lo:hi], axis=0, out=x)
            np.take(self.data.y, batch[lo:hi], axis=0, out=y)
            g = self.shard_grads[i]
            self.shard_losses[v] = self.net.backprop(x, y, g, self.ws, 1.0 / B) / B
            largest = max(largest, float(g.max()), -float(g.min()))

        # One scale for all ranks, from the largest entry of any shard's gradient.
        self.largest[0] = largest if math.isfinite(largest) else math.inf
        if self.world.size > 1:
            comm.Allreduce(MPI.IN_PLACE, self.largest, op=MPI.MAX)
        largest = float(self.largest[0])
        loss = self._exact_sum(self.shard_losses)
        if not (math.isfinite(largest) and math.isfinite(loss)):
            raise DivergenceError(
                f"the loss or gradient became non-finite at step {self.step + 1} (epoch "
                f"{self.epoch + 1}): training diverged; is the learning rate too high?"
            )
        exponent = INT_BITS - self.bits - (math.ceil(math.log2(largest)) if largest else 0)
        scale = self.last_scale = 2.0**exponent

        # Fixed point: integer sums are exact in any order, across shards and ranks.
        self.int_sum.fill(0)
        for start in range(0, self.net.num_params, BLOCK):
            total, q = self.int_sum[start : start + BLOCK], self.quantized
            for g in self.shard_grads:
                block = g[start : start + BLOCK]
                block *= scale  # exact: a power of two
                np.copyto(q[: len(block)], block, casting="unsafe")  # truncation toward 0
                total += q[: len(block)]
        self.int_buffer[-2:] = self.stop_requested, self.time_is_up()
        if self.world.size > 1:
            comm.Allreduce(MPI.IN_PLACE, self.int_buffer, op=MPI.SUM)
        for start in range(0, self.net.num_params, BLOCK):  # g = Σ q / s, once rounded
            block = self.grad[start : start + BLOCK]
            np.multiply(
                self.int_sum[start : start + BLOCK], 1.0 / scale, out=block, casting="unsafe"
            )
        self.extras[STOP_SLOT], self.extras[TIME_SLOT] = self.int_buffer[-2:]

        # Schedule step: identical on every rank.
        self.net.params -= self.schedule(self.grad)
        self.step += 1
        return loss

    def _exact_sum(self, slots: np.ndarray) -> float:
        """Σ of per-owner slots (one rank writes each, the rest hold 0), in index order."""
        if self.world.size > 1:
            self.world.comm.Allreduce(MPI.IN_PLACE, slots, op=MPI.SUM)
        return float(sum(slots.tolist()))

    def evaluate(
        self, x: np.ndarray, y: np.ndarray, labels: np.ndarray | None
    ) -> tuple[float, float | None]:
        """Mean loss and accuracy over fixed 256-row chunks, the same bits at any P."""
        chunks = -(-len(x) // EVAL_CHUNK)
        losses, correct = np.zeros(chunks, np.float64), np.zeros(1, np.int64)
        for c in range(*shard_bounds(chunks, self.world.rank, self.world.size)):
            lo, hi = c * EVAL_CHUNK, min((c + 1) * EVAL_CHUNK, len(x))
            a = self.net.feed_forward(x[lo:hi], self.ws)
            losses[c] = self.net.loss_fn.value(a, y[lo:hi], self.ws.D[-1][: hi - lo])
            if labels is not None:
                correct[0] += np.count_nonzero(a.argmax(axis=1) == labels[lo:hi])
        self.world.allreduce_sum(correct)
        accuracy = int(correct[0]) / len(x) if labels is not None else None
        return self._exact_sum(losses) / len(x), accuracy
