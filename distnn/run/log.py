"""What a run records about itself: the header it prints, the header record it logs, and
the sinks of its epoch records (``--metrics`` JSON lines, ``--tensorboard`` scalars).

The header record names what produced the numbers below it — distnn's version, the
MPI library actually loaded (``World.library_version``: the system's MPI or the
``mpich`` wheel's), the BLAS and its threads, the ranks and the whole configuration —
so a metrics file read months later still says how it was made.
"""

from __future__ import annotations

import json
from typing import Any

from distnn import __version__
from distnn.data import Dataset
from distnn.engine.network import Network
from distnn.io.metrics_log import MetricsLog
from distnn.parallel.threads import blas_name
from distnn.parallel.world import World
from distnn.run.lr_plan import LRPlan
from distnn.run.options import TrainConfig
from distnn.run.provenance import header_fields


def header_text(
    config: TrainConfig,
    data: Dataset,
    net: Network,
    world: World,
    threads: int,
    source: str,
    lr_plan: LRPlan | None = None,
) -> str:
    """The two lines a run prints first: versions and resources, then data and network
    with the learning rate as resolved (``lr_plan``; None: as given)."""
    lr = lr_plan.text() if lr_plan else f"lr {config.lr} ({config.lr_schedule})"
    test = f", {len(data.x_test)} test" if data.x_test is not None else ""
    deterministic = (
        f" | deterministic, {config.virtual_shards} virtual shards" if config.deterministic else ""
    )
    return (
        f"distnn {__version__} | {world.library_version()} | {world.size} rank(s) | "
        f"BLAS {blas_name()}, {threads} thread(s) per rank ({source})\n"
        f"data {data.name}: {len(data.x)} train{test}, {data.n_features} features | "
        f"network {net.describe()} | {config.schedule} {lr} | batch {config.batch_size} | "
        f"{config.epochs} epochs" + deterministic
    )


def header_record(
    config: TrainConfig, world: World, threads: int, lr_plan: LRPlan | None = None
) -> dict[str, Any]:
    """The metrics file's first record (one per start of the run); ``lr_resolved``: the
    learning rate as ``lr_plan`` resolved it (absent for a schedule instance); ``machine``:
    where and when (:mod:`distnn.run.provenance`: commit, host, CPU, cores, affinity, the
    start's date, load average and steal time)."""
    resolved = {"lr_resolved": lr_plan.record()} if lr_plan else {}
    return {
        "header": True,
        "distnn": __version__,
        "mpi": world.library_version(),
        "blas": blas_name(),
        "threads": threads,
        "ranks": world.size,
        "config": config.to_dict(),
        **resolved,
        "machine": header_fields(),
    }


class RunLog:
    """Rank 0's sinks of records: the metrics file and, optionally, TensorBoard.

    On other ranks both are None and writing does nothing. Opening runs on rank 0
    under ``World.on_root``, so a missing tensorboardX stops every rank alike.
    """

    def __init__(self, config: TrainConfig, world: World, append: bool) -> None:
        self.metrics: MetricsLog | None = None
        self.tensorboard = None

        def open_sinks() -> None:
            self.metrics = MetricsLog(config.metrics, append=append)
            if config.tensorboard:
                from distnn.io.tensorboard import TensorBoardLog

                self.tensorboard = TensorBoardLog(config.tensorboard)

        world.on_root(open_sinks)

    def write_header(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(record)
        if self.tensorboard is not None:
            text = "```\n" + json.dumps(record, indent=1) + "\n```"
            self.tensorboard.write_header(record, text)

    def write(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(record)
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.tensorboard is not None:
            self.tensorboard.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
