"""The engine against MATH.md: finite differences, layout, and a hot path that allocates nothing."""

import tracemalloc

import numpy as np
import pytest

from distnn import Network
from distnn.engine.activations import ACTIVATIONS
from distnn.errors import DistnnError

ELEMENTWISE = [name for name in ACTIVATIONS if name != "softmax"]


def numerical_gradient(net: Network, X, Y, eps=1e-6) -> np.ndarray:
    """Central differences of the mean loss, one parameter at a time."""
    grad = np.empty_like(net.params)
    for i in range(net.params.size):
        old = net.params[i]
        net.params[i] = old + eps
        plus = net.loss(X, Y)
        net.params[i] = old - eps
        minus = net.loss(X, Y)
        net.params[i] = old
        grad[i] = (plus - minus) / (2 * eps)
    return grad


def random_problem(loss: str, seed: int = 1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((9, 5))
    classes = rng.integers(0, 4, 9)
    Y = np.eye(4)[classes] if loss == "cross-entropy" else rng.uniform(-1, 1, (9, 4))
    return X, Y


@pytest.mark.parametrize("loss", ["squared", "cross-entropy"])
@pytest.mark.parametrize("activation", ELEMENTWISE)
def test_gradient_matches_finite_differences(activation, loss):
    net = Network([5, 7, 6, 4], activation, loss=loss, seed=3, dtype="float64")
    # Nonzero biases keep every z(ℓ) off the ReLU kink at exactly 0, where the
    # derivative (and so the finite difference) is not defined.
    for b in net.biases:
        b[...] = np.random.default_rng(7).uniform(0.05, 0.2, b.shape)
    X, Y = random_problem(loss)
    analytic = net.gradient(X, Y)
    numeric = numerical_gradient(net, X, Y)
    rel = np.linalg.norm(analytic - numeric) / np.linalg.norm(numeric)
    assert rel < 1e-6, f"{activation}/{loss}: relative error {rel:.2e}"


def test_mixed_activations_per_layer():
    net = Network([5, 7, 6, 4], ["relu", "tanh", "identity"], seed=2, dtype="float64")
    X, Y = random_problem("squared")
    rel = np.linalg.norm(net.gradient(X, Y) - numerical_gradient(net, X, Y))
    assert rel / np.linalg.norm(net.gradient(X, Y)) < 1e-6


def test_loss_is_mean_of_squared_errors_per_sample():
    net = Network([5, 3, 4], "tanh", dtype="float64")
    X, Y = random_problem("squared")
    expected = np.mean(np.sum((net.forward(X) - Y) ** 2, axis=1))
    assert net.loss(X, Y) == pytest.approx(expected, rel=1e-12)


def test_forward_matches_math_md_column_form():
    """z(ℓ) = W(ℓ) a(ℓ-1) + b(ℓ) per sample, written with no batching at all."""
    net = Network([5, 7, 4], ["tanh", "sigmoid"], seed=4, dtype="float64")
    X, _ = random_problem("squared")
    for x, out in zip(X, net.forward(X), strict=True):
        a = x
        for W, b, f in zip(
            net.weights, net.biases, [np.tanh, lambda z: 1 / (1 + np.exp(-z))], strict=True
        ):
            a = f(W @ a + b)
        np.testing.assert_allclose(out, a, rtol=1e-12)


def test_softmax_output_rows_are_distributions():
    net = Network([5, 8, 4], "relu", loss="cross-entropy")
    out = net.forward(random_problem("cross-entropy")[0] * 100)
    assert net.activation_names[-1] == "softmax"
    assert np.all(np.isfinite(out)) and np.all(out >= 0)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_params_are_one_buffer_and_layers_are_views():
    net = Network([6, 5, 3])
    assert net.params.ndim == 1 and net.params.size == 5 * 6 + 5 + 3 * 5 + 3
    assert [W.shape for W in net.weights] == [(5, 6), (3, 5)]
    for view in [*net.weights, *net.biases]:
        assert np.shares_memory(view, net.params)
    net.params[:] = 0.5
    assert all(np.all(W == 0.5) for W in net.weights)


def test_float32_by_default_and_reproducible_from_seed():
    a, b, c = Network([4, 6, 2], seed=5), Network([4, 6, 2], seed=5), Network([4, 6, 2], seed=6)
    assert a.params.dtype == np.float32
    assert np.array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)
    assert a.forward(np.ones((3, 4))).dtype == np.float32


