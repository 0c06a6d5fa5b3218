"""Backprop in one compiled call gives the same bits as the NumPy calls, and declines the rest.

``fused_backprop.c`` runs a whole backprop (feed-forward, the loss, every gradient) through
the BLAS functions NumPy calls and NumPy's own loops (tanh, exp, log, add, maximum,
logaddexp). Each case, every σ and both losses, runs the same
steps three ways: the compiled call, the layer kernels alone (``fused_backprop.ENABLED``
off), and plain NumPy (``bound_layers.ENABLED`` off too), with the gradient and the
workspace's Z(ℓ), Δ(ℓ) filled with NaN before each step (a product's output is written,
never read: BLAS ignores it when β = 0, and the compiled call skips ndarray.dot's zeroing
of it); the loss, the gradient and every
A(ℓ), Δ(ℓ) are compared as raw bytes over several steps with the parameters moving. The
shapes cover widths that do and do not fill a vector register, a row count past BLAS's
small-matrix paths, leading-row views of a larger workspace, stacks of pieces
(``--deterministic``'s virtual shards, whose NumPy calls are np.matmul's) with and without
padding, and inputs from exact zeros to saturation. Where the call cannot promise NumPy's
bits (a NumPy loop not found, a width or row count of 1, arrays of another layout or
dtype, per-layer hand-off), it must decline, and the result is still NumPy's.
"""

from __future__ import annotations

import numpy as np
import pytest

from distnn import Network
from distnn.engine import bound_layers, fused_backprop

needs_it = pytest.mark.skipif(
    not fused_backprop.ENABLED,
    reason="no compiled backprop here (no C compiler, or not NumPy's scipy-openblas)",
)

# (sizes, rows, workspace rows, pieces, padding): a stack of pieces is --deterministic's
# virtual shards, np.matmul's products one piece at a time; padding lists its short pieces
# (index, real rows), whose rows beyond are zeros.
SHAPES = {
    "default": ([64, 32, 10], 32, 32, None, ()),
    "odd-widths": ([5, 7, 6, 3], 9, 9, None, ()),
    "two-wide": ([2, 2, 2], 2, 2, None, ()),
    "leading-rows": ([20, 33, 17, 4], 11, 16, None, ()),
    "deep": ([12, 9, 8, 7, 6, 5, 4], 13, 13, None, ()),
    "large": ([100, 96, 10], 300, 300, None, ()),
    "stacked": ([64, 32, 10], 16, 16, 2, ()),
    "stacked-leading-rows": ([20, 33, 17, 4], 5, 8, 3, ()),
    "stacked-padded": ([5, 7, 6, 3], 6, 8, 4, ((1, 4), (3, 0))),
}
ACTIVATIONS = [
    "sigmoid",
    "tanh",
    "identity",
    "relu",
    "leaky_relu",
    "softplus",
    ["tanh", "sigmoid"],
    ["identity", "tanh"],
    ["relu", "softplus"],
    ["leaky_relu", "identity", "relu"],
]


def run(monkeypatch, way, shape, activations, dtype, loss="squared", steps=3):
    """Raw bytes of everything backprop leaves behind, step by step, done ``way``."""
    sizes, rows, ws_rows, pieces, padding = SHAPES[shape]
    monkeypatch.setattr(fused_backprop, "ENABLED", way == "compiled")
    monkeypatch.setattr(bound_layers, "ENABLED", way != "numpy")
    if isinstance(activations, list):  # one name per layer: repeat the pattern
        activations = [activations[i % len(activations)] for i in range(len(sizes) - 1)]
    net = Network(sizes, activations, loss=loss, seed=3, dtype=dtype)
    rng = np.random.default_rng(7)
    for b in net.biases:  # not zeros, so the bias addition shows
        b[...] = rng.uniform(-1, 1, b.shape)
    lead = (rows,) if pieces is None else (pieces, rows)
    scales = rng.choice([0.0, 1.0, 3.0, 40.0], lead)[..., None]  # zero rows to saturated ones
    X = (rng.standard_normal((*lead, sizes[0])) * scales).astype(dtype)
    if loss == "cross-entropy":  # one-hot rows, and a few soft ones
        Y = np.eye(sizes[-1])[rng.integers(0, sizes[-1], lead)]
        Y[..., :1, :] = rng.dirichlet(np.ones(sizes[-1]), Y[..., :1, :].shape[:-1])
    else:
        Y = rng.uniform(-1, 1, (*lead, sizes[-1]))
    Y = Y.astype(dtype)
    for piece, real in padding:
        X[piece, real:], Y[piece, real:] = 0.0, 0.0
    ws = net.workspace(ws_rows, pieces)
    grad = np.empty((*lead[:-1], net.num_params), net.dtype)
    record = []
    for step in range(steps):
        for poisoned in (grad, *ws.Z[1:], *ws.D[1:]):  # outputs are written, never read
            poisoned.fill(np.nan)
        scale = 1.0 if step == 1 else 1.0 / (step + 3)  # cross-entropy skips 1.0's product
        total = net.backprop(X, Y, grad, ws, scale, padding=padding)
        _, A, D, _ = ws.rows(rows)
        record.append(
            [np.float64(total).tobytes(), grad.tobytes(), *(a.tobytes() for a in A[1:] + D[1:])]
        )
        total_grad = grad.reshape(-1, net.num_params).sum(axis=0)
        net.params -= 0.05 * total_grad / max(float(np.abs(total_grad).max()), 1e-30)
    whole = (
        ws.bound[rows].whole if isinstance(ws.bound.get(rows), bound_layers.BoundLayers) else None
    )
    return record, whole


