"""Serial commands need no MPI library, and a stdout closed early ends any command quietly.

``python -m distnn.predict``, ``python -m distnn.evaluate`` (run alone), ``python -m
distnn.plot`` and ``distnn.evaluate(net, x, y)`` in a plain script must work where
mpi4py is missing or finds no MPI library: each runs here with a fake ``mpi4py``
first on PYTHONPATH that fails to import (as mpi4py does then, with ImportError or
RuntimeError) and no launcher variables, and must give the same output as with MPI (the
reference run in-process through the CLI's own entry, :func:`alone`).
A launcher that says several tasks while MPI cannot load is one line and exit 2.

``| head``: a serial command (predict, evaluate, plot, ``train --help``) whose stdout is
closed early exits with status 1 and no traceback (Python's recipe:
https://docs.python.org/3/library/signal.html#note-on-sigpipe). Training does not stop:
it says so once on stderr and ends with status 0 (tests/test_stdout_closed.py holds
that family); under MPICH's mpiexec it is mpiexec that ends the job when its own stdout
closes, and then no rank is left waiting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import MPIEXEC, error_lines, guarded_run, launch, run_in_process

SPEC = "synthetic:200:8:3"
TIMEOUT = 120
EXIT_BROKEN_PIPE = 1
# Prefixes of the variables launchers set (a rank, a number of tasks, how to reach the
# launcher: distnn.cli and distnn.parallel.world read some, MPI libraries the others).
LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "OMPI_", "MPI_LOCAL", "HYDRA_", "SLURM_")
# How mpi4py fails when it cannot be used: not installed, or no MPI library to load.
FAKE_MPI4PY = {
    "not installed": {"__init__.py": "raise ImportError('No module named mpi4py (fake)')\n"},
    "no MPI library": {
        "__init__.py": "",
        "MPI.py": "raise RuntimeError('cannot load MPI library (fake)')\n",
    },
}


def alone_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_PREFIXES)}
    return env | extra


def no_mpi_env(fake: Path, **extra: str) -> dict[str, str]:
    """As :func:`alone_env`, with the fake mpi4py in ``fake`` found before the real one."""
    env = alone_env(**extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(fake), env.get("PYTHONPATH")]))
    return env


def run(module: str, args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` alone (no launcher) in exactly ``env``, under a timeout."""
    command = [sys.executable, "-m", module, *args]
    return guarded_run(command, TIMEOUT, env=env, cwd=cwd)


