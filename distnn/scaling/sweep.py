"""The time-to-accuracy sweep: every run of a grid, trained by ``distnn.fit`` to a target,
one row of a CSV each.

One process per rank count: :func:`sweep` runs, in the process it is called in, every
cell of the grid on ``world.size`` ranks, one ``fit`` after another (no start-up per
cell; each run's own ``startup_s`` is its data and network set-up). ``python -m
distnn.scaling`` starts one such process per rank count (``mpiexec -n R`` once).

A target not reached within ``epochs`` is an outcome, not an error: its row says
``reached`` False with the steps it ran. Rank 0 appends each row as soon as its run
ends, so a study stopped halfway keeps what it measured.
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from distnn import __version__
from distnn.api import fit
from distnn.data.load import load_dataset
from distnn.engine.network import Network
from distnn.errors import DivergenceError
from distnn.parallel.world import World
from distnn.run import provenance
from distnn.run.stopping import parse_target
from distnn.scaling.grid import Cell, Grid

# One row per run: the cell, its outcome, its seconds, how it was trained, where.
COLUMNS = (
    "ranks",
    "batch",
    "lr_scaling",
    "seed",
    "target",
    "reached",
    "steps",
    "epochs",
    "samples",
    "value",
    "train_s",
    "eval_s",
    "startup_s",
    "elapsed_s",
    "noise_scale",
    "lr",
    "stop_reason",
    "dataset",
    "hidden",
    "activation",
    "schedule",
    "base_batch",
    "eval_every",
    "deterministic",
    "max_epochs",
    "distnn",
    "mpi",
    "commit",
    "host",
    "cpu_model",
    "cores",
    "affinity",
    "start_date",
    "start_load",
    "start_steal_s",
    "end_date",
    "end_load",
    "end_steal_s",
)
_INTS = {
    "ranks",
    "batch",
    "seed",
    "steps",
    "epochs",
    "samples",
    "base_batch",
    "eval_every",
    "max_epochs",
    "cores",
}
_BOOLS = {"reached", "deterministic"}
_TEXTS = {
    "lr_scaling",
    "target",
    "stop_reason",
    "dataset",
    "hidden",
    "activation",
    "schedule",
    "distnn",
    "mpi",
    "commit",
    "host",
    "cpu_model",
    "affinity",
    "start_date",
    "end_date",
}


def sweep(
    grid: Grid,
    target: str,
    dataset: str = "digits",
    *,
    hidden: Sequence[int] = (32,),
    activation: str = "sigmoid",
    epochs: int = 100,
    eval_every: int = 1,
    base_batch: int = 32,
    deterministic: bool = True,
    out: str | Path | None = None,
    world: World | None = None,
    say: Callable[[str], None] | None = None,
    **fit_options: Any,
) -> list[dict[str, Any]]:
    """Train every cell of ``grid`` on ``world.size`` ranks to ``target``; the rows.

    Each run is a fresh network (seeded by the cell's seed, as is the data order) of
    ``hidden`` widths trained by ``distnn.fit`` with ``eval_every`` (steps: 1 finds the
    exact step the target is met), ``batch_size`` the cell's global batch,
    ``lr_scaling`` its rule and ``base_batch``; ``fit_options`` go to ``fit`` as given
    (``lr``, ``schedule``, …). ``deterministic`` (default) makes the steps to target
    the same at any number of ranks and measures the noise scale on one rank too.
    Rank 0 appends each row to the CSV ``out`` (with a header if it is new) and calls
    ``say`` with a line per run. Collective: every rank calls it with the same grid.
    """
    world = World() if world is None else world
    if world.size not in grid.ranks:
        raise ValueError(f"the grid's ranks {grid.ranks} do not include this world's {world.size}")
    goal = parse_target(target)
    data = load_dataset(dataset)
    sizes = [data.n_features, *hidden, data.n_outputs]
    fixed = {"distnn": __version__, "mpi": world.library_version()}
    fixed |= provenance.machine() if world.is_root else {}
    if world.is_root and say:
        warning = provenance.load_warning(provenance.load_average(), world.size)
        if warning:
            say(warning)
    rows = []
    for cell in grid.cells(world.size):
        start = provenance.moment("start_") if world.is_root else {}
        net = Network(sizes, activations=activation, seed=cell.seed)
        history, diverged = None, ""
        try:
            history = fit(
                net, dataset, target=target, eval_every=eval_every, batch_size=cell.batch,
                lr_scaling=cell.lr_scaling, base_batch=base_batch, epochs=epochs,
                seed=cell.seed, deterministic=deterministic, verbose=0, world=world,
                **fit_options,
            )  # fmt: skip
        except DivergenceError as e:  # a rule's rate too high for this batch: an outcome
            diverged = str(e)
        row = _row(cell, goal, history, diverged) | {
            "dataset": dataset,
            "hidden": ",".join(map(str, hidden)),
            "activation": activation,
            "schedule": fit_options.get("schedule", "adam"),
            "base_batch": base_batch,
            "eval_every": eval_every,
            "deterministic": deterministic,
            "max_epochs": epochs,
        }
        if world.is_root:
            row |= fixed | start | provenance.moment("end_")
            if out is not None:
                append_row(out, row)
            if say:
                say(describe(row))
        rows.append(row)
    return rows


def _row(cell: Cell, goal, history, diverged: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "ranks": cell.ranks,
        "batch": cell.batch,
        "lr_scaling": cell.lr_scaling,
        "seed": cell.seed,
        "target": str(goal),
    }
    if history is None:
        return row | {"reached": False, "stop_reason": f"diverged: {diverged}"}
    final = history.final
    scales = [r["noise_scale"] for r in history if r.get("noise_scale") is not None]
    return row | {
        "reached": history.stop_reason.startswith("target"),
        "steps": final["step"],
        "epochs": final["epoch"],
        "samples": final["samples"],
        "value": final.get(goal.metric),
        "train_s": final["train_s"],
        "eval_s": final["eval_s"],
        "startup_s": final["startup_s"],
        "elapsed_s": final["elapsed_s"],
        "noise_scale": statistics.median(scales) if scales else None,
        "lr": history[0]["lr"] if len(history) else None,
        "stop_reason": history.stop_reason or f"trained all {final['epoch']} epochs",
    }


def describe(row: dict[str, Any]) -> str:
    """One line about a run."""
    cell = f"{row['ranks']} rank(s), batch {row['batch']}, {row['lr_scaling']}, seed {row['seed']}"
    if row["reached"]:
        return f"{cell}: {row['target']} at step {row['steps']} ({row['train_s']:.3g} s)"
    return f"{cell}: not reached ({row['stop_reason']})"


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the CSV ``path`` (header first when it is new or empty)."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in COLUMNS})
        f.flush()


def read_runs(path: str | Path) -> list[dict[str, Any]]:
    """A sweep's CSV, typed back: integers, booleans, floats, text; empty cells None."""
    rows = []
    with Path(path).open(newline="") as f:
        for raw in csv.DictReader(f):
            rows.append({k: _typed(k, v) for k, v in raw.items()})
    return rows


def _typed(key: str, text: str) -> Any:
    if text == "":
        return None
    if key in _BOOLS:
        return text == "True"
    if key in _INTS:
        return int(text)
    return text if key in _TEXTS else float(text)


def stderr_say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
