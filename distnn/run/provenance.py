"""Where and when numbers were measured: the columns every scaling CSV carries.

A time measured on a shared host means little without the host's state: its CPU, the
cores this process may use (its affinity), the load average and the steal time (CPU
time the hypervisor gave to other guests, from ``/proc/stat``) at a run's start and end.
Every scaling CSV row and every metrics header record carries them. Everything here is
cheap (a few small file reads, one ``git`` per process) and never fails: what cannot be read
is "unknown" (or None for numbers).
"""

from __future__ import annotations

import datetime
import functools
import os
import platform
import socket
import subprocess
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@functools.cache
def commit(where: Path | None = None) -> str:
    """The git commit of distnn's source (``+dirty`` if it has changes), else "unknown".
    Asked once per process: a sweep's runs, or a run's restarts, share it."""
    where = where or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head + ("+dirty" if dirty else "")) or "unknown"


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else the platform's best guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def affinity() -> tuple[int, ...]:
    """The cores this process may run on (all of them where the OS has no affinity)."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def load_average() -> float | None:
    """The 1-minute load average."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def steal_seconds() -> float | None:
    """Steal time so far, summed over the CPUs, in seconds (``/proc/stat``'s 8th field)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return round(int(fields[8]) / _TICKS, 2) if fields[0] == "cpu" else None
    except (OSError, IndexError, ValueError):
        return None


def machine() -> dict[str, object]:
    """What stays fixed through a study: commit, host, CPU, cores, affinity."""
    cores = affinity()
    return {
        "commit": commit(),
        "host": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count() or len(cores),
        "affinity": " ".join(map(str, cores)),
    }


def moment(prefix: str) -> dict[str, object]:
    """The host's state now: ``{prefix}date``, ``{prefix}load``, ``{prefix}steal_s``."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return {
        f"{prefix}date": now,
        f"{prefix}load": load_average(),
        f"{prefix}steal_s": steal_seconds(),
    }


def header_fields() -> dict[str, object]:
    """The metrics header's ``machine``: :func:`machine` and the start's :func:`moment`."""
    return machine() | moment("start_")


def load_warning(load: float | None, ranks: int) -> str:
    """A line when the load already exceeds the cores left for ``ranks`` ranks, else ""."""
    free = len(affinity()) - ranks
    if load is None or load <= free:
        return ""
    return (
        f"warning: load average {load:g} exceeds the {max(free, 0)} core(s) left beside "
        f"{ranks} rank(s) on {len(affinity())}: times measured now are inflated by other "
        "work (steps to target are not)"
    )
