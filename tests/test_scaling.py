"""scripts/scaling.py and scripts/perfmodel.py: the α/β fit, the projection formulas by hand,
and a --quick end-to-end run of the real CLI under mpiexec (each job under a timeout)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
import perfmodel  # noqa: E402
import scaling  # noqa: E402
import scaling_check  # noqa: E402
import scaling_fit  # noqa: E402
import scaling_plots  # noqa: E402

ALPHA, BETA = 3e-6, 1 / 8e9  # 3 µs, 8 GB/s
SIZES = perfmodel.message_sizes(16 << 20)
MODEL = {"params": 669_706, "batch": 256, "rate": 20_000.0, "alpha": ALPHA, "beta": BETA}
GRADIENT_BYTES = 4 * 669_706


def synthetic_sweep(noise: float = 0.0) -> list[tuple[int, int, float]]:
    rng = np.random.default_rng(0)
    return [
        (n, p, perfmodel.ring_allreduce(n, p, ALPHA, BETA) * (1 + noise * rng.standard_normal()))
        for p in (2, 4, 8)
        for n in SIZES
    ]


def fit_at(p: int, points) -> scaling_fit.LinearFit:
    return scaling_fit.fit_allreduce([x for x in points if x[1] == p])


@pytest.mark.parametrize("p", [2, 4, 8])
def test_fit_recovers_alpha_and_beta_from_exact_timings(p):
    fit = fit_at(p, synthetic_sweep())
    assert fit.coef == pytest.approx((ALPHA, BETA), rel=1e-9)
    assert fit.stderr() == pytest.approx((0, 0), abs=1e-15)


def test_noisy_fits_have_intervals_that_cover_the_truth():
    """95% intervals from the parameter covariance cover the true α, β (Allreduce) and
    α_c, β_c (compute) in about 95% of 200 seeded noisy data sets; and a single fit is
    within its noise."""
    alpha_c, beta_c = 2e-3, 40e-6  # 2 ms per step, 40 µs per sample
    covered = np.zeros(4)
    for seed in range(200):
        rng = np.random.default_rng(seed)
        sweep = [(n, 2, perfmodel.ring_allreduce(n, 2, ALPHA, BETA)) for n in SIZES]
        sweep = [(n, p, t * (1 + 0.05 * rng.standard_normal())) for n, p, t in sweep]
        shards = [32, 64, 128, 256] * 3  # 3 repeats per shard, every repeat a point
        steps = [(b, (alpha_c + beta_c * b) * (1 + 0.05 * rng.standard_normal())) for b in shards]
        network, compute = scaling_fit.fit_allreduce(sweep), scaling_fit.fit_compute(steps)
        truths = (
            (network, 0, ALPHA),
            (network, 1, BETA),
            (compute, 0, alpha_c),
            (compute, 1, beta_c),
        )
        for i, (fit, k, truth) in enumerate(truths):
            low, high = fit.interval(k)
            covered[i] += low <= truth <= high
        if seed == 0:
            assert network.coef == pytest.approx((ALPHA, BETA), rel=0.15)
            assert compute.coef == pytest.approx((alpha_c, beta_c), rel=0.15)
    assert all(0.85 <= c / 200 <= 1.0 for c in covered), covered / 200


def test_fit_pins_a_negative_latency_at_zero():
    # Pure bandwidth plus a dip at the smallest size would fit α < 0 unconstrained.
    points = [(n, 2, n * BETA) for n in SIZES[3:]] + [(4, 2, 1e-12)]
    fit = scaling_fit.fit_allreduce(points)
    assert fit.coef[0] == 0.0 and fit.coef[1] > 0 and fit.stderr()[0] == 0.0


def test_fit_needs_timings_on_more_than_one_rank_and_one_rank_count_at_a_time():
    with pytest.raises(ValueError):
        scaling_fit.fit_allreduce([(4, 1, 1e-6), (16, 1, 1e-6)])
    with pytest.raises(ValueError, match="one rank count"):
        scaling_fit.fit_allreduce(synthetic_sweep())
    with pytest.raises(ValueError, match="2 or more shard"):
        scaling_fit.fit_compute([(64, 1e-3), (64, 1.1e-3)])


def test_a_non_monotone_sweep_is_refused():
    good = [(n, perfmodel.ring_allreduce(n, 2, ALPHA, BETA)) for n in SIZES]
    assert scaling_fit.monotone_problem(good, 2) == ""
    bad = [(n, t / 10 if n == 4096 else t) for n, t in good]  # 4 KiB 10× too fast
    assert "not monotone: 4,096 B took" in scaling_fit.monotone_problem(bad, 2)
    rows = [
        {"ranks": 2, "oversubscribed": False, "try": 3, "bytes": n, "seconds": t} for n, t in bad
    ]
    fits, refused = scaling_check.fit_networks(rows)
    assert fits == {} and "not monotone" in refused[2] and "after 3 tries" in refused[2]


def test_each_rank_count_gets_its_own_alpha_and_beta():
    own = {2: (1e-6, 1 / 6e9), 4: (5e-6, 1 / 2e9)}
    rows = [
        {"ranks": p, "oversubscribed": p > 2, "try": 1, "bytes": n,
         "seconds": perfmodel.ring_allreduce(n, p, *own[p])}
        for p in own for n in SIZES
    ]  # fmt: skip
    fits, refused = scaling_check.fit_networks(rows)
    assert not refused
    for p in own:
        assert fits[p].coef == pytest.approx(own[p], rel=1e-6)
    compute = scaling_check.given(1e-3, 1e-5)
    measured = [{"mode": "weak", "ranks": p, "oversubscribed": False, "samples_per_sec": 1.0}
                for p in (2, 4)]  # fmt: skip
    scaling_check.predict(measured, compute, fits, batch=256, params=669_706)
    for row in measured:
        p = row["ranks"]
        comm = perfmodel.ring_allreduce(GRADIENT_BYTES, p, *own[p])
        expected = 256 * p / (1e-3 + 1e-5 * 256 + comm)
        assert row["predicted_samples_per_sec"] == pytest.approx(expected, rel=1e-6)


def test_bootstrap_interval_of_the_median_covers_the_true_median():
    covered = 0
    for seed in range(200):
        values = np.random.default_rng(seed).normal(10.0, 1.0, size=15)
        _, low, high = scaling_fit.median_interval(values, resamples=1000)
        covered += low <= 10.0 <= high
    assert 0.85 <= covered / 200 <= 1.0


def test_param_count_of_the_compute_bound_net():
    assert perfmodel.param_count([784, 512, 512, 10]) == 669_706
    assert perfmodel.param_count([64, 32, 10]) == 2_410


@pytest.mark.parametrize("mode", ["strong", "weak"])
@pytest.mark.parametrize("algorithm", ["ring", "tree"])
def test_one_rank_does_not_communicate(mode, algorithm):
    step = perfmodel.project_step(mode, algorithm, 1, **MODEL)
    assert step.comm_s == 0.0
    assert step.compute_s == pytest.approx(256 / 20_000)
    assert step.samples_per_sec == pytest.approx(20_000)
    assert step.speedup == pytest.approx(1.0) and step.efficiency == pytest.approx(1.0)


def test_allreduce_models_by_hand():
    n = GRADIENT_BYTES
    # ring: 2(p−1)α + 2(p−1)/p·nβ; tree: ⌈log2 p⌉(α + nβ)
    assert perfmodel.ring_allreduce(n, 2, ALPHA, BETA) == pytest.approx(2 * ALPHA + n * BETA)
    assert perfmodel.ring_allreduce(n, 4, ALPHA, BETA) == pytest.approx(6 * ALPHA + 1.5 * n * BETA)
    assert perfmodel.tree_allreduce(n, 2, ALPHA, BETA) == pytest.approx(ALPHA + n * BETA)
    assert perfmodel.tree_allreduce(n, 4, ALPHA, BETA) == pytest.approx(2 * (ALPHA + n * BETA))
    assert perfmodel.tree_allreduce(n, 3, ALPHA, BETA) == pytest.approx(2 * (ALPHA + n * BETA))
    # Large messages: the ring's bandwidth term stays below 2nβ; the tree's grows with log2 p.
    ring, tree = (perfmodel.ALLREDUCE[a](n, 4096, ALPHA, BETA) for a in ("ring", "tree"))
    assert ring < 2 * 4095 * ALPHA + 2 * n * BETA and tree == pytest.approx(12 * (ALPHA + n * BETA))


def test_strong_and_weak_steps_at_four_ranks_by_hand():
    comm = 6 * ALPHA + 1.5 * GRADIENT_BYTES * BETA
    strong = perfmodel.project_step("strong", "ring", 4, **MODEL)
    assert (strong.shard, strong.global_batch) == (64, 256)
    assert strong.step_s == pytest.approx(64 / 20_000 + comm)
    assert strong.efficiency == pytest.approx((256 / 20_000) / (4 * (64 / 20_000 + comm)))
    weak = perfmodel.project_step("weak", "ring", 4, **MODEL)
    assert (weak.shard, weak.global_batch) == (256, 1024)
    assert weak.samples_per_sec == pytest.approx(1024 / (256 / 20_000 + comm))
    assert weak.efficiency == pytest.approx((256 / 20_000) / (256 / 20_000 + comm))
    assert weak.speedup == pytest.approx(4 * weak.efficiency)


def test_strong_scaling_ends_where_ranks_outnumber_samples():
    assert perfmodel.project_step("strong", "ring", 3, **MODEL).shard == math.ceil(256 / 3)
    assert perfmodel.project_step("strong", "ring", 512, **MODEL) is None
    steps = perfmodel.project([1, 2, 256, 512, 4096], **MODEL)
    assert {s.ranks for s in steps if s.mode == "strong"} == {1, 2, 256}
    assert {s.ranks for s in steps if s.mode == "weak"} == {1, 2, 256, 512, 4096}
    table = perfmodel.format_table(steps).splitlines()
    assert len(table) == 2 + 5 and "—" in table[-1] and "—" not in table[2]


def test_efficiency_falls_with_ranks_and_rises_with_bandwidth():
    weak = [perfmodel.project_step("weak", "ring", 2**k, **MODEL).efficiency for k in range(13)]
    assert all(a > b for a, b in pairwise(weak))
    faster = perfmodel.project_step("weak", "ring", 4096, **(MODEL | {"beta": BETA / 10}))
    assert faster.efficiency > weak[-1]


def test_plots_are_skipped_with_a_note_without_matplotlib(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    perfmodel.pyplot.cache_clear()
    try:
        rows = [{"mode": "strong", "ranks": 1, "speedup": 1.0, "efficiency": 1.0}]
        scaling_plots.plot_scaling(rows, 2, tmp_path / "scaling.png")
        scaling_plots.plot_projection([], [], [], {}, "", tmp_path / "model.png")
    finally:
        perfmodel.pyplot.cache_clear()
    assert not list(tmp_path.iterdir())
    assert capsys.readouterr().out.count("matplotlib is not installed") == 1


def test_csv_round_trip(tmp_path):
    rows = [{"mode": "weak", "ranks": 4, "oversubscribed": True, "seconds": 1.5e-05}]
    scaling.write_csv(tmp_path / "x.csv", rows)
    assert scaling.read_csv(tmp_path / "x.csv") == rows
    assert scaling.read_csv(tmp_path / "missing.csv") == []


def run_script(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPTS / "scaling.py"), *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(command)} took more than {timeout} s:\n{e.stdout}\n{e.stderr}")


def read(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def plant(out: Path, slow_strong_2: float = 1.0) -> None:
    """runs.csv, scaling.csv and allreduce.csv of a study whose times follow the model exactly
    (α_c = 1 ms, β_c = 40 µs, 2-rank α, β), but for the strong 2-rank runs, ×slow_strong_2."""
    out.mkdir()
    args = scaling.parse_args(["--ranks", "1,2", "--cores", "2", "--out-dir", str(out)])
    alpha_c, beta_c = 1e-3, 40e-6
    runs = []
    for repeat, noise in enumerate((0.99, 1.0, 1.01), 1):
        for n, g in scaling.jobs_of(args):
            shard = g // n
            step = alpha_c + beta_c * shard
            step += perfmodel.ring_allreduce(GRADIENT_BYTES, n, ALPHA, BETA) if n > 1 else 0
            rate = g / step * noise * (slow_strong_2 if (n, g) == (2, 256) else 1)
            runs.append({"ranks": n, "global_batch": g, "shard": shard, "repeat": repeat,
                         "samples_per_sec": rate, "step_s": g / rate})  # fmt: skip
    scaling.write_csv(out / "runs.csv", runs)
    scaling.write_csv(out / "scaling.csv", scaling.summarize(args, runs))
    sweep = [{"ranks": 2, "oversubscribed": False, "try": 1, "bytes": b,
              "seconds": perfmodel.ring_allreduce(b, 2, ALPHA, BETA)} for b in SIZES]  # fmt: skip
    scaling.write_csv(out / "allreduce.csv", sweep)


def test_a_model_that_fits_its_measurements_is_validated(tmp_path):
    plant(tmp_path / "out")
    result = run_script(["--model-only", "--out-dir", "out"], tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert "projection (validated)" in report and "MISS" not in report
    rows = read(tmp_path / "out" / "scaling.csv")
    assert all(r["miss"] == "False" for r in rows)
    assert all(float(r["predicted_samples_per_sec"]) == pytest.approx(
        float(r["samples_per_sec"]), rel=0.02) for r in rows)  # fmt: skip


def test_a_missed_prediction_is_flagged_and_the_projection_unvalidated(tmp_path):
    plant(tmp_path / "out", slow_strong_2=0.5)  # half the predicted speed: beyond band + 15%
    result = run_script(["--model-only", "--out-dir", "out"], tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    report = (tmp_path / "out" / "report.md").read_text()
    assert "projection (unvalidated)" in report and "MISS: strong at 2 ranks" in report
    assert "MISS: weak" not in report
    rows = {(r["mode"], r["ranks"]): r for r in read(tmp_path / "out" / "scaling.csv")}
    assert rows[("strong", "2")]["miss"] == "True" and rows[("weak", "2")]["miss"] == "False"
    projection = read(tmp_path / "out" / "projection.csv")
    assert {r["validated"] for r in projection} == {"False"}
    assert all(float(r["samples_per_sec_low"]) <= float(r["samples_per_sec"])
               <= float(r["samples_per_sec_high"]) for r in projection)  # fmt: skip


def test_a_refused_sweep_stops_the_projection_with_its_reason(tmp_path):
    plant(tmp_path / "out")
    sweep = read(tmp_path / "out" / "allreduce.csv")
    sweep[-1]["seconds"] = float(sweep[0]["seconds"]) / 10  # the largest message fastest
    scaling.write_csv(tmp_path / "out" / "allreduce.csv", sweep)
    result = run_script(["--model-only", "--out-dir", "out"], tmp_path, timeout=120)
    assert result.returncode != 0 and "not monotone" in result.stderr
    assert "--alpha and --beta" in result.stderr


@pytest.mark.timeout(300)
def test_quick_run_end_to_end(tmp_path):
    # --quick takes ~10 s on an idle 2-core machine; the timeout is a hang guard only.
    start = time.perf_counter()
    result = run_script(["--quick", "--out-dir", "out"], tmp_path, timeout=240)
    print(f"\nscaling.py --quick: {time.perf_counter() - start:.1f} s")
    refused = result.returncode == 1 and "not monotone" in result.stderr  # a noisy host, said so
    assert result.returncode == 0 or refused, result.stderr

    rows = read(tmp_path / "out" / "scaling.csv")
    assert [(r["mode"], int(r["ranks"])) for r in rows] == [
        ("strong", 1), ("strong", 2), ("weak", 1), ("weak", 2),
    ]  # fmt: skip
    assert [int(r["global_batch"]) for r in rows] == [64, 64, 64, 128]
    for r in rows:  # a median over n = 3 inside its bootstrap interval, and a prediction
        assert int(r["n"]) == 3
        low, mid, high = (float(r[f"samples_per_sec{k}"]) for k in ("_low", "", "_high"))
        assert 0 < low <= mid <= high
        assert refused or r["miss"] in ("True", "False")
        assert r["host"] and r["commit"] and r["start_load"] and r["end_load"]
    assert all(float(r["speedup"]) == 1.0 for r in rows if r["ranks"] == "1")

    runs = read(tmp_path / "out" / "runs.csv")
    assert len(runs) == 3 * len(scaling.jobs_of(scaling.parse_args(["--quick"])))
    for phase in ("data_s", "compute_s", "wait_s", "transfer_s", "update_s", "run_start_load"):
        assert all(float(r[phase]) >= 0 for r in runs), phase

    sweep = read(tmp_path / "out" / "allreduce.csv")
    assert {r["ranks"] for r in sweep} == {"2"}
    assert all(float(r["seconds"]) > 0 for r in sweep)
    report = (tmp_path / "out" / "report.md").read_text()
    if refused:
        assert "no projection" in report and "not monotone" in report
        return
    assert "Allreduce fit at 2 ranks: α =" in result.stdout and "GB/s" in result.stdout
    projection = read(tmp_path / "out" / "projection.csv")
    assert max(int(r["ranks"]) for r in projection) == 4096
    assert "projection (validated)" in report or "projection (unvalidated)" in report


def test_model_only_with_a_clusters_numbers(tmp_path):
    args = ["--model-only", "--out-dir", "out", "--alpha", "3", "--beta", "8", "--rate", "20000"]
    result = run_script([*args, "--params", "669706", "--batch", "256"], tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "α = 3.00 µs" in result.stdout and "β = 1/(8.00 GB/s)" in result.stdout
    projection = read(tmp_path / "out" / "projection.csv")
    row = next(r for r in projection if r["mode"] == "weak" and r["algorithm"] == "ring")
    expected = perfmodel.project_step("weak", "ring", int(row["ranks"]), **MODEL)
    assert float(row["efficiency"]) == pytest.approx(expected.efficiency)


def test_model_only_without_numbers_says_what_is_missing(tmp_path):
    result = run_script(["--model-only", "--out-dir", "out"], tmp_path, timeout=120)
    assert result.returncode != 0 and "--alpha and --beta" in result.stderr


def test_fewer_than_three_repeats_are_refused(tmp_path):
    result = run_script(["--quick", "--repeats", "2"], tmp_path, timeout=120)
    assert result.returncode == 2 and "at least 3" in result.stderr
