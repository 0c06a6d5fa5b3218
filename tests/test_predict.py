"""``python -m distnn.predict``: .npy/.npz/.csv in, .npy/.csv out, --classes, bad input."""

import gzip

import numpy as np
import pytest
from conftest import error_lines, launch

import distnn
from distnn.data.load import load_dataset

SPEC = "synthetic:300:6:3"


def predict_cli(args, cwd, ranks=1):
    return launch(args, ranks=ranks, cwd=cwd, module="distnn.predict")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A trained classifier (standardized inputs), its raw test inputs, and a regressor."""
    root = tmp_path_factory.mktemp("predict")
    args = ["--dataset", SPEC, "--hidden", "8", "--epochs", "2", "--standardize", "--quiet"]
    result = launch([*args, "--save", "model.npz"], cwd=root)
    assert result.returncode == 0, result.stderr
    x = load_dataset(SPEC).x_test * 3 + 1  # raw: standardization must be applied
    np.save(root / "x.npy", x)
    rng = np.random.default_rng(0)
    xr = rng.standard_normal((40, 6))
    np.savez(root / "reg.npz", x=xr, y=xr[:, :2])
    reg = ["--dataset", "reg.npz", "--hidden", "4", "--activations", "tanh,identity"]
    result = launch([*reg, "--epochs", "1", "--save", "reg_model.npz", "--quiet"], cwd=root)
    assert result.returncode == 0, result.stderr
    return root


def expected(work, classes=False):
    net = distnn.Network.load(str(work / "model.npz"))
    x = np.load(work / "x.npy")
    return net.predict_classes(x) if classes else net.predict(x)


def no_temp_files(folder):
    return not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


def test_npy_round_trip(work):
    result = predict_cli(["model.npz", "x.npy", "-o", "out.npy"], work)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "wrote out.npy: 60 rows × 3 outputs"
    out = np.load(work / "out.npy")
    assert out.dtype == np.float32 and out.shape == (60, 3)
    np.testing.assert_array_equal(out, expected(work))
    assert no_temp_files(work)


@pytest.mark.parametrize("header", [True, False])
@pytest.mark.parametrize("gz", [False, True])
def test_csv_round_trip(work, header, gz):
    x = np.load(work / "x.npy")
    name = "in.csv.gz" if gz else "in.csv"
    text = "a,b,c,d,e,f\n" if header else ""
    text += "".join(",".join(repr(float(v)) for v in row) + "\n" for row in x)
    if gz:
        (work / name).write_bytes(gzip.compress(text.encode()))
    else:
        (work / name).write_text(text)
    result = predict_cli(["model.npz", name, "-o", "out.csv"], work)
    assert result.returncode == 0, result.stderr
    lines = (work / "out.csv").read_text().splitlines()
    assert lines[0] == "output_0,output_1,output_2" and len(lines) == 61
    out = np.loadtxt(work / "out.csv", delimiter=",", skiprows=1, dtype=np.float32)
    np.testing.assert_array_equal(out, expected(work))  # %.9g reads back exactly


def test_classes(work):
    result = predict_cli(["model.npz", "x.npy", "-o", "c.npy", "--classes"], work)
    assert result.returncode == 0, result.stderr
    assert "60 class indices" in result.stdout
    classes = np.load(work / "c.npy")
    assert classes.dtype == np.int64
    np.testing.assert_array_equal(classes, expected(work, classes=True))
    result = predict_cli(["model.npz", "x.npy", "-o", "c.csv", "--classes"], work)
    assert result.returncode == 0, result.stderr
    lines = (work / "c.csv").read_text().splitlines()
    assert lines[0] == "class" and [int(v) for v in lines[1:]] == classes.tolist()


def test_npz_and_image_shaped_inputs(work):
    x = np.load(work / "x.npy")
    np.savez(work / "in.npz", x=x.reshape(60, 2, 3), y=np.zeros(60))
    result = predict_cli(["model.npz", "in.npz", "-o", "from_npz.npy"], work)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(work / "from_npz.npy"), expected(work))


def test_under_mpiexec_rank_0_writes_once(work):
    result = predict_cli(["model.npz", "x.npy", "-o", "mpi.npy"], work, ranks=2)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("wrote") == 1
    np.testing.assert_array_equal(np.load(work / "mpi.npy"), expected(work))


def test_never_overwrites_the_input(work):
    before = (work / "x.npy").read_bytes()
    for target in ("x.npy", "./x.npy"):
        result = predict_cli(["model.npz", "x.npy", "-o", target], work)
        assert result.returncode == 2
        assert "would overwrite the input" in result.stderr
    (work / "link.npy").unlink(missing_ok=True)
    (work / "link.npy").symlink_to(work / "x.npy")
    result = predict_cli(["model.npz", "link.npy", "-o", "x.npy"], work)
    assert result.returncode == 2 and "refusing" in result.stderr
    assert (work / "x.npy").read_bytes() == before
    assert no_temp_files(work)


def bad_files(work):
    (work / "text.csv").write_text("a,b,c,d,e,f\n1,2,3,4,5,6\n1,2,x,4,5,6\n")
    (work / "ragged.csv").write_text("1,2,3,4,5,6\n1,2,3\n")
    (work / "header_only.csv").write_text("a,b,c,d,e,f\n")
    np.save(work / "five.npy", np.zeros((4, 5)))
    (work / "seven.csv").write_text("a,b,c,d,e,f,label\n1,2,3,4,5,6,0\n")
    np.save(work / "nan.npy", np.full((4, 6), np.nan))
    np.save(work / "strings.npy", np.array([["a"] * 6]))
    (work / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    (work / "x.txt").write_text("1,2,3,4,5,6\n")


BAD = {
    "missing model": (["nothere.npz", "x.npy", "-o", "o.npy"], "no such model file"),
    "missing input": (["model.npz", "nothere.npy", "-o", "o.npy"], "nothere.npy: no such file"),
    "input kind": (["model.npz", "x.txt", "-o", "o.npy"], "inputs must be"),
    "output kind": (["model.npz", "x.npy", "-o", "o.txt"], "output must be .npy or .csv"),
    "features": (
        ["model.npz", "five.npy", "-o", "o.npy"],
        "5 features per row, but the model takes 6",
    ),
    "label column": (["model.npz", "seven.csv", "-o", "o.npy"], "takes 6 (a label column?"),
    "not a number": (
        ["model.npz", "text.csv", "-o", "o.npy"],
        "line 3, column 'c' (index 2): non-numeric value 'x'",
    ),
    "ragged": (["model.npz", "ragged.csv", "-o", "o.npy"], "line 2 has 3 cells but line 1 has 6"),
    "no rows": (["model.npz", "header_only.csv", "-o", "o.npy"], "no rows"),
    "nan": (["model.npz", "nan.npy", "-o", "o.npy"], "24 NaN or infinite values"),
    "strings": (["model.npz", "strings.npy", "-o", "o.npy"], "non-numeric"),
    "broken": (["model.npz", "broken.npy", "-o", "o.npy"], "broken.npy: .npy format version"),
    "classes": (["reg_model.npz", "x.npy", "-o", "o.npy", "--classes"], "not a classifier"),
    "folder": (["model.npz", "x.npy", "-o", "no/such/o.npy"], "no such directory"),
    "option": (["model.npz", "x.npy"], "required: -o/--output"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line(work, case):
    bad_files(work)
    args, message = BAD[case]
    result = predict_cli(args, work)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (work / "o.npy").exists() and no_temp_files(work)
