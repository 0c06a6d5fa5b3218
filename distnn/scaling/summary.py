"""A sweep's CSV, summarized: each point a mean over its seeds with 95% intervals, the
steps model fitted per lr rule, and the measured noise scale's prediction set beside
the measurement. Pure functions of the rows, so a report regenerates from the CSV alone.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from distnn.scaling.stats import Interval, StepsModel, fit_steps_model, mean_interval


@dataclass(frozen=True)
class Point:
    """The runs of one (lr rule, global batch, ranks): ``steps`` and ``seconds`` (training
    seconds to target) over the reached runs; ``unreached`` how many were not."""

    rule: str
    batch: int
    ranks: int
    runs: int
    unreached: int
    steps: Interval | None
    seconds: Interval | None


def points(rows: list[dict[str, Any]]) -> list[Point]:
    """Group ``rows`` by (rule, batch, ranks), sorted."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["lr_scaling"], row["batch"], row["ranks"]].append(row)
    found = []
    for (rule, batch, ranks), runs in sorted(groups.items()):
        reached = [r for r in runs if r["reached"]]
        steps = mean_interval([r["steps"] for r in reached]) if reached else None
        seconds = mean_interval([r["train_s"] for r in reached]) if reached else None
        found.append(Point(rule, batch, ranks, len(runs), len(runs) - len(reached), steps, seconds))
    return found


def steps_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows the steps-to-target analysis uses: the fewest ranks' (steps do not depend
    on the ranks with ``deterministic``; pooling rank counts would count a seed twice)."""
    fewest = min(r["ranks"] for r in rows)
    return [r for r in rows if r["ranks"] == fewest]


def steps_model(rows: list[dict[str, Any]], rule: str) -> StepsModel | None:
    """S = S_min(1 + B_noise/B) through every reached run of ``rule`` (fewest ranks)."""
    reached = [r for r in steps_rows(rows) if r["lr_scaling"] == rule and r["reached"]]
    return fit_steps_model([r["batch"] for r in reached], [r["steps"] for r in reached])


def measured_noise_scale(rows: list[dict[str, Any]], rule: str | None = None) -> float | None:
    """The median over runs of each run's median noise scale (of ``rule``'s runs if given)."""
    scales = [
        r["noise_scale"]
        for r in rows
        if r.get("noise_scale") is not None and (rule is None or r["lr_scaling"] == rule)
    ]
    return statistics.median(scales) if scales else None


def ratio_checks(rows: list[dict[str, Any]], rule: str) -> list[dict[str, Any]]:
    """For each pair of consecutive batches B1 < B2: the measured steps ratio S(B1)/S(B2)
    beside the one the measured noise scale predicts, (1 + Bn/B1)/(1 + Bn/B2): 1 means
    the larger batch saves no steps, B2/B1 that it saves them all (perfect scaling)."""
    noise = measured_noise_scale(steps_rows(rows), rule)
    pts = [p for p in points(steps_rows(rows)) if p.rule == rule and p.steps is not None]
    checks = []
    for a, b in itertools.pairwise(pts):
        predicted = (1 + noise / a.batch) / (1 + noise / b.batch) if noise else None
        checks.append(
            {
                "from": a.batch,
                "to": b.batch,
                "measured": a.steps.mean / b.steps.mean,
                "predicted": predicted,
                "perfect": b.batch / a.batch,
            }
        )
    return checks
