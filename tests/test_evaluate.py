"""``python -m distnn.evaluate`` and ``distnn.evaluate.evaluate``: against a hand
computation from the saved weights, the same at 1, 2 and 3 ranks, and bad input."""

import json

import numpy as np
import pytest
from conftest import MPIEXEC, launch
from on_every_rank import assert_refused_as_one_job, on_rank_0, run_on_every_rank, shared_folder

import distnn
from distnn.data.load import load_dataset
from distnn.engine.metrics import confusion_matrix, per_class
from distnn.parallel.evaluation import EVAL_CHUNK, _chunks
from distnn.parallel.reducers import shard_bounds

SPEC = "synthetic:300:6:3"


def evaluate_cli(args, ranks=1, cwd=None):
    return launch(args, ranks=ranks, cwd=cwd, module="distnn.evaluate")


COMMON = ["--dataset", SPEC, "--hidden", "8", "--epochs", "2", "--quiet"]
MODELS = {
    "squared.npz": ["--standardize", "--activation", "sigmoid"],
    "xent.npz": ["--loss", "cross-entropy", "--activation", "tanh"],
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two small trained models: squared loss on standardized inputs, and cross-entropy."""
    root = tmp_path_factory.mktemp("evaluate")
    for name, extra in MODELS.items():
        result = launch([*COMMON, *extra, "--save", name], cwd=root)
        assert result.returncode == 0, result.stderr
    return root


def by_hand(path, x, labels):
    """Mean loss and confusion matrix from the .npz alone, in float64 NumPy."""
    with np.load(path) as f:
        a = x.astype(np.float64)
        if "input_mean" in f.files:
            a = (a - f["input_mean"]) / f["input_std"]
        for ell, name in enumerate(f["activations"], start=1):
            z = a @ f[f"W{ell}"].astype(np.float64).T + f[f"b{ell}"]
            if name == "sigmoid":
                a = 1 / (1 + np.exp(-z))
            elif name == "tanh":
                a = np.tanh(z)
            else:
                assert name == "softmax"
                e = np.exp(z - z.max(axis=1, keepdims=True))
                a = e / e.sum(axis=1, keepdims=True)
        y = np.eye(a.shape[1])[labels]
        if str(f["loss"]) == "squared":
            loss = ((a - y) ** 2).sum(axis=1).mean()
        else:
            loss = -(y * np.log(a)).sum(axis=1).mean()
    cm = np.zeros((a.shape[1], a.shape[1]), int)
    for t, p in zip(labels, a.argmax(axis=1), strict=True):
        cm[t, p] += 1
    return loss, cm


@pytest.mark.parametrize("model", ["squared.npz", "xent.npz"])
def test_matches_a_hand_computation(models, model):
    data = load_dataset(SPEC)
    loss, cm = by_hand(models / model, data.x_test, data.labels_test)
    result = evaluate_cli([model, "--dataset", SPEC, "--json", "ev.json"], cwd=models)
    assert result.returncode == 0, result.stderr
    ev = json.loads((models / "ev.json").read_text())
    assert ev["split"] == "test" and ev["samples"] == len(data.x_test) == 60
    assert ev["confusion_matrix"] == cm.tolist()
    assert ev["loss"] == pytest.approx(loss, rel=1e-5)
    assert ev["accuracy"] == np.trace(cm) / cm.sum()
    for k, record in enumerate(ev["per_class"]):
        assert record["support"] == cm[k].sum()
        if cm[:, k].sum():
            assert record["precision"] == pytest.approx(cm[k, k] / cm[:, k].sum())
        assert record["recall"] == pytest.approx(cm[k, k] / cm[k].sum())
    # The printed report says the same.
    assert f"accuracy {ev['accuracy']:.2%}" in result.stdout
    assert "precision" in result.stdout and "true \\ pred" in result.stdout

    # The Python API gives the same numbers.
    api = distnn.evaluate(distnn.Network.load(str(models / model)), data.x_test, data.labels_test)
    assert api["confusion_matrix"] == ev["confusion_matrix"]
    assert api["loss"] == pytest.approx(ev["loss"], rel=1e-12)


@pytest.mark.parametrize("ranks", [2, 3])
def test_the_same_on_several_ranks(models, ranks):
    """Ragged shards crossing the train/test boundary (360 rows, --split all)."""
    results = {}
    for n in (1, ranks):
        args = ["xent.npz", "--dataset", SPEC, "--split", "all", "--json", f"ev{n}.json"]
        result = evaluate_cli(args, ranks=n, cwd=models)
        assert result.returncode == 0, result.stderr
        results[n] = json.loads((models / f"ev{n}.json").read_text())
        assert results[n]["ranks"] == n and results[n]["samples"] == 360
        assert result.stdout.count("confusion matrix") == 1  # printed by rank 0 only
    assert results[ranks]["confusion_matrix"] == results[1]["confusion_matrix"]
    assert results[ranks]["per_class"] == results[1]["per_class"]
    # Per-chunk loss slots added in a fixed order: the same bits at any number of ranks.
    assert results[ranks]["loss"] == results[1]["loss"]


def test_splits(models):
    """Without --split: the test split; train and all count their rows."""
    for split, rows in (("train", 300), ("all", 360)):
        result = evaluate_cli(["squared.npz", "--dataset", SPEC, "--split", split], cwd=models)
        assert result.returncode == 0, result.stderr
        assert f"{split} split: {rows} samples" in result.stdout
    np.savez(models / "notest.npz", x=np.zeros((7, 6)), y=np.arange(7) % 3)
    result = evaluate_cli(["squared.npz", "--dataset", "notest.npz"], cwd=models)
    assert result.returncode == 0, result.stderr
    assert "no test split" in result.stderr and "train split: 7 samples" in result.stdout


def test_chunks_cover_the_parts_once():
    sizes = (5, 0, 2 * EVAL_CHUNK + 7, 3)
    parts = [(np.zeros((n, 1)), None, None) for n in sizes]
    chunks = _chunks(parts)
    for size in (1, 2, 3, 4, 16):
        rows = []
        for rank in range(size):
            for c in range(*shard_bounds(len(chunks), rank, size)):
                part, start, stop = chunks[c]
                index = next(i for i, p in enumerate(parts) if p is part)
                rows += range(sum(sizes[:index]) + start, sum(sizes[:index]) + stop)
        assert rows == list(range(sum(sizes)))


def test_metrics_math():
    cm = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0]), 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    records = per_class(cm)
    assert records[0]["precision"] == 0.5 and records[0]["recall"] == 0.5
    assert records[1]["precision"] == 0.5 and records[1]["recall"] == 1.0
    assert records[2]["precision"] == 1.0 and records[2]["recall"] == pytest.approx(2 / 3)
    # Class 3: never seen, never predicted: zeros, as scikit-learn's zero_division=0.
    assert records[3] == {"class": 3, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_regression_model(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 3))
    np.savez(tmp_path / "reg.npz", x=x, y=x[:, :2] * 0.5, x_test=x[:20], y_test=x[:20, :2] * 0.5)
    args = ["--dataset", "reg.npz", "--hidden", "4", "--activations", "tanh,identity"]
    result = launch([*args, "--epochs", "2", "--save", "reg_model.npz"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = evaluate_cli(
        ["reg_model.npz", "--dataset", "reg.npz", "--json", "r.json"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    ev = json.loads((tmp_path / "r.json").read_text())
    assert ev["accuracy"] is None and "confusion_matrix" not in ev
    net = distnn.Network.load(str(tmp_path / "reg_model.npz"))
    out = net.predict(x[:20]).astype(np.float64)
    assert ev["loss"] == pytest.approx(((out - x[:20, :2] * 0.5) ** 2).sum(axis=1).mean(), rel=1e-5)
    # A regression model against class labels is refused.
    result = evaluate_cli(["reg_model.npz", "--dataset", "synthetic:30:3:2"], cwd=tmp_path)
    assert result.returncode == 2 and "class labels" in result.stderr


BAD = {
    "missing model": (["nothere.npz", "--dataset", SPEC], "no such model file"),
    "not a model": (["text.npz", "--dataset", SPEC], "not a readable model file"),
    "bad dataset": (["squared.npz", "--dataset", "synthetic:x"], "unknown dataset spec"),
    "missing dataset": (["squared.npz", "--dataset", "nothere.npz"], "no such file"),
    "features": (
        ["squared.npz", "--dataset", "synthetic:300:5:3"],
        "5 features per row, but the model takes 6",
    ),
    "classes": (["squared.npz", "--dataset", "synthetic:300:6:4"], "the model has 3 classes"),
    "no test split": (["squared.npz", "--dataset", "nt.npz", "--split", "test"], "no test split"),
    "json folder": (["squared.npz", "--dataset", SPEC, "--json", "no/dir/e.json"], "no such"),
    "json over model": (
        ["squared.npz", "--dataset", SPEC, "--json", "squared.npz"],
        "would overwrite the input model squared.npz",
    ),
    "option": (["squared.npz", "--dataset", SPEC, "--split", "val"], "invalid choice"),
    "no dataset": (["squared.npz"], "--dataset"),
}


def bad_files(root) -> None:
    (root / "text.npz").write_text("not a zip\n")
    np.savez(root / "nt.npz", x=np.zeros((4, 6)), y=np.arange(4) % 3)


def check_refused(models, case: str, ranks: int) -> None:
    args, message = BAD[case]
    bad_files(models)
    model = (models / "squared.npz").read_bytes()
    result = evaluate_cli(args, ranks=ranks, cwd=models)
    assert (models / "squared.npz").read_bytes() == model
    assert_refused_as_one_job([result], message)
    assert result.stdout == ""


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line(models, case):
    check_refused(models, case, ranks=1)  # one rank, in this process


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.parametrize("case", ["not a model", "json over model"])
def test_bad_input_is_one_line_on_two_ranks(models, case):
    """As a real two-rank job: an input refused, and an output that would overwrite it."""
    check_refused(models, case, ranks=2)


@pytest.fixture(scope="module")
def shared_models():
    """``models``, trained on every rank of the MPI session into a folder all see."""
    with shared_folder() as root:
        for name, extra in MODELS.items():
            results = run_on_every_rank([*COMMON, *extra, "--save", name], root)
            assert [r.returncode for r in results] == [0] * len(results), results[0].stderr
        on_rank_0(lambda: bad_files(root))
        yield root


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_on_every_rank(shared_models, case):
    args, message = BAD[case]
    model = (shared_models / "squared.npz").read_bytes()
    results = run_on_every_rank(args, shared_models, "distnn.evaluate")
    assert (shared_models / "squared.npz").read_bytes() == model
    assert_refused_as_one_job(results, message)
    assert not any(r.stdout for r in results), results[0].stdout