@needs_it
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("loss", ["squared", "cross-entropy"])
@pytest.mark.parametrize("activations", ACTIVATIONS, ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_one_call_gives_numpys_bits(monkeypatch, shape, activations, loss, dtype):
    """Cross-entropy's output layer is softmax whatever the activations say."""
    compiled, whole = run(monkeypatch, "compiled", shape, activations, dtype, loss)
    assert whole is not None and whole._x is not None  # the one call ran, bound to X
    kernels, none = run(monkeypatch, "kernels", shape, activations, dtype, loss)
    assert none is None
    numpy, _ = run(monkeypatch, "numpy", shape, activations, dtype, loss)
    assert compiled == kernels == numpy


@needs_it
@pytest.mark.parametrize(
    "case",
    ["no-maximum-loop", "width-1", "one-row", "overlap"],
)
def test_declines_what_it_cannot_promise(monkeypatch, case):
    """No compiled call for these networks or steps; the NumPy calls give the result."""
    sizes, activations, loss, rows = [6, 5, 4], "sigmoid", "squared", 7
    if case == "no-maximum-loop":  # as where NumPy's loop was not found or not its bits
        found = {dtype: dict(routines) for dtype, routines in fused_backprop._FOUND.items()}
        del found[np.dtype(np.float32)]["maximum"]
        monkeypatch.setattr(fused_backprop, "_FOUND", found)
        activations = ["relu", "tanh"]
    elif case == "width-1":
        sizes = [6, 5, 1]
    elif case == "one-row":
        rows = 1
    results = []
    for enabled in (True, False):
        monkeypatch.setattr(fused_backprop, "ENABLED", enabled)
        net = Network(sizes, activations, loss=loss, seed=1)
        rng = np.random.default_rng(2)
        X = rng.standard_normal((rows, sizes[0])).astype(np.float32)
        Y = np.eye(sizes[-1], dtype=np.float32)[rng.integers(0, sizes[-1], rows)]
        ws, grad = net.workspace(rows), np.empty(net.num_params, np.float32)
        done = [] if case == "overlap" else None
        total = net.backprop(X, Y, grad, ws, 0.25, done.append if done is not None else None)
        bound = ws.bound.get(rows)
        whole = bound.whole if isinstance(bound, bound_layers.BoundLayers) else None
        if case == "overlap":  # per-layer hand-off needs the layer-by-layer calls
            assert done == [2, 1]
            assert whole is None or whole._x is None
        elif enabled:
            assert whole is None
        results.append((np.float64(total).tobytes(), grad.tobytes()))
    assert results[0] == results[1]


@needs_it
@pytest.mark.parametrize("layout", ["strided-x", "fortran-y", "float64-x", "wrong-size-grad"])
def test_arrays_of_another_layout_take_the_numpy_calls(monkeypatch, layout):
    """The call binds X, Y and the gradient buffer only if they are what it reads."""
    net = Network([6, 5, 4], "sigmoid", seed=1)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((8, 12)).astype(np.float32)[:, ::2]  # strided unless copied
    Y = rng.uniform(-1, 1, (8, 4)).astype(np.float32)
    grad = np.empty(net.num_params, np.float32)
    if layout == "fortran-y":
        X, Y = np.ascontiguousarray(X), np.asfortranarray(Y)
    elif layout == "float64-x":
        X = X.astype(np.float64)
    elif layout == "wrong-size-grad":
        X, grad = np.ascontiguousarray(X), np.empty(net.num_params + 1, np.float32)
    ws = net.workspace(8)
    whole = fused_backprop.bind(net, ws, 8)
    assert whole is not None
    assert whole(X, Y, grad, 0.5) is None and whole._x is None
    if layout in (
        "strided-x",
        "fortran-y",
    ):  # Network.backprop takes its NumPy calls and the same bits
        monkeypatch.setattr(fused_backprop, "ENABLED", False)
        expected = np.empty_like(grad)
        t0 = net.backprop(X, Y, expected, net.workspace(8), 0.5)
        monkeypatch.setattr(fused_backprop, "ENABLED", True)
        t1 = net.backprop(X, Y, grad, ws, 0.5)
        assert (t0, expected.tobytes()) == (t1, grad.tobytes())


def test_a_stack_whose_arrays_do_not_fit_takes_the_numpy_calls():
    """A stack of pieces binds only a stack of gradients, one row per piece."""
    net = Network([6, 5, 4], "sigmoid", seed=1)
    whole = fused_backprop.bind(net, net.workspace(4, pieces=3), 4)
    X, Y = np.zeros((3, 4, 6), np.float32), np.zeros((3, 4, 4), np.float32)
    assert whole(X, Y, np.zeros(net.num_params, np.float32), 0.5) is None
    assert whole(X[:2], Y[:2], np.zeros((2, net.num_params), np.float32), 0.5) is None
    assert whole(X, Y, np.zeros((3, net.num_params), np.float32), 0.5) is not None


@needs_it
@pytest.mark.parametrize("threads", [1, 2])
def test_the_same_bits_with_blas_on_more_threads(monkeypatch, threads):
    """Large enough that OpenBLAS splits the products over its threads: both ways make
    the same calls on the same library, so the split is the same too."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="blas"):
        compiled, whole = run(monkeypatch, "compiled", "large", "sigmoid", "float32")
        numpy, _ = run(monkeypatch, "numpy", "large", "sigmoid", "float32")
    assert whole is not None and compiled == numpy
