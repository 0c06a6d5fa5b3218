"""Issue 24 part 4, what was left: malformed files given to ``distnn.plot``, a deleted
working directory, two Ctrl-C to rank 0, and naming the rank that died.

Each family is parametrized by case; every command runs under a hang guard (and the
plot cases under an address-space limit, so a reader that swallows ``/dev/zero`` or a
huge line fails instead of eating the machine). The plot cases run in-process through
the CLI's own entry (``run_in_process``); the others are about processes. Bad input
ends with exit 2 and exactly one line ``distnn: error: …``, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import MPIEXEC, error_lines, guarded_run, run_in_process

LIMIT = 2 << 30  # address space each plot has to spare: reading /dev/zero whole must fail
HANG_GUARD = 120.0


def assert_one_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, one ``distnn: error:`` line holding every word of ``words``, no traceback."""
    err = result.stderr
    assert result.returncode == 2, f"exit {result.returncode}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = error_lines(err)
    assert len(lines) == 1, err[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- distnn.plot's inputs

EPOCH = {"epoch": 1, "loss": 0.5, "samples_per_sec": 1e5, "elapsed_s": 1.0, "accuracy": 0.9}


def _records(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def _write(content: str | bytes) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    return build


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _symlink_to(target: str) -> Callable[[Path], None]:
    return lambda path: path.symlink_to(target)


def _directory(path: Path) -> None:
    path.mkdir()


def _huge_line(path: Path) -> None:
    with open(path, "w") as f:  # one record padded past any record distnn writes
        f.write(json.dumps(EPOCH | {"pad": "x" * (17 << 20)}) + "\n")


def _npz(path: Path) -> None:
    with open(path, "wb") as f:
        np.savez(f, x=np.zeros(4))


# name: (file name, how it is built, words the error line holds); None: it plots.
PLOT_FILES: dict[str, tuple[str, Callable[[Path], None], tuple[str, ...] | None]] = {
    # found failing (a traceback, a hang or a wrong message) on main
    "integer_beyond_float": ("m.jsonl", _write('{"epoch": 1, "loss": 1' + "0" * 400 + "}\n"),
                             ("line 1", "'loss'")),
    "phase_time_text": ("m.jsonl", _write(_records(EPOCH | {"compute_s": "x"})),
                        ("line 1", "'compute_s'")),
    "phase_time_null": ("m.jsonl", _write(_records(EPOCH | {"compute_s": None, "data_s": None})),
                        None),
    "nested_arrays": ("m.jsonl", _write("[" * 100_000 + "]" * 100_000 + "\n"),
                      ("line 1", "nested")),
    "nested_objects": ("m.jsonl", _write('{"a":' * 100_000 + "1" + "}" * 100_000 + "\n"),
                       ("line 1", "nested")),
    "long_integer": ("m.jsonl", _write('{"epoch": 1, "loss": ' + "1" * 5000 + "}\n"),
                     ("line 1", "digits")),
    "accuracy_not_fraction": ("m.jsonl", _write(_records(EPOCH | {"accuracy": 1e308})),
                              ("line 1", "'accuracy'", "fraction")),
    "loss_negative": ("m.jsonl", _write(_records(EPOCH | {"loss": -1e308})),
                      ("line 1", "'loss'", "negative")),
    "epoch_beyond_any_run": ("m.jsonl", _write(_records(EPOCH | {"epoch": 10**30})),
                             ("line 1", "'epoch'")),
    "fifo_metrics": ("m.jsonl", _fifo, ("m.jsonl", "FIFO")),
    "fifo_trace": ("t.json", _fifo, ("t.json", "FIFO")),
    "endless_device": ("m.jsonl", _symlink_to("/dev/zero"), ("m.jsonl", "character device")),
    "huge_line": ("m.jsonl", _huge_line, ("line 1", "longer than")),
    "only_headers": ("m.jsonl", _write(_records({"header": True, "distnn": "0"})),
                     ("m.jsonl", "no epoch records", "header")),
    "only_evaluations": ("m.jsonl", _write(_records({"eval": True, "epoch": 1, "loss": 1.0})),
                         ("m.jsonl", "no epoch records", "evaluation")),
    "trace_rank_infinite": ("t.json", _write('{"traceEvents": [{"ph": "X", "pid": 1e400, '
                                             '"name": "compute", "ts": 0, "dur": 1}]}'),
                            ("t.json", "'pid'")),
    "trace_time_nan": ("t.json", _write('{"traceEvents": [{"ph": "X", "pid": 0, '
                                        '"name": "compute", "ts": NaN, "dur": 1}]}'),
                       ("t.json", "finite")),
    "trace_nested": ("t.json", _write('{"traceEvents": ' + "[" * 100_000 + "]" * 100_000 + "}"),
                     ("t.json", "nested")),
    # already right on main: kept so that they stay right
    "empty": ("m.jsonl", _write(""), ("m.jsonl", "no epoch records")),
    "json_arrays": ("m.jsonl", _write("[1, 2]\n[3]\n"), ("line 1", "JSON object")),
    "loss_text": ("m.jsonl", _write(_records(EPOCH | {"loss": "0.5"})), ("line 1", "'loss'")),
    "loss_null": ("m.jsonl", _write(_records(EPOCH | {"loss": None})), ("line 1", "'loss'")),
    "loss_bool": ("m.jsonl", _write(_records(EPOCH | {"loss": True})), ("line 1", "'loss'")),
    "rate_bool": ("m.jsonl", _write(_records(EPOCH | {"samples_per_sec": False})),
                  ("line 1", "'samples_per_sec'")),
    "loss_nan": ("m.jsonl", _write('{"epoch": 1, "loss": NaN}\n{"epoch": 2, "loss": 1}\n'), None),
    "directory": ("m.jsonl", _directory, ("m.jsonl", "directory")),
    "binary": ("m.jsonl", _write(b"\x89PNG\r\n" + bytes(range(256)) * 64), ("m.jsonl", "UTF-8")),
    "not_utf8": ("m.jsonl", _write(_records(EPOCH).encode() + b"\xff\xfe\n"), ("line 2", "UTF-8")),
    "npz_as_metrics": ("m.npz", _npz, ("m.npz",)),
    "no_samples_per_sec": ("m.jsonl", _write(_records({"epoch": 1, "loss": 0.5})), None),
    "learning_speed_null": ("m.jsonl", _write(_records(EPOCH | {"noise_scale": None,
                                                                "goodput": None})), None),
}  # fmt: skip


@pytest.mark.timeout(HANG_GUARD)
@pytest.mark.parametrize("case", list(PLOT_FILES))
def test_plot_files(tmp_path, case):
    """Run in-process through the CLI's entry, with 2 GiB of address space to spare."""
    pytest.importorskip("matplotlib")
    name, build, words = PLOT_FILES[case]
    build(tmp_path / name)
    result = run_in_process([name, "-o", "c.png"], tmp_path, "distnn.plot", memory_limit=LIMIT)
    if words is None:
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("wrote c.png") and not result.stderr, result.stderr
    else:
        assert_one_error(result, *words)
        assert not (tmp_path / "c.png").exists()


# ---------------------------------------------------------------- a deleted working directory

TRAIN = ["-m", "distnn.train", "--dataset", "synthetic:60:4:3", "--hidden", "8", "--quiet"]
# name: (ranks, the command after python), every path relative to the deleted folder
DELETED_CWD: dict[str, tuple[int, list[str]]] = {
    "train_metrics": (1, [*TRAIN, "--metrics", "m.jsonl"]),
    "train_save": (1, [*TRAIN, "--save", "m.npz"]),
    "train_trace": (1, [*TRAIN, "--trace", "t.json"]),
    "train_two_ranks": (2, [*TRAIN, "--metrics", "m.jsonl"]),
    "predict": (1, ["-m", "distnn.predict", "model.npz", "d.npz", "-o", "p.csv"]),
    "plot": (1, ["-m", "distnn.plot", "m.jsonl", "-o", "c.png"]),
    "evaluate": (1, ["-m", "distnn.evaluate", "model.npz", "--dataset", "synthetic:60:4:3"]),
    "launch": (1, ["-m", "distnn.launch", "--max-ranks", "1", "--", "python", *TRAIN,
                   "--metrics", "m.jsonl"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DELETED_CWD))
def test_deleted_working_directory(tmp_path, case):
    ranks, args = DELETED_CWD[case]
    command = [sys.executable, *args]
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks), *command]
    gone = tmp_path / "gone"
    gone.mkdir()
    # The shell enters the folder, deletes it, and starts the command there.
    result = guarded_run(
        ["sh", "-c", 'cd "$0" && rmdir "$0" && exec "$@"', str(gone), *command],
        HANG_GUARD,
        stdin=subprocess.DEVNULL,
    )
    assert_one_error(result, "working directory")


# ---------------------------------------------------------------- two signals to rank 0

# rank 0 writes its pid, then runs exactly what `python -m distnn.train` runs
RANK_PID = (
    "import os, sys\n"
    "if os.environ.get('PMI_RANK') == '0':\n"
    "    open('rank0.pid', 'w').write(str(os.getpid()))\n"
    "from distnn.cli import run\n"
    "run('train')\n"
)
LONG_RUN = ["--dataset", "synthetic:2000:10:3", "--hidden", "16", "--epochs", "100000",
            "--quiet", "--metrics", "m.jsonl"]  # fmt: skip


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = HANG_GUARD) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout:g} s")
        time.sleep(0.02)


