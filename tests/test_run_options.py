"""What users reach for around the loop: stopping conditions, config files, standardization."""

import re
import tomllib

import numpy as np
import pytest
from conftest import error_lines, launch

from distnn import Network
from distnn.io.metrics_log import epoch_records

SMALL = ["--dataset", "synthetic:400:8:3", "--hidden", "16", "--batch-size", "40"]


def records(path):
    return epoch_records(str(path))


@pytest.mark.parametrize("ranks", [1, 3])
def test_target_loss_stops_every_rank_at_the_same_epoch(tmp_path, ranks):
    result = launch(
        [*SMALL, "--epochs", "500", "--target-loss", "0.3", "--lr", "0.05", "--metrics", "m.jsonl"],
        ranks=ranks,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    losses = [r["loss"] for r in records(tmp_path / "m.jsonl")]
    assert losses[-1] <= 0.3 < min(losses[:-1]), losses
    assert "--target-loss" in result.stdout


def test_max_time_stops_in_time_and_checkpoints(tmp_path):
    result = launch(
        [
            *SMALL,
            "--epochs",
            "100000",
            "--max-time",
            "1.5",
            "--checkpoint-dir",
            "ck",
            "--save",
            "m.npz",
        ],
        ranks=2,
        cwd=tmp_path,
    )
    # "In time": it stopped on the limit (100000 epochs would outlast launch's hang
    # guard), not before it, and checkpointed the step it stopped at. How far past the
    # limit it ran depends on the machine's load and is not asserted.
    assert result.returncode == 0, result.stderr
    stopped = re.search(r"--max-time 1\.5 s reached at step (\d+)", result.stdout)
    assert stopped, result.stderr
    assert (tmp_path / "m.npz").exists()
    names = [p.name for p in (tmp_path / "ck").iterdir()]
    assert f"checkpoint-{int(stopped[1]):09d}.npz" in names, names
    seconds = float(re.search(r"\| ([\d.]+) s: start-up", result.stdout)[1])
    assert seconds >= 1.5, "stopped before the limit"


def test_early_stopping_keeps_the_best_weights(tmp_path):
    args = [
        *SMALL,
        "--epochs",
        "300",
        "--lr",
        "0.05",
        "--val-fraction",
        "0.25",
        "--patience",
        "3",
        "--metrics",
        "m.jsonl",
        "--save",
        "m.npz",
    ]
    result = launch(args, ranks=2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = records(tmp_path / "m.jsonl")
    best = min(range(len(rows)), key=lambda i: rows[i]["val_loss"])
    assert len(rows) - 1 - best == 3, "stopped after exactly --patience epochs without gain"
    assert f"best weights from epoch {best + 1}" in result.stdout


def test_config_file_round_trip_and_command_line_wins(tmp_path):
    first = launch([*SMALL, "--epochs", "3", "--save", "a.npz", "--seed", "7"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    written = tomllib.loads((tmp_path / "a.toml").read_text())
    assert written["seed"] == 7 and written["hidden"] == [16] and written["epochs"] == 3
    (tmp_path / "a.toml").rename(tmp_path / "run.toml")
    again = launch(["--config", "run.toml", "--save", "b.npz"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert all(np.array_equal(a[k], b[k]) for k in ("W1", "W2", "b1", "b2"))
    shown = launch(["--config", "run.toml", "--epochs", "9", "--print-config"], cwd=tmp_path)
    assert tomllib.loads(shown.stdout)["epochs"] == 9


@pytest.mark.parametrize(
    "content, words",
    [
        ("bogus = 1\n", "unknown option 'bogus'"),
        ("batch-size = 'x'\n", "invalid int value"),
        ("epochs = [\n", "not a valid TOML"),
        ("batch_size = 0\n", "--batch-size must be at least 1, got 0"),
        ("progress = 'fancy'\n", "unknown --progress 'fancy'"),
        ("spelling = 'fit'\n", "unknown option 'spelling'"),  # not an option
    ],
)
def test_bad_config_file(tmp_path, content, words):
    (tmp_path / "bad.toml").write_text(content)
    result = launch(["--config", "bad.toml"], ranks=2, cwd=tmp_path)
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    assert "bad.toml" in line and words in line


def test_standardization_is_fitted_on_training_data_and_saved(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(50.0, 10.0, (300, 5))
    y = (x[:, 0] > 50).astype(int)
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x[:50] + 1000.0, y_test=y[:50])
    result = launch(
        ["--dataset", "d.npz", "--standardize", "--epochs", "2", "--save", "m.npz"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    net = Network.load(str(tmp_path / "m.npz"))
    np.testing.assert_allclose(net.input_mean, x.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(net.input_std, x.std(axis=0), rtol=1e-4)
    manual = (x[:7] - x.mean(axis=0)) / x.std(axis=0)
    plain = Network(net.sizes, net.activation_names)
    plain.params[...] = net.params
    np.testing.assert_allclose(net.predict(x[:7]), plain.forward(manual), rtol=1e-4, atol=1e-5)


def test_label_column_for_csv(tmp_path):
    rows = ["klass,a,b"] + [f"{i % 2},{i % 2 + 0.1 * i},{0.5}" for i in range(40)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    ok = launch(["--dataset", "d.csv", "--label-column", "klass", "--epochs", "1"], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    bad = launch(["--dataset", "d.csv", "--label-column", "nope", "--epochs", "1"], cwd=tmp_path)
    assert bad.returncode == 2 and "nope" in error_lines(bad.stderr)[0]
