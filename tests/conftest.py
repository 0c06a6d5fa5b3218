"""Shared helpers: launching ``python -m distnn.train`` as a real job, always under a timeout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")


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
) -> subprocess.CompletedProcess:
    """Run the CLI on ``ranks`` ranks (no launcher for 1); a hang fails the test."""
    command = [sys.executable, "-m", module, *args]
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks), *command]
    return guarded_run(command, timeout, env={**os.environ, **(env or {})}, cwd=cwd)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("distnn: error")]
