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


def test_fit_recovers_alpha_and_beta_from_exact_timings():
    alpha, beta = perfmodel.fit_alpha_beta(synthetic_sweep())
    assert alpha == pytest.approx(ALPHA, rel=1e-9)
    assert beta == pytest.approx(BETA, rel=1e-9)


def test_fit_recovers_alpha_and_beta_from_noisy_timings():
    alpha, beta = perfmodel.fit_alpha_beta(synthetic_sweep(noise=0.05))
    assert alpha == pytest.approx(ALPHA, rel=0.1)
    assert beta == pytest.approx(BETA, rel=0.1)


def test_fit_pins_a_negative_latency_at_zero():
    # Pure bandwidth plus a dip at the smallest size would fit α < 0 unconstrained.
    points = [(n, 2, n * BETA) for n in SIZES[3:]] + [(4, 2, 1e-12)]
    alpha, beta = perfmodel.fit_alpha_beta(points)
    assert alpha == 0.0 and beta > 0


def test_fit_needs_timings_on_more_than_one_rank():
    with pytest.raises(ValueError):
        perfmodel.fit_alpha_beta([(4, 1, 1e-6), (16, 1, 1e-6)])


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
        scaling.plot_scaling(rows, 2, tmp_path / "scaling.png")
        steps = perfmodel.project([1, 2], **MODEL)
        perfmodel.plot_projection(steps, [], [], (ALPHA, BETA), tmp_path / "model.png")
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


@pytest.mark.timeout(300)
def test_quick_run_end_to_end(tmp_path):
    # --quick takes ~10 s on an idle 2-core machine; the timeout is a hang guard only.
    start = time.perf_counter()
    result = run_script(["--quick", "--out-dir", "out"], tmp_path, timeout=240)
    print(f"\nscaling.py --quick: {time.perf_counter() - start:.1f} s")
    assert result.returncode == 0, result.stderr

    rows = read(tmp_path / "out" / "scaling.csv")
    assert list(rows[0]) == [
        "mode", "ranks", "oversubscribed", "global_batch", "batch_per_rank", "params",
        "samples_per_sec", "min_samples_per_sec", "max_samples_per_sec", "step_ms", "speedup",
        "ideal_speedup", "efficiency", "repeats",
    ]  # fmt: skip
    assert [(r["mode"], int(r["ranks"])) for r in rows] == [
        ("strong", 1), ("strong", 2), ("weak", 1), ("weak", 2),
    ]  # fmt: skip
    assert all(float(r["samples_per_sec"]) > 0 and float(r["efficiency"]) > 0 for r in rows)
    assert [int(r["global_batch"]) for r in rows] == [64, 64, 64, 128]
    assert all(float(r["speedup"]) == 1.0 for r in rows if r["ranks"] == "1")

    sweep = read(tmp_path / "out" / "allreduce.csv")
    assert {r["ranks"] for r in sweep} == {"2"}
    assert [int(r["bytes"]) for r in sweep] == perfmodel.message_sizes(64 << 10)
    assert all(float(r["seconds"]) > 0 for r in sweep)

    projection = read(tmp_path / "out" / "projection.csv")
    assert max(int(r["ranks"]) for r in projection) == 4096
    assert "Allreduce fit at 2 ranks: α =" in result.stdout and "GB/s" in result.stdout


def test_model_only_with_a_clusters_numbers(tmp_path):
    args = ["--model-only", "--out-dir", "out", "--alpha", "3", "--beta", "8", "--rate", "20000"]
    result = run_script([*args, "--params", "669706", "--batch", "256"], tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "α = 3.00 µs, β = 1/(8.00 GB/s)" in result.stdout
    projection = read(tmp_path / "out" / "projection.csv")
    row = next(r for r in projection if r["mode"] == "weak" and r["algorithm"] == "ring")
    expected = perfmodel.project_step("weak", "ring", int(row["ranks"]), **MODEL)
    assert float(row["efficiency"]) == pytest.approx(expected.efficiency)


def test_model_only_without_numbers_says_what_is_missing(tmp_path):
    result = run_script(["--model-only", "--out-dir", "out"], tmp_path, timeout=120)
    assert result.returncode != 0 and "--alpha and --beta" in result.stderr
