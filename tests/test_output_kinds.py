"""Outputs that are not regular files are refused at start, and nothing is replaced.

Every output option of every command (``train`` on 1 and 2 ranks, ``distnn.fit``,
``evaluate --json``, ``predict -o``, ``plot -o``, and the configuration file ``train``
writes beside ``--save``) is pointed at each kind of path an atomic replace must never
swap for a regular file, nor open and wait on: a device (``/dev/null``, ``/dev/full``),
a FIFO, a unix socket, and symbolic links to a device and to a FIFO. Each case must exit
with status 2 and one ``distnn: error`` line naming the option, within a timeout (a FIFO
opened for writing would wait for a reader forever), and leave the path exactly what it
was (same type, inode, device numbers, link target).

A symbolic link to a regular file is followed: the file it names is written, the link
stays; a path that is the process's own stdout (``/dev/stdout`` while stdout is a file)
is refused. ``predict -o -`` writes to stdout whatever stdout is.

One-rank cases run the command in this process through the CLI's own entry
(``run_in_process``: same status, same stdout and stderr); ``train``'s cases also run on
every rank of the in-process MPI session (2 and 4 ranks), and one case of each kind and
of each option as a real ``mpiexec -n 2`` job; the cases about the process's own stdout
start the process.

Run as root, a regression here would replace ``/dev/null`` for the whole machine: an
autouse fixture puts the device back (and fails the test) if that ever happens.
"""

from __future__ import annotations

import itertools
import os
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import MPIEXEC, error_lines, guarded_run, run_in_process
from on_every_rank import assert_refused_as_one_job, on_rank_0, run_on_every_rank

import distnn
from distnn.errors import DistnnError

SPEC = "synthetic:120:6:3"
TRAIN = ["--dataset", SPEC, "--hidden", "4", "--epochs", "1", "--quiet"]
TIMEOUT = float(os.environ.get("DISTNN_TEST_TIMEOUT", "60"))
DEVICES = {"/dev/null": os.makedev(1, 3), "/dev/full": os.makedev(1, 7)}
KINDS = ["/dev/null", "/dev/full", "fifo", "socket", "link to /dev/null", "link to fifo"]


