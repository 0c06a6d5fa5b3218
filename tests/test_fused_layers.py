"""Feed-forward and backprop with the layer kernels give the same bits as the NumPy passes.

``fused_layers.c`` redoes the elementwise chains of activations.py and losses.py (the
bias addition, the sigmoid around NumPy's tanh, σ̇ of sigmoid and tanh, the output
deltas) in one pass each; ``bound_layers.py`` binds them to a workspace's views. Every
activation × loss × dtype runs both ways (``bound_layers.ENABLED`` off: the NumPy passes),
on 2-D blocks, on leading-row views of a larger workspace, and on stacks of pieces with
padding, for several steps with the parameters moving; every Z(ℓ) and A(ℓ) of
feed-forward, and every A(ℓ), Δ(ℓ), the gradient and the loss of backprop, are compared
as raw bytes, never with a tolerance (Z(ℓ) is backprop's scratch, which the kernels
need not write). Inputs span
saturation (|z| in the tens), ordinary values and exact zeros. Last, whole training
runs with and without the compiled library (``DISTNN_FUSED_KERNELS=0``) save the same model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from conftest import launch

from distnn import Network
from distnn.engine import bound_layers, fused, fused_backprop
from distnn.engine.activations import ACTIVATIONS

ELEMENTWISE = [name for name in ACTIVATIONS if name != "softmax"]

needs_kernels = pytest.mark.skipif(
    fused.LIBRARY is None, reason="the fused kernels are not built (no C compiler at install)"
)

# (sizes, rows used, workspace rows, pieces, padding): widths that do and do not fill a
# vector register; a workspace larger than the step (leading-row views, which for a stack
# are not contiguous); stacked pieces, one of them short.
SHAPES = {
    "rows": ([5, 7, 6, 4], 9, 9, None, ()),
    "leading-rows": ([20, 33, 17, 3], 11, 16, None, ()),
    "stacked-padded": ([5, 7, 6, 4], 6, 8, 3, ((1, 4), (2, 0))),
    "stacked-wide": ([20, 33, 17, 3], 5, 5, 4, ()),
}


def problem(sizes, rows, pieces, padding, loss, dtype, seed=0):
    """Inputs with saturating, ordinary and zero entries; targets; padded rows zeroed."""
    rng = np.random.default_rng(seed)
    lead = (rows,) if pieces is None else (pieces, rows)
    X = rng.standard_normal((*lead, sizes[0])) * rng.choice([0.0, 1.0, 3.0, 40.0], lead)[..., None]
    if loss == "cross-entropy":
        Y = np.eye(sizes[-1])[rng.integers(0, sizes[-1], lead)]
    else:
        Y = rng.uniform(-1, 1, (*lead, sizes[-1]))
    for piece, real in padding:
        X[piece, real:], Y[piece, real:] = 0.0, 0.0
    return X.astype(dtype), Y.astype(dtype)


def run(enabled, monkeypatch, activations, loss, dtype, shape, steps=3):
    """Raw bytes of everything backprop leaves behind, step by step."""
    monkeypatch.setattr(bound_layers, "ENABLED", enabled)
    sizes, rows, ws_rows, pieces, padding = SHAPES[shape]
    net = Network(sizes, activations, loss=loss, seed=4, dtype=dtype)
    for b in net.biases:  # not zeros, so the bias addition shows
        b[...] = np.random.default_rng(b.size).uniform(-1, 1, b.shape)
    X, Y = problem(sizes, rows, pieces, padding, loss, dtype)
    ws = net.workspace(ws_rows, pieces)
    grad = np.empty(((pieces,) if pieces else ()) + (net.num_params,), net.dtype)
    record = []
    for step in range(steps):
        scale = 1.0 if step == 1 else 1.0 / (3 * rows)  # cross-entropy skips 1.0's product
        Z, A, D, _ = ws.rows(rows)
        net.feed_forward(X, ws)
        record.append([a.tobytes() for a in Z[1:] + A[1:]])  # Z(ℓ): backprop's scratch
        total = net.backprop(X, Y, grad, ws, scale, padding=padding)
        arrays = [np.asarray(total), grad, *A[1:], *D[1:]]
        record.append([(a.dtype.str, a.shape, a.tobytes()) for a in arrays])
        step = grad.reshape(-1, net.num_params).sum(axis=0)
        net.params -= 0.05 * step / np.abs(step).max()  # a bounded step: nothing overflows
    record.append(net.forward(X.reshape(-1, sizes[0])).tobytes())  # a fresh workspace
    return record, ws


def assert_same_bits(activations, loss, dtype, shape, monkeypatch):
    with_kernels, ws = run(True, monkeypatch, activations, loss, dtype, shape)
    numpy_passes, _ = run(False, monkeypatch, activations, loss, dtype, shape)
    for step, (fused_step, numpy_step) in enumerate(zip(with_kernels, numpy_passes, strict=True)):
        assert fused_step == numpy_step, f"step {step} differs"
    return ws


@needs_kernels
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", ["squared", "cross-entropy"])
@pytest.mark.parametrize("activation", ELEMENTWISE)
def test_backprop_is_bit_identical_to_the_numpy_passes(activation, loss, dtype, shape, monkeypatch):
    ws = assert_same_bits(activation, loss, dtype, shape, monkeypatch)
    bound = ws.bound[SHAPES[shape][1]]
    assert bound is not None and len(bound.forward) == 4  # the kernels did run
    assert all(steps is not None for steps in bound.derivative[1:3])  # σ̇ of every hidden σ
    assert (bound._output is None) == (activation == "identity" or loss == "cross-entropy")


@needs_kernels
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("loss", ["squared", "cross-entropy"])
def test_mixed_layers_are_bit_identical(loss, shape, monkeypatch):
    assert_same_bits(["tanh", "sigmoid", "identity"], loss, "float32", shape, monkeypatch)
    assert_same_bits(["sigmoid", "relu", "tanh"], loss, "float64", shape, monkeypatch)


@needs_kernels
def test_the_sigmoid_runs_as_two_kernels_around_numpys_tanh():
    net = Network([3, 4, 2], "sigmoid")
    ws = net.workspace(5)
    net.feed_forward(np.ones((5, 3), np.float32), ws)
    assert ws.bound[5] is net  # the first step on a workspace's views: the NumPy passes
    net.feed_forward(np.ones((5, 3), np.float32), ws)
    head, tanh, tail = ws.bound[5].forward[1]
    assert (head.func.__name__, tanh.func, tail.func.__name__) == (
        "bias_half_f32",
        np.tanh,
        "sigmoid_tail_f32",
    )


@needs_kernels
def test_targets_a_kernel_cannot_take_fall_back_with_the_same_bits(monkeypatch):
    """Cross-entropy's (a − y)·scale reads y: a new array, a strided or a Fortran-ordered
    one each step gives what the NumPy passes give."""
    # The layer kernel's own fallback: the whole backprop in one call would take these
    # steps first (its fallback for such targets: test_fused_backprop.py).
    monkeypatch.setattr(fused_backprop, "ENABLED", False)
    net = Network([4, 6, 3], "tanh", loss="cross-entropy", seed=2)
    X = np.random.default_rng(1).standard_normal((7, 4)).astype(np.float32)
    labels = np.arange(7) % 3
    targets = [
        np.eye(3, dtype=np.float32)[labels],
        np.eye(3, dtype=np.float32)[labels].copy(order="F"),
        np.eye(6, dtype=np.float32)[labels][:, ::2],  # wrong columns: strided, not one-hot
        np.eye(3, dtype=np.float64)[labels],  # another dtype: NumPy casts
    ]
    results = {}
    for enabled in (True, False):
        monkeypatch.setattr(bound_layers, "ENABLED", enabled)
        ws, grad = net.workspace(7), np.empty_like(net.params)
        results[enabled] = []
        for Y in [targets[0], *targets, targets[0].copy()]:  # binds at the second step
            total = net.backprop(X, Y, grad, ws, 0.1)
            results[enabled].append((total, grad.tobytes()))
        if enabled:  # the last targets went through the kernel
            assert ws.bound[7]._y is not None
    assert results[True] == results[False]


@needs_kernels
def test_a_workspace_passed_to_another_network_is_bound_again():
    first, second = Network([3, 4, 2], "sigmoid", seed=1), Network([3, 4, 2], "sigmoid", seed=2)
    ws, X = first.workspace(5), np.ones((5, 3), np.float32)
    second.biases[0][...] = 7.0
    a_first = [first.feed_forward(X, ws).copy() for _ in range(2)]
    a_second = [second.feed_forward(X, ws).copy() for _ in range(2)]
    assert ws.bound[5].net is second
    np.testing.assert_array_equal(a_first[0], a_first[1])
    np.testing.assert_array_equal(a_second[0], a_second[1])
    a_first, a_second = a_first[0], a_second[0]
    np.testing.assert_array_equal(a_first, first.forward(X))
    np.testing.assert_array_equal(a_second, second.forward(X))
    assert not np.array_equal(a_first, a_second)


def weights_digest(path: Path) -> str:
    with np.load(path, allow_pickle=False) as f:
        return hashlib.sha256(b"".join(f[k].tobytes() for k in sorted(f.files))).hexdigest()


@pytest.mark.parametrize(
    "options",
    [
        ["--activation", "sigmoid", "--loss", "squared"],
        ["--activation", "tanh", "--loss", "cross-entropy", "--deterministic"],
    ],
)
def test_training_with_and_without_the_library_saves_the_same_model(options, tmp_path):
    """The trainer's own buffers (a stack of padded pieces with --deterministic: batch
    50 in 4 virtual shards of 13 and 12 rows) and the update rules, through the CLI."""
    run = ["--dataset", "synthetic:300:10:3", "--hidden", "16,8", "--batch-size", "50"]
    run += ["--epochs", "2", "--quiet", *options]
    digests = []
    for setting in ("1", "0"):
        out = tmp_path / f"model{setting}.npz"
        result = launch([*run, "--save", str(out)], env={"DISTNN_FUSED_KERNELS": setting})
        assert result.returncode == 0, result.stderr
        digests.append(weights_digest(out))
    assert digests[0] == digests[1]
