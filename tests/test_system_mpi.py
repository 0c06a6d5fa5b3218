"""Clusters with their own MPI: distnn installed without the ``mpich`` extra runs on the
system's MPI library, and the metrics header names the library actually loaded."""

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_MPIEXEC = os.environ.get("DISTNN_SYSTEM_MPIEXEC", "/usr/bin/mpiexec.mpich")


def test_the_mpich_wheel_is_an_extra_and_the_ci_installs_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("mpich") for d in project["dependencies"])
    assert project["optional-dependencies"]["mpich"] == ["mpich>=4.2"]
    assert "[mpich," in (ROOT / ".ci" / "run").read_text()
    assert "pip install '.[mpich]'" in (ROOT / "README.md").read_text()


def resolved(requirement: str, tmp_path: Path) -> set[str]:
    """The names pip would install for ``requirement`` into an empty environment."""
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"]
    command += ["--quiet", "--report", str(report), requirement]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(command)} hung")
    if done.returncode != 0:
        pytest.skip(f"pip cannot resolve here: {done.stderr.strip()[-300:]}")
    return {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}


@pytest.mark.slow
def test_install_lines_resolve_with_and_without_the_bundled_mpi(tmp_path):
    plain = resolved(str(ROOT), tmp_path)
    assert "mpi4py" in plain and "mpich" not in plain  # the cluster's line
    assert "mpich" in resolved(f"{ROOT}[mpich]", tmp_path)  # the README's first line


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_training_on_the_system_mpich(tmp_path):
    """Debian's MPICH (apt-get install mpich) stands in for a cluster's MPI here."""
    if not os.access(SYSTEM_MPIEXEC, os.X_OK):
        pytest.skip(f"no system MPI at {SYSTEM_MPIEXEC} (apt-get install mpich)")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = [str(python), "-m", "pip", "install", "--quiet", str(ROOT)]  # no [mpich]
    done = subprocess.run(install, capture_output=True, text=True, timeout=400)
    if done.returncode != 0:
        pytest.skip(f"cannot install distnn into a fresh venv here: {done.stderr[-300:]}")
    assert not (venv / "bin" / "mpiexec").exists()
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    # Cray MPICH, Intel MPI and MVAPICH ship the MPICH ABI's libmpi.so.12 (Open MPI its
    # libmpi.so.40), which mpi4py's wheel loads; Debian names its MPICH libmpich.so.12,
    # so a module's LD_LIBRARY_PATH entry is imitated with a link of the usual name.
    debian = Path("/usr/lib/x86_64-linux-gnu/libmpich.so.12")
    if debian.exists():
        (tmp_path / "lib").mkdir()
        (tmp_path / "lib" / "libmpi.so.12").symlink_to(debian)
        env["LD_LIBRARY_PATH"] = f"{tmp_path / 'lib'}:{env.get('LD_LIBRARY_PATH', '')}"
    command = [SYSTEM_MPIEXEC, "-n", "2", str(python), "-m", "distnn.train", "--epochs", "2"]
    command += ["--dataset", "synthetic:200:5:3", "--metrics", "m.jsonl", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    header = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0])
    assert header["ranks"] == 2, header  # the system's launcher and library agree
    assert header["mpi"].startswith("MPICH Version:"), header
    dpkg = shutil.which("dpkg-query")
    if dpkg:  # the library loaded is the system's own, not a wheel's
        version = subprocess.run([dpkg, "-W", "-f", "${Version}", "libmpich12"],
                                 capture_output=True, text=True).stdout  # fmt: skip
        if version:
            assert header["mpi"] == f"MPICH Version: {version.split('-')[0]}", header
