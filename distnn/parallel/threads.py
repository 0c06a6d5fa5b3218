"""How many BLAS threads each rank runs.

Ranks that share a node share its cores; if each also ran one BLAS thread per core,
``mpirun -n 4`` on 2 cores would run 8 busy threads on 2 cores and every step would
wait on the slowest descheduled thread. So each rank gets the node's idle cores /
ranks on the node (at least 1), unless the user set a thread count in the
environment. "Idle" matters on a shared machine: a BLAS thread that shares its core
with another busy process stalls every matrix product it takes part in.
"""

from __future__ import annotations

import os
import time

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


def busy_cores(interval: float = 0.1) -> float:
    """Cores' worth of CPU time other processes used over ``interval`` (Linux; else 0)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    try:
        busy0, total0 = sample()
        time.sleep(interval)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    share = (busy1 - busy0) / max(1, total1 - total0)
    return share * (os.cpu_count() or 1)


def default_threads(ranks_on_node: int) -> tuple[int, str]:
    """Idle cores / ranks on the node, at least 1."""
    cores, ranks = usable_cores(), max(1, ranks_on_node)
    if cores // ranks <= 1:  # one thread per rank at most: nothing to measure
        return 1, f"{cores} cores / {ranks} ranks on the node"
    busy = busy_cores()
    idle = max(1, cores - round(busy))
    return max(1, idle // ranks), f"{cores} cores, {busy:.1f} busy / {ranks} ranks on the node"


def configure_blas_threads(ranks_on_node: int, fixed: int | None = None) -> tuple[int, str]:
    """Set this process's BLAS thread count; return (threads, where the number came from)."""
    for name in _USER_VARIABLES if fixed is None else ():
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            threads, source = int(value), f"from {name}"
            break
    else:
        if fixed is not None:
            threads, source = fixed, "fixed for --deterministic"
        else:
            threads, source = default_threads(ranks_on_node)
    threadpool_limits(limits=threads, user_api="blas")
    return threads, source


def blas_name() -> str:
    """The BLAS NumPy runs on, e.g. 'openblas 0.3.31 (SkylakeX)'."""
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            arch = f" ({lib['architecture']})" if lib.get("architecture") else ""
            return f"{lib.get('internal_api', '?')} {lib.get('version', '?')}{arch}"
    return "unknown BLAS"
