"""What a launcher (mpiexec, mpirun, srun) tells a process in its environment, read before
MPI starts and without importing anything heavy: its rank, and how many tasks it started."""

from __future__ import annotations

import os

# Where launchers put a process's rank.
_RANK_VARIABLES = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID")
# Variables a launcher sets to the number of tasks it started (SLURM_STEP_NUM_TASKS is
# set by srun, not by sbatch's batch script, which is a single process).
_SIZE_VARIABLES = (
    "PMI_SIZE",
    "PMIX_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "MPI_LOCALNRANKS",
    "SLURM_STEP_NUM_TASKS",
)


def launcher_rank() -> int:
    """This process's rank as its launcher says (0 when started alone), before MPI starts."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def launcher_tasks() -> tuple[str, int] | None:
    """(variable, tasks) if a launcher's variable says it started more than one task."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            return name, int(value)
    return None
