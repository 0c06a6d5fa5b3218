"""Inputs every rank must agree on, and inputs the API and CLI must refuse (issue 24
parts 3 and 4). Each bad case ends in one line ``distnn: error: …`` (exit 2 from the
CLI or a script), never a traceback, a hang, or a run on the wrong data.

Families: same data (one differing row, labels or test row on one rank, for ``fit``; other
rows or row counts for ``distnn.evaluate``), evaluate inputs, fit inputs, labels held in
other dtypes, absurd option values, callbacks, idle ranks.
"""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
from conftest import MPIEXEC, error_lines, guarded_run, launch

import distnn
from distnn import Network
from distnn.errors import DistnnError

HANG = 120.0

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from mpi4py import MPI
    import distnn

    mode, case = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(600, 6)), rng.integers(0, 3, 600)
    xt, yt = rng.normal(size=(100, 6)), rng.integers(0, 3, 100)
    if MPI.COMM_WORLD.Get_rank() == 1:
        if case == "row":
            x[337, 2] += 1.0
        if case == "labels":
            y[[11, 222, 433]] = (y[[11, 222, 433]] + 1) % 3
        if case == "test_row":
            xt[57] *= 2
        if case == "fewer_rows":
            x, y = x[:-1], y[:-1]
    net = distnn.Network([6, 8, 3], seed=0)
    try:
        if mode == "evaluate":
            net.is_classifier = True
            distnn.evaluate(net, x, y)
        else:
            distnn.fit(net, x, y, test_data=(xt, yt), epochs=1, verbose=0)
    except distnn.DistnnError as e:
        if MPI.COMM_WORLD.Get_rank() == 0:
            print(f"distnn: error: {e}", file=sys.stderr)
        sys.exit(2)
    """
)


@pytest.mark.parametrize(
    ("mode", "case"),
    [("fit", "row"), ("fit", "labels"), ("fit", "test_row"), ("fit", "fewer_rows"),
     ("evaluate", "row"), ("evaluate", "labels"), ("evaluate", "fewer_rows")],
)  # fmt: skip
def test_same_data_one_rank_differs(tmp_path, mode, case):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    result = guarded_run([MPIEXEC, "-n", "2", sys.executable, str(script), mode, case], HANG)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "rank 1 was given other" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


# --- evaluate inputs ----------------------------------------------------------------


def _classifier() -> Network:
    net = Network([4, 8, 3], seed=0)
    net.is_classifier = True
    return net


@pytest.mark.parametrize(
    ("x", "needle"),
    [
        (np.zeros((0, 4)), "no rows"),
        (np.full((5, 4), np.nan), "NaN"),
        (np.ones((5, 4), complex), "complex"),
        (np.ones((5, 4)).astype(object), "object"),
    ],
    ids=["0-rows", "nan", "complex", "object"],
)
def test_evaluate_inputs_refused(x, needle):
    with pytest.raises(DistnnError, match=needle):
        distnn.evaluate(_classifier(), x, np.zeros(len(x), int))


# --- fit inputs -----------------------------------------------------------------------

X = np.random.default_rng(1).normal(size=(60, 4))
Y = np.random.default_rng(2).integers(0, 3, 60)


def test_fit_takes_lists():
    history = distnn.fit(Network([4, 8, 3], seed=0), X.tolist(), Y.tolist(), epochs=1, verbose=0)
    assert len(history) == 1


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"y": None}, "no array 'y'"), ({"seed": -1}, "seed must be 0 or more")],
    ids=["no-y", "seed-negative"],
)
def test_fit_inputs_refused(kwargs, needle):
    args = {"y": Y} | kwargs
    with pytest.raises(DistnnError, match=needle):
        distnn.fit(Network([4, 8, 3], seed=0), X, epochs=1, verbose=0, **args)


def test_cli_negative_seed_is_one_line():
    result = launch(["--dataset", "synthetic:60:4:3", "--seed", "-1", "--quiet"])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert error_lines(result.stderr) == ["distnn: error: --seed must be 0 or more, got -1"]


# --- labels in other dtypes ---------------------------------------------------------


@pytest.mark.parametrize("dtype", [object, "U3"], ids=["object-ints", "text-ints"])
def test_integer_labels_in_other_dtypes_are_indices(dtype):
    """Labels 0..11 held as objects or text train the model int labels train: not
    sorted as text ("10" before "2")."""
    y = np.arange(60) % 12
    params = []
    for labels in (y, y.astype(dtype)):
        net = Network([4, 8, 12], seed=0)
        distnn.fit(net, X, labels, epochs=2, verbose=0)
        params.append(net.params.copy())
    np.testing.assert_array_equal(params[0], params[1])


# --- absurd values ----------------------------------------------------------------------


def test_virtual_shards_above_the_batch_refused():
    args = ["--dataset", "synthetic:60:4:3", "--deterministic", "--batch-size", "32"]
    result = launch([*args, "--virtual-shards", "1000000", "--quiet"])
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "--virtual-shards 1000000 is more than --batch-size" in lines[0]


# --- callbacks ----------------------------------------------------------------------------


class Nothing:
    pass


class OnlySteps:
    def __init__(self) -> None:
        self.steps = 0

    def on_step(self, step, loss):
        self.steps += 1


def test_callback_without_methods_refused_at_the_start():
    counter = OnlySteps()
    with pytest.raises(DistnnError, match=r"callbacks\[1\] \(Nothing\)"):
        distnn.fit(Network([4, 8, 3], seed=0), X, Y, epochs=3, verbose=0,
                   callbacks=[counter, Nothing()])  # fmt: skip
    assert counter.steps == 0  # refused before any work


def test_callback_with_only_on_step_runs():
    counter = OnlySteps()
    distnn.fit(Network([4, 8, 3], seed=0), X, Y, epochs=2, verbose=0, callbacks=[counter])
    assert counter.steps > 0


# --- idle ranks ---------------------------------------------------------------------------


def test_idle_ranks_are_noted():
    args = ["--dataset", "synthetic:60:4:3", "--batch-size", "2", "--epochs", "1"]
    result = launch(args, ranks=3, timeout=HANG)
    assert result.returncode == 0, result.stderr
    assert "1 rank(s) idle" in result.stdout + result.stderr


# --- unknown flags --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "args", "hint"),
    [
        ("distnn.train", ["--dataset", "digits", "--hiden", "8"], "--hidden"),
        ("distnn.train", ["--watchdgo", "3"], "--watchdog"),
        ("distnn.evaluate", ["m.npz", "--dataset", "digits", "--jsn", "o.json"], "--json"),
    ],
    ids=["train-hiden", "train-watchdgo", "evaluate-jsn"],
)
def test_unknown_flag_suggests_the_near_one(module, args, hint):
    result = launch(args, module=module)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and f"(did you mean {hint}?)" in lines[0], result.stderr
