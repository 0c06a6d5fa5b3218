"""python -m distnn.scaling: the time-to-accuracy sweep, its statistics and provenance.

The sweep runs in-process on one rank and, through the CLI, on 1 and 2 ranks (each job
under a timeout); the statistics are checked against known answers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import error_lines, launch

from distnn.run.provenance import load_warning
from distnn.scaling import (
    COLUMNS,
    bootstrap_interval,
    fit_steps_model,
    mean_interval,
    parse_grid,
    read_runs,
    sweep,
)
from distnn.scaling.report import report
from distnn.scaling.summary import points

PROVENANCE = ("commit", "host", "cpu_model", "cores", "affinity", "start_date", "start_load",
              "start_steal_s", "end_date", "end_load", "end_steal_s", "distnn", "mpi")  # fmt: skip
TINY = dict(hidden=(8,), epochs=2, eval_every=2)


def test_sweep_writes_a_row_per_cell_with_its_outcome(tmp_path):
    out = tmp_path / "runs.csv"
    grid = parse_grid("1", "16,64", "none,sqrt", 2)
    rows = sweep(grid, "accuracy>=0.5", "digits", out=out, **TINY)
    read = read_runs(out)
    assert len(rows) == len(read) == 8
    cells = {(r["ranks"], r["batch"], r["lr_scaling"], r["seed"]) for r in read}
    assert cells == {(c.ranks, c.batch, c.lr_scaling, c.seed) for c in grid.cells()}
    for row in read:
        assert set(COLUMNS) <= row.keys()
        assert isinstance(row["reached"], bool)
        assert row["steps"] > 0 and row["samples"] > 0 and row["train_s"] > 0
        if row["reached"]:
            assert row["value"] >= 0.5 and row["stop_reason"].startswith("target")


def test_an_unreachable_target_gives_unreached_rows_not_an_error(tmp_path):
    out = tmp_path / "runs.csv"
    rows = sweep(parse_grid("1", "32", "none", 2), "accuracy>=1.01", "digits", out=out, **TINY)
    assert [r["reached"] for r in read_runs(out)] == [False, False]
    assert all(r["epochs"] == 2 and "trained all" in r["stop_reason"] for r in rows)
    text = report(read_runs(out))  # the report says so instead of failing
    assert "| none | 32 | 0/2 | — |" in text


def test_every_row_carries_its_provenance(tmp_path):
    out = tmp_path / "runs.csv"
    sweep(parse_grid("1", "32", "none", 1), "accuracy>=0.5", "digits", out=out, **TINY)
    (row,) = read_runs(out)
    for key in PROVENANCE:
        assert row[key] not in (None, ""), key
    assert row["cores"] >= 1 and row["host"] and len(row["commit"]) >= 7


def test_the_sweep_refuses_a_world_not_in_its_grid():
    with pytest.raises(ValueError, match="ranks"):
        sweep(parse_grid("2", "32", "none", 1), "accuracy>=0.5")


def test_the_steps_model_recovers_known_parameters():
    rng = np.random.default_rng(1)
    batches = np.repeat([8, 16, 32, 64, 128, 256, 512], 5)
    exact = 120 * (1 + 40 / batches)
    model = fit_steps_model(batches, exact)
    assert model.s_min == pytest.approx(120, rel=1e-9)
    assert model.b_noise == pytest.approx(40, rel=1e-9)
    noisy = fit_steps_model(batches, exact * (1 + 0.03 * rng.standard_normal(batches.size)))
    assert noisy.s_min == pytest.approx(120, rel=0.05)
    assert noisy.b_noise == pytest.approx(40, rel=0.15)


def test_the_steps_model_refuses_a_shape_that_is_not_its_own():
    assert fit_steps_model([8, 8], [10, 12]) is None  # one batch
    assert fit_steps_model([8, 64, 512], [10, 40, 90]) is None  # more steps at larger B


def test_the_bootstrap_interval_covers_the_mean_and_is_reproducible():
    values = [3.0, 5.0, 4.0, 10.0]
    low, high = bootstrap_interval(values)
    assert low <= np.mean(values) <= high
    assert (low, high) == bootstrap_interval(values)  # seeded: a report regenerates exactly
    i = mean_interval(values)
    assert i.n == 4 and i.t_low < i.low <= i.mean <= i.high < i.t_high


def test_the_bootstrap_interval_covers_a_known_mean_about_95_percent():
    rng = np.random.default_rng(7)
    trials = 400
    hits = 0
    for _ in range(trials):
        low, high = bootstrap_interval(rng.exponential(2.0, size=40), resamples=1000)
        hits += low <= 2.0 <= high
    assert 0.88 <= hits / trials <= 0.99  # percentile bootstrap runs a little under 95%


def test_points_count_unreached_runs_apart():
    rows = [
        dict(lr_scaling="none", batch=8, ranks=1, reached=True, steps=s, train_s=1.0)
        for s in (100, 110)
    ] + [dict(lr_scaling="none", batch=8, ranks=1, reached=False, steps=500, train_s=9.0)]
    (p,) = points(rows)
    assert (p.runs, p.unreached, p.steps.n, p.steps.mean) == (3, 1, 2, 105)


def test_the_load_warning_counts_the_cores_left_beside_the_ranks():
    assert load_warning(0.0, 1) == ""
    assert "exceeds" in load_warning(1000.0, 1)
    assert load_warning(None, 1) == ""


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--batches", "8..x"], "--batches"),
        (["--ranks", "0"], "--ranks"),
        (["--ranks", "4..2"], "--ranks"),
        (["--lr-scaling", "cubic"], "--lr-scaling"),
        (["--seeds", "-1"], "--seeds"),
        (["--seeds", "0"], "--seeds"),
        (["--ranks", "4", "--batches", "2"], "smaller than 4 ranks"),
        (["--target", "accurcy>=0.9"], "accurcy"),
        (["--hidden", "a"], "--hidden"),
        (["--plot-only", "missing.csv"], "missing.csv"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_grid_specs_give_one_line_and_exit_2(tmp_path, flags, words):
    done = launch([*flags, "--out", str(tmp_path)], module="distnn.scaling", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and words in lines[0], done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_the_cli_runs_one_process_per_rank_count_and_plots_from_the_csv(tmp_path):
    out = tmp_path / "sweep"
    args = ["--ranks", "1,2", "--batches", "16,64", "--lr-scaling", "none", "--seeds", "2",
            "--epochs", "2", "--eval-every", "2", "--hidden", "8", "--target", "accuracy>=0.5",
            "--out", str(out)]  # fmt: skip
    done = launch(args, module="distnn.scaling", timeout=300)
    assert done.returncode == 0, done.stderr
    rows = read_runs(out / "runs.csv")
    assert sorted((r["ranks"], r["batch"], r["seed"]) for r in rows) == [
        (r, b, s) for r in (1, 2) for b in (16, 64) for s in (0, 1)
    ]
    # deterministic: the steps to target do not depend on the ranks
    steps = {(r["batch"], r["seed"]): set() for r in rows}
    for r in rows:
        steps[r["batch"], r["seed"]].add(r["steps"])
    assert all(len(s) == 1 for s in steps.values())
    first = (out / "report.md").read_bytes()
    (out / "report.md").unlink()
    again = launch(["--plot-only", str(out / "runs.csv")], module="distnn.scaling", timeout=120)
    assert again.returncode == 0, again.stderr
    assert (out / "report.md").read_bytes() == first  # from the CSV alone, byte for byte
    pytest.importorskip("matplotlib")
    for name in ("steps-to-target.png", "time-to-target.png"):
        assert (out / name).stat().st_size > 1000


def test_the_figures_draw_unreached_runs_from_the_csv_alone(tmp_path):
    pytest.importorskip("matplotlib")
    from distnn.scaling.plots import steps_figure, time_figure

    out = tmp_path / "runs.csv"
    sweep(parse_grid("1", "16,64", "none", 1), "accuracy>=0.5", "digits", out=out, **TINY)
    sweep(parse_grid("1", "32", "none", 1), "accuracy>=1.01", "digits", out=out, **TINY)
    rows = read_runs(out)
    unreached = [r for r in rows if not r["reached"]]
    steps_figure(unreached, tmp_path / "none-reached.png")  # nothing to fit or average
    steps_figure(rows, tmp_path / "s.png")
    time_figure(rows, tmp_path / "t.png")
    assert (tmp_path / "s.png").stat().st_size > 1000 and (tmp_path / "t.png").stat().st_size > 1000


def test_the_metrics_header_says_where_and_when(tmp_path):
    import distnn
    from distnn.io.metrics_log import header_records

    net = distnn.Network([64, 8, 10], seed=0)
    history = distnn.fit(net, "digits", epochs=1, verbose=0, metrics=str(tmp_path / "m.jsonl"))
    (header,) = header_records(str(tmp_path / "m.jsonl"))
    machine = header["machine"]
    assert machine == history.header["machine"]
    for key in ("commit", "host", "cpu_model", "cores", "affinity", "start_date", "start_load"):
        assert machine[key] not in (None, ""), key
    assert "start_steal_s" in machine
