"""The grid a time-to-accuracy sweep runs: ranks × global batch × lr rule × seeds.

Each axis is given as text, as the command line takes it: a comma list (``8,32,128``)
or, for ranks and batches, a doubling range (``8..512``: 8, 16, …, 512). A bad spec is a
:class:`~distnn.errors.DistnnError`, one line naming the axis.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from distnn.engine.lr_scaling import LR_SCALINGS
from distnn.errors import DistnnError


@dataclass(frozen=True)
class Cell:
    """One run of the sweep."""

    ranks: int
    batch: int
    lr_scaling: str
    seed: int


@dataclass(frozen=True)
class Grid:
    """Every combination of the axes is one run (a :class:`Cell`)."""

    ranks: tuple[int, ...]
    batches: tuple[int, ...]
    rules: tuple[str, ...]
    seeds: tuple[int, ...]

    def cells(self, ranks: int | None = None) -> list[Cell]:
        """The runs, ranks outermost; only those on ``ranks`` ranks if given."""
        return [
            Cell(r, b, rule, s)
            for r, b, rule, s in itertools.product(self.ranks, self.batches, self.rules, self.seeds)
            if ranks is None or r == ranks
        ]


def parse_counts(axis: str, spec: str) -> tuple[int, ...]:
    """``"1,2,4"`` or ``"8..512"`` (doubling) → sorted distinct positive integers."""
    values: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        try:
            if ".." in part:
                lo, hi = (int(v) for v in part.split(".."))
                if lo < 1 or hi < lo:
                    raise ValueError
                values.update(lo << k for k in range((hi // lo).bit_length()) if lo << k <= hi)
            else:
                values.add(int(part))
        except ValueError:
            raise DistnnError(
                f"--{axis} {spec!r}: give positive integers, comma-separated, or a doubling "
                "range LO..HI (e.g. 8..512)"
            ) from None
    if not values or min(values) < 1:
        raise DistnnError(f"--{axis} {spec!r}: every value must be a positive integer")
    return tuple(sorted(values))


def parse_rules(spec: str) -> tuple[str, ...]:
    """``"none,sqrt"`` → the lr-scaling rules, checked against distnn's."""
    rules = tuple(dict.fromkeys(r.strip() for r in str(spec).split(",") if r.strip()))
    bad = [r for r in rules if r not in LR_SCALINGS]
    if not rules or bad:
        raise DistnnError(
            f"--lr-scaling {spec!r}: each rule must be one of {', '.join(LR_SCALINGS)}"
        )
    return rules


def parse_grid(ranks: str, batches: str, rules: str, seeds: int | str) -> Grid:
    """The grid from its four specs; ``seeds`` is a count (seeds 0..n-1) or a list."""
    try:
        if "," in str(seeds):
            seed_values = tuple(sorted({int(v) for v in str(seeds).split(",")}))
        else:
            seed_values = tuple(range(int(seeds)))
    except ValueError:
        seed_values = ()
    if not seed_values or min(seed_values) < 0:
        raise DistnnError(
            f"--seeds {seeds!r}: give a count (seeds 0..n-1) or a comma list of seeds ≥ 0"
        )
    grid = Grid(
        parse_counts("ranks", ranks),
        parse_counts("batches", batches),
        parse_rules(rules),
        seed_values,
    )
    small = [(b, r) for b in grid.batches for r in grid.ranks if b < r]
    if small:
        b, r = small[0]
        raise DistnnError(f"--batches: global batch {b} is smaller than {r} ranks")
    return grid
