"""``--deterministic``'s reducer: the shard gradients added in one order fixed by V alone.

Floating-point addition is not associative, so with an ordinary Allreduce the last bits
of the gradient depend on how the batch was split and in which order partial sums met:
the same seed on 2 and on 4 ranks gives different weights. :class:`OrderedSum` fixes
both the split and the order, so the global gradient is the same bits at any number of
ranks P (MATH.md, Data parallelism).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from distnn.engine import fused
from distnn.parallel.reducers import NUM_VOTES, shard_bounds
from distnn.parallel.world import World

Node = tuple[int, int]  # (first shard, level): shards [first, min(first + 2^level, V))


def tree_height(V: int) -> int:
    """Levels above the leaves of the pairwise tree over V shards: ⌈log₂ V⌉."""
    return (V - 1).bit_length()


def tree_cover(lo: int, hi: int, V: int) -> list[Node]:
    """The fewest, largest nodes of the pairwise tree over V shards that cover [lo, hi).

    Node (i, s), i a multiple of 2^s, sums shards [i, min(i + 2^s, V)): its children
    are (i, s−1) and, when i + 2^(s−1) < V, (i + 2^(s−1), s−1).
    """
    nodes = []
    while lo < hi:
        level = 0
        while level < tree_height(V) and lo % (2 << level) == 0 and min(lo + (2 << level), V) <= hi:
            level += 1
        nodes.append((lo, level))
        lo = min(lo + (1 << level), V)
    return nodes


SCATTER_ABOVE = 4  # ranks: beyond this many, the Alltoall transport moves fewer bytes


def shards_and_covers(V: int, P: int) -> tuple[list[range], list[list[Node]]]:
    """Each rank's shards, and the subtrees (:func:`tree_cover`) it adds before exchanging."""
    owned = [range(*shard_bounds(V, r, P)) for r in range(P)]
    return owned, [tree_cover(shards.start, shards.stop, V) for shards in owned]


def gradients_held(V: int, P: int) -> int:
    """Gradient-sized arrays an :class:`OrderedSum` holds on a rank, for memory estimates:
    its leaves, the subtree sums it sends and receives, and g."""
    owned, covers = shards_and_covers(V, P)
    rows = max(len(c) for c in covers)
    exchanged = 2 if P > SCATTER_ABOVE else P  # sent + received, in subtree sums
    return max(len(s) for s in owned) + exchanged * rows + 1


