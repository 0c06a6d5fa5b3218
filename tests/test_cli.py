"""The CLI as a user runs it: real processes, real mpiexec, each under a timeout."""

import numpy as np
import pytest
from conftest import MPIEXEC, error_lines, launch
from on_every_rank import assert_refused_as_one_job, run_on_every_rank

import distnn
from distnn.io.metrics_log import epoch_records


def test_default_run_reaches_95_percent_on_4_ranks(tmp_path):
    result = launch(["--metrics", "m.jsonl", "--save", "model.npz"], ranks=4, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = epoch_records(str(tmp_path / "m.jsonl"))
    assert [r["epoch"] for r in records] == list(range(1, len(records) + 1))
    for key in ("loss", "test_loss", "accuracy", "samples_per_sec", "elapsed_s"):
        assert key in records[-1]
    assert records[-1]["accuracy"] >= 0.95
    assert records[-1]["loss"] < records[0]["loss"]
    # One stream for the run's readable output: the summary comes after the last epoch.
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("done:") and "4 rank(s)" in lines[-1], lines
    epoch_lines = [i for i, line in enumerate(lines) if line.startswith("epoch ")]
    assert lines[epoch_lines[-1]].startswith(f"epoch {len(records)}/{len(records)}"), lines
    assert all(line.startswith("note: ") for line in lines[epoch_lines[-1] + 1 : -1]), lines
    assert result.stderr == "", result.stderr

    # The model is plain NumPy: no distnn needed to read it.
    with np.load(tmp_path / "model.npz", allow_pickle=False) as f:
        assert f["W1"].shape == (32, 64) and f["W2"].shape == (10, 32)
        assert list(f["activations"]) == ["sigmoid", "sigmoid"]
    net = distnn.Network.load(str(tmp_path / "model.npz"))
    with np.load(tmp_path / "model.npz") as f:
        np.testing.assert_array_equal(net.weights[1], f["W2"])


@pytest.mark.parametrize("ranks", [2, 4])
def test_weights_do_not_depend_on_the_number_of_ranks(tmp_path, ranks):
    common = [
        "--dataset",
        "synthetic:600:20:4",
        "--hidden",
        "16",
        "--activation",
        "tanh",
        "--schedule",
        "sgd",
        "--lr",
        "0.1",
        "--batch-size",
        "50",
        "--epochs",
        "3",
        "--quiet",
    ]
    one = launch([*common, "--save", "one.npz"], ranks=1, cwd=tmp_path)
    many = launch([*common, "--save", "many.npz"], ranks=ranks, cwd=tmp_path)
    assert one.returncode == 0 and many.returncode == 0, one.stderr + many.stderr
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "many.npz")
    for key in ("W1", "b1", "W2", "b2"):
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=2e-6)


def test_single_process_refuses_a_world_of_one_started_as_many():
    result = launch(["--epochs", "1"], env={"SLURM_STEP_NUM_TASKS": "4"})
    assert result.returncode == 2
    assert "world of 1" in error_lines(result.stderr)[0]


def test_help_prints_once_and_exits_zero():
    result = launch(["--help"], ranks=2)
    assert result.returncode == 0
    assert result.stdout.count("usage:") == 1 and "--batch-size" in result.stdout


BAD_OPTIONS = [
    (["--bogus"], "unrecognized arguments"),
    (["--batch-size", "0"], "--batch-size"),
    (["--epochs", "-1"], "--epochs"),
    (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--activation", "swish"], "swish"),
    (["--loss", "hinge"], "hinge"),
    (["--schedule", "nosuch"], "nosuch"),
    (["--schedule", "no_such_module:Thing"], "no_such_module"),
    (["--hidden", "3,x"], "--hidden"),
    (["--dataset", "missing.npz"], "missing.npz"),
    (["--dataset", "synthetic:10"], "synthetic"),
    (["--lr-schedule", "sometimes"], "sometimes"),
]
BAD_IDS = [" ".join(args) for args, _ in BAD_OPTIONS]


AS_A_JOB = ["--bogus", "--dataset missing.npz"]  # argparse's refusal, and a file's


@pytest.mark.parametrize("args, words", BAD_OPTIONS, ids=BAD_IDS)
def test_bad_input_one_line_exit_2(args, words, tmp_path):
    assert_refused_as_one_job([launch(args, cwd=tmp_path)], words)  # one rank, in process


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.parametrize(
    "args, words", [BAD_OPTIONS[BAD_IDS.index(i)] for i in AS_A_JOB], ids=AS_A_JOB
)
def test_bad_input_one_line_nonzero_exit_on_every_rank(args, words, tmp_path):
    """As a real two-rank job."""
    assert_refused_as_one_job([launch(args, ranks=2, cwd=tmp_path)], words)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("args, words", BAD_OPTIONS, ids=BAD_IDS)
def test_bad_input_on_every_rank(args, words, shared_tmp):
    assert_refused_as_one_job(run_on_every_rank(args, shared_tmp), words)


def test_user_schedule_loaded_by_module_path(tmp_path):
    (tmp_path / "myrules.py").write_text(
        "import numpy as np\n"
        "from distnn.engine.schedules import GradientUpdateSchedule\n\n"
        "class SignSGD(GradientUpdateSchedule):\n"
        "    calls = 0\n"
        "    def _step(self, grad, lr, out):\n"
        "        np.sign(grad, out=out)\n"
        "        out *= lr\n"
    )
    args = [
        "--schedule",
        "myrules:SignSGD",
        "--lr",
        "0.005",
        "--epochs",
        "5",
        "--metrics",
        "m.jsonl",
    ]
    result = launch(args, ranks=2, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    records = epoch_records(str(tmp_path / "m.jsonl"))
    assert "myrules:SignSGD" in result.stdout
    assert records[-1]["loss"] < 0.7 * records[0]["loss"]