@pytest.fixture(autouse=True)
def devices_stay_devices():
    """Fail loudly, and repair as root, if a case replaced a machine-wide device."""
    yield
    broken = []
    for path, rdev in DEVICES.items():
        st = os.lstat(path)
        if not (stat.S_ISCHR(st.st_mode) and st.st_rdev == rdev):
            broken.append(path)
            if os.geteuid() == 0:
                os.unlink(path)
                os.mknod(path, 0o666 | stat.S_IFCHR, rdev)
                os.chmod(path, 0o666)
    assert not broken, f"{broken} replaced by a regular file (restored)"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A trained model, its metrics file and inputs for evaluate, predict and plot."""
    root = tmp_path_factory.mktemp("kinds")
    args = [*TRAIN, "--save", "m.npz", "--metrics", "m.jsonl", "--trace", "t.json"]
    result = run_in_process(args, root)
    assert result.returncode == 0, result.stderr
    np.save(root / "x.npy", np.random.default_rng(0).standard_normal((10, 6)))
    return root


@pytest.fixture
def place():
    """A short private folder (a unix socket's path must fit in 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="k", dir="/tmp") as d:
        yield Path(d)


class Special:
    """A path of one kind, made in ``place``; ``snapshot()`` says what it is."""

    def __init__(self, kind: str, place: Path, suffix: str, name: str = "out") -> None:
        self.sock = None
        if kind.startswith("/dev/"):
            self.path = kind
            return
        self.path = str(place / f"{name}{suffix}")
        fifo = str(place / "the.fifo")
        if kind == "fifo":
            os.mkfifo(self.path)
        elif kind == "socket":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(self.path)
        elif kind == "link to /dev/null":
            os.symlink("/dev/null", self.path)
        elif kind == "link to fifo":
            os.mkfifo(fifo)
            os.symlink(fifo, self.path)
        else:
            raise ValueError(kind)

    def snapshot(self) -> tuple:
        st = os.lstat(self.path)
        link = os.readlink(self.path) if stat.S_ISLNK(st.st_mode) else None
        target = os.stat(self.path)
        return (stat.S_IFMT(st.st_mode), st.st_ino, st.st_rdev, link,
                stat.S_IFMT(target.st_mode), target.st_ino)  # fmt: skip

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def run(command: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """``command`` under a timeout: a hang (a FIFO opened for writing) fails the case."""
    return guarded_run(command, TIMEOUT, cwd=cwd, **kwargs)


def refused(result: subprocess.CompletedProcess, option: str, path: str) -> None:
    """Exit 2, exactly one ``distnn: error`` line naming ``option`` and ``path``."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert option in lines[0] and path in lines[0], lines[0]
    assert "Traceback" not in result.stderr, result.stderr


def check_case(kind: str, place: Path, suffix: str, option: str, command) -> None:
    """Make the special path, run ``command(path)``, check the refusal and the path."""
    special = Special(kind, place, suffix)
    try:
        before = special.snapshot()
        result = command(special.path)
        refused(result, option, special.path)
        assert special.snapshot() == before, f"{special.path} was replaced"
    finally:
        special.close()
    leftovers = [p.name for p in place.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


# --- train, on 1 and 2 ranks ---------------------------------------------------------

TRAIN_OUTPUTS = {
    "--save": ".npz",
    "--metrics": ".jsonl",
    "--trace": ".json",
    "--checkpoint-dir": "",
    "--tensorboard": "",
}


# As real two-rank jobs: every kind once and every option at least once.
AS_A_JOB = list(zip(itertools.cycle(TRAIN_OUTPUTS), KINDS))


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("option", TRAIN_OUTPUTS)
def test_train_refuses(place, option, kind):
    def command(path: str):
        return run_in_process([*TRAIN, option, path], place)

    check_case(kind, place, TRAIN_OUTPUTS[option], option, command)


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize(("option", "kind"), AS_A_JOB)
def test_train_refuses_in_a_two_rank_job(place, option, kind):
    def command(path: str):
        args = [*TRAIN, option, path]
        return run([MPIEXEC, "-n", "2", sys.executable, "-m", "distnn.train", *args], place)

    check_case(kind, place, TRAIN_OUTPUTS[option], option, command)


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("option", TRAIN_OUTPUTS)
def test_train_refuses_on_every_rank(shared_tmp, option, kind):
    """check_case on every rank of the session: rank 0 makes and checks the path."""
    suffix, made = TRAIN_OUTPUTS[option], []
    on_rank_0(lambda: made.append(Special(kind, shared_tmp, suffix)))
    path = kind if kind.startswith("/dev/") else str(shared_tmp / f"out{suffix}")
    try:
        before = [special.snapshot() for special in made]
        results = run_on_every_rank([*TRAIN, option, path], shared_tmp)
        assert path in assert_refused_as_one_job(results, option)
        assert [special.snapshot() for special in made] == before, f"{path} was replaced"
    finally:
        for special in made:
            special.close()
    leftovers = [p.name for p in shared_tmp.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("kind", [k for k in KINDS if not k.startswith("/dev/")])
@pytest.mark.parametrize("option", ["--save", "--metrics"])
def test_train_refuses_the_configuration_beside(work, place, option, kind):
    """``--save out.npz`` also writes out.toml: that path is checked as well."""
    suffix = {"--save": ".npz", "--metrics": ".jsonl"}[option]

    def command(path: str):
        return run_in_process([*TRAIN, option, str(place / f"out{suffix}")], place)

    check_case(kind, place, ".toml", f"the configuration written beside {option}", command)
    assert not (place / f"out{suffix}").exists()


# --- distnn.fit ------------------------------------------------------------------------

FIT_OUTPUTS = {
    "save": ".npz",
    "metrics": ".jsonl",
    "trace": ".json",
    "checkpoint_dir": "",
    "tensorboard": "",
}


def fit_in_process(option: str, path: str) -> subprocess.CompletedProcess:
    """``distnn.fit`` called here, its refusal shaped as a script's (``distnn: error:
    MESSAGE`` on stderr, the error's exit status): the API is what is tested, not a
    process. Any other exception fails the test with its traceback; a hang (a FIFO
    opened for writing) is ended by the test's timeout."""
    net = distnn.Network([6, 4, 3], seed=0)
    try:
        distnn.fit(net, SPEC, epochs=1, verbose=0, **{option: path})
    except DistnnError as e:
        return subprocess.CompletedProcess([], e.exit_code, "", f"distnn: error: {e}\n")
    return subprocess.CompletedProcess([], 0, "", "")


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("option", FIT_OUTPUTS)
def test_fit_refuses(place, monkeypatch, option, kind):
    monkeypatch.chdir(place)  # where a script would have run
    check_case(kind, place, FIT_OUTPUTS[option], option, lambda path: fit_in_process(option, path))


# --- evaluate, predict, plot -----------------------------------------------------------

SERIAL = {
    "evaluate --json": ("distnn.evaluate", ["m.npz", "--dataset", SPEC, "--json"], ".json"),
    "predict -o": ("distnn.predict", ["m.npz", "x.npy", "-o"], ".npy"),
    "plot -o": ("distnn.plot", ["m.jsonl", "-o"], ".png"),
    "plot -o (a trace)": ("distnn.plot", ["t.json", "-o"], ".svg"),
}


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", SERIAL)
def test_serial_commands_refuse(work, place, case, kind):
    module, args, suffix = SERIAL[case]
    if module == "distnn.plot":
        pytest.importorskip("matplotlib")

    def command(path: str):
        return run_in_process([*args, path], work, module)

    check_case(kind, place, suffix, args[-1], command)


# --- what is allowed -------------------------------------------------------------------


def test_predict_to_stdout_is_the_exception(work):
    """``-o -`` writes CSV to stdout, whatever stdout is (here /dev/null)."""
    command = [sys.executable, "-m", "distnn.predict", "m.npz", "x.npy", "-o", "-"]
    with open(os.devnull, "w") as devnull:
        try:
            result = subprocess.run(command, stdout=devnull, stderr=subprocess.PIPE,
                                    text=True, timeout=TIMEOUT, cwd=work)  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.fail("predict -o - hung")
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("option", ["--save", "--metrics"])
def test_a_link_to_a_regular_file_is_followed(work, place, option):
    """The file the link names is written; the link stays a link to it."""
    suffix = {"--save": ".npz", "--metrics": ".jsonl"}[option]
    target = place / "real" / f"target{suffix}"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = place / f"link{suffix}"
    link.symlink_to(target)
    result = run_in_process([*TRAIN, option, str(link)], place)
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() != b"old" and target.stat().st_size > 100
    leftovers = [p for p in target.parent.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_own_stdout_is_refused(work, place):
    """``--trace /dev/stdout`` with stdout a regular file: refused, the file kept."""
    log = place / "log.txt"
    log.write_text("")
    command = [sys.executable, "-m", "distnn.train", *TRAIN, "--trace", "/dev/stdout"]
    with open(log, "a") as out:
        try:
            result = subprocess.run(command, stdout=out, stderr=subprocess.PIPE, text=True,
                                    timeout=TIMEOUT, cwd=place)  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.fail("train --trace /dev/stdout hung")
    refused(result, "--trace", "/dev/stdout")
    assert "stdout" in error_lines(result.stderr)[0]
    assert log.read_text() == ""
