"""Learning rates that follow the batch: --lr-scaling with --base-batch, counts in epochs
in --lr-schedule, and what a run shows and keeps of the resolved rate."""

from __future__ import annotations

import contextlib
import json
import math
import tomllib

import numpy as np
import pytest
from conftest import error_lines, launch
from on_every_rank import assert_refused_as_one_job, run_on_every_rank

import distnn
from distnn.engine.lr_scaling import describe_factor, lr_factor
from distnn.engine.lr_schedules import (
    Cosine,
    LRScheduleError,
    StepDecay,
    Warmup,
    in_steps,
    parse_lr_schedule,
    steps_of,
)
from distnn.engine.schedules import SGD
from distnn.errors import DistnnError
from distnn.io.metrics_log import epoch_records, header_records
from distnn.parallel.world import World
from distnn.run.options import TrainConfig
from distnn.run.setup import prepare_run

# ---- the rules ----


@pytest.mark.parametrize(
    ("batch", "base", "linear", "sqrt"),
    [
        (32, 32, 1.0, 1.0),
        (128, 32, 4.0, 2.0),
        (8, 32, 0.25, 0.5),  # a batch smaller than B0 lowers the rate
        (48, 32, 1.5, math.sqrt(1.5)),
        (1, 256, 1 / 256, 1 / 16),
    ],
)
def test_lr_factor_of_each_rule(batch, base, linear, sqrt):
    assert lr_factor("none", batch, base) == 1.0
    assert lr_factor("linear", batch, base) == linear
    assert lr_factor("sqrt", batch, base) == pytest.approx(sqrt, rel=1e-15)


def test_the_factor_is_described_as_computed():
    assert describe_factor("linear", 128, 32) == "× 128/32"
    assert describe_factor("sqrt", 8, 32) == "× √(8/32)"
    assert describe_factor("none", 8, 32) == ""
    with pytest.raises(ValueError):
        lr_factor("cube", 8, 32)


# ---- counts in epochs ----


@pytest.mark.parametrize(
    ("text", "per_epoch", "steps"),
    [
        ("90", 7, 90),  # steps stay steps
        ("2ep", 45, 90),
        ("1ep", 1, 1),
        ("0.5ep", 29, 15),  # 14.5 rounds up
        ("0.5ep", 30, 15),
        ("0.1ep", 30, 3),  # exact decimal: 0.1·30 is 3.0000000000000004 in floats
        ("0.7ep", 10, 7),  # 0.7·10 is 7.000000000000001 in floats
        ("0.001ep", 10, 1),  # never 0 steps
    ],
)
def test_steps_of_counts_in_epochs(text, per_epoch, steps):
    assert steps_of(text, per_epoch, "warmup") == steps


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("cosine+warmup:2ep", Warmup(Cosine(0.1, 200), 20)),
        ("cosine+warmup:0.25ep", Warmup(Cosine(0.1, 200), 3)),
        ("step:1ep:0.5", StepDecay(0.1, 10, 0.5)),
        ("step:1.5ep:0.5+warmup:1ep", Warmup(StepDecay(0.1, 15, 0.5), 10)),
    ],
)
def test_parse_lr_schedule_with_epochs(spec, expected):
    s = parse_lr_schedule(spec, 0.1, 200, steps_per_epoch=10)
    assert repr(s) == repr(expected)


@pytest.mark.parametrize(
    ("spec", "resolved"),
    [
        ("constant", "constant"),
        ("step:10:0.5", "step:10:0.5"),  # 'step' ends in 'ep' but is no count
        ("step:2ep:0.5", "step:20:0.5"),
        ("cosine:0.001+warmup:0.25ep", "cosine:0.001+warmup:3"),
        ("exp:0.99+warmup:5", "exp:0.99+warmup:5"),
    ],
)
def test_in_steps_rewrites_only_counts(spec, resolved):
    assert in_steps(spec, 10) == resolved
    assert repr(parse_lr_schedule(resolved, 0.1, 200)) == repr(
        parse_lr_schedule(spec, 0.1, 200, steps_per_epoch=10)
    )


@pytest.mark.parametrize(
    "spec",
    [
        "cosine+warmup:0ep",
        "cosine+warmup:-1ep",
        "cosine+warmup:xep",
        "cosine+warmup:ep",
        "cosine+warmup:nanep",
        "cosine+warmup:infep",
        "cosine+warmup:1e999ep",
        "step:0ep:0.5",
        "step:xep:0.5",
    ],
)
def test_bad_counts_in_epochs(spec):
    with pytest.raises(LRScheduleError) as info:
        parse_lr_schedule(spec, 0.1, 200, steps_per_epoch=10)
    msg = str(info.value)
    assert "\n" not in msg and repr(spec) in msg and "+warmup:0.5ep" in msg


