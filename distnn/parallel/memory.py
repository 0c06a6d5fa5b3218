"""How much memory a run will need, estimated before anything large is allocated.

An absurd ``--hidden`` should cost one line at start, not minutes of swapping and a
MemoryError traceback from one rank.
"""

from __future__ import annotations

import itertools

from distnn.config import TrainConfig
from distnn.errors import DistnnError
from distnn.parallel.ordered_sum import gradients_held


def check_memory(config: TrainConfig, sizes: list[int], ranks_on_node: int, ranks: int) -> None:
    """Refuse, before allocating, a network that cannot fit in this node's memory.

    Per rank: the parameters, the gradient buffer, the schedule's state (at most three
    more buffers, Adam's), early stopping's best copy, --deterministic's shard gradients,
    the subtree sums it sends and every rank's it receives; and the workspace of three
    rows × Σ widths buffers for the largest piece of a batch (or an evaluation chunk).
    Every rank on the node holds its own.
    """
    itemsize = 4 if config.dtype == "float32" else 8
    params = sum(n * (m + 1) for m, n in itertools.pairwise(sizes))
    copies = 5 + (1 if config.patience else 0)
    if config.deterministic:
        copies += gradients_held(config.virtual_shards, ranks)
    pieces = config.virtual_shards if config.deterministic else ranks
    rows = max(-(-config.batch_size // pieces), 256)
    need = itemsize * (copies * params + 3 * rows * sum(sizes[1:])) * ranks_on_node
    available = available_memory()
    if available is not None and need > available:
        shards = ", fewer --virtual-shards" if config.deterministic else ""
        raise DistnnError(
            f"network {' → '.join(map(str, sizes))} ({params:,} parameters) needs about "
            f"{_gib(need)} for {ranks_on_node} rank(s) on this node, but {_gib(available)} is "
            f"available: choose smaller --hidden widths or --batch-size{shards}, or fewer "
            "ranks per node"
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
