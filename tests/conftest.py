"""Shared helpers: launching ``python -m distnn.train`` as a real job, always under a timeout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")


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
    full_env = {**os.environ, **(env or {})}
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(command)} hung for {timeout} s:\n{e.stderr}")


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("distnn: error")]
