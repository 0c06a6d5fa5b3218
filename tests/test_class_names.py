"""Class labels given as names in a CSV: train, evaluate and predict speak the names."""

import json

import numpy as np
from conftest import launch

from distnn.data import load_dataset
from distnn.engine.network import Network

SPECIES = ("setosa", "versicolor", "virginica")


def write_iris_like(path, rows=150, seed=0, species=SPECIES):
    """Four measurements per flower, one cluster per species, the species last."""
    rng = np.random.default_rng(seed)
    lines = ["sepal_length,sepal_width,petal_length,petal_width,species"]
    for i in range(rows):
        k = i % len(species)
        x = rng.normal(2.0 * SPECIES.index(species[k]), 0.3, 4)
        lines.append(",".join(f"{v:.3f}" for v in x) + f",{species[k]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_names_map_to_sorted_indices_and_test_files_use_the_models_mapping(tmp_path):
    data = load_dataset(str(write_iris_like(tmp_path / "iris.csv")))
    assert data.class_names == SPECIES and data.n_classes == 3
    first = (tmp_path / "iris.csv").read_text().splitlines()[1].split(",")[-1]
    assert data.labels[0] == SPECIES.index(first)
    # A file holding only some of the classes keeps the model's indices.
    only = write_iris_like(tmp_path / "v.csv", 10, species=("virginica",))
    part = load_dataset(str(only), class_names=SPECIES)
    assert set(part.labels.tolist()) == {2} and part.n_classes == 3


def test_iris_round_trip_train_evaluate_predict(tmp_path):
    write_iris_like(tmp_path / "train.csv")
    write_iris_like(tmp_path / "test.csv", 60, seed=1)
    args = ["--dataset", "train.csv", "--hidden", "8", "--epochs", "30", "--lr", "0.05"]
    trained = launch([*args, "--save", "m.npz", "--quiet"], ranks=2, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    with np.load(tmp_path / "m.npz", allow_pickle=False) as f:  # plain strings, no pickle
        assert list(f["class_names"]) == list(SPECIES)
    assert Network.load(str(tmp_path / "m.npz")).class_names == list(SPECIES)

    ev = ["m.npz", "--dataset", "test.csv", "--split", "train", "--json", "ev.json"]
    evaluated = launch(ev, ranks=2, cwd=tmp_path, module="distnn.evaluate")
    assert evaluated.returncode == 0, evaluated.stderr
    for name in SPECIES:
        assert name in evaluated.stdout
    report = json.loads((tmp_path / "ev.json").read_text())
    assert report["class_names"] == list(SPECIES)
    assert [r["name"] for r in report["per_class"]] == list(SPECIES)
    assert report["accuracy"] > 0.9

    rows = (tmp_path / "test.csv").read_text().splitlines()
    (tmp_path / "x.csv").write_text("\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n")
    truth = [r.rsplit(",", 1)[1] for r in rows[1:]]
    for out in ("classes.csv", "classes.npy"):
        predicted = launch(["m.npz", "x.csv", "-o", out, "--classes"], cwd=tmp_path,
                           module="distnn.predict")  # fmt: skip
        assert predicted.returncode == 0, predicted.stderr
        assert "60 class names" in predicted.stdout
    names = (tmp_path / "classes.csv").read_text().splitlines()
    assert names[0] == "class" and set(names[1:]) <= set(SPECIES)
    assert np.mean(np.array(names[1:]) == np.array(truth)) > 0.9
    assert np.load(tmp_path / "classes.npy").tolist() == names[1:]


def test_a_model_without_class_names_still_loads_and_predicts_indices(tmp_path):
    net = Network([4, 3], loss="cross-entropy")
    arrays = net.to_arrays()
    assert "class_names" not in arrays
    old = Network.from_arrays(arrays)
    assert old.class_names is None and old.predict_classes(np.zeros((2, 4))).dtype.kind == "i"


def test_an_empty_class_name_is_one_line_naming_the_line(tmp_path):
    path = write_iris_like(tmp_path / "iris.csv", 6)
    lines = path.read_text().splitlines()
    lines[4] = lines[4].rsplit(",", 1)[0] + ", "
    path.write_text("\n".join(lines) + "\n")
    result = launch(["--dataset", "iris.csv"], cwd=tmp_path)
    assert result.returncode == 2
    assert "iris.csv: line 5, column 'species' (index 4): empty class name" in result.stderr