def test_epochs_need_the_data_size():
    with pytest.raises(LRScheduleError, match="needs the data size"):
        parse_lr_schedule("cosine+warmup:2ep", 0.1, 200)


def test_value_errors_are_typed_and_name_the_spec():
    """A constructor's check (gamma 0) comes out as the spec's error, not a bare one."""
    with pytest.raises(LRScheduleError, match=r"'exp:0'.*gamma must be"):
        parse_lr_schedule("exp:0", 0.1, 200)
    assert issubclass(LRScheduleError, DistnnError)


# ---- resolved where the data size is known ----


def prepared(**options):
    config = TrainConfig(hidden=(4,), epochs=3, **options)
    return prepare_run(config, World(), 1, held=contextlib.ExitStack())  # no checkpoint lock taken


@pytest.mark.parametrize(
    ("samples", "batch", "val", "epochs", "per_epoch"),
    [
        (1000, 128, 0.1, "2", 8),  # 900 train rows: 7 full batches and one of 4
        (1000, 128, 0.0, "2", 8),  # 1000: 7 full and one of 104
        (1000, 100, 0.0, "0.5", 10),  # exact: 5 steps
        (1000, 100, 0.1, "0.5", 9),  # 900 rows: 4.5 → 5
        (300, 64, 0.25, "1.5", 4),  # 225 train rows → 4 steps an epoch, 6 steps
        (50, 128, 0.0, "3", 1),  # a batch larger than the data: one step an epoch
    ],
)
def test_warmup_in_epochs_resolves_to_the_trainers_steps(samples, batch, val, epochs, per_epoch):
    run = prepared(
        dataset=f"synthetic:{samples}:4:3",
        batch_size=batch,
        val_fraction=val,
        lr_schedule=f"constant+warmup:{epochs}ep",
    )
    plan = run.lr_plan
    assert plan.steps_per_epoch == run.trainer.batches_per_epoch() == per_epoch
    # ceil(epochs × per_epoch), by integer arithmetic on the decimal's tenths
    tenths = round(float(epochs) * 10)
    assert plan.warmup_steps == -(-tenths * per_epoch // 10)
    lr = run.trainer.schedule.lr_schedule
    n = plan.warmup_steps
    assert lr(n - 1) == plan.peak and lr(n) == plan.peak
    if n > 1:
        assert lr(n - 2) < plan.peak


@pytest.mark.parametrize(
    ("rule", "batch", "factor"),
    [("none", 128, 1.0), ("linear", 128, 4.0), ("sqrt", 128, 2.0), ("linear", 8, 0.25)],
)
def test_the_schedule_steps_with_the_scaled_rate(rule, batch, factor):
    run = prepared(dataset="synthetic:400:4:3", batch_size=batch, lr=0.02, lr_scaling=rule)
    assert run.lr_plan.peak == 0.02 * factor and run.lr_plan.base_batch == 32  # the default
    assert run.trainer.schedule.lr_schedule(0) == 0.02 * factor


def test_the_scaled_batch_is_the_one_trained_with():
    """A batch larger than the data is cut to the data; the rate follows the cut batch."""
    run = prepared(dataset="synthetic:100:4:3", batch_size=1000, lr_scaling="linear")
    assert run.trainer.batch_size == run.lr_plan.batch == 100
    assert run.lr_plan.peak == 0.01 * 100 / 32


def test_base_batch_without_a_rule_is_refused():
    with pytest.raises(DistnnError, match="--base-batch 64 has no effect without --lr-scaling"):
        TrainConfig(base_batch=64).validate()
    TrainConfig(base_batch=64, lr_scaling="sqrt").validate()


# ---- fit ----


def test_fit_scales_the_rate_and_records_it():
    net = distnn.Network([4, 6, 3], seed=0)
    history = distnn.fit(
        net, "synthetic:200:4:3", lr=0.01, lr_scaling="linear", base_batch=16,
        batch_size=64, epochs=2, verbose=0,
    )  # fmt: skip
    assert [r["lr"] for r in history] == [0.01 * 4, 0.01 * 4]
    assert history.header["lr_resolved"]["lr"] == 0.01 * 4


def test_fit_refuses_scaling_a_schedule_instance():
    net = distnn.Network([4, 6, 3], seed=0)
    with pytest.raises(DistnnError, match=r"^lr_scaling scales lr, which a schedule instance"):
        distnn.fit(
            net, "synthetic:200:4:3", schedule=SGD(0.1),
            lr_scaling="linear", epochs=1, verbose=0,
        )  # fmt: skip


# ---- the CLI: header, records, bad input, resume ----

SMALL = ["--dataset", "synthetic:1000:4:3", "--hidden", "6", "--epochs", "2"]


def test_header_line_and_records_show_the_resolved_rate(tmp_path):
    args = [*SMALL, "--batch-size", "128", "--lr-scaling", "linear", "--val-fraction", "0.1"]
    args += ["--lr-schedule", "constant+warmup:1.5ep", "--metrics", "m.jsonl"]
    result = launch([*args, "--progress", "none"], ranks=2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # 900 training rows, batch 128: 8 steps an epoch, 12 steps of warm-up
    assert (
        "| adam lr 0.04 (0.01 × 128/32, linear) (constant+warmup:1.5ep = constant+warmup:12 "
        "at 8 steps/epoch) | batch 128 |" in result.stdout
    ), result.stdout
    (header,) = header_records(str(tmp_path / "m.jsonl"))
    assert header["lr_resolved"] == {
        "lr": 0.01 * 128 / 32, "given_lr": 0.01, "lr_scaling": "linear", "batch_size": 128,
        "base_batch": 32, "factor": 4.0, "lr_schedule": "constant+warmup:12",
        "steps_per_epoch": 8, "warmup_steps": 12,
    }  # fmt: skip
    # epoch 1 ends at step 8, inside the warm-up (8/12 of the rate); epoch 2 past it
    lrs = [r["lr"] for r in epoch_records(str(tmp_path / "m.jsonl"))]
    assert lrs == [0.01 * 128 / 32 * 8 / 12, 0.01 * 128 / 32]


def test_default_header_is_as_before():
    result = launch([*SMALL, "--progress", "none"])
    assert result.returncode == 0, result.stderr
    assert "| adam lr 0.01 (constant) | batch 32 |" in result.stdout


def test_print_config_shows_the_new_options():
    shown = launch(["--lr-scaling", "sqrt", "--base-batch", "64", "--print-config"])
    assert shown.returncode == 0, shown.stderr
    written = tomllib.loads(shown.stdout)
    assert written["lr_scaling"] == "sqrt" and written["base_batch"] == 64
    assert tomllib.loads(launch(["--print-config"]).stdout)["lr_scaling"] == "none"


BAD_RULES = [
    (["--lr-scaling", "linear", "--base-batch", "0"], "--base-batch must be at least 1"),
    (["--base-batch", "-4"], "--base-batch must be at least 1"),
    (["--base-batch", "64"], "--base-batch 64 has no effect without --lr-scaling"),
    (["--lr-scaling", "cube"], "unknown --lr-scaling 'cube'"),
    (["--lr-schedule", "cosine+warmup:0ep"], "must be more than 0 epochs"),
    (["--lr-schedule", "cosine+warmup:-2ep"], "must be more than 0 epochs"),
    (["--lr-schedule", "cosine+warmup:xep"], "'xep' is not a number of epochs"),
    (["--lr-schedule", "step:0.5:0.1"], "'0.5' is not a whole number of steps"),
]


@pytest.mark.parametrize(("args", "words"), BAD_RULES)
def test_bad_input_is_one_line_exit_2(tmp_path, args, words):
    result = launch([*SMALL, *args], cwd=tmp_path)  # one rank, in this process
    assert_refused_as_one_job([result], words)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize(("args", "words"), BAD_RULES)
def test_bad_input_is_one_line_exit_2_on_every_rank(shared_tmp, args, words):
    assert_refused_as_one_job(run_on_every_rank([*SMALL, *args], shared_tmp), words)


def test_resume_refuses_a_changed_rule_and_continues_the_same(tmp_path):
    first = [*SMALL, "--batch-size", "64", "--checkpoint-dir", "ck", "--progress", "none"]
    first += ["--lr-scaling", "linear", "--base-batch", "16"]
    assert launch(first, cwd=tmp_path).returncode == 0
    for change, named in [
        (["--lr-scaling", "sqrt", "--base-batch", "16"], "--lr-scaling linear there, sqrt here"),
        (["--lr-scaling", "linear", "--base-batch", "32"], "--base-batch 16 there, 32 here"),
        ([], "--lr-scaling linear there, none here"),
    ]:
        args = [*SMALL, "--batch-size", "64", "--checkpoint-dir", "ck", "--resume", *change]
        result = launch(args, ranks=2, cwd=tmp_path)
        assert result.returncode == 2, (change, result.stderr)
        (line,) = error_lines(result.stderr)
        assert "written by another run" in line and named in line, line
    again = [*first[:-4], "--resume", "--epochs", "3", "--metrics", "m.jsonl"]
    again += ["--lr-scaling", "linear", "--base-batch", "16"]
    result = launch(again, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [r["lr"] for r in epoch_records(str(tmp_path / "m.jsonl"))] == [0.01 * 4]
    assert np.isfinite(json.loads((tmp_path / "m.jsonl").read_text().splitlines()[-1])["loss"])
