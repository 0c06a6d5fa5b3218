"""``python -m distnn.plot``: a PNG of two runs, matplotlib missing, bad metrics files."""

import json
import subprocess
import sys

import pytest
from conftest import error_lines, launch

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def plot_cli(args, cwd):
    return launch(args, cwd=cwd, module="distnn.plot")


def write_metrics(path, epochs, accuracy=True, val=False):
    """A --metrics file as distnn.train writes it."""
    with open(path, "w") as f:
        for e in range(1, epochs + 1):
            record = {"epoch": e, "loss": 1.0 / e, "samples_per_sec": 1e5 + e, "elapsed_s": e}
            if accuracy:
                record |= {"test_loss": 1.2 / e, "accuracy": 1 - 0.5 / e}
            if val:
                record |= {"val_loss": 1.1 / e, "val_accuracy": 1 - 0.4 / e}
            f.write(json.dumps(record) + "\n")


def test_two_runs_make_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    train = ["--dataset", "synthetic:300:6:3", "--hidden", "8", "--epochs", "3", "--quiet"]
    result = launch([*train, "--metrics", "real.jsonl"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    write_metrics(tmp_path / "other.jsonl", 5, val=True)
    args = ["real.jsonl", "other.jsonl", "--labels", "trained,hand-made", "-o", "c.png"]
    result = plot_cli([*args, "--title", "two runs"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "wrote c.png: 2 run(s), 3, 5 epoch(s)"
    data = (tmp_path / "c.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_svg_and_a_run_without_accuracy(tmp_path):
    pytest.importorskip("matplotlib")
    write_metrics(tmp_path / "reg.jsonl", 1, accuracy=False)
    result = plot_cli(["reg.jsonl", "-o", "r.svg"], tmp_path)
    assert result.returncode == 0, result.stderr
    svg = (tmp_path / "r.svg").read_text()
    assert "<svg" in svg and "no accuracy recorded" in svg


def test_matplotlib_missing(tmp_path):
    """With matplotlib unimportable: exit 2 and one line saying how to install it."""
    write_metrics(tmp_path / "m.jsonl", 2)
    wrapper = tmp_path / "no_matplotlib.py"
    wrapper.write_text(
        "import runpy, sys\n"
        "sys.modules['matplotlib'] = None  # import matplotlib now raises ImportError\n"
        "sys.argv[0] = 'distnn.plot'\n"
        "runpy.run_module('distnn.plot', run_name='__main__', alter_sys=True)\n"
    )
    result = subprocess.run(
        [sys.executable, str(wrapper), "m.jsonl", "-o", "c.png"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines == error_lines(result.stderr) and len(lines) == 1
    assert "matplotlib" in lines[0] and "pip install 'distnn[plot]'" in lines[0]
    assert not (tmp_path / "c.png").exists()


BAD = {
    "missing": ("nothere.jsonl", None, "nothere.jsonl: no such file"),
    "empty": ("m.jsonl", "", "m.jsonl: no epoch records (empty file)"),
    "blank lines": ("m.jsonl", "\n  \n", "no epoch records"),
    "not json": ("m.jsonl", '{"epoch": 1, "loss": 1}\n{"epoch": 2,\n', "m.jsonl line 2: not JSON"),
    "not an object": ("m.jsonl", "[1, 2]\n", "m.jsonl line 1: expected a JSON object"),
    "no epoch": ("m.jsonl", '{"loss": 1}\n', "m.jsonl line 1: no integer 'epoch'"),
    "no loss": ("m.jsonl", '{"epoch": 1}\n', "m.jsonl line 1: no numeric 'loss'"),
    "text value": (
        "m.jsonl",
        '{"epoch": 1, "loss": 1, "accuracy": "high"}\n',
        "m.jsonl line 1: 'accuracy' is 'high', not a number",
    ),
    "binary": ("m.jsonl", b"\xff\xfe\x00", "m.jsonl line 1: not UTF-8 text"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_metrics_file_is_one_line(tmp_path, case):
    name, content, message = BAD[case]
    if isinstance(content, bytes):
        (tmp_path / name).write_bytes(content)
    elif content is not None:
        (tmp_path / name).write_text(content)
    write_metrics(tmp_path / "good.jsonl", 2)
    result = plot_cli(["good.jsonl", name, "-o", "c.png"], tmp_path)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "c.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["m.jsonl", "-o", "c.jpeg"], "the image must be .png, .svg, .pdf"),
        (["m.jsonl", "-o", "c.png", "--labels", "a,b"], "--labels gives 2 names for 1"),
        (["m.jsonl"], "required: -o/--output"),
        (["m.jsonl", "-o", "no/dir/c.png"], "no such directory"),
    ],
)
def test_bad_options_are_one_line(tmp_path, args, message):
    write_metrics(tmp_path / "m.jsonl", 2)
    result = plot_cli(args, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
