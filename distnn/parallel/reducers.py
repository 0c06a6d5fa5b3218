"""How a step's shard gradients become the global gradient: the three reducers.

The training step is always the same (``Trainer.train_step``): backprop over this
rank's piece(s) of the global batch, ``reduce``, schedule step. A reducer decides only
how the batch is cut into pieces and how the pieces' gradients, losses and the ranks'
stop votes are summed across the world:

- :class:`FusedAllreduce` (default): one piece per rank; the gradient is born in the
  buffer that ONE in-place Allreduce sums, with the loss and the votes in extra slots
  after it, so a step is exactly one collective.
- :class:`OverlappedAllreduce` (``--overlap``): the same piece, but each layer's
  gradient starts its own non-blocking Iallreduce as soon as backprop finishes it,
  while the layers below are still computed (as DDP's buckets).
- :class:`ExactSum` (``--deterministic``): the batch is cut into V *virtual shards*
  that do not depend on the world size, and their gradients are added exactly as
  int64 fixed-point numbers, so the result is the same bits at any number of ranks.
  The proof is below, in the class's docstring.

Every reducer writes the global gradient into ``grad`` (laid out like
``Network.params``), returns the global batch's mean loss, and leaves the world's sum
of each vote in ``votes``: identical on every rank, so every rank decides alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from distnn.parallel.world import World

NUM_VOTES = 2  # [stop requested by a signal, rank 0's clock passed the time limit]


def shard_bounds(n: int, piece: int, pieces: int) -> tuple[int, int]:
    """Rows [lo, hi) of ``n`` that piece ``piece`` of ``pieces`` covers (sizes differ ≤ 1)."""
    return piece * n // pieces, (piece + 1) * n // pieces


class FusedAllreduce:
    """One piece per rank; one Allreduce of [gradient, loss, votes] per step."""

    def __init__(self, num_params: int, dtype: np.dtype, world: World) -> None:
        self.world = world
        self.num_pieces, self.my_pieces = world.size, range(world.rank, world.rank + 1)
        self.buffer = np.zeros(num_params + 1 + NUM_VOTES, dtype)
        self.grad = self.buffer[:num_params]
        self.piece_grads = [self.grad]  # the gradient is born in the buffer we send
        self.extras = self.buffer[num_params:]
        self.layer_done: Callable[[int], None] | None = None

    def reduce(self, piece_losses: np.ndarray, votes: np.ndarray) -> float:
        self.extras[0], self.extras[1:] = piece_losses[0], votes
        self.world.allreduce_sum(self.buffer)
        votes[:] = self.extras[1:]
        return float(self.extras[0])


class OverlappedAllreduce(FusedAllreduce):
    """Per-layer Iallreduce started during backprop; the loss and votes follow at the end."""

    def __init__(
        self, num_params: int, dtype: np.dtype, world: World, layer_slices: list[slice]
    ) -> None:
        super().__init__(num_params, dtype, world)
        self.buckets = [self.buffer[s] for s in layer_slices]
        self.pending: list = []
        self.layer_done = self._send_layer

    def _send_layer(self, ell: int) -> None:
        self.world.start_allreduce_sum(self.buckets[ell - 1], self.pending)

    def reduce(self, piece_losses: np.ndarray, votes: np.ndarray) -> float:
        self.extras[0], self.extras[1:] = piece_losses[0], votes
        self.world.start_allreduce_sum(self.extras, self.pending)
        self.world.finish_allreduces(self.pending)
        votes[:] = self.extras[1:]
        return float(self.extras[0])


INT_BITS = 62  # headroom under int64's 63 value bits
BLOCK = 1 << 15  # elements quantized at a time: scale, convert and add while in cache


class ExactSum:
    """Bit-for-bit the same global gradient at any number of ranks (``--deterministic``).

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
       c = ⌈log₂ V⌉, e = ⌈log₂ m⌉. Then q_v = trunc(s·g_v) is computed exactly in
       float64 (a power-of-two scale of a float32), |q_v| ≤ 2^(62−c), and
       Σ_v q_v ≤ V·2^(62−c) ≤ 2^62 fits an int64 in any order: integer addition is
       associative.
    3. One Allreduce SUM of the int64 partial sums; g = Σ_v q_v / s, rounded once to
       float32.

    Rounding: truncation loses less than 1/s per shard and element, so
    |g − Σ_v g_v| < V/s = V·2^(c+e−62) ≤ 2^(2c+1−62)·m: below 2^-57·m for the default
    V = 4 (c = 2), below 2^-53·m for V ≤ 16, so at least 29 binary orders under
    float32's resolution of the gradient's largest entry (2^-24·m). The fixed point
    changes nothing float32 can represent beyond what the final rounding does anyway.

    The shard losses use a simpler exact tool: each shard owns one float64 slot of a
    vector that is zero elsewhere; an Allreduce SUM of x + 0 + … + 0 is exact, and the
    slots are then added in index order on every rank (:func:`exact_slot_sum`).
    """

    def __init__(self, num_params: int, dtype: np.dtype, world: World, virtual_shards: int) -> None:
        self.world, V = world, virtual_shards
        self.num_pieces, self.my_pieces = V, range(*shard_bounds(V, world.rank, world.size))
        self.grad = np.zeros(num_params, dtype)
        # One float gradient per local shard: the scale needs every shard's max first.
        self.piece_grads = list(np.empty((len(self.my_pieces), num_params), dtype))
        self.layer_done = None
        self.largest = np.zeros(1, np.float64)
        self.quantized = np.empty(BLOCK, np.int64)
        self.int_buffer = np.zeros(num_params + NUM_VOTES, np.int64)  # Σ q_v, then the votes
        self.int_sum = self.int_buffer[:num_params]
        self.slot_losses = np.zeros(V, np.float64)
        self.bits = math.ceil(math.log2(V)) if V > 1 else 0

    def reduce(self, piece_losses: np.ndarray, votes: np.ndarray) -> float:
        # The loss, exactly, and one scale for all ranks from the largest entry of any
        # shard's gradient. A non-finite one ends the step on every rank alike.
        self.slot_losses.fill(0.0)
        self.slot_losses[self.my_pieces.start : self.my_pieces.stop] = piece_losses
        loss = exact_slot_sum(self.slot_losses, self.world)
        largest = 0.0
        for g in self.piece_grads:
            largest = max(largest, float(g.max()), -float(g.min()))
        self.largest[0] = largest if math.isfinite(largest) else math.inf
        self.world.allreduce_max(self.largest)
        largest = float(self.largest[0])
        if not math.isfinite(largest):
            return math.nan  # the caller stops every rank: training diverged
        exponent = INT_BITS - self.bits - (math.ceil(math.log2(largest)) if largest else 0)
        scale = 2.0**exponent

        # Fixed point: integer sums are exact in any order, across shards and ranks.
        self.int_sum.fill(0)
        for start in range(0, len(self.grad), BLOCK):
            total, q = self.int_sum[start : start + BLOCK], self.quantized
            for g in self.piece_grads:
                block = g[start : start + BLOCK]
                block *= scale  # exact: a power of two
                np.copyto(q[: len(block)], block, casting="unsafe")  # truncation toward 0
                total += q[: len(block)]
        self.int_buffer[-NUM_VOTES:] = votes
        self.world.allreduce_sum(self.int_buffer)
        votes[:] = self.int_buffer[-NUM_VOTES:]
        for start in range(0, len(self.grad), BLOCK):  # g = Σ q / s, rounded once
            np.multiply(
                self.int_sum[start : start + BLOCK],
                1.0 / scale,
                out=self.grad[start : start + BLOCK],
                casting="unsafe",
            )
        return loss


def exact_slot_sum(slots: np.ndarray, world: World) -> float:
    """Σ of per-owner float64 slots (one rank writes each, the rest hold 0), in index order.

    x + 0 + … + 0 is exact in any order, so the Allreduce gives every rank the same
    slots; adding them in index order then gives the same bits at any world size.
    """
    world.allreduce_sum(slots)
    return float(sum(slots.tolist()))
