"""How much memory a run will need, estimated before anything large is allocated.

An absurd ``--hidden`` should cost one line at start, not minutes of swapping and a
MemoryError traceback from one rank.
"""

from __future__ import annotations

import itertools

from distnn.errors import DistnnError
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
    need = itemsize * (copies * params + 3 * rows * sum(sizes[1:])) * ranks_on_node
    available = available_memory()
    if available is not None and need > available:
        shards = f", fewer {names['virtual_shards']}" if virtual_shards else ""
        raise DistnnError(
            f"network {' → '.join(map(str, sizes))} ({params:,} parameters) needs about "
            f"{_gib(need)} for {ranks_on_node} rank(s) on this node, but {_gib(available)} is "
            f"available: choose smaller {names['hidden']} widths or {names['batch_size']}"
            f"{shards}, or fewer ranks per node"
        )


def available_memory() -> int | None:
    """Bytes of memory available to new allocations on this node (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"