def _epochs_written(folder: Path) -> bool:
    metrics = folder / "m.jsonl"
    return metrics.exists() and '"epoch"' in metrics.read_text()


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # rank 0 gone: its status is final
        os.kill(pid, signum)


# name: (extra options, first signal, second signal, when the second is sent, statuses)
TWO_SIGNALS = {
    "ctrl_c_while_exiting": ([], signal.SIGINT, signal.SIGINT, "exiting", {130}),
    "ctrl_c_while_exiting_checkpointed": (
        ["--checkpoint-dir", "ck"],
        signal.SIGINT,
        signal.SIGINT,
        "exiting",
        {75},
    ),
    "sigterm_while_exiting": ([], signal.SIGTERM, signal.SIGTERM, "exiting", {130}),
    "ctrl_c_at_once": ([], signal.SIGINT, signal.SIGINT, "at once", {130}),
}
REPEATS = 3  # the late signal lands in a window; a few tries catch a status that disagrees


@pytest.mark.slow
@pytest.mark.parametrize("case", list(TWO_SIGNALS))
def test_two_signals_to_rank_0(tmp_path, case):
    """The status the job ends with is the one rank 0 printed, on every try."""
    options, first, second, when, statuses = TWO_SIGNALS[case]
    for attempt in range(REPEATS):
        folder = tmp_path / str(attempt)
        folder.mkdir()
        command = [MPIEXEC, "-n", "2", sys.executable, "-c", RANK_PID, *LONG_RUN, *options]
        with subprocess.Popen(
            command,
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        ) as job:
            try:
                _wait_for(lambda f=folder: _epochs_written(f), "epoch record")
                pid = int((folder / "rank0.pid").read_text())
                _signal(pid, first)
                if when == "exiting":  # the line is printed: rank 0 is on its way out
                    line = job.stderr.readline()
                    assert "(exit " in line, line
                    _signal(pid, second)
                else:
                    _signal(pid, second)
                err = job.stderr.read()
                status = job.wait(HANG_GUARD)
            except BaseException:
                job.kill()
                raise
        if when == "exiting":
            err = line + err
        assert "Traceback" not in err, err
        assert status in statuses, f"try {attempt}: exit {status}\n{err}"
        printed = {int(code) for code in re.findall(r"\(exit (\d+)\)", err)}
        assert printed <= {status}, f"try {attempt}: printed {printed}, exit {status}\n{err}"
