"""A rank that dies by a signal (SIGKILL, SIGSEGV, …) is named, in one line.

Nothing inside a rank can speak when it is killed, and MPICH's hydra SIGKILLs the other
ranks' process groups within milliseconds of noticing (measured: ~5 ms, no SIGTERM
first), so no survivor can speak either; hydra itself prints only a pid and the signal.
Only a process's parent learns how it died. So under a launcher of several tasks, each
rank of ``train``, ``evaluate`` and ``predict`` forks first thing, before NumPy or MPI
load: the child runs the command (its pid is the rank's, in heartbeats and to ``kill``),
the parent only waits for it (a few MB, shared with the child). When the child dies by
a signal the parent prints::

    distnn: rank 1 (pid 4242) died: killed by SIGKILL; ending the job

writes the same to the supervisor's failure record (:mod:`distnn.parallel.failure_report`),
then dies by the same signal, so the launcher sees what it always saw (hydra's status 9,
11, …) and takes the job down. It announces nothing else: an exit status passes through
unchanged (a rank that leaves by ``os._exit`` or an exception names itself:
:mod:`distnn.parallel.failures`), and when the launcher kills the job it kills the parent
and child together (one process group), so only the rank that died first is named.

Signals: hydra, Open MPI and Slurm signal each rank's whole process group, so the child
gets SIGINT and SIGTERM itself; the parent ignores those from its own parent (the
launcher) and passes any other sender's on as SIGTERM (``kill PID`` of the parent asks
the rank to stop, as it asks the child; SIGTERM, since one doubled is harmless where a
doubled SIGINT would be a second Ctrl-C). The child gets SIGKILL if the parent dies.
``DISTNN_DEATH_WATCH=0`` turns it off (a debugger that wants the rank as the launcher's
own child).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal

from distnn.parallel.failure_report import report

SWITCH_VARIABLE = "DISTNN_DEATH_WATCH"
PR_SET_PDEATHSIG = 1
_WATCHED = (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM)
_POLL_S = 1.0  # a lost SIGCHLD cannot leave the parent waiting longer than this


def keep_death_watch(rank: int) -> None:
    """Fork; return in the child, which runs the rank. The parent never returns: it waits
    for the child and ends as the child did, naming the rank if a signal killed it.

    Does nothing (the rank runs as it is) when the switch is off or fork fails.
    """
    if os.environ.get(SWITCH_VARIABLE, "1") == "0":
        return
    # Blocked before fork, so that no SIGCHLD is lost before the parent waits for it;
    # the child restores its mask (pending signals are not inherited).
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    try:
        child = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return
    if child == 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        _die_with_parent()
        return
    _watch(child, rank)


def _die_with_parent() -> None:
    """SIGKILL this rank if its watching parent dies: it would run on unwatched, and the
    launcher, which sees only the parent, believes the rank gone."""
    watcher = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != watcher:  # it died before the request took effect
        os._exit(1)


def _watch(child: int, rank: int) -> None:
    launcher = os.getppid()
    from_launcher: set[int] = set()  # signals the launcher sent the whole process group
    while True:
        info = signal.sigtimedwait(_WATCHED, _POLL_S)
        if info is not None and info.si_signo != signal.SIGCHLD:
            if info.si_pid == launcher:
                from_launcher.add(info.si_signo)
            else:
                with contextlib.suppress(OSError):
                    os.kill(child, signal.SIGTERM)
            continue
        try:
            done, status = os.waitpid(child, os.WNOHANG)
        except ChildProcessError:  # cannot happen: nobody else reaps it
            os._exit(1)
        if done:
            break
    if not os.WIFSIGNALED(status):
        os._exit(os.waitstatus_to_exitcode(status))
    signum = os.WTERMSIG(status)
    if signum not in from_launcher:  # a signal to the whole job is not this rank's death
        _announce(rank, child, signum)
    _die_by(signum)


def _announce(rank: int, pid: int, signum: int) -> None:
    what = f"killed by {signal_name(signum)}"
    with contextlib.suppress(OSError):
        os.write(2, f"distnn: rank {rank} (pid {pid}) died: {what}; ending the job\n".encode())
    report(rank, "signal", f"{what} (pid {pid})")


def signal_name(signum: int) -> str:
    """``SIGKILL``, ``SIGSEGV``, …; ``signal 42`` for one without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _die_by(signum: int) -> None:
    """End this process by ``signum``, as the child ended: the launcher's status is the
    same as without the watch. No core file: the child's crash is not the parent's."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    with contextlib.suppress(ValueError, OSError):  # SIGKILL has no handler to reset
        signal.signal(signum, signal.SIG_DFL)
    with contextlib.suppress(ValueError, OSError):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # a signal whose default is not to end the process