def alone(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The reference: ``python -m MODULE ARGS`` alone, MPI at hand. In this process
    through the CLI's own entry when no launcher's variable is set here (the same
    output as a process's), else as a process without them."""
    if any(k.startswith(LAUNCHER_PREFIXES) for k in os.environ):
        return run(module, args, cwd, alone_env())
    return run_in_process(args, cwd, module)


def clean(stderr: str) -> bool:
    return "Traceback" not in stderr and "BrokenPipeError" not in stderr


@pytest.fixture(scope="module", params=list(FAKE_MPI4PY))
def fake(request, tmp_path_factory) -> Path:
    """A folder holding an mpi4py that fails to import, in one of the ways it does."""
    root = tmp_path_factory.mktemp("fake_mpi4py")
    (root / "mpi4py").mkdir()
    for name, text in FAKE_MPI4PY[request.param].items():
        (root / "mpi4py" / name).write_text(text)
    check = subprocess.run(  # the fake is what gets imported
        [sys.executable, "-c", "from mpi4py import MPI"],
        capture_output=True, text=True, timeout=TIMEOUT, env=no_mpi_env(root), cwd=root,
    )  # fmt: skip
    assert check.returncode != 0 and "(fake)" in check.stderr, check.stderr
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A trained classifier, its metrics file, and inputs (enough to fill a pipe)."""
    root = tmp_path_factory.mktemp("serial")
    args = ["--dataset", SPEC, "--epochs", "2", "--save", "m.npz", "--metrics", "m.jsonl"]
    result = launch([*args, "--quiet"], cwd=root)
    assert result.returncode == 0, result.stderr
    x = np.random.default_rng(0).standard_normal((20_000, 8))
    np.save(root / "x.npy", x)  # ~700 kB as CSV: far more than a pipe holds
    np.save(root / "few.npy", x[:50])
    return root


# --- no MPI library: the same results ------------------------------------------------


@pytest.mark.parametrize(
    "output", ["out.npy", "out.csv", "-", "classes.csv"], ids=["npy", "csv", "stdout", "classes"]
)
def test_predict_without_mpi(work, fake, output):
    args = ["m.npz", "few.npy", "-o", output] + (["--classes"] if "classes" in output else [])
    with_mpi = alone("distnn.predict", args, work)
    assert with_mpi.returncode == 0, with_mpi.stderr
    expected = None if output == "-" else (work / output).read_bytes()
    without = run("distnn.predict", args, work, no_mpi_env(fake))
    assert without.returncode == 0, without.stderr
    assert without.stderr == ""
    assert without.stdout == with_mpi.stdout
    if expected is not None:
        assert (work / output).read_bytes() == expected
    else:
        assert without.stdout.startswith("output_0,output_1,output_2\n")
        assert len(without.stdout.splitlines()) == 51


@pytest.mark.parametrize("split", ["test", "all"])
def test_evaluate_without_mpi(work, fake, split):
    args = ["m.npz", "--dataset", SPEC, "--split", split, "--json", f"{split}.json"]
    with_mpi = alone("distnn.evaluate", args, work)
    assert with_mpi.returncode == 0, with_mpi.stderr
    expected = json.loads((work / f"{split}.json").read_text())
    without = run("distnn.evaluate", args, work, no_mpi_env(fake))
    assert without.returncode == 0, without.stderr
    assert without.stdout == with_mpi.stdout and without.stderr == with_mpi.stderr
    assert "1 rank(s)" in without.stdout and "confusion matrix" in without.stdout
    assert json.loads((work / f"{split}.json").read_text()) == expected


def test_plot_without_mpi(work, fake):
    pytest.importorskip("matplotlib")
    with_mpi = alone("distnn.plot", ["m.jsonl", "-o", "with.png"], work)
    assert with_mpi.returncode == 0, with_mpi.stderr
    without = run("distnn.plot", ["m.jsonl", "-o", "without.png"], work, no_mpi_env(fake))
    assert without.returncode == 0, without.stderr
    assert without.stdout == with_mpi.stdout.replace("with.png", "without.png")
    assert (work / "without.png").read_bytes() == (work / "with.png").read_bytes()


EVALUATE_SCRIPT = """\
import json, sys
import distnn
from distnn.data.load import load_dataset
net = distnn.Network.load("m.npz")
data = load_dataset("{spec}")
report = distnn.evaluate(net, data.x_test, data.labels_test)
print(json.dumps(report, sort_keys=True))
print("mpi4py loaded:", "mpi4py.MPI" in sys.modules)
"""


def test_evaluate_function_in_a_plain_script(work, fake):
    """``distnn.evaluate`` in a script started alone: no MPI, the CLI's numbers."""
    script = work / "evaluate_script.py"
    script.write_text(EVALUATE_SCRIPT.format(spec=SPEC))
    results = []
    for env in (alone_env(), no_mpi_env(fake)):
        result = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=work,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        report, loaded = result.stdout.splitlines()
        assert loaded == "mpi4py loaded: False"  # alone, MPI is not even started
        results.append(json.loads(report))
    assert results[0] == results[1]
    cli = alone("distnn.evaluate", ["m.npz", "--dataset", SPEC, "--json", "cli.json"], work)
    assert cli.returncode == 0, cli.stderr
    from_cli = json.loads((work / "cli.json").read_text())
    assert {k: from_cli[k] for k in results[0]} == results[0]


@pytest.mark.parametrize("module", ["distnn.evaluate", "distnn.predict"])
def test_several_tasks_without_mpi_is_one_line(work, fake, module):
    """A launcher says 2 tasks but MPI cannot load: one line from rank 0, exit 2 on each."""
    args = {
        "distnn.evaluate": ["m.npz", "--dataset", SPEC],
        "distnn.predict": ["m.npz", "few.npy", "-o", "never.npy"],
    }[module]
    for rank in ("0", "1"):
        result = run(module, args, work, no_mpi_env(fake, PMI_SIZE="2", PMI_RANK=rank))
        assert result.returncode == 2, result.stderr
        assert clean(result.stderr) and result.stdout == ""
        if rank == "0":
            assert len(result.stderr.splitlines()) == 1, result.stderr
            [line] = error_lines(result.stderr)
            assert "PMI_SIZE=2 says 2 tasks were started" in line and "MPI" in line
        else:
            assert result.stderr == ""
    assert not (work / "never.npy").exists()


# --- a stdout closed early -----------------------------------------------------------


def closed_after(command: list[str], lines: int, cwd: Path, env: dict) -> tuple[int, list, str]:
    """Run ``command``, read ``lines`` lines of its stdout, close it (as ``| head``).

    Returns the exit status, the lines read and stderr. With 0 lines the pipe is
    closed before the command writes anything, so its first write fails for sure.
    """
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True,
                                env=env, cwd=cwd)  # fmt: skip
        try:
            read = [proc.stdout.readline() for _ in range(lines)]
            proc.stdout.close()
            status = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"{' '.join(command)} hung for {TIMEOUT} s after its stdout closed")
        err.seek(0)
        return status, read, err.read()


