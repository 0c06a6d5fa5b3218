"""``distnn.fit`` / ``distnn.evaluate`` from Python: the same run as the CLI, to the byte."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import MPIEXEC, guarded_run, launch

import distnn
from distnn.errors import CollectiveError, DistnnError, Preempted
from distnn.io.metrics_log import epoch_records, header_records

REPO = Path(__file__).resolve().parent.parent
SPEC = "synthetic:400:8:3"

# One configuration, as CLI options and as fit's keyword arguments.
CLI = [
    "--dataset", SPEC, "--hidden", "16,12", "--activations", "tanh,relu,sigmoid",
    "--schedule", "momentum", "--lr", "0.05", "--lr-schedule", "cosine+warmup:5",
    "--batch-size", "24", "--epochs", "3", "--seed", "5", "--val-fraction", "0.1",
    "--standardize",
]  # fmt: skip
NETWORK = "distnn.Network([8, 16, 12, 3], ['tanh', 'relu', 'sigmoid'], seed=5)"
KWARGS = (
    "schedule='momentum', lr=0.05, lr_schedule='cosine+warmup:5', batch_size=24, "
    "epochs=3, seed=5, val_fraction=0.1, standardize=True"
)


def run_script(code: str, ranks: int, cwd: Path, timeout: float = 120):
    script = cwd / "script.py"
    script.write_text(textwrap.dedent(code))
    command = [sys.executable, str(script)]
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks), *command]
    return guarded_run(command, timeout, cwd=cwd)


@pytest.mark.parametrize(
    ("ranks", "extra_cli", "extra_kwargs"),
    [
        (1, [], ""),
        (2, [], ""),
        (3, ["--deterministic", "--virtual-shards", "3"], ", deterministic=True, virtual_shards=3"),
        (2, ["--overlap"], ", overlap=True"),
    ],
)
def test_cli_and_fit_give_the_same_bytes(tmp_path, ranks, extra_cli, extra_kwargs):
    cli = launch(
        [*CLI, *extra_cli, "--save", "cli.npz", "--metrics", "cli.jsonl", "--quiet"],
        ranks=ranks,
        cwd=tmp_path,
    )
    assert cli.returncode == 0, cli.stderr
    api = run_script(
        f"""
        import json
        import distnn
        net = {NETWORK}
        history = distnn.fit(net, {SPEC!r}, {KWARGS}{extra_kwargs}, save="api.npz", verbose=0)
        if distnn.World().is_root:
            json.dump(history, open("history.json", "w"))
        """,
        ranks,
        tmp_path,
    )
    assert api.returncode == 0, api.stderr
    with np.load(tmp_path / "cli.npz") as a, np.load(tmp_path / "api.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            assert a[key].tobytes() == b[key].tobytes(), key
    lines = epoch_records(str(tmp_path / "cli.jsonl"))
    history = json.loads((tmp_path / "history.json").read_text())
    assert [sorted(r) for r in history] == [sorted(r) for r in lines]  # the same keys
    assert [r["loss"] for r in history] == [r["loss"] for r in lines]


def arrays(n=240, features=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1)
    return x, y


class Counter:
    def __init__(self):
        self.steps, self.records = [], []

    def on_step(self, step, loss):
        self.steps.append((step, loss))

    def on_epoch_end(self, record):
        self.records.append(record)


def test_fit_on_arrays_in_one_process(tmp_path):
    x, y = arrays()
    x_val, y_val = arrays(60, seed=1)
    net = distnn.Network([5, 8, 3], "tanh", loss="cross-entropy", seed=2)
    counter = Counter()
    history = distnn.fit(
        net, x, y, test_data=(x_val, y_val), validation_data=(x_val, y_val), epochs=4,
        batch_size=50, callbacks=[counter], metrics=str(tmp_path / "m.jsonl"), verbose=0,
    )  # fmt: skip
    assert isinstance(history, list) and [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert counter.records == list(history)
    assert [s for s, _ in counter.steps] == list(range(1, 4 * 5 + 1))  # ceil(240/50) a epoch
    assert history[-1]["loss"] < history[0]["loss"] and history.stop_reason == ""
    # the validation and test sets are the same rows here: the same numbers
    assert history[-1]["val_loss"] == history[-1]["test_loss"]
    lines = epoch_records(str(tmp_path / "m.jsonl"))
    assert lines == json.loads(json.dumps(list(history)))
    assert header_records(str(tmp_path / "m.jsonl")) == [json.loads(json.dumps(history.header))]
    report = distnn.evaluate(net, x_val, y_val)
    assert report["loss"] == pytest.approx(history[-1]["test_loss"], rel=1e-12)
    assert report["accuracy"] == history[-1]["accuracy"]


def test_fit_takes_a_schedule_instance_and_leaves_signal_handlers_alone():
    from distnn.engine.schedules import SGD

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    x, y = arrays()
    net = distnn.Network([5, 4, 3], seed=0)
    start = net.params.copy()
    distnn.fit(net, x, y, schedule=SGD(0.5), epochs=1, verbose=0)
    assert not np.array_equal(net.params, start)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda net, x, y: distnn.fit(net, x, y, batch_size=0), "^batch_size must be at least 1"),
        (lambda net, x, y: distnn.fit(net, x[:, :4], y), "4 features per row"),
        (lambda net, x, y: distnn.fit(net, x, y + 5), "network has only 3 outputs"),
        (lambda net, x, y: distnn.fit(net, x, y[:10]), "rows"),
        (lambda net, x, y: distnn.fit(net, "no/such.npz"), "no such file"),
        (lambda net, x, y: distnn.fit(net, x, y, schedule="nope"), "unknown schedule"),
        (lambda net, x, y: distnn.fit(net, x, y, validation_data=(x[:, :2], y)), "validation"),
        (lambda net, x, y: distnn.evaluate(net, x, y[:7]), "labels for"),
    ],
)
def test_bad_input_is_an_exception_not_an_exit(call, message):
    x, y = arrays()
    with pytest.raises(DistnnError, match=message):
        call(distnn.Network([5, 4, 3], loss="cross-entropy", seed=0), x, y)


def test_preempted_run_resumes_to_the_same_bits(tmp_path):
    """SIGTERM after step 11 rides in step 12's votes: Preempted after a checkpoint there;
    resume=True ends where the run that never stopped ends."""
    x, y = arrays()
    options = dict(epochs=3, batch_size=32, verbose=0, checkpoint_dir=str(tmp_path / "ck"))

    class Terminate:
        def on_step(self, step, loss):
            if step == 11:
                signal.raise_signal(signal.SIGTERM)

        def on_epoch_end(self, record):
            pass

    net = distnn.Network([5, 6, 3], seed=1)
    with pytest.raises(Preempted, match="after step 12"):
        distnn.fit(net, x, y, callbacks=[Terminate()], **options)
    assert (tmp_path / "ck" / "checkpoint-000000012.npz").exists()
    resumed = distnn.Network([5, 6, 3], seed=1)
    distnn.fit(resumed, x, y, resume=True, **options)
    options["checkpoint_dir"] = str(tmp_path / "ck2")
    straight = distnn.Network([5, 6, 3], seed=1)
    distnn.fit(straight, x, y, **options)
    assert resumed.params.tobytes() == straight.params.tobytes()


def test_one_ranks_failure_in_a_callback_ends_the_job(tmp_path):
    """An exception, or a sys.exit, on one rank only: the whole job ends, not hangs."""
    for how in ("raise RuntimeError('boom')", "raise SystemExit(0)"):
        result = run_script(
            f"""
            import distnn
            class Fail:
                def on_epoch_end(self, record):
                    if distnn.World().rank == 1 and record["epoch"] == 2:
                        {how}
            net = distnn.Network([64, 8, 10], seed=0)
            distnn.fit(net, "digits", epochs=50, callbacks=[Fail()], verbose=0)
            """,
            ranks=2,
            cwd=tmp_path,
        )
        assert result.returncode != 0, how
        assert result.stderr.count("distnn: rank 1 failed, aborting the job") == 1, result.stderr


def test_example_script_runs_on_two_ranks(tmp_path):
    example = REPO / "scripts" / "examples" / "fit_digits.py"
    result = subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, str(example)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    accuracy = float(result.stdout.split("test accuracy ")[-1].split("%")[0])
    assert accuracy > 90
    assert (tmp_path / "digits-model.npz").exists()
    assert result.stdout.count("trained 15 epochs") == 1  # rank 0 speaks


def test_setup_error_is_collective_in_a_world_of_one():
    x, y = arrays()
    with pytest.raises(CollectiveError):
        distnn.fit(distnn.Network([5, 4, 3]), x, y, epochs=0)
