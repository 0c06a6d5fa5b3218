"""``distnn.fit``'s promises beyond the CLI's: its keywords and messages are the
declaration's, a second fit keeps the network's input scaling, and every rank must be
given the same arguments and data (checked, one line on every rank)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_api import arrays, run_script

import distnn
from distnn.api import OPTIONS
from distnn.errors import DistnnError
from distnn.run.options import declared

REPO = Path(__file__).resolve().parent.parent


def test_fit_signature_is_the_declaration():
    """Every declared option that is not the network's own is a keyword with its default."""
    parameters = inspect.signature(distnn.fit).parameters
    keywords = {k: p.default for k, p in parameters.items() if k in OPTIONS}
    expected = {f.name: f.default for f, opt in declared() if not opt.cli_only}
    expected["epochs"] = 10  # fit's own default, as before
    assert keywords == expected
    assert "init_from" in keywords  # fit used to lack it
    for name in OPTIONS:
        assert f"    {name}=" in distnn.fit.__doc__


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"epochs": 2.5}, "epochs must be an integer, got 2.5"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"val_fraction": 1.0}, "val_fraction must be in [0, 1)"),
        ({"progress": "fancy"}, "unknown progress 'fancy'"),
        ({"patience": 2}, "patience needs a validation split: give val_fraction too"),
        ({"virtual_shards": 8}, "virtual_shards 8 has no effect without deterministic"),
        ({"deterministic": True, "overlap": True}, "deterministic and overlap cannot"),
        ({"resume": True}, "resume needs checkpoint_dir"),
        ({"trace_steps": "1:5"}, "trace_steps needs trace"),
        ({"max_time": -1}, "max_time must be a positive number of seconds"),
    ],
)
def test_fit_errors_name_keywords_not_flags(kwargs, message):
    x, y = arrays()
    with pytest.raises(DistnnError) as caught:
        distnn.fit(distnn.Network([5, 4, 3]), x, y, verbose=0, **kwargs)
    assert str(caught.value).startswith(message)
    assert "--" not in str(caught.value)


def test_unknown_keyword_is_a_type_error_with_a_suggestion():
    x, y = arrays()
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'batchsize'.*'batch_size'"):
        distnn.fit(distnn.Network([5, 4, 3]), x, y, batchsize=10)
    with pytest.raises(TypeError, match="'hidden'"):  # the network's shape is the network's
        distnn.fit(distnn.Network([5, 4, 3]), x, y, hidden=(8,))


def test_validation_data_with_patience_is_accepted():
    x, y = arrays()
    x_val, y_val = arrays(60, seed=1)
    history = distnn.fit(
        distnn.Network([5, 8, 3], seed=0), x, y, validation_data=(x_val, y_val),
        patience=2, epochs=30, lr=0.05, verbose=0,
    )  # fmt: skip
    assert "val_loss" in history[-1]


def test_a_second_fit_keeps_the_networks_standardization():
    """Trained with standardize=True, then fit again with the default: the inputs of the
    second fit are scaled as predict and evaluate scale them, so the numbers agree."""
    x, y = arrays(seed=3)
    x = x * 40 + 7  # far from standardized
    net = distnn.Network([5, 8, 3], seed=0)
    distnn.fit(net, x, y, test_data=(x, y), standardize=True, epochs=3, verbose=0)
    mean, std = net.input_mean.copy(), net.input_std.copy()
    history = distnn.fit(net, x, y, test_data=(x, y), epochs=3, verbose=0)
    assert np.array_equal(net.input_mean, mean) and np.array_equal(net.input_std, std)
    report = distnn.evaluate(net, x, y)
    assert report["accuracy"] == history[-1]["accuracy"]
    assert report["loss"] == pytest.approx(history[-1]["test_loss"], rel=1e-6)


def test_init_from_carries_weights_and_standardization(tmp_path):
    x, y = arrays(seed=4)
    x = x * 40 + 7
    first = distnn.Network([5, 8, 3], seed=0)
    distnn.fit(first, x, y, standardize=True, epochs=3, verbose=0, save=str(tmp_path / "m.npz"))
    second = distnn.Network([5, 8, 3], seed=9)
    distnn.fit(second, x, y, epochs=1, lr=1e-12, schedule="sgd", verbose=0,
               init_from=str(tmp_path / "m.npz"))  # fmt: skip
    assert np.array_equal(second.input_mean, first.input_mean)
    assert np.allclose(second.params, first.params, atol=1e-6)  # lr 1e-12: barely moved
    wrong = distnn.Network([5, 6, 3], seed=0)
    with pytest.raises(DistnnError, match=r"^init_from .*m\.npz: the model is"):
        distnn.fit(wrong, x, y, verbose=0, init_from=str(tmp_path / "m.npz"))


def test_distnn_evaluate_stays_the_function_after_importing_the_module():
    code = (
        "import distnn.evaluate, distnn, numpy as np\n"
        "from distnn import evaluate\n"
        "net = distnn.Network([4, 3], loss='cross-entropy', seed=0)\n"
        "x, y = np.ones((6, 4), np.float32), np.arange(6) % 3\n"
        "assert evaluate is distnn.evaluate\n"
        "print(distnn.evaluate(net, x, y)['accuracy'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert 0 <= float(result.stdout) <= 1


@pytest.mark.parametrize(
    ("what", "differs"),
    [
        ("x = x + (rank == 1)", "x"),  # other features on rank 1
        ("x, y = x[: 240 - 40 * rank], y[: 240 - 40 * rank]", "x, y"),  # a shard each
        ("kwargs['lr'] = 0.01 * (1 + rank)", "options"),
        ("kwargs['validation_data'] = (x[:50] + rank, y[:50])", "validation_data"),
    ],
)
def test_other_arguments_on_one_rank_stop_every_rank_in_one_line(tmp_path, what, differs):
    result = run_script(
        f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        import distnn
        from test_api import arrays
        rank = distnn.World().rank
        x, y = arrays()
        kwargs = {{}}
        {what}
        try:
            distnn.fit(distnn.Network([5, 8, 3], seed=0), x, y, epochs=2, verbose=0, **kwargs)
        except distnn.DistnnError as e:
            print(f"rank {{rank}}: {{e}}", file=sys.stderr)
            sys.exit(2)
        """,
        ranks=2,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    message = f"rank 1 was given other {differs} than rank 0: every rank must run with"
    for rank in (0, 1):  # every rank raised it, none hung (lines may interleave)
        assert result.stderr.count(f"rank {rank}: {message}") == 1, result.stderr
    assert "Traceback" not in result.stderr and "truncated" not in result.stderr


def test_same_arguments_on_every_rank_pass_the_check(tmp_path):
    result = run_script(
        f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        import distnn
        from test_api import arrays
        x, y = arrays()
        history = distnn.fit(distnn.Network([5, 8, 3], seed=0), x, y, epochs=2, verbose=0)
        print(f"epochs trained: {{len(history)}}")
        """,
        ranks=2,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("epochs trained: 2") == 2
