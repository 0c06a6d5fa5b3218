"""Where the time goes: the time split in every metrics record, and --trace files."""

from __future__ import annotations

import json
import signal

import pytest
from conftest import launch

import distnn
from distnn.errors import Preempted
from distnn.io.metrics_log import epoch_records

PHASES = ("data_s", "compute_s", "allreduce_s", "update_s")


def test_time_split_in_every_record_and_the_summary(tmp_path):
    result = launch(["--epochs", "3", "--metrics", "m.jsonl", "--quiet"], ranks=2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = epoch_records(tmp_path / "m.jsonl")
    n_train = 1437
    for r in records:
        assert all(r[k] >= 0 for k in PHASES)
        assert r["compute_s_max"] >= r["compute_s"] and r["slowest_rank"] in (0, 1)
        # the phases are parts of the epoch's steps: together no more than its time
        assert sum(r[k] for k in PHASES) <= n_train / r["samples_per_sec"] * 1.01 + 1e-3
    assert "step time: data " in result.stdout and "allreduce" in result.stdout


def test_trace_has_a_lane_per_rank_and_the_traced_steps(tmp_path):
    result = launch(
        ["--epochs", "2", "--trace", "t.json", "--trace-steps", "3:5", "--quiet"],
        ranks=2,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    lanes = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M"}
    assert lanes == {0: "rank 0", 1: "rank 1"}
    for rank in (0, 1):
        mine = [e for e in events if e["ph"] == "X" and e["pid"] == rank]
        names = [e["name"] for e in mine]
        assert names == ["data", "compute", "allreduce", "update"] * 2  # steps 3 and 4
        assert all(e["dur"] >= 0 for e in mine)
        starts = [e["ts"] for e in mine]
        assert starts == sorted(starts)


def test_a_whole_trace_holds_evaluation_and_checkpoints_and_draws(tmp_path):
    result = launch(
        ["--epochs", "1", "--trace", "t.json", "--checkpoint-dir", "ck", "--quiet"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    names = {e["name"] for e in json.loads((tmp_path / "t.json").read_text())["traceEvents"]}
    assert {"data", "compute", "allreduce", "update", "evaluate", "checkpoint"} <= names
    pytest.importorskip("matplotlib")
    drawn = launch(["t.json", "-o", "t.png"], cwd=tmp_path, module="distnn.plot")
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_the_trace_is_written_when_the_run_is_stopped(tmp_path):
    class Terminate:
        def on_step(self, step, loss):
            if step == 4:
                signal.raise_signal(signal.SIGTERM)

        def on_epoch_end(self, record):
            pass

    net = distnn.Network([64, 8, 10], seed=0)
    with pytest.raises(Preempted):
        distnn.fit(net, "digits", epochs=2, verbose=0, callbacks=[Terminate()],
                   checkpoint_dir=str(tmp_path / "ck"), trace=str(tmp_path / "t.json"))  # fmt: skip
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    assert sum(e["name"] == "update" for e in events) == 5  # steps 1..5, then it stopped


@pytest.mark.parametrize("spec", ["5", "0:3", "4:2", "a:b"])
def test_bad_trace_steps_are_one_line(tmp_path, spec):
    result = launch(["--trace", "t.json", "--trace-steps", spec], cwd=tmp_path)
    assert result.returncode == 2 and "--trace-steps" in result.stderr, result.stderr
