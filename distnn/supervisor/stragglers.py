"""Stragglers: a rank that computes much longer than the others is reported, not restarted.

Restarting cannot make a slow node fast, and a straggler still trains correctly; the
user decides (exclude the node, rebalance). The evidence is what every epoch record
already holds: rank 0's compute time, the slowest rank's, and which rank that was.
"""

from __future__ import annotations

import json
from collections import Counter

SLOWER = 1.5  # the slowest rank's compute time over rank 0's, on average
MOSTLY = 0.75  # in at least this share of the epochs


def straggler(metrics: str | None, first_epoch_after: int) -> tuple[int, float, int, int] | None:
    """(rank, times slower, epochs it was slowest, epochs) over the epoch records written
    after line ``first_epoch_after`` of ``metrics``, if one rank stands out; else None."""
    if not metrics:
        return None
    try:
        with open(metrics, encoding="utf-8") as f:
            lines = f.readlines()[first_epoch_after:]
        records = [r for line in lines if line.strip() and "epoch" in (r := json.loads(line))]
    except (OSError, ValueError):
        return None
    timed = [r for r in records if r.get("compute_s") and "slowest_rank" in r]
    if len(timed) < 2:
        return None
    rank, count = Counter(r["slowest_rank"] for r in timed).most_common(1)[0]
    ratio = sum(r["compute_s_max"] / r["compute_s"] for r in timed) / len(timed)
    if rank != 0 and count >= MOSTLY * len(timed) and ratio >= SLOWER:
        return rank, ratio, count, len(timed)
    return None


def count_lines(path: str | None) -> int:
    try:
        with open(path or "", encoding="utf-8") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0
