"""What a run shows and records: progress lines in a log file, the metrics header,
wall time across resumes, TensorBoard scalars."""

import json
import re
import struct
import subprocess
import sys

import pytest
from conftest import MPIEXEC, launch

from distnn.io.metrics_log import epoch_records, header_records
from distnn.parallel.world import World

SMALL = ["--dataset", "synthetic:400:8:3", "--hidden", "8", "--batch-size", "40"]
EPOCH_KEYS = {"epoch", "loss", "step", "lr", "ranks", "batch_size", "wall_s", "elapsed_s"}


def test_progress_lines_under_mpiexec_into_a_file(tmp_path):
    """As under sbatch: stdout and stderr are files, so ``auto`` prints plain lines,
    rank 0 only, and the summary comes last."""
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    command = [MPIEXEC, "-n", "2", sys.executable, "-m", "distnn.train", *SMALL]
    command += ["--epochs", "3", "--log-every", "4"]
    with out.open("w") as stdout, err.open("w") as stderr:
        done = subprocess.run(command, stdout=stdout, stderr=stderr, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, err.read_text()
    lines = out.read_text().splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    # 10 steps an epoch, 30 in all: a line at steps 4, 8, …, 28, from rank 0 alone.
    assert [int(line.split()[1].split("/")[0]) for line in steps] == list(range(4, 29, 4))
    for line in steps:
        assert re.fullmatch(
            r"step \d+/30  epoch \d/3 \(batch \d+/10\)  loss \d\.\d{4}  [\d,]+ samples/s  "
            r"ETA \S+",
            line,
        ), line
    assert "\r" not in out.read_text() and "\x1b" not in out.read_text()  # no bar in a file
    last_epoch = max(i for i, line in enumerate(lines) if line.startswith("epoch "))
    assert lines[-1].startswith("done:") and lines[last_epoch].startswith("epoch 3/3"), lines
    assert all(line.startswith("note: ") for line in lines[last_epoch + 1 : -1]), lines
    assert err.read_text() == ""


@pytest.mark.parametrize("mode", ["none", "lines"])
def test_progress_modes_and_quiet(tmp_path, mode):
    result = launch([*SMALL, "--epochs", "2", "--progress", mode, "--log-every", "5"])
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert len(steps) == (4 if mode == "lines" else 0)
    quiet = launch([*SMALL, "--epochs", "2", "--progress", mode, "--quiet"])
    assert quiet.stdout.splitlines()[0].startswith("done:") and quiet.stdout.count("\n") == 1


def test_header_record_and_complete_epoch_records(tmp_path):
    result = launch([*SMALL, "--epochs", "2", "--metrics", "m.jsonl"], ranks=2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    assert header["header"] is True and header["ranks"] == 2
    assert header["mpi"] == World.library_version() and header["threads"] >= 1
    assert header["config"]["batch_size"] == 40 and header["config"]["epochs"] == 2
    assert {"distnn", "blas"} <= set(header)
    records = epoch_records(str(tmp_path / "m.jsonl"))
    assert [r["step"] for r in records] == [10, 20]
    for r in records:
        assert set(r) >= EPOCH_KEYS
        assert r["ranks"] == 2 and r["batch_size"] == 40 and r["lr"] == 0.01
    assert 0 < records[0]["wall_s"] < records[1]["wall_s"]


def test_lr_is_the_rate_of_the_epochs_last_step(tmp_path):
    args = [*SMALL, "--epochs", "3", "--lr", "0.1", "--lr-schedule", "step:10:0.5"]
    result = launch([*args, "--metrics", "m.jsonl"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # steps 0-9 at 0.1, 10-19 at 0.05, 20-29 at 0.025: each epoch is 10 steps
    assert [r["lr"] for r in epoch_records(str(tmp_path / "m.jsonl"))] == [0.1, 0.05, 0.025]


def test_resume_keeps_wall_time_growing(tmp_path):
    first = [*SMALL, "--epochs", "2", "--metrics", "m.jsonl", "--checkpoint-dir", "ck"]
    assert launch(first, cwd=tmp_path).returncode == 0
    before = epoch_records(str(tmp_path / "m.jsonl"))
    again = [*SMALL, "--epochs", "4", "--metrics", "m.jsonl", "--checkpoint-dir", "ck"]
    resumed = launch([*again, "--resume"], ranks=2, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    records = epoch_records(str(tmp_path / "m.jsonl"))
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    walls = [r["wall_s"] for r in records]
    assert walls == sorted(walls) and walls[2] > before[-1]["wall_s"]
    # this start's own clock begins again; the run's does not
    assert records[2]["elapsed_s"] < records[2]["wall_s"]
    assert [h["ranks"] for h in header_records(str(tmp_path / "m.jsonl"))] == [1, 2]


def read_events(path):
    """TensorBoard's records (TFRecord framing: length, crc, data, crc) as Event protos."""
    from tensorboardX.proto import event_pb2

    data, events, at = path.read_bytes(), [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at : at + 8])
        events.append(event_pb2.Event.FromString(data[at + 12 : at + 12 + length]))
        at += 12 + length + 4
    return events


def test_tensorboard_scalars_read_back(tmp_path):
    pytest.importorskip("tensorboardX", reason="pip install -e '.[tensorboard]'")
    args = [*SMALL, "--epochs", "3", "--tensorboard", "tb", "--metrics", "m.jsonl"]
    result = launch(args, ranks=2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (events_file,) = (tmp_path / "tb").glob("events.out.tfevents.*")  # rank 0 alone writes
    scalars: dict[str, list] = {}
    for event in read_events(events_file):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    records = epoch_records(str(tmp_path / "m.jsonl"))
    assert [s for s, _ in scalars["loss/train"]] == [r["step"] for r in records]
    assert [v for _, v in scalars["loss/train"]] == pytest.approx([r["loss"] for r in records])
    want = {"loss/test", "accuracy/test", "speed/samples_per_sec", "optim/lr", "time/wall_s"}
    assert want | {"noise/noise_scale", "speed/goodput"} <= set(scalars)
    assert not any("rank" in tag for tag in scalars), "slowest_rank is an index, not a curve"
    # The run's options and final numbers on the HParams dashboard.
    (hparams_file,) = (tmp_path / "tb" / "hparams").glob("events.out.tfevents.*")
    final = {v.tag: v.simple_value for e in read_events(hparams_file) for v in e.summary.value}
    assert final["hparam/accuracy"] == pytest.approx(records[-1]["accuracy"])
    blob = hparams_file.read_bytes()
    assert b"batch_size" in blob and b"schedule" in blob
