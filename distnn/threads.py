"""How many BLAS threads each rank runs.

Ranks that share a node share its cores; if each also ran one BLAS thread per core,
``mpirun -n 4`` on 2 cores would run 8 busy threads on 2 cores and every step would
wait on the slowest descheduled thread. So each rank gets usable cores / ranks on
the node (at least 1), unless the user set a thread count in the environment.
"""

from __future__ import annotations

import os

from threadpoolctl import threadpool_info, threadpool_limits

_USER_VARIABLES = (
    "DISTNN_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def configure_blas_threads(ranks_on_node: int) -> tuple[int, str]:
    """Set this process's BLAS thread count; return (threads, where the number came from)."""
    for name in _USER_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            threads, source = int(value), f"from {name}"
            break
    else:
        threads = max(1, usable_cores() // max(1, ranks_on_node))
        source = f"{usable_cores()} cores / {ranks_on_node} ranks on the node"
    threadpool_limits(limits=threads, user_api="blas")
    return threads, source


def blas_name() -> str:
    """The BLAS NumPy runs on, e.g. 'openblas 0.3.31 (SkylakeX)'."""
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            arch = f" ({lib['architecture']})" if lib.get("architecture") else ""
            return f"{lib.get('internal_api', '?')} {lib.get('version', '?')}{arch}"
    return "unknown BLAS"
