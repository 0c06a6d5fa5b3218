"""Shared helpers: launching ``python -m distnn.train`` as a real job, always under a
timeout, or running a one-rank command in this process (:func:`run_in_process`)."""

from __future__ import annotations

import contextlib
import io
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
# The commands run_in_process runs: ``python -m distnn.X`` for these X.
CLI_MODULES = frozenset({"distnn.train", "distnn.evaluate", "distnn.predict", "distnn.plot"})


PYTEST_CONFIG: pytest.Config | None = None  # this session's, for what must reach the terminal


def pytest_configure(config: pytest.Config) -> None:
    global PYTEST_CONFIG
    PYTEST_CONFIG = config


def print_past_capture(text: str) -> None:
    """``text`` on the terminal's stderr now, past pytest's output capture (for a rank
    about to end the MPI session, whose captured output would be lost)."""
    capture = PYTEST_CONFIG and PYTEST_CONFIG.pluginmanager.getplugin("capturemanager")
    if capture:
        capture.suspend_global_capture(in_=False)
    sys.stderr.write(text)
    sys.stderr.flush()


def guarded_run(command: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``command`` with its output captured as text; a hang past ``timeout`` fails the test."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(map(str, command))} hung for {timeout:g} s:\n{e.stderr}")


def launch(
    args: list[str],
    ranks: int = 1,
    timeout: float = 120,
    env: dict | None = None,
    cwd: Path | None = None,
    module: str = "distnn.train",
    process: bool = False,
) -> subprocess.CompletedProcess:
    """Run the CLI on ``ranks`` ranks (no launcher for 1); a hang fails the test.

    One rank of a CLI command, with no ``env`` of its own, runs in this process
    (:func:`run_in_process`) unless ``process`` is asked for: what it prints and its
    status are the same, without an interpreter's start (pytest-timeout is the guard).
    """
    from distnn.parallel.launcher_env import launcher_tasks

    # Not inside a launched job (pytest under mpiexec): a rank's command would join it.
    alone = launcher_tasks() is None
    if ranks == 1 and env is None and module in CLI_MODULES and alone and not process:
        return run_in_process(args, cwd, module)
    command = [sys.executable, "-m", module, *args]
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks), *command]
    return guarded_run(command, timeout, env={**os.environ, **(env or {})}, cwd=cwd)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """In the MPI session: a fresh folder every rank sees (:mod:`on_every_rank`)."""
    from on_every_rank import shared_folder

    with shared_folder() as path:
        yield path


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("distnn: error")]


@contextlib.contextmanager
def _fds_captured() -> Iterator[list[str]]:
    """fd 1 and 2 (and sys.stdout/sys.stderr over them) into files while inside; the
    yielded list gets their text, [stdout, stderr], on the way out. At fd level, as a
    process's pipes would see them: distnn also writes some lines with ``os.write(2)``."""
    streams = sys.stdout, sys.stderr
    for stream in streams:
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    texts: list[str] = []
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), write_through=True)  # noqa: SIM115
            sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), write_through=True)  # noqa: SIM115
            try:
                yield texts
            finally:
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(OSError, ValueError):
                        stream.flush()
        finally:
            sys.stdout, sys.stderr = streams
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)
            for file in (out, err):
                file.seek(0)
                texts.append(file.read().decode(errors="replace"))


def _address_space_headroom(limit: int) -> int:
    """A soft RLIMIT_AS that leaves ``limit`` bytes to allocate beyond what this process
    has mapped now: in a process of its own a command ran under ``limit`` in all."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024 + limit
    raise RuntimeError("no VmSize in /proc/self/status")


def run_in_process(
    args: list[str],
    cwd: Path | str | None = None,
    module: str = "distnn.train",
    memory_limit: int | None = None,
) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` on one rank, run here through the CLI's own entry
    (:func:`distnn.cli.run`): the same exit status, stdout and stderr (at fd level), at
    the cost of a call instead of an interpreter's start. For a command's refusals and
    checks on one rank; what needs a process (several ranks, signals, exit by the OS, a
    closed stdout) stays one. A hang is ended by the test's pytest-timeout.

    What the command leaves behind in this process is put back: the SIGINT/SIGTERM
    handlers it installs, sys.argv, the working directory, the BLAS thread limit, the
    "stdout lost" note, and ``memory_limit`` (a soft RLIMIT_AS of that much headroom).
    train's start-up time counts from this call, as from a process's start.
    """
    from threadpoolctl import threadpool_limits

    import distnn.cli
    import distnn.cli.train
    import distnn.run.progress

    command = module.removeprefix("distnn.")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    argv, here, memory = sys.argv, os.getcwd(), resource.getrlimit(resource.RLIMIT_AS)
    blas = threadpool_limits(limits=None)  # records the limits, changes nothing
    started = time.perf_counter()  # "the process's start", for train's start-up time
    process_started = distnn.cli.train.process_started
    distnn.cli.train.process_started = lambda: started
    status: int | str | None = 0
    try:
        with _fds_captured() as texts:
            sys.argv = [f"{module}/__main__.py", *map(str, args)]
            if cwd is not None:
                os.chdir(cwd)
            if memory_limit is not None:
                soft, hard = _address_space_headroom(memory_limit), memory[1]
                if hard != resource.RLIM_INFINITY:
                    soft = min(soft, hard)
                resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
            try:
                distnn.cli.run(command)
            except SystemExit as e:
                status = e.code
            finally:
                resource.setrlimit(resource.RLIMIT_AS, memory)
    finally:
        os.chdir(here)
        sys.argv = argv
        distnn.cli.train.process_started = process_started
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        blas.restore_original_limits()
        distnn.run.progress._stdout_lost = False
    if status is None:
        status = 0
    elif not isinstance(status, int):  # sys.exit("message"): printed, status 1
        texts[1] += f"{status}\n"
        status = 1
    return subprocess.CompletedProcess([module, *args], status, texts[0], texts[1])
