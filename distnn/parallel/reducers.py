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

Backprop writes into the reducer's own buffers: the pieces' gradients into
``piece_grads`` and their loss sums Σ_k C_k into ``piece_losses``; the trainer writes
this rank's votes into ``votes``. ``reduce`` then leaves the global gradient in ``grad``
(laid out like ``Network.params``), the world's sum of each vote in ``votes``, and
returns the global batch's loss sum: identical on every rank, so every rank decides alike.
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

    stacked = False  # backprop writes one 1-D gradient (not a stack of pieces)

    def __init__(self, num_params: int, dtype: np.dtype, world: World) -> None:
        self.world = world
        self.num_pieces, self.my_pieces = world.size, range(world.rank, world.rank + 1)
        self.buffer = np.zeros(num_params + 1 + NUM_VOTES, dtype)
        self.grad = self.buffer[:num_params]
        self.piece_grads = self.grad  # the gradient is born in the buffer we send
        self.piece_losses = self.buffer[num_params : num_params + 1]  # and so is the loss
        self.extras = self.buffer[num_params:]
        self.votes = self.buffer[num_params + 1 :]
        self.layer_done: Callable[[int], None] | None = None

    def reduce(self) -> float:
        self.world.allreduce_sum(self.buffer)
        return float(self.piece_losses[0])


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

    def reduce(self) -> float:
        self.world.start_allreduce_sum(self.extras, self.pending)
        self.world.finish_allreduces(self.pending)
        return float(self.piece_losses[0])


INT_BITS = 62  # headroom under int64's 63 value bits
BLOCK = 1 << 15  # elements of each piece quantized at a time: scaled, converted, summed in cache


