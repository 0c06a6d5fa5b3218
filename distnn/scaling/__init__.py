"""Scaling studies: how many ranks, at which global batch, reach an accuracy soonest.

    from distnn.scaling import parse_grid, sweep
    rows = sweep(parse_grid("1", "8..512", "none,sqrt", 3), "accuracy>=0.95")

:func:`~distnn.scaling.sweep.sweep` trains every cell of a grid (ranks × global batch ×
lr rule × seeds) to a target in the calling process; ``python -m distnn.scaling`` runs
it once per rank count under ``mpiexec``, writes the CSV, and plots it
(:mod:`distnn.scaling.plots`); :mod:`distnn.scaling.stats` holds the intervals and
McCandlish's steps model, :mod:`distnn.run.provenance` the machine's state.
"""

from distnn.scaling.grid import Cell, Grid, parse_grid
from distnn.scaling.stats import bootstrap_interval, fit_steps_model, mean_interval
from distnn.scaling.sweep import COLUMNS, read_runs, sweep

__all__ = [
    "COLUMNS",
    "Cell",
    "Grid",
    "bootstrap_interval",
    "fit_steps_model",
    "mean_interval",
    "parse_grid",
    "read_runs",
    "sweep",
]
