"""Starting one attempt's job and making sure that, when it ends, none of it is left.

The launcher (``mpiexec``, or ``srun`` in a Slurm allocation) starts in a session of its
own. MPICH's hydra puts each rank in a session of its own too, so signalling a process
group is not enough: the supervisor becomes a *child subreaper* (Linux), so ranks
orphaned by a dead launcher are re-parented to it, and the job is every descendant of
the supervisor. Ending it: SIGTERM to all of them, a grace period, then SIGKILL to the
survivors (MPICH ranks spinning in a collective ignore SIGTERM; a stopped rank only
dies of SIGKILL).

A pid a heartbeat reported is only a hint (for ranks a dead launcher left behind where
re-parenting does not bring them here, e.g. under ``srun`` or without a subreaper): it
is signalled only if the process is verifiably the job's own, in the launcher's session
or carrying the job's secret mark in the environment it was started with
(``/proc/PID/environ``, readable only by its own user and root). Never because a
datagram named it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process (Linux); False elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _term_when_parent_dies() -> None:
    """In the launcher, before exec: SIGTERM when the supervisor dies (even by SIGKILL),
    so the ranks checkpoint and stop instead of training on unwatched."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _processes() -> Iterator[tuple[int, str, int]]:
    """(pid, state, parent pid) of every process on this machine, from /proc."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            yield int(entry), fields[0], int(fields[1])


def descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` on this machine."""
    children: dict[int, list[int]] = {}
    for pid, state, parent in _processes():
        if state != "Z":  # a zombie is already dead
            children.setdefault(parent, []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def reap(keep: int) -> None:
    """Collect the exit status of every finished child but ``keep`` (the launcher, whose
    status its Popen reads): orphaned ranks re-parented here leave no zombies."""
    me = os.getpid()
    for pid, state, parent in _processes():
        if parent == me and state == "Z" and pid != keep:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


class Job:
    """One attempt's launcher process and everything it started."""

    def __init__(self, command: list[str], env: dict[str, str], mark: str | None = None) -> None:
        """Start ``command``; ``mark`` (``NAME=secret``, one of ``env``'s entries) is what
        tells the job's processes from others: none but the job's was started with it."""
        self.command = command
        self._mark = mark.encode() if mark else None
        self.proc = subprocess.Popen(
            command, env=env, start_new_session=True, stderr=subprocess.PIPE, text=True,
            errors="replace", preexec_fn=_term_when_parent_dies,
        )  # fmt: skip
        self.started = time.monotonic()
        threading.Thread(target=self._pass_stderr_on, daemon=True).start()

    def _pass_stderr_on(self) -> None:
        """The job's stderr goes on to ours, line by line, and a closed or full stderr of
        ours never reaches the ranks. Only shown: a failing rank reports to the supervisor
        in a record (:mod:`distnn.parallel.failure_report`), not through this text."""
        for line in self.proc.stderr:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(line)
                sys.stderr.flush()

    def poll(self) -> int | None:
        return self.proc.poll()

    def signal_all(self, signum: int) -> None:
        """``signum`` to the launcher and every process of the job."""
        for pid in [self.proc.pid, *descendants(os.getpid())]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    def end(self, grace: float, extra_pids: list[int] = ()) -> None:
        """SIGTERM everything, wait up to ``grace`` seconds, SIGKILL what is left."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self._alive(extra_pids):
            time.sleep(0.05)
            self.proc.poll()
            reap(self.proc.pid)
        self.kill_rest(extra_pids)

    def kill_rest(self, extra_pids: list[int] = ()) -> None:
        """SIGKILL whatever of the job is still alive, until nothing is."""
        for _ in range(100):
            pids = self._alive(extra_pids)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
            self.proc.poll()
            reap(self.proc.pid)
        self.proc.poll()

    def _alive(self, extra_pids: list[int]) -> list[int]:
        extra = {p for p in extra_pids if _running(p) and self.owns(p)}
        return sorted(set(descendants(os.getpid())) | extra)

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` is verifiably one of this job's processes: in the session the
        launcher leads, or started with the job's mark in its environment."""
        if pid <= 1 or pid == os.getpid():
            return False
        try:
            with open(f"/proc/{pid}/stat") as f:
                session = int(f.read().rsplit(")", 1)[1].split()[3])
        except (OSError, ValueError, IndexError):
            return False
        if session == self.proc.pid:  # start_new_session: the launcher leads its session
            return True
        if self._mark is None:
            return False
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                return self._mark in f.read().split(b"\0")
        except OSError:  # another user's process, or gone
            return False


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