def cli(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def test_predict_to_a_closed_pipe(work):
    status, read, stderr = closed_after(
        cli("distnn.predict", "m.npz", "x.npy", "-o", "-"), 1, work, alone_env()
    )
    assert read == ["output_0,output_1,output_2\n"]
    assert status == EXIT_BROKEN_PIPE and stderr == "", stderr


@pytest.mark.parametrize("lines", [0, 1])
@pytest.mark.parametrize(
    "command",
    [
        ("distnn.evaluate", "m.npz", "--dataset", SPEC),
        ("distnn.predict", "m.npz", "few.npy", "-o", "-"),
        ("distnn.train", "--help"),
        ("distnn.evaluate", "--help"),
        ("distnn.plot", "--help"),
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_a_closed_pipe_is_quiet(work, command, lines):
    """Closed before any output, or after a line (output that fits in the pipe may all be
    written by then: status 0). argparse ignores a failed write of --help: status 0."""
    status, read, stderr = closed_after(cli(*command), lines, work, alone_env())
    assert clean(stderr), stderr
    assert stderr == ""
    assert all(read)
    if lines == 0 and "--help" not in command:
        assert status == EXIT_BROKEN_PIPE
    else:
        assert status in (0, EXIT_BROKEN_PIPE)


@pytest.mark.parametrize(
    "command",
    [
        ("distnn.evaluate", "m.npz", "--dataset", SPEC),
        ("distnn.predict", "m.npz", "x.npy", "-o", "-"),
    ],
    ids=lambda c: c[0],
)
def test_a_full_stdout_is_one_line(work, command):
    """``> /dev/full``: status 1, one line naming stdout, no traceback."""
    with open("/dev/full", "w") as full:
        try:
            result = subprocess.run(
                cli(*command), stdout=full, stderr=subprocess.PIPE, text=True,
                timeout=TIMEOUT, env=alone_env(), cwd=work,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.fail(f"{command} hung with stdout /dev/full")
    assert result.returncode == EXIT_BROKEN_PIPE, result.stderr
    assert result.stderr == "distnn: error: stdout: No space left on device\n", result.stderr


def test_training_to_a_closed_pipe(work):
    """``distnn.train | head -1``: training goes on to the end, one line on stderr, status 0."""
    args = ["--dataset", "synthetic:4000:8:3", "--epochs", "20", "--progress", "lines",
            "--save", "closed.npz"]  # fmt: skip
    status, read, stderr = closed_after(cli("distnn.train", *args), 1, work, alone_env())
    assert read[0].startswith("distnn ")  # the header line
    assert clean(stderr), stderr
    assert "Exception ignored" not in stderr, stderr
    [line] = stderr.splitlines()
    assert line.startswith("distnn: stdout closed") and "training continues" in line, line
    assert status == 0
    assert (work / "closed.npz").stat().st_size > 100


RANK0_CLOSES = """\
import os, subprocess, sys
command = [sys.executable, "-m", "distnn.train", *sys.argv[1:]]
fds = [int(os.environ["PMI_FD"])] if "PMI_FD" in os.environ else []  # MPICH's link to mpiexec
if os.environ["PMI_RANK"] == "0":  # only rank 0's stdout is closed early
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, pass_fds=fds)
    proc.stdout.readline()
    proc.stdout.close()
    sys.exit(proc.wait())
sys.exit(subprocess.run(command, stdout=subprocess.DEVNULL, pass_fds=fds).returncode)
"""


@pytest.mark.parametrize("rank0_only", [False, True], ids=["job", "rank 0"])
def test_training_on_two_ranks_to_a_closed_pipe(work, tmp_path, rank0_only):
    """Rank 0's stdout alone closed: training goes on, status 0. ``mpiexec -n 2 … | head
    -1``: MPICH's mpiexec (hydra) ends the job itself when its stdout closes (SIGPIPE,
    or its own error); no rank is left waiting."""
    args = ["--dataset", "synthetic:4000:8:3", "--epochs", "20", "--progress", "lines"]
    if rank0_only:
        wrapper = tmp_path / "rank0_closes.py"
        wrapper.write_text(RANK0_CLOSES)
        command = [MPIEXEC, "-n", "2", sys.executable, str(wrapper), *args]
    else:
        command = [MPIEXEC, "-n", "2", *cli("distnn.train", *args)]
    status, _, stderr = closed_after(command, 1, work, alone_env())
    assert clean(stderr), stderr
    if rank0_only:
        assert status == 0, stderr
        [line] = [line for line in stderr.splitlines() if "stdout" in line]
        assert line.startswith("distnn: stdout closed"), stderr
    else:
        assert status != 0
