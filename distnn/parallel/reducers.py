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
- :class:`OrderedSum` (``--deterministic``): the batch is cut into V *virtual shards*
  that do not depend on the world size; one Allgather gives every rank all V shard
  gradients, and every rank adds them in one fixed order, so the result is the same
  bits at any number of ranks. The argument is below, in the class's docstring.

Backprop writes into the reducer's own buffers: the pieces' gradients into
``piece_grads`` and their loss sums Σ_k C_k into ``piece_losses``; the trainer writes
this rank's votes into ``votes``. ``reduce`` then leaves the global gradient in ``grad``
(laid out like ``Network.params``), the world's sum of each vote in ``votes``, and
returns the global batch's loss sum: identical on every rank, so every rank decides alike.
"""

from __future__ import annotations

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


class OrderedSum:
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
    2. One Allgather gives every rank every shard's g_v and loss, and every rank's
       votes: moving bytes changes no bit.
    3. Every rank adds the V gradients in one fixed order that depends on V alone, a
       pairwise tree over the shard index: g_i += g_(i+s) for s = 1, 2, 4, … and i a
       multiple of 2s, so g = (g_0 + g_1) + (g_2 + g_3) for the default V = 4. The same
       operands in the same order give the same bits on every rank of every world size.
       The shard losses are added in shard order likewise.

    Rounding: each element of g is a pairwise sum of V floating-point numbers, whose
    tree is h = ⌈log₂ V⌉ additions deep, each rounding once by at most a relative u
    (2^-24 for float32, 2^-53 for float64). So (Higham, *Accuracy and Stability of
    Numerical Algorithms*, 2nd ed., §4.2, eq. 4.6)

        |g − Σ_v g_v| ≤ γ_h · Σ_v |g_v|,   γ_h = h·u / (1 − h·u),

    at most 2.0000003·u·Σ_v |g_v| for the default V = 4: two roundings, the error of
    the default mode's float Allreduce over two ranks, whose order MPI does not fix.
    Nothing is converted and nothing can overflow that the gradient itself does not.

    Cost: V − 1 additions of the gradient on every rank, no conversion, one collective
    that receives (V − V/P)·n numbers per rank; the fused Allreduce moves about 2n. So
    the traffic grows with V: pick V near the largest number of ranks you will use.
    """

    stacked = True  # backprop writes a stack of this rank's shard gradients

    def __init__(self, num_params: int, dtype: np.dtype, world: World, virtual_shards: int) -> None:
        self.world, n, V = world, num_params, virtual_shards
        owned = [range(*shard_bounds(V, r, world.size)) for r in range(world.size)]
        self.num_pieces, self.my_pieces = V, owned[world.rank]
        self.layer_done = None
        # One segment per rank, in rank order: [its shards' g_v | their losses | its votes],
        # all as long as the longest (MPICH's Allgather beats its Allgatherv 3× here);
        # the Allgather fills the other ranks' segments around this rank's own.
        most = max(len(shards) for shards in owned)
        segment = most * (n + 1) + NUM_VOTES
        self.buffer = np.zeros(world.size * segment, dtype)
        self.shard_grads, self.shard_losses, rank_votes = [], [], []
        for rank, shards in enumerate(owned):
            k, start = len(shards), rank * segment
            grads = self.buffer[start : start + k * n].reshape(k, n)
            losses = self.buffer[start + most * n : start + most * n + k]
            if rank == world.rank:  # where backprop and the trainer write
                self.piece_grads, self.piece_losses = grads, losses.reshape(k, 1, 1)
            self.shard_grads += list(grads)
            self.shard_losses += list(losses.reshape(k, 1))
            rank_votes.append(self.buffer[start + segment - NUM_VOTES : start + segment])
        self.votes = rank_votes[world.rank]
        self.others_votes = [v for r, v in enumerate(rank_votes) if r != world.rank]
        self.grad = np.zeros(n, dtype)
        # Step 3's tree as (into, from) pairs, level by level; the root adds into ``grad``.
        self.pairs, stride = [], 1
        while stride < V:
            self.pairs += [(i, i + stride) for i in range(0, V - stride, 2 * stride)]
            stride *= 2

    def reduce(self) -> float:
        self.world.allgather(self.buffer)
        for votes in self.others_votes:  # the world's sums, where the trainer reads them
            np.add(self.votes, votes, out=self.votes)
        g = self.shard_grads
        if not self.pairs:  # V = 1
            np.copyto(self.grad, g[0])
        for into, source in self.pairs[:-1]:
            np.add(g[into], g[source], out=g[into])
        if self.pairs:
            into, source = self.pairs[-1]
            np.add(g[into], g[source], out=self.grad)
        return float(sum(float(loss[0]) for loss in self.shard_losses))  # in shard order
