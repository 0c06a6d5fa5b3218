"""How fast the model learns: the gradient noise scale, stopping at a target, callbacks
that stop a run, and the time fields (issue 22).

Serial tests here; the same checks across ranks run in-process under ``mpiexec -n 2``
and ``-n 4`` (``@pytest.mark.mpi``), comparing the world's run with one rank's.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from conftest import error_lines, launch

import distnn
from distnn.errors import DistnnError, StopTraining
from distnn.io.checkpoints import list_checkpoints
from distnn.io.metrics_log import epoch_records, is_evaluation
from distnn.parallel.noise_scale import NoiseScale, batch_hint, efficiency, steps_ratio
from distnn.parallel.world import World
from distnn.run.stopping import Target, parse_target

SMALL = ["--dataset", "synthetic:400:8:3", "--hidden", "12", "--progress", "none"]


def frozen_fit(net, x, y, world=None, **options):
    """A run whose parameters barely move (lr 1e-12), so every step estimates the noise
    scale at the same point, which a brute-force computation can then check."""
    options = {"epochs": 2, "batch_size": 64, "schedule": "sgd", "lr": 1e-12} | options
    return distnn.fit(net, x, y, verbose=0, world=world, **options)


def brute_force_noise_scale(net, x, y):
    """tr(Σ)/|G|² from every sample's own gradient (Σ with ddof=1: see the estimator's
    expectation when a batch is drawn without replacement from the N rows)."""
    grads = np.stack([net.gradient(x[k : k + 1], y[k : k + 1]) for k in range(len(x))])
    G = grads.mean(axis=0)
    return grads.var(axis=0, ddof=1).sum() / (G @ G)


def mlp_problem(seed=3, n=4096):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5))
    y = (x[:, 0] + 0.5 * x[:, 1] ** 2 > 0.3).astype(np.int64)
    return x, y


def pooled(history):
    """The run's noise scale over all its epochs: a ratio of the averages."""
    trace = sum(r["grad_trace"] for r in history)
    return trace / sum(r["grad_norm_sq"] for r in history)


# --- the estimator ---------------------------------------------------------------------


def test_noise_scale_matches_the_closed_form_of_a_constant_input_regression():
    # One weight and one bias, both 0, inputs all 1: each sample's gradient is −2y·(1, 1),
    # so |G|² = 8·mean(y)² and tr(Σ) = 8·var(y): B_noise = var(y)/mean(y)², exactly.
    rng = np.random.default_rng(0)
    x, y = np.ones((8192, 1)), rng.normal(1.0, 3.0, (8192, 1))
    net = distnn.Network([1, 1], activations="identity", seed=0)
    net.params[:] = 0
    history = frozen_fit(net, x, y, deterministic=True, virtual_shards=8, epochs=4)
    want = y.var(ddof=1) / y.mean() ** 2
    assert pooled(history) == pytest.approx(want, rel=0.1)
    # One epoch's estimate (16 measured steps here) swings more; their median does not.
    assert np.median([r["noise_scale"] for r in history]) == pytest.approx(want, rel=0.2)


def test_noise_scale_matches_every_samples_gradient_at_one_rank_deterministic():
    x, y = mlp_problem()
    net = distnn.Network([5, 16, 2], activations="tanh", loss="cross-entropy", seed=1)
    want = brute_force_noise_scale(net, x, np.eye(2)[y])
    history = frozen_fit(net, x, y, deterministic=True, virtual_shards=8)
    assert pooled(history) == pytest.approx(want, rel=0.15)


def test_one_rank_in_default_mode_says_it_cannot_measure():
    x, y = mlp_problem(n=512)
    history = frozen_fit(distnn.Network([5, 4, 2], seed=1), x, y)
    assert all(r["noise_scale"] is None and r["goodput"] is None for r in history)
    assert history.final["noise_scale"] is None


def test_estimates_are_a_ratio_of_running_averages_and_none_when_noise_wins():
    noise = NoiseScale(measures=True)
    assert noise.take()["noise_scale"] is None  # nothing measured yet
    # Two steps at B=8 with pieces of 2 rows: tr = (s̄ − g)/(1/2 − 1/8), |G|² = g − tr/8.
    noise.add(5.0, 0.5, 2.0, 8)  # tr 8,   |G|² 1
    noise.add(2.75, 0.5, 2.0, 8)  # tr 2,  |G|² 1.75
    d = NoiseScale.DECAY
    w = (1 - d) * d + (1 - d)  # the bias correction's weight after two
    trace, norm_sq = ((1 - d) * d * 8 + (1 - d) * 2) / w, ((1 - d) * d * 1 + (1 - d) * 1.75) / w
    fields = noise.take()
    assert fields["grad_trace"] == pytest.approx(trace)
    assert fields["grad_norm_sq"] == pytest.approx(norm_sq)
    assert fields["noise_scale"] == pytest.approx(trace / norm_sq)  # not a mean of ratios
    assert noise.take() == fields  # running: a record without new steps repeats the last
    for _ in range(40):
        noise.add(100.0, 0.5, 1.0, 8)  # |G|² < 0: noise swamped the signal
    assert noise.take()["noise_scale"] is None
    assert NoiseScale(measures=False).take() == {
        "noise_scale": None, "grad_norm_sq": None, "grad_trace": None,
    }  # fmt: skip