class ExactSum:
    """Bit-for-bit the same global gradient at any number of ranks (``--deterministic``).

    Floating-point addition is not associative, so with an ordinary Allreduce the last
    bits of the gradient depend on how the batch was split and in which order partial
    sums met: the same seed on 2 and on 4 ranks gives different weights. Here it cannot:

    1. Every global batch of B rows is cut into V *virtual shards*, rows
       [vB/V, (v+1)B/V) for v = 0..V-1, with V fixed by the configuration and never by
       the world size P. Rank r computes shards v ∈ [rV/P, (r+1)V/P) in one backprop
       over a stack of ⌈B/V⌉-row blocks (a shorter shard is padded with rows that
       contribute exact zeros): every product runs once per shard with the same shape,
       one BLAS thread, so shard v's gradient g_v is the same bits on any rank of any
       world size, whichever other shards share its stack (MATH.md, Backpropagation).
    2. The g_v become integers with one scale shared by all ranks:
       m = max_v ‖g_v‖_∞ (one small Allreduce MAX, none on one rank), s = 2^k with
       k = 62 − c − e, c = ⌈log₂ V⌉, e = ⌈log₂ m⌉. Then q_v = trunc(s·g_v) is exact
       (s·g_v is a float32 times a power of two), |q_v| ≤ 2^(62−c), and
       Σ_v q_v ≤ V·2^(62−c) ≤ 2^62 fits an int64 in any order: integer addition is
       associative. A rank's shards are scaled, truncated and summed block by block
       while the block is in cache.
    3. One Allreduce SUM of the int64 partial sums, which also carries each shard's
       loss (below) and the votes; g = Σ_v q_v / s: the integer is rounded once to
       float32, then multiplied by 2^-k, exactly (a power of two).

    Rounding: truncation loses less than 1/s per shard and element, so
    |g − Σ_v g_v| < V/s = V·2^(c+e−62) ≤ 2^(2c+1−62)·m: below 2^-57·m for the default
    V = 4 (c = 2), below 2^-53·m for V ≤ 16, so at least 29 binary orders under
    float32's resolution of the gradient's largest entry (2^-24·m). The one rounding
    to float32 is the one any float32 gradient has (an entry below float32's normal
    range, 2^-126, is rounded again to a subnormal: the same bits on every rank). So
    the fixed point changes nothing float32 can represent beyond what that final
    rounding does anyway. Each power of two is applied as float32 factors 2^j with
    |j| ≤ 126, so scaling is exact whatever e is.

    The shard losses use a simpler exact tool: each shard owns one slot holding its
    float64 loss's bit pattern, zero elsewhere; the integer sum x + 0 + … + 0 is x, and
    the slots are then added in index order on every rank (as :func:`exact_slot_sum`).
    """

    stacked = True  # backprop writes a stack of this rank's shard gradients

    def __init__(self, num_params: int, dtype: np.dtype, world: World, virtual_shards: int) -> None:
        self.world, V = world, virtual_shards
        self.num_pieces, self.my_pieces = V, range(*shard_bounds(V, world.rank, world.size))
        k = len(self.my_pieces)
        self.grad = np.zeros(num_params, dtype)
        # One float gradient per local shard: the scale needs every shard's max first.
        self.piece_grads = np.zeros((k, num_params), dtype)
        self.layer_done = None
        self.largest = np.zeros(1, np.float64)
        # [Σ q_v | one loss slot per shard (float64 bits) | votes]: one collective.
        self.int_buffer = np.zeros(num_params + V + NUM_VOTES, np.int64)
        self.int_sum = self.int_buffer[:num_params]
        self.loss_slots = self.int_buffer[num_params : num_params + V].view(np.float64)
        own = self.loss_slots[self.my_pieces.start : self.my_pieces.stop]
        self.piece_losses = own.reshape(k, 1, 1)  # as backprop returns the shards' losses
        self.votes = self.int_buffer[num_params + V :]
        self.bits = math.ceil(math.log2(V)) if V > 1 else 0
        # The blocks of step 2, as views made once: shards' floats, their integers, Σ.
        quantized = np.empty((k, BLOCK), np.int64)
        self.blocks = []
        for start in range(0, num_params, BLOCK):
            g = self.piece_grads[:, start : start + BLOCK]
            total = self.int_sum[start : start + BLOCK]
            q = quantized[:, : total.size]
            self.blocks.append((g, list(g), q, list(q), total))
        self._scales: dict[int, tuple] = {}

    def reduce(self) -> float:
        # One scale for all ranks from the largest entry of any shard's gradient.
        # A non-finite one ends the step on every rank alike.
        G = self.piece_grads
        largest = max(float(G.max()), -float(G.min())) if G.size else 0.0
        self.largest[0] = largest if math.isfinite(largest) else math.inf
        self.world.allreduce_max(self.largest)
        largest = float(self.largest[0])
        if not math.isfinite(largest):
            self.loss_slots.fill(0.0)
            return math.nan  # the caller stops every rank: training diverged
        exponent = INT_BITS - self.bits - (math.ceil(math.log2(largest)) if largest else 0)
        up, down = self._power_of_two(exponent)

        # Fixed point: integer sums are exact in any order, across shards and ranks.
        for g, g_rows, q, q_rows, total in self.blocks:
            for factor in up:
                np.multiply(g, factor, out=g)  # exact: a power of two
            if len(g_rows) == 1:
                np.copyto(total, g_rows[0], casting="unsafe")  # truncation toward 0
            elif not g_rows:
                total.fill(0)  # a rank beyond V: zeros in the sum
            else:
                np.copyto(q, g, casting="unsafe")
                np.add(q_rows[0], q_rows[1], out=total)
                for row in q_rows[2:]:
                    np.add(total, row, out=total)
        self.world.allreduce_sum(self.int_buffer)
        loss = float(sum(self.loss_slots.tolist()))  # in shard order: the same bits anywhere
        self.loss_slots.fill(0.0)  # the slots of the next step's other shards are zeros
        np.copyto(self.grad, self.int_sum, casting="unsafe")  # Σ q, rounded once
        for factor in down:
            np.multiply(self.grad, factor, out=self.grad)  # / s: exact, a power of two
        return loss

    def _power_of_two(self, exponent: int) -> tuple[tuple, tuple]:
        """2^exponent and 2^-exponent, each as float32 factors (|exponents| ≤ 126)."""
        scales = self._scales.get(exponent)
        if scales is None:
            scales = self._scales[exponent] = (_factors(exponent), _factors(-exponent))
        return scales


def _factors(exponent: int) -> tuple[np.ndarray, ...]:
    """2^exponent as a product of 0-d float32 powers of two: exact factors of any float."""
    factors = []
    while abs(exponent) > 126:
        step = 126 if exponent > 0 else -126
        factors.append(np.array(2.0**step, np.float32))
        exponent -= step
    return (*factors, np.array(2.0**exponent, np.float32))


def exact_slot_sum(slots: np.ndarray, world: World) -> float:
    """Σ of per-owner float64 slots (one rank writes each, the rest hold 0), in index order.

    x + 0 + … + 0 is exact in any order, so the Allreduce gives every rank the same
    slots; adding them in index order then gives the same bits at any world size.
    """
    world.allreduce_sum(slots)
    return float(sum(slots.tolist()))
