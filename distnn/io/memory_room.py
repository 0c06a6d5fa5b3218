"""How much memory may still be allocated: by this node's (or container's) processes
together, and by this process under its address-space limit.

Read before anything large is allocated (data files, the network's buffers), so a file
or a network that cannot fit costs one line instead of swapping or a MemoryError.
"""

from __future__ import annotations

import resource

from distnn.errors import DistnnError


def node_memory() -> int | None:
    """Bytes the processes of this node (or of this container) may still allocate
    together: the least of the node's available memory and the cgroup's room, else None."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            cap = f.read().strip()
        if cap != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                limits.append(max(0, int(cap) - int(f.read())))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def address_space_room() -> int | None:
    """Bytes this process may still map under its address-space limit (``ulimit -v``),
    or None without one."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    used = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return max(0, soft - used)


def available_memory() -> int | None:
    """Bytes this process may still allocate: the least of the node's (or container's)
    room and its own address-space room."""
    limits = [m for m in (node_memory(), address_space_room()) if m is not None]
    return min(limits) if limits else None


def check_fits(nbytes: int, path: str, what: str) -> None:
    """DistnnError naming ``path`` if ``nbytes`` more cannot be allocated now."""
    available = available_memory()
    if available is not None and nbytes > available:
        raise DistnnError(
            f"{path}: {what} needs {size_text(nbytes)} of memory, but {size_text(available)} "
            "is available"
        )


def size_text(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,} bytes"
