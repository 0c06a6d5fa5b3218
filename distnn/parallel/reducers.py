"""How a step's shard gradients become the global gradient: the reducers.

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
- :class:`~distnn.parallel.ordered_sum.OrderedSum` (``--deterministic``, in
  ordered_sum.py): the batch is cut into V *virtual shards* that do not depend on the
  world size, and their gradients are added in one order that depends on V alone, so
  the result is the same bits at any number of ranks.

Backprop writes into the reducer's own buffers: the pieces' gradients into
``piece_grads`` and their loss sums Σ_k C_k into ``piece_losses``; the trainer writes
this rank's votes into ``votes`` and each piece's ``norm_scales``. ``reduce`` then leaves
the global gradient in ``grad`` (laid out like ``Network.params``), the world's sum of
each vote in ``votes``, and returns the global batch's loss sum and the sum over pieces
of ``norm_scales[v] · |g_v|²`` (the pieces' own squared gradient norms, for the noise
scale: :mod:`distnn.parallel.noise_scale`): identical on every rank, so every rank decides
alike. The norms ride in the same message as the loss: no second collective.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Protocol

import numpy as np

from distnn.parallel.world import World


class Vote(IntEnum):
    """The slots of ``votes``: what a rank asks of the world with each step."""

    SIGNAL = 0  # a signal asked this rank to stop (SIGTERM, SIGINT)
    TIME = 1  # rank 0's clock passed the time limit
    CALLBACK = 2  # a callback on this rank asked to stop
    # With SIGNAL: this rank's number and the signal's. Summed, they name the rank and
    # the signal exactly when one rank asked (SIGNAL sums to 1).
    SIGNALLED_RANK = 3
    SIGNAL_NUMBER = 4


NUM_VOTES = len(Vote)


class Reducer(Protocol):
    """What the trainer's step needs of a reducer: where backprop writes, and ``reduce``.

    ``num_pieces`` pieces make a global batch, this rank computes ``my_pieces`` of them
    (a stack of gradients when ``stacked``, else one); after ``reduce`` the global
    gradient is in ``grad`` and the world's vote sums in ``votes``. ``layer_done(ℓ)``,
    if set, is called by backprop as soon as layer ℓ's gradient is final.
    When ``measure_norms`` is set for a step, ``norm_scales`` (one per piece of this
    rank) weighs each piece's squared gradient norm in the sum ``reduce`` returns.
    """

    stacked: bool
    num_pieces: int
    my_pieces: range
    piece_grads: np.ndarray
    piece_losses: np.ndarray
    norm_scales: np.ndarray
    measure_norms: bool
    grad: np.ndarray
    votes: np.ndarray
    layer_done: Callable[[int], None] | None

    def reduce(self) -> tuple[float, float]:
        """Sum the pieces across the world; the global batch's loss sum, and the
        pieces' weighted squared gradient norms summed."""
        ...


def shard_bounds(n: int, piece: int, pieces: int) -> tuple[int, int]:
    """Rows [lo, hi) of ``n`` that piece ``piece`` of ``pieces`` covers (sizes differ ≤ 1)."""
    return piece * n // pieces, (piece + 1) * n // pieces


class FusedAllreduce:
    """One piece per rank; one Allreduce of [gradient, loss, |g|², votes] per step."""

    stacked = False  # backprop writes one 1-D gradient (not a stack of pieces)

    def __init__(self, num_params: int, dtype: np.dtype, world: World) -> None:
        self.world, n = world, num_params
        self.num_pieces, self.my_pieces = world.size, range(world.rank, world.rank + 1)
        self.buffer = np.zeros(n + 2 + NUM_VOTES, dtype)
        self.grad = self.buffer[:n]
        self.piece_grads = self.grad  # the gradient is born in the buffer we send
        self.piece_losses = self.buffer[n : n + 1]  # and so is the loss
        self.piece_sqnorms = self.buffer[n + 1 : n + 2]  # and this piece's weighted |g_v|²
        self.extras = self.buffer[n:]
        self.votes = self.buffer[n + 2 :]
        self.norm_scales, self.measure_norms = np.zeros(1), False
        self.layer_done: Callable[[int], None] | None = None

    def reduce(self) -> tuple[float, float]:
        if self.measure_norms:
            self.piece_sqnorms[0] = self.norm_scales[0] * float(np.dot(self.grad, self.grad))
        self.world.allreduce_sum(self.buffer)
        return float(self.piece_losses[0]), float(self.piece_sqnorms[0])


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
        bucket = self.buckets[ell - 1]
        if self.measure_norms:  # its |g|² before the in-place sum overwrites it
            first = ell == len(self.buckets)  # backprop finishes the last layer first
            sqnorm = self.norm_scales[0] * float(np.dot(bucket, bucket))
            self.piece_sqnorms[0] = sqnorm if first else self.piece_sqnorms[0] + sqnorm
        self.world.start_allreduce_sum(bucket, self.pending)

    def reduce(self) -> tuple[float, float]:
        self.world.start_allreduce_sum(self.extras, self.pending)
        self.world.finish_allreduces(self.pending)
        return float(self.piece_losses[0]), float(self.piece_sqnorms[0])