class OrderedSum:
    """Bit-for-bit the same global gradient at any number of ranks.

    1. Every global batch of B rows is cut into V *virtual shards*, rows
       [vB/V, (v+1)B/V) for v = 0..V-1, with V fixed by the configuration and never by
       P. Rank r computes shards v ∈ [rV/P, (r+1)V/P) in one backprop over a stack of
       ⌈B/V⌉-row blocks (a shorter shard is padded with rows that contribute exact
       zeros): every product runs once per shard with the same shape, one BLAS thread,
       so shard v's gradient g_v is the same bits on any rank of any world size,
       whichever other shards share its stack (MATH.md, Backpropagation).
    2. The global gradient is the pairwise tree over the shard index, a shape that
       depends on V alone: node (i, s) = node (i, s−1) + node (i + 2^(s−1), s−1), a
       leaf is g_i, and g is the root, so g = (g_0 + g_1) + (g_2 + g_3) for V = 4.
       Each rank adds the largest subtrees that lie within its own shards
       (:func:`tree_cover`: one node when V/P is a power of two); the ranks exchange
       those sums, the shard losses and the votes (moving bytes changes no bit); the
       rest of the tree is added from the exchanged sums. Every node is the sum of the
       same two operands, in the same order, wherever it is computed, element by
       element: the same bits on every rank of every world size, whichever transport
       carried the sums. The losses are added in shard order.

    Transports, chosen by P (they give the same bits): up to 4 ranks, one Allgather of
    every rank's subtree sums, after which every rank adds the rest of the tree (one
    collective, (P − 1)·c·n numbers into each rank, c the most subtrees a rank holds);
    beyond, an Alltoall gives each rank its 1/P slice of every rank's subtree sums, it
    adds the rest of the tree for that slice, and an Allgather of the slices completes
    g (two collectives, about (c + 1)·n numbers per rank, as an Allreduce's 2n). Two
    ranks whose subtrees are the root's two children (V a power of two) leave one
    addition per element, and IEEE addition is commutative: an Allreduce computes that
    very sum, the same bits on both ranks (every shard's loss and |g_v|² has its own slot,
    the other rank's zero, and x + 0 = x).

    Rounding: each element of g is a pairwise sum of V floating-point numbers, a tree
    h = ⌈log₂ V⌉ additions deep, each rounding once by at most a relative u (2^-24 for
    float32, 2^-53 for float64). So (Higham, *Accuracy and Stability of Numerical
    Algorithms*, 2nd ed., §4.2, eq. 4.6)

        |g − Σ_v g_v| ≤ γ_h · Σ_v |g_v|,   γ_h = h·u / (1 − h·u),

    at most 2.0000003·u·Σ_v |g_v| for the default V = 4: two roundings, as in the
    default mode's Allreduce over two ranks (whose order MPI does not fix). Nothing is
    converted, and nothing overflows that the gradient itself does not.
    """

    stacked = True  # backprop writes a stack of this rank's shard gradients

    def __init__(
        self,
        num_params: int,
        dtype: np.dtype,
        world: World,
        virtual_shards: int,
        scatter: bool | None = None,
    ) -> None:
        """``scatter``: None picks the transport by P; True or False forces the Alltoall
        or the Allgather (tests compare them)."""
        self.world, n, V, P = world, num_params, virtual_shards, world.size
        owned, covers = shards_and_covers(V, P)
        self.num_pieces, self.my_pieces = V, owned[world.rank]
        self.layer_done = None
        top = tree_height(V) - 1  # the root's children: (0, top) and (2^top, top)
        children = [[(0, top)], [(1 << max(top, 0), top)]]
        self.pair = P == 2 and scatter is None and covers == children
        if self.pair:
            self._pair_layout(n, dtype, V)
            return
        self.scatter = P > 1 and (P > SCATTER_ABOVE if scatter is None else scatter)
        # A subtree sum in a message is m long: the whole gradient, or (scattering) one
        # of P slices of it, the padding beyond n staying zero.
        m = -(-n // P) if self.scatter else n
        width = P * m if self.scatter else n
        self.full_grad = np.zeros(width, dtype)
        self.grad = self.full_grad[:n]
        leaves = np.zeros((len(self.my_pieces), width), dtype)
        self.piece_grads = leaves[:, :n]  # where backprop writes this rank's g_v
        if self.scatter:
            leaves = leaves.reshape(len(self.my_pieces), P, m)  # by the rank that sums it

        # What a rank sends each other rank: [its subtree sums, whole or the receiver's
        # slice | its shards' losses | their weighted |g_v|² | its votes], all as long as
        # the longest (MPICH's Allgather beats its Allgatherv 3×). ``received[r]`` is rank r's.
        rows, most = max(len(c) for c in covers), max(len(s) for s in owned)
        sums_size = rows * m
        segment = sums_size + 2 * most + NUM_VOTES
        received = np.zeros((P, segment), dtype)
        self.received = received.reshape(-1)
        if self.scatter:  # one message per rank; losses and votes copied into each
            self.send = np.zeros((P, segment), dtype)
            self.extras = np.zeros(segment - sums_size, dtype)
            self.extras_in_messages = self.send[:, sums_size:]
            extras = self.extras
        else:  # one segment for all, written in place into ``received``
            self.send = received[world.rank]
            extras = self.send[sums_size:]
        self.piece_losses = extras[: len(self.my_pieces)].reshape(-1, 1, 1)
        self.piece_sqnorms = extras[most : most + len(self.my_pieces)]
        self.norm_scales, self.measure_norms = np.zeros(len(self.my_pieces)), False
        self.votes = extras[-NUM_VOTES:]  # the trainer's, then the world's sums
        others = [r for r in range(P) if r != world.rank]
        self.others_votes = [received[r, segment - NUM_VOTES :] for r in others]
        self.received_losses = received[:, sums_size : sums_size + most]
        self.received_sqnorms = received[:, sums_size + most : sums_size + 2 * most]
        self.loss_order = [(r, v - owned[r].start) for r in range(P) for v in owned[r]]

        # The tree's additions: this rank's subtrees, then the rest from every rank's.
        root = (0, tree_height(V))
        my_leaves = {(v, 0): leaves[v - self.my_pieces.start] for v in self.my_pieces}
        if P == 1:  # the whole tree is local: nothing to exchange
            self.local_ops, self.global_ops = plan_tree_sum(root, V, my_leaves, self.grad), []
            self._compile_plans()
            return
        self.local_ops = []
        for j, node in enumerate(covers[world.rank]):
            cols = slice(j * m, (j + 1) * m)
            into = self.send[:, cols] if self.scatter else self.send[cols]
            self.local_ops += plan_tree_sum(node, V, my_leaves, into)
        gathered = {
            node: received[r, j * m : (j + 1) * m]
            for r, cover in enumerate(covers)
            for j, node in enumerate(cover)
        }
        mine = self.full_grad[world.rank * m : (world.rank + 1) * m] if self.scatter else self.grad
        self.global_ops = plan_tree_sum(root, V, gathered, mine)
        self._compile_plans()

    def _pair_layout(self, n: int, dtype: np.dtype, V: int) -> None:
        """Two ranks, each holding one child of the root: one in-place Allreduce of
        [this rank's subtree sum | a loss per shard | a |g_v|² per shard | votes], the
        other rank's shard slots zero (:meth:`_reduce_pair`)."""
        self.scatter = False
        self.send = np.zeros(n + 2 * V + NUM_VOTES, dtype)
        self.grad = self.send[:n]  # the subtree sum, then (summed) g
        mine = slice(self.my_pieces.start, self.my_pieces.stop)
        self.all_losses, self.all_sqnorms = self.send[n : n + V], self.send[n + V : n + 2 * V]
        self.piece_losses = self.all_losses[mine].reshape(-1, 1, 1)
        self.piece_sqnorms = self.all_sqnorms[mine]
        # The other rank's shards, zeroed after each sum: the rest of the range.
        own = self.my_pieces
        self.others = slice(0, own.start) if own.start else slice(own.stop, V)
        self.norm_scales, self.measure_norms = np.zeros(len(self.my_pieces)), False
        self.votes = self.send[n + 2 * V :]  # the trainer's, then the world's sums
        leaves = np.zeros((len(self.my_pieces), n), dtype)
        self.piece_grads = leaves
        my_leaves = {(v, 0): leaves[v - self.my_pieces.start] for v in self.my_pieces}
        node = (self.my_pieces.start, tree_height(V) - 1)
        self.local_ops, self.global_ops = plan_tree_sum(node, V, my_leaves, self.grad), []
        self._compile_plans()

    def _reduce_pair(self) -> tuple[float, float]:
        self.world.allreduce_sum(self.send)  # g = left subtree + right: one addition
        losses = float(sum(self.all_losses.tolist()))  # in shard order
        sqnorms = float(sum(self.all_sqnorms.tolist())) if self.measure_norms else 0.0
        self.all_losses[self.others] = 0.0  # the other rank's slots: its numbers, summed
        self.all_sqnorms[self.others] = 0.0  # in again unless zeroed
        return losses, sqnorms

    def _compile_plans(self) -> None:
        """Each plan as one call of the block-by-block kernel (the same additions, one
        pass over memory), where the library is built and the arrays allow it."""
        self.run_local = compiled(self.local_ops)
        self.run_global = compiled(self.global_ops)

    def reduce(self) -> tuple[float, float]:
        if self.measure_norms:  # each piece's |g_v|², before the tree sums overwrite it
            for j, g in enumerate(self.piece_grads):
                self.piece_sqnorms[j] = self.norm_scales[j] * float(np.dot(g, g))
        self.run_local()
        if self.pair:
            return self._reduce_pair()
        if self.scatter:
            np.copyto(self.extras_in_messages, self.extras)  # to every rank
            self.world.alltoall(self.send, self.received)
            self.run_global()  # this rank's slice of g
            self.world.allgather(self.full_grad)
        else:
            self.world.allgather(self.received)
            self.run_global()
        for votes in self.others_votes:  # the world's sums, where the trainer reads them
            np.add(self.votes, votes, out=self.votes)
        return self._in_shard_order(self.received_losses), (
            self._in_shard_order(self.received_sqnorms) if self.measure_norms else 0.0
        )

    def _in_shard_order(self, received: np.ndarray) -> float:
        """The sum of each shard's number, added in shard order: the same bits at any
        number of ranks."""
        values = received.tolist()
        return float(sum(values[r][j] for r, j in self.loss_order))


Op = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # (into, a, b): into = a + b, or a


def plan_tree_sum(node: Node, V: int, known: dict[Node, np.ndarray], into: np.ndarray) -> list[Op]:
    """The additions that leave ``node``'s sum in ``into``, from the ``known`` nodes' arrays.

    A node not known is the sum of its children, computed into its left child's array
    (a scratch row, free once read); one without a right child is its left child.
    """
    ops: list[Op] = []

    def visit(i: int, s: int, target: np.ndarray | None) -> np.ndarray:
        value = known.get((i, s))
        if value is None:
            if s == 0:
                raise ValueError(f"shard {i} of {V} is in no rank's subtree sums")
            left = visit(i, s - 1, None)
            right_start = i + (1 << (s - 1))
            if right_start < V:
                right = visit(right_start, s - 1, None)
                ops.append((left if target is None else target, left, right))
                return left if target is None else target
            value = left
        if target is not None:
            ops.append((target, value, None))
            return target
        return value

    visit(*node, into)
    return ops


def run(ops: list[Op]) -> None:
    """Carry out a plan of :func:`plan_tree_sum`, in its order."""
    for into, a, b in ops:
        if b is None:
            np.copyto(into, a)
        else:
            np.add(a, b, out=into)


def compiled(ops: list[Op]) -> Callable[[], None]:
    """``run(ops)`` as a call: the fused kernel where it can take the arrays (the same
    bits, :mod:`distnn.engine.fused`), else the NumPy calls."""
    plan = fused.sum_plan(ops) if ops else None
    return plan if plan is not None else partial(run, ops)
