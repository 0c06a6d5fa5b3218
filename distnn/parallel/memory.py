"""How much memory a run will need, estimated before anything large is allocated.

An absurd ``--hidden`` should cost one line at start, not minutes of swapping and a
MemoryError traceback from one rank.
"""

from __future__ import annotations

import itertools

from distnn.errors import DistnnError
from distnn.io.memory_room import address_space_room, node_memory
from distnn.parallel.ordered_sum import gradients_held


def check_memory(
    sizes: list[int],
    itemsize: int,
    batch_size: int,
    virtual_shards: int | None,
    early_stopping: bool,
    ranks_on_node: int,
    ranks: int,
    names: dict[str, str],
) -> None:
    """Refuse, before allocating, a network that cannot fit in this node's memory.

    Per rank: the parameters, the gradient buffer, the schedule's state (at most three
    more buffers, Adam's), early stopping's best copy, --deterministic's shard gradients,
    the subtree sums it sends and every rank's it receives; and the workspace of three
    rows × Σ widths buffers for the largest piece of a batch (or an evaluation chunk).
    Every rank on the node holds its own. ``virtual_shards`` is None outside
    --deterministic; ``names`` says how the message names the options "hidden",
    "batch_size" and "virtual_shards".
    """
    params = sum(n * (m + 1) for m, n in itertools.pairwise(sizes))
    copies = 5 + (1 if early_stopping else 0)
    if virtual_shards is not None:
        copies += gradients_held(virtual_shards, ranks)
    pieces = virtual_shards or ranks
    rows = max(-(-batch_size // pieces), 256)
    per_rank = itemsize * (copies * params + 3 * rows * sum(sizes[1:]))
    # Every rank on the node draws on the node's (or container's) memory; each also on
    # its own address-space limit.
    short = [
        (need, room, who)
        for need, room, who in (
            (per_rank * ranks_on_node, node_memory(), f"{ranks_on_node} rank(s) on this node"),
            (per_rank, address_space_room(), "one rank under its address-space limit"),
        )
        if room is not None and need > room
    ]
    if short:
        need, room, who = short[0]
        shards = f", fewer {names['virtual_shards']}" if virtual_shards else ""
        raise DistnnError(
            f"network {' → '.join(map(str, sizes))} ({params:,} parameters) needs about "
            f"{_gib(need)} for {who}, but {_gib(room)} is available: choose smaller "
            f"{names['hidden']} widths or {names['batch_size']}{shards}, or fewer ranks per node"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"
