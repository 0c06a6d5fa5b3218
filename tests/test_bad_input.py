"""Bad input, as a matrix: options, data files and checkpoints, on one rank and on several.

Every case must end with a non-zero exit, one clear line naming the problem, no
traceback, no hang, and no existing model or checkpoint file touched. Every case runs on
one rank (in this process), and on every rank of the in-process MPI session (2 and 4
ranks: ``test_bad_input_on_every_rank``); one case of each family also runs as a real
``mpiexec -n 2`` job, for what only processes show (the launcher's exit status).
"""

import hashlib
from pathlib import Path

import numpy as np
import pytest
from conftest import MPIEXEC, launch
from on_every_rank import assert_refused_as_one_job, on_rank_0, run_on_every_rank, shared_folder

from distnn.io.checkpoints import list_checkpoints

SMALL = ["--dataset", "synthetic:60:4:3", "--hidden", "8", "--epochs", "1"]


class Crafted:
    """Unpickling this creates a file: proof that a loader ran pickled code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_data_files(root: Path) -> None:
    """The data files the cases below point at."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 4)), np.arange(20) % 3
    np.savez(root / "nokey.npz", x=x)
    np.savez(root / "strings.npz", x=np.array([["a"] * 4] * 20), y=y)
    np.savez(
        root / "ragged.npz",
        x=np.array([[1.0], [1.0, 2.0]], dtype=object),
        y=y[:2],
        allow_pickle=True,
    )
    np.savez(root / "nan.npz", x=np.where(x > 1.5, np.nan, x), y=y)
    np.savez(root / "inf.npz", x=np.where(x > 1.5, np.inf, x), y=y)
    np.savez(root / "negative.npz", x=x, y=y - 1)
    np.savez(root / "lengths.npz", x=x, y=y[:15])
    np.savez(root / "testwidth.npz", x=x, y=y, x_test=x[:5, :3], y_test=y[:5])
    np.savez(root / "empty.npz", x=np.empty((0, 4)), y=np.empty(0, int))
    (root / "text.npz").write_text("x,y\n1,2\n")


TRAINED = ["ck_trunc", "ck_arch", "ck_newer"]  # checkpoint folders of a real run, then spoilt


def spoil_checkpoints(root: Path) -> None:
    """Truncate, date in the future, pickle and misplace the trained checkpoints."""
    trunc = list_checkpoints(str(root / "ck_trunc"))
    for extra in trunc[1:]:
        Path(extra).unlink()
    data = Path(trunc[0]).read_bytes()
    Path(trunc[0]).write_bytes(data[: len(data) // 3])
    newer = list_checkpoints(str(root / "ck_newer"))
    with np.load(newer[0]) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["format_version"] = np.array(99)
    for path in newer:
        np.savez(path, **arrays)
    (root / "ck_pickle").mkdir()
    np.savez(
        root / "ck_pickle" / "checkpoint-000000001.npz",
        allow_pickle=True,
        params=np.array([Crafted(str(root / "pwned"))], dtype=object),
        format_version=np.array(1),
    )
    (root / "ck_existing").mkdir()
    (root / "ck_existing" / "checkpoint-000000005.npz").write_bytes(Path(newer[0]).read_bytes())
    np.savez(root / "model.npz", W1=np.ones((2, 2)))


CASES = [
    # options
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-5"], "--batch-size"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--activation", "swish"], "swish"),
    (["--loss", "hinge"], "hinge"),
    (["--schedule", "nope"], "nope"),
    (["--schedule", "os:getcwd"], "os:getcwd"),
    (["--checkpoint-every", "-1"], "--checkpoint-every"),
    (["--resume"], "--checkpoint-dir"),
    (["--hidden", "0"], "--hidden"),
    (["--dtype", "float16"], "float16"),
    (["--virtual-shards", "8"], "without --deterministic"),
    (["--deterministic", "--overlap"], "cannot be combined"),
    # data files
    (["--dataset", "absent.npz"], "absent.npz"),
    (["--dataset", "text.npz"], "text.npz"),
    (["--dataset", "nokey.npz"], "'y'"),
    (["--dataset", "strings.npz"], "dtype"),
    (["--dataset", "ragged.npz"], "object"),
    (["--dataset", "nan.npz"], "NaN"),
    (["--dataset", "inf.npz"], "infinite"),
    (["--dataset", "negative.npz"], "negative"),
    (["--dataset", "lengths.npz"], "15"),
    (["--dataset", "testwidth.npz"], "features"),
    (["--dataset", "empty.npz"], "empty"),
    # checkpoints
    (["--checkpoint-dir", "ck_trunc", "--resume"], "ck_trunc/checkpoint-"),
    (["--checkpoint-dir", "ck_arch", "--resume", "--hidden", "16"], "written by another run"),
    (["--checkpoint-dir", "ck_newer", "--resume"], "newer"),
    (["--checkpoint-dir", "ck_pickle", "--resume"], "ck_pickle/checkpoint-000000001.npz"),
    (["--checkpoint-dir", "ck_existing"], "--resume"),
    # outputs that could not be written after training
    (["--metrics", "/proc/no/such/m.jsonl"], "--metrics /proc/no/such/m.jsonl: no such directory"),
    (["--checkpoint-dir", "model.npz"], "are the same file"),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    write_data_files(root)
    for name in TRAINED:
        assert launch([*SMALL, "--checkpoint-dir", name], cwd=root).returncode == 0
    spoil_checkpoints(root)
    return root


@pytest.fixture(scope="module")
def shared_workdir():
    """``workdir``'s files, in a folder every rank of the MPI session sees."""
    with shared_folder() as root:
        on_rank_0(lambda: write_data_files(root))
        for name in TRAINED:
            results = run_on_every_rank([*SMALL, "--checkpoint-dir", name], root)
            assert [r.returncode for r in results] == [0] * len(results), results[0].stderr
        on_rank_0(lambda: spoil_checkpoints(root))
        yield root


def snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.npz"))
    }


def case_args(args: list[str]) -> list[str]:
    default_data = [] if "--dataset" in args else SMALL
    return [*default_data, *args, "--save", "model.npz"]


IDS = [" ".join(a) for a, _ in CASES]
# One case of each family (option, data file, checkpoint, output) as a real job.
AS_A_JOB = ["--lr -1", "--dataset nan.npz", "--checkpoint-dir ck_pickle --resume",
            "--checkpoint-dir model.npz"]  # fmt: skip


def check_refused(workdir: Path, args: list[str], words: str, ranks: int) -> None:
    before = snapshot(workdir)
    assert_refused_as_one_job([launch(case_args(args), ranks=ranks, cwd=workdir)], words)
    assert snapshot(workdir) == before, "an existing file was changed"
    assert not (workdir / "pwned").exists(), "a checkpoint ran pickled code"


@pytest.mark.parametrize("args, words", CASES, ids=IDS)
def test_bad_input(workdir, args, words):
    check_refused(workdir, args, words, ranks=1)  # one rank, in this process


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.parametrize("args, words", [CASES[IDS.index(i)] for i in AS_A_JOB], ids=AS_A_JOB)
def test_bad_input_ends_a_two_rank_job(workdir, args, words):
    check_refused(workdir, args, words, ranks=2)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("args, words", CASES, ids=IDS)
def test_bad_input_on_every_rank(shared_workdir, args, words):
    before = snapshot(shared_workdir)
    results = run_on_every_rank(case_args(args), shared_workdir)
    assert_refused_as_one_job(results, words)
    assert snapshot(shared_workdir) == before, "an existing file was changed"
    assert not (shared_workdir / "pwned").exists(), "a checkpoint ran pickled code"
