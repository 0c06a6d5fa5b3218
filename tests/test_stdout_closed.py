"""A closed or full stdout never stops training nor loses its outputs.

Rank 0 prints the run's lines (header, progress, epochs, summary) on stdout. When that
stream stops taking lines (``| head`` exits: EPIPE; ``> /dev/full``: ENOSPC) the run
says so once on stderr, keeps training, writes ``--save``, ``--metrics`` and its
checkpoints, and ends with the status it would have had (0). The family: ``train`` on
1 and 2 ranks × stdout closed before the first line, after the first line, during
training (``--progress lines --log-every 1``), or ``/dev/full``; and ``distnn.fit``
with ``verbose=1`` in a script whose stdout is closed. Each case checks status 0, the
model's bytes and the metrics' records equal to an undisturbed run's (``--seed``
fixed), exactly one stderr line about stdout, no traceback (nor Python's "Exception
ignored" at exit), and no hang.

On 2 ranks it is rank 0's own stdout that closes (a wrapper between the launcher and
the rank): MPICH's ``mpiexec`` itself ends the whole job when *its* stdout closes or
fills (hydra's own behaviour, not the ranks'; tests/test_serial_commands.py shows the
job still ends rather than hangs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MPIEXEC, guarded_run

TIMEOUT = float(os.environ.get("DISTNN_TEST_TIMEOUT", "120"))
TRAIN = ["--dataset", "synthetic:3000:8:3", "--hidden", "16", "--epochs", "12", "--seed", "7",
         "--progress", "lines", "--log-every", "1"]  # fmt: skip
# Metrics keys that measure time (differ between any two runs); the rest must be equal.
TIMING = ("samples_per_sec", "_s", "_s_max", "slowest_rank", "goodput")
SCENARIOS = ["at once", "after the first line", "during training", "/dev/full"]

# Between the launcher and one rank: rank 0's stdout is closed (or /dev/full) as the
# scenario says; any other rank's is left as the launcher made it.
WRAPPER = """\
import os, subprocess, sys
scenario, command = sys.argv[1], sys.argv[2:]
fds = [int(os.environ["PMI_FD"])] if "PMI_FD" in os.environ else []  # MPICH's link to mpiexec
if os.environ.get("PMI_RANK", "0") != "0":
    sys.exit(subprocess.run(command, pass_fds=fds).returncode)
if scenario == "/dev/full":
    with open("/dev/full", "w") as full:
        sys.exit(subprocess.run(command, stdout=full, pass_fds=fds).returncode)
proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, pass_fds=fds)
if scenario == "after the first line":
    proc.stdout.readline()
elif scenario == "during training":  # a few step lines: training is under way
    steps = 0
    while steps < 5:
        line = proc.stdout.readline()
        assert line, "the run ended before it printed 5 step lines"
        steps += line.startswith("step ")
proc.stdout.close()
sys.exit(proc.wait())
"""

FIT_SCRIPT = """\
import sys
import distnn
net = distnn.Network([8, 16, 3], seed=7)
distnn.fit(net, "synthetic:3000:8:3", epochs=12, seed=7, verbose=1, progress="lines",
           log_every=1, save=sys.argv[1], metrics=sys.argv[2])
print("after fit")  # the script's own lines go where stdout goes, quietly
"""


def run(command: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return guarded_run(command, TIMEOUT, cwd=cwd, **kwargs)


def launcher(ranks: int) -> list[str]:
    if ranks == 1:
        return []
    if MPIEXEC is None:
        pytest.skip("no mpiexec")
    return [MPIEXEC, "-n", str(ranks)]


def records(path: Path) -> list[dict]:
    """The metrics file's epoch records without the keys that measure time."""
    out = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("header"):
            continue
        out.append({k: v for k, v in record.items() if not k.endswith(TIMING)})
    return out


def stdout_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "stdout" in line]


def check_clean(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr
    assert "BrokenPipeError" not in stderr, stderr
    [line] = stdout_lines(stderr)  # exactly one line about stdout
    assert line.startswith("distnn: stdout "), line
    assert ("closed" in line or "full" in line) and "continues" in line, line


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wrap") / "wrapper.py"
    path.write_text(WRAPPER)
    return path


@pytest.fixture(scope="module", params=[1, 2], ids=["1 rank", "2 ranks"])
def reference(request, tmp_path_factory) -> tuple[int, Path]:
    """An undisturbed run on 1 or 2 ranks: its model and metrics."""
    ranks = request.param
    root = tmp_path_factory.mktemp(f"ref{ranks}")
    command = [*launcher(ranks), sys.executable, "-m", "distnn.train", *TRAIN,
               "--save", "m.npz", "--metrics", "m.jsonl"]  # fmt: skip
    result = run(command, root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\nstep ") > 50, result.stdout[:500]
    return ranks, root


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_training_goes_on(reference, wrapper, tmp_path, scenario):
    ranks, ref = reference
    train = [sys.executable, "-m", "distnn.train", *TRAIN, "--save", "m.npz",
             "--metrics", "m.jsonl", "--checkpoint-dir", "ck"]  # fmt: skip
    result = run([*launcher(ranks), sys.executable, str(wrapper), scenario, *train], tmp_path)
    assert result.returncode == 0, result.stderr
    check_clean(result.stderr)
    assert (tmp_path / "m.npz").read_bytes() == (ref / "m.npz").read_bytes()
    assert records(tmp_path / "m.jsonl") == records(ref / "m.jsonl")
    assert (tmp_path / "m.toml").exists()
    assert any(p.name.endswith(".npz") for p in (tmp_path / "ck").iterdir())


@pytest.fixture(scope="module")
def fit_reference(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fitref")
    (root / "fit_script.py").write_text(FIT_SCRIPT)
    result = run([sys.executable, "fit_script.py", "m.npz", "m.jsonl"], root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("after fit\n") and "step " in result.stdout
    return root


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_fit_goes_on(fit_reference, wrapper, tmp_path, scenario):
    script = [sys.executable, str(fit_reference / "fit_script.py"), "m.npz", "m.jsonl"]
    result = run([sys.executable, str(wrapper), scenario, *script], tmp_path)
    assert result.returncode == 0, result.stderr
    check_clean(result.stderr)
    assert (tmp_path / "m.npz").read_bytes() == (fit_reference / "m.npz").read_bytes()
    assert records(tmp_path / "m.jsonl") == records(fit_reference / "m.jsonl")


@pytest.mark.parametrize("ranks", [1, 2], ids=["1 rank", "2 ranks"])
def test_quiet_run_whose_summary_finds_stdout_closed(wrapper, tmp_path, ranks):
    """``--quiet``: the summary is the only line; it fails after the outputs are written."""
    train = [sys.executable, "-m", "distnn.train", *TRAIN[:8], "--quiet", "--save", "m.npz"]
    result = run([*launcher(ranks), sys.executable, str(wrapper), "at once", *train], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    [line] = stdout_lines(result.stderr)
    assert line.startswith("distnn: stdout closed") and "written" in line, line
    assert (tmp_path / "m.npz").stat().st_size > 100