def test_backprop_writes_the_sum_over_samples():
    net = Network([5, 7, 4], "sigmoid", dtype="float64")
    X, Y = random_problem("squared")
    grad = np.empty_like(net.params)
    total = net.backprop(X, Y, grad, net.workspace(len(X)))
    np.testing.assert_allclose(grad, len(X) * net.gradient(X, Y), rtol=1e-12)
    assert total == pytest.approx(len(X) * net.loss(X, Y), rel=1e-12)


def test_empty_shard_gives_zero_gradient():
    net = Network([5, 7, 4])
    grad = np.ones_like(net.params)
    assert (
        net.backprop(
            np.empty((0, 5), np.float32), np.empty((0, 4), np.float32), grad, net.workspace(4)
        )
        == 0.0
    )
    assert not grad.any()


def peak_step_allocation(net: Network, rows: int) -> int:
    X = np.random.default_rng(0).standard_normal((rows, net.sizes[0])).astype(np.float32)
    Y = np.eye(net.sizes[-1], dtype=np.float32)[np.arange(rows) % net.sizes[-1]]
    ws, grad = net.workspace(rows), np.empty_like(net.params)
    net.backprop(X, Y, grad, ws)  # warm-up
    tracemalloc.start()
    for _ in range(3):
        net.backprop(X, Y, grad, ws)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


@pytest.mark.parametrize("loss", ["squared", "cross-entropy"])
def test_steady_state_backprop_allocates_no_arrays(loss):
    net = Network([64, 128, 64, 10], "relu", loss=loss)
    small, large = peak_step_allocation(net, 1024), peak_step_allocation(net, 4096)
    # One hidden activation matrix is 1024 × 128 × 4 B = 512 KiB. NumPy's broadcasting
    # iterator (the bias add without the fused kernels, softmax's row max and sum) takes
    # a buffer of at most 8,192 elements, which 1,024 rows of 10 outputs already fill;
    # nothing may grow with the rows.
    assert small < 64 * 1024, f"a step on 1024 rows allocated {small} B"
    assert large < small + 16 * 1024, f"allocation grew with the batch: {small} -> {large} B"


@pytest.mark.parametrize(
    "bad",
    [
        dict(sizes=[5]),
        dict(sizes=[5, 0, 2]),
        dict(sizes=[5, 3], activations="nope"),
        dict(sizes=[5, 3], loss="hinge"),
        dict(sizes=[5, 3, 2], activations=["relu"]),
        dict(sizes=[5, 3], activations="softmax"),
    ],
)
def test_bad_construction_is_refused(bad):
    with pytest.raises(ValueError):
        Network(**bad)


def test_model_arrays_round_trip(tmp_path):
    net = Network([5, 4, 3], ["relu", "tanh"], loss="cross-entropy", seed=2, dtype="float64")
    net.input_mean, net.input_std = np.arange(5.0), np.full(5, 2.0)
    X = np.random.default_rng(0).standard_normal((7, 5))
    again = Network.from_arrays(net.to_arrays())
    net.save(str(tmp_path / "m.npz"))
    loaded = Network.load(str(tmp_path / "m.npz"))
    for other in (again, loaded):
        assert other.activation_names == net.activation_names and other.is_classifier
        np.testing.assert_array_equal(other.predict(X), net.predict(X))


@pytest.mark.parametrize(
    ("drop", "words"),
    [
        ("W2", "not a distnn model (missing 'W2')"),
        ("input_std", "'input_mean' and 'input_std' come together"),
    ],
)
def test_bad_model_arrays_are_one_line(drop, words):
    net = Network([3, 2, 2])
    net.input_mean, net.input_std = np.zeros(3, np.float32), np.ones(3, np.float32)
    arrays = net.to_arrays()
    del arrays[drop]
    with pytest.raises(DistnnError) as info:
        Network.from_arrays(arrays, source="m.npz")
    assert str(info.value).startswith("m.npz: ") and words in str(info.value)