def test_efficiency_steps_ratio_and_the_hint():
    assert steps_ratio(100.0, 100) == 2.0 and efficiency(100.0, 100) == 0.5
    assert steps_ratio(None, 32) is None and efficiency(None, 32) is None
    above = batch_hint(64.0, 1024, 4)
    assert "16× the noise scale" in above and "ranks beyond ~" in above
    assert "below the noise scale" in batch_hint(1000.0, 32, 2)
    assert batch_hint(40.0, 32, 2) == "" and batch_hint(None, 32, 2) == ""


# --- targets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("accuracy>=0.97", Target("accuracy", ">=", 0.97)),
        (" test_loss <= 0.05 ", Target("test_loss", "<=", 0.05)),
        ("val_accuracy>0.5", Target("val_accuracy", ">", 0.5)),
        ("loss<1e-3", Target("loss", "<", 1e-3)),
    ],
)
def test_target_specs(spec, want):
    assert parse_target(spec) == want
    assert want.met({want.metric: want.value}) == (want.op in (">=", "<="))
    assert not want.met({want.metric: None}) and not want.met({})


@pytest.mark.parametrize(
    "spec", ["accuracy", "accuracy=0.9", "acc>=0.9", "accuracy>=x", "loss<=nan", "", ">=1"]
)
def test_bad_target_specs(spec):
    with pytest.raises(DistnnError, match="target"):
        parse_target(spec)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--target", "accuracy>=oops"], "--target: cannot read target"),
        (["--target", "val_loss<=0.1"], "--target val_loss<=0.1 needs a validation split"),
        (["--target", "accuracy>=0.9", "--dataset", "regression.npz"], "there is no accuracy"),
        (["--eval-every", "-1"], "--eval-every"),
    ],
)
def test_bad_target_options_are_one_line(tmp_path, args, words):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 8)), rng.normal(size=(40, 2))  # targets are vectors
    np.savez(tmp_path / "regression.npz", x=x, y=y, x_test=x[:10], y_test=y[:10])
    result = launch([*SMALL, *args], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(error_lines(result.stderr)) == 1 and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_target_without_test_data_is_refused(tmp_path):
    x, y = mlp_problem(n=64)
    with pytest.raises(DistnnError, match="needs test data"):
        distnn.fit(distnn.Network([5, 2], seed=0), x, y, target="accuracy>=0.9", verbose=0)


def test_eval_every_writes_evaluation_records_and_the_target_stops_there(tmp_path):
    metrics = tmp_path / "m.jsonl"
    args = [*SMALL, "--epochs", "50", "--eval-every", "3", "--target", "accuracy>=0.8"]
    result = launch([*args, "--metrics", str(metrics)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    evals = [r for r in records if is_evaluation(r)]
    assert evals and all(r["step"] % 3 == 0 for r in evals)
    # At an epoch's last step the epoch's own record evaluates: no duplicate record.
    epoch_steps = {r["step"] for r in epoch_records(str(metrics))}
    assert not epoch_steps & {r["step"] for r in evals}
    met = [r for r in records if (r.get("accuracy") or 0) >= 0.8 and "step" in r]
    assert met, "the target was never met"
    stop_step = met[0]["step"]
    assert max(r["step"] for r in records if "step" in r) == stop_step, "trained past it"
    assert "target accuracy>=0.8 met: accuracy" in result.stdout
    assert f"| step {stop_step} (" in result.stdout


def test_target_stop_matches_a_replay_from_per_step_checkpoints(tmp_path):
    x, y = mlp_problem(n=600)
    test = mlp_problem(seed=9, n=200)
    history = distnn.fit(
        distnn.Network([5, 8, 2], seed=2), x, y, test_data=test, epochs=20, batch_size=32,
        lr=0.01, target="accuracy>=0.8", eval_every=1, checkpoint_dir=str(tmp_path / "ck"),
        checkpoint_every=1, keep_checkpoints=1000, verbose=0,
    )  # fmt: skip
    stop = history.final["step"]
    assert history.stop_reason.startswith("target accuracy>=0.8 met")
    replay = distnn.Network([5, 8, 2], seed=2)
    replay.is_classifier = True
    first_met = None
    for path in list_checkpoints(str(tmp_path / "ck")):
        with np.load(path) as arrays:  # a checkpoint is a plain .npz
            step = int(arrays["step"])
            replay.params[...] = arrays["params"]
        if distnn.evaluate(replay, *test)["accuracy"] >= 0.8:
            first_met = step if first_met is None else min(first_met, step)
    assert first_met == stop


# --- callbacks that stop ---------------------------------------------------------------


class StopAt:
    def __init__(self, step=None, epoch=None, how="return"):
        self.step, self.epoch, self.how = step, epoch, how

    def _ask(self, now):
        if now:
            if self.how == "raise":
                raise StopTraining("enough")
            return True
        return None

    def on_step(self, step, loss):
        return self._ask(step == self.step)

    def on_epoch_end(self, record):
        return self._ask(record["epoch"] == self.epoch)


@pytest.mark.parametrize("how", ["return", "raise"])
def test_a_callback_stops_the_run_cleanly(how):
    x, y = mlp_problem(n=320)
    net = distnn.Network([5, 4, 2], seed=0)
    history = distnn.fit(net, x, y, epochs=10, callbacks=[StopAt(step=7, how=how)], verbose=0)
    assert history.final["step"] == 8  # the request rides in the next step's votes
    assert "a callback asked to stop after step 8" in history.stop_reason
    assert ("enough" in history.stop_reason) == (how == "raise")
    history = distnn.fit(net, x, y, epochs=10, callbacks=[StopAt(epoch=2, how=how)], verbose=0)
    assert len(history) == 2 and history.final["epoch"] == 2


# --- the time fields -------------------------------------------------------------------


def test_time_fields_add_up_to_the_process_wall_time(tmp_path):
    metrics = tmp_path / "m.jsonl"
    began = time.monotonic()
    result = launch([*SMALL, "--epochs", "3", "--metrics", str(metrics)], cwd=tmp_path)
    took = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    record = epoch_records(str(metrics))[-1]
    parts = ("startup_s", "train_s", "eval_s", "checkpoint_s")
    assert sum(record[k] for k in parts) == pytest.approx(record["elapsed_s"], abs=1e-6)
    assert record["wall_s"] == pytest.approx(record["elapsed_s"])
    assert 0 < record["elapsed_s"] <= took
    assert record["startup_s"] > 0 and record["train_s"] > 0 and record["eval_s"] > 0


def test_the_final_rate_is_the_runs_not_the_last_epochs():
    x, y = mlp_problem(n=640)
    history = distnn.fit(distnn.Network([5, 8, 2], seed=0), x, y, epochs=4, verbose=0)
    final = history.final
    assert final["samples"] == 4 * 640
    assert final["samples_per_sec"] == final["samples"] / final["train_s"]
    assert final["samples_per_sec"] != history[-1]["samples_per_sec"]  # the epoch's own


def test_noise_scale_is_the_same_bits_at_one_and_three_ranks(tmp_path):
    lines = {}
    for ranks in (1, 3):
        metrics = tmp_path / f"m{ranks}.jsonl"
        args = [*SMALL, "--deterministic", "--epochs", "2", "--metrics", str(metrics)]
        result = launch(args, ranks=ranks, cwd=tmp_path, timeout=180)
        assert result.returncode == 0, result.stderr
        lines[ranks] = [(r["noise_scale"], r["grad_trace"]) for r in epoch_records(str(metrics))]
    assert lines[1] == lines[3] and lines[1][0][0] is not None


# --- across ranks, in-process (mpiexec -n 2 and -n 4) ----------------------------------


@pytest.mark.mpi(min_size=2)
def test_noise_scale_matches_brute_force_across_ranks():
    x, y = mlp_problem()
    net = distnn.Network([5, 16, 2], activations="tanh", loss="cross-entropy", seed=1)
    want = brute_force_noise_scale(net, x, np.eye(2)[y])
    history = frozen_fit(net, x, y, world=World(), batch_size=64, epochs=8)
    assert pooled(history) == pytest.approx(want, rel=0.2)


@pytest.mark.mpi(min_size=2)
def test_deterministic_noise_scale_and_target_step_match_one_rank():
    x, y = mlp_problem(n=800)
    test = mlp_problem(seed=9, n=200)

    def run(world):
        return distnn.fit(
            distnn.Network([5, 8, 2], seed=2), x, y, test_data=test, epochs=30, lr=0.01,
            batch_size=40, deterministic=True, target="accuracy>=0.8", eval_every=1,
            verbose=0, world=world,
        )  # fmt: skip

    from mpi4py import MPI

    world, alone = run(World()), run(World(MPI.COMM_SELF))
    assert world.final["step"] == alone.final["step"]
    assert [r["noise_scale"] for r in world] == [r["noise_scale"] for r in alone]
    assert world.stop_reason == alone.stop_reason != ""


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("when", ["step", "epoch"])
def test_a_callback_on_one_rank_stops_every_rank_at_the_same_step(when):
    world = World()
    x, y = mlp_problem(n=320)
    asks = {"step": StopAt(step=5), "epoch": StopAt(epoch=2)}[when] if world.rank == 1 else None
    history = distnn.fit(
        distnn.Network([5, 4, 2], seed=0), x, y, epochs=10, world=world, verbose=0,
        callbacks=[asks] if asks else [],
    )  # fmt: skip
    steps = world.gather_object(history.final["step"])
    if world.rank == 0:
        assert len(set(steps)) == 1, steps
        assert steps[0] == (6 if when == "step" else 2 * 10)  # 320 rows / 32 = 10 a epoch
