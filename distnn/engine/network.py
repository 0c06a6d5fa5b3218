"""The feed-forward network of MATH.md: one flat parameter buffer, backprop into another.

Every weight and bias lives in ONE contiguous 1-D buffer ``params``, laid out
W(1), b(1), W(2), b(2), …; ``weights[ℓ-1]`` (n_ℓ × n_{ℓ-1}) and ``biases[ℓ-1]`` are
views into it. Gradients use the same layout, so the trainer sums them across ranks
with one Allreduce and applies the update to ``params`` in place.

Rows are samples, so a batch is X (N × n_0) and MATH.md's feed-forward reads
Z(ℓ) = A(ℓ-1) W(ℓ)ᵀ + b(ℓ)ᵀ.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from distnn.engine import model_arrays
from distnn.engine.activations import Activation, get_activation
from distnn.engine.bound_layers import BoundLayers, bound_layers
from distnn.engine.losses import Loss, get_loss
from distnn.engine.workspace import Workspace
from distnn.io.outputs import atomic_savez


class Network:
    """A feed-forward network: sizes n_0..n_L, one σ per layer, a loss.

    ``activations`` is one name for every layer or one name per layer (L names).
    With ``loss="cross-entropy"`` the output layer is softmax.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activations: str | Sequence[str] = "sigmoid",
        loss: str = "squared",
        seed: int = 0,
        dtype: str | np.dtype = "float32",
    ) -> None:
        self.sizes = [int(n) for n in sizes]
        if len(self.sizes) < 2 or min(self.sizes) < 1:
            raise ValueError(f"sizes must be at least two positive widths, got {list(sizes)}")
        self.loss_fn: Loss = get_loss(loss)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.activation_names = self._resolve_activations(activations)
        self.sigma: list[Activation] = [get_activation(a) for a in self.activation_names]

        self.params = np.zeros(self.num_params, self.dtype)
        self.weights, self.biases = self.views(self.params)
        self._cached_views: tuple | None = None
        self._weights_T = [W.T for W in self.weights]  # views, as up to date as params
        # What each layer's feed-forward reads, fetched once rather than every step.
        self._layers = list(zip(self._weights_T, self.biases, self.sigma, strict=True))
        self._initialize(seed)
        # Set by training and saved with the model, for ``predict`` on raw inputs:
        # x ↦ (x − input_mean) / input_std, and whether outputs are class scores.
        self.input_mean: np.ndarray | None = None
        self.input_std: np.ndarray | None = None
        self.is_classifier = self.loss_fn.name == "cross-entropy"
        # The name of class k, when the training labels were names (CSV of species).
        self.class_names: list[str] | None = None

    @property
    def num_layers(self) -> int:
        """L, the number of layers with weights."""
        return len(self.sizes) - 1

    @property
    def num_params(self) -> int:
        return sum(n * (m + 1) for m, n in zip(self.sizes[:-1], self.sizes[1:], strict=True))

    def _resolve_activations(self, activations: str | Sequence[str]) -> list[str]:
        L = self.num_layers
        names = [activations] * L if isinstance(activations, str) else list(activations)
        if len(names) != L:
            raise ValueError(f"{len(names)} activations given for {L} layers")
        if self.loss_fn.name == "cross-entropy":
            names[-1] = "softmax"
        elif "softmax" in names:
            raise ValueError("softmax is only available as the output of loss='cross-entropy'")
        if "softmax" in names[:-1]:
            raise ValueError("softmax can only be the output layer")
        return names

    def views(self, flat: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per-layer (W, b) views into any buffer laid out like ``params``.

        A ``k × num_params`` stack (one row per piece) gives ``k × n × m`` and ``k × n``.
        """
        weights, biases, start, lead = [], [], 0, flat.shape[:-1]
        for m, n in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            weights.append(flat[..., start : start + n * m].reshape(*lead, n, m))
            start += n * m
            biases.append(flat[..., start : start + n])
            start += n
        return weights, biases

    def _grad_views(self, grad: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """``views(grad)``, made once for the buffer the training loop reuses every step."""
        cached = self._cached_views
        if cached is None or cached[0] is not grad:
            cached = self._cached_views = (grad, self.views(grad))
        return cached[1]

    def _initialize(self, seed: int) -> None:
        """Glorot uniform for saturating σ, He normal for the ReLU family; zero biases.

        Drawn in float64 from ``seed`` so float32 and float64 networks start alike.
        """
        rng = np.random.default_rng(seed)
        for W, sigma in zip(self.weights, self.sigma, strict=True):
            fan_out, fan_in = W.shape
            if sigma.he_init:
                W[...] = rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)
            else:
                bound = np.sqrt(6.0 / (fan_in + fan_out))
                W[...] = rng.uniform(-bound, bound, (fan_out, fan_in))

    def describe(self) -> str:
        """E.g. '64 → 32 → 10 (sigmoid, sigmoid; squared loss; 2,410 params)'."""
        layers = " → ".join(map(str, self.sizes))
        return (
            f"{layers} ({', '.join(self.activation_names)}; {self.loss_fn.name} loss; "
            f"{self.num_params:,} params)"
        )

    def layer_slices(self) -> list[slice]:
        """Where layer ℓ's W(ℓ), b(ℓ) sit in ``params`` (index ℓ-1): one contiguous slice."""
        slices, start = [], 0
        for m, n in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            slices.append(slice(start, start + n * (m + 1)))
            start += n * (m + 1)
        return slices

    def workspace(self, max_rows: int, pieces: int | None = None) -> Workspace:
        return Workspace(self.sizes, max_rows, self.dtype, pieces)

    # --- the hot path -------------------------------------------------------------

    def feed_forward(self, X: np.ndarray, ws: Workspace) -> np.ndarray:
        """a(L) for the rows of X, keeping every Z(ℓ), A(ℓ) in ``ws`` for backprop.

        X is ``rows × n_0``, or a stack ``pieces × rows × n_0`` for a stacked workspace.
        """
        return self._feed_forward(X, ws, bound_layers(self, ws, X.shape[-2], at_once=False))

    def _feed_forward(self, X: np.ndarray, ws: Workspace, bound: BoundLayers | None) -> np.ndarray:
        Z, A, _, _ = ws.rows(X.shape[-2])
        stacked, a = X.ndim == 3, X
        for ell, (W_T, b, sigma) in enumerate(self._layers, start=1):
            z = Z[ell]
            # z(ℓ) = W(ℓ) a(ℓ-1) + b(ℓ). ndarray.dot is np.dot's BLAS call without the
            # __array_function__ dispatch: the same bits, less overhead per call.
            if stacked:
                np.matmul(a, W_T, out=z)
            else:
                a.dot(W_T, out=z)
            a = A[ell]
            if bound is None:
                np.add(z, b, out=z)
                sigma.apply(z, out=a)  # a(ℓ) = σ(ℓ)(z(ℓ))
            else:  # the same, in fewer calls (fused_layers.c): the same bits
                for step in bound.forward[ell]:
                    step()
        return a

    def backprop(
        self,
        X: np.ndarray,
        Y: np.ndarray,
        grad: np.ndarray,
        ws: Workspace,
        scale: float = 1.0,
        layer_done: Callable[[int], None] | None = None,
        padding: Sequence[tuple[int, int]] = (),
    ) -> float | np.ndarray:
        """Write ``scale`` · Σ_k ∇C_k over the rows of (X, Y) into ``grad``; return Σ_k C_k.

        The trainer passes scale = 1/(global batch size), so the shard gradients sum to
        the gradient of the batch mean (MATH.md, Cost). Backprop is linear in Δ(L), so
        scaling the small output Δ(L) scales every gradient, with no pass over ``grad``.

        MATH.md's dynamic program, batched: Δ(L) from the loss (base case), then for
        ℓ = L..1: ∂C/∂W(ℓ) = Δ(ℓ)ᵀ A(ℓ-1), ∂C/∂b(ℓ) = column sums of Δ(ℓ), and
        Δ(ℓ-1) = σ̇(Z(ℓ-1)) ⊙ (Δ(ℓ) W(ℓ)) (recursive case). The sum over samples
        happens inside the matrix products; ``grad`` is laid out like ``params``.
        Z(ℓ) is dead once σ̇(ℓ) has been taken, so it serves as that layer's scratch.
        ``layer_done(ℓ)``, if given, is called as soon as layer ℓ's gradients are final,
        so their communication can start while layers ℓ-1..1 are still computed.

        Stacked pieces (a stacked workspace): X is ``k × rows × n_0``, Y ``k × rows × n_L``,
        ``grad`` ``k × num_params``, and the result is each piece's Σ_k C_k (``ws.sums``,
        ``k × 1 × 1``). Every product runs once per piece with the piece's shape, so a
        piece's bits do not depend on the other pieces in the stack. A piece shorter than
        ``rows`` lists ``(index, real rows)`` in ``padding``: its rows beyond are zeros in
        Y and get a(L) = 0, hence Δ(L) = 0 and no share of the loss or the gradient.
        """
        n, L = X.shape[-2], self.num_layers
        if X.size == 0:  # an empty shard still joins the Allreduce(s), with zeros
            grad.fill(0.0)
            for ell in range(L, 0, -1):
                if layer_done is not None:
                    layer_done(ell)
            return 0.0
        bound = bound_layers(self, ws, n, at_once=True)
        if bound is not None and bound.whole is not None and layer_done is None:
            total = bound.whole(X, Y, grad, scale, padding)  # all below in one call
            if total is not None:  # (the same bits: engine/fused_backprop.c)
                return total
        grad_W, grad_b = self._grad_views(grad)
        a_L = self._feed_forward(X, ws, bound)
        Z, A, D, ones = ws.rows(n)
        for piece, rows in padding:
            a_L[piece, rows:] = 0.0
        total = self.loss_fn.output_delta(
            a_L, Y, Z[L], self.sigma[L - 1], D[L], Z[L], scale, ws.sums, bound
        )
        # ndarray.dot: np.dot without its dispatch (see feed_forward); matmul for stacks.
        dot = np.matmul if X.ndim == 3 else np.ndarray.dot
        for ell in range(L, 0, -1):
            delta = D[ell]
            a_prev = X if ell == 1 else A[ell - 1]
            dot(delta.swapaxes(-1, -2), a_prev, out=grad_W[ell - 1])
            dot(ones, delta, out=grad_b[ell - 1])  # column sums of Δ(ℓ)
            if layer_done is not None:
                layer_done(ell)
            if ell > 1:
                delta_prev = D[ell - 1]
                dot(delta, self.weights[ell - 1], out=delta_prev)  # ∂C/∂a(ℓ-1)
                steps = None if bound is None else bound.derivative[ell - 1]
                if steps is None:
                    z_prev = Z[ell - 1]
                    self.sigma[ell - 2].scale_by_derivative(delta_prev, z_prev, a_prev, z_prev)
                else:  # the same in fewer calls (fused_layers.c): the same bits
                    for step in steps:
                        step()
        return total

    # --- convenience API (allocates; not for the training loop) ---------------------

    def _rows(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=self.dtype)
        if X.ndim != 2 or X.shape[1] != self.sizes[0]:
            raise ValueError(f"expected rows of {self.sizes[0]} features, got shape {X.shape}")
        return X

    def forward(self, X: np.ndarray) -> np.ndarray:
        """Outputs a(L) for the rows of X, shape (N, n_L)."""
        X = self._rows(X)
        return self.feed_forward(X, self.workspace(X.shape[0])).copy()

    def predict(self, X: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """Outputs a(L) for raw inputs: standardized as in training, in chunks of rows."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.sizes[0]:
            raise ValueError(f"expected rows of {self.sizes[0]} features, got shape {X.shape}")
        out = np.empty((len(X), self.sizes[-1]), self.dtype)
        ws = self.workspace(min(chunk, max(1, len(X))))
        for lo in range(0, len(X), chunk):
            rows = np.array(X[lo : lo + chunk], dtype=self.dtype)
            if self.input_mean is not None:
                standardize_rows(rows, self.input_mean, self.input_std, out=rows)
            out[lo : lo + len(rows)] = self.feed_forward(rows, ws)
        return out

    def predict_classes(self, X: np.ndarray) -> np.ndarray:
        """The class (output index with the largest a(L)) of each row of raw inputs."""
        return self.predict(X).argmax(axis=1)

    # --- the model file: a plain .npz any NumPy user can read (distnn.engine.model_arrays)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything a saved model holds, as named arrays (views of the weights)."""
        return model_arrays.to_arrays(self)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], source: str = "model") -> Network:
        """The network ``to_arrays`` described; DistnnError naming ``source`` if it is not one."""
        return model_arrays.from_arrays(cls, arrays, source)

    def save(self, path: str) -> None:
        """Write a plain ``.npz`` (the format: :mod:`distnn.engine.model_arrays`), atomically;
        DistnnError (one line) if it cannot be written."""
        atomic_savez(path, self.to_arrays())

    @classmethod
    def load(cls, path: str) -> Network:
        """The network saved at ``path``, read without pickle (so a file cannot run code);
        DistnnError (one line) naming the file if it is not a distnn model."""
        return cls.from_arrays(model_arrays.read_model_file(path), source=path)

    def loss(self, X: np.ndarray, Y: np.ndarray) -> float:
        """C = (1/N) Σ_k C_k, the mean loss over the rows of (X, Y)."""
        X = self._rows(X)
        a = self.forward(X)
        return self.loss_fn.value(a, np.asarray(Y, self.dtype), np.empty_like(a)) / len(X)

    def gradient(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """∇C of ``loss(X, Y)`` (the mean), laid out like ``params``."""
        X = self._rows(X)
        grad = np.empty_like(self.params)
        Y = np.ascontiguousarray(Y, self.dtype)
        self.backprop(X, Y, grad, self.workspace(len(X)), scale=1.0 / len(X))
        return grad


def standardize_rows(
    x: np.ndarray, mean: np.ndarray, std: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """x ↦ (x − input_mean) / input_std, feature by feature (``--standardize``): the one
    implementation, for training data, validation data, evaluation and prediction.

    Into ``out`` (which may be ``x``) when given; else a new array of ``x``'s dtype.
    """
    if out is None:
        return ((x - mean) / std).astype(x.dtype, copy=False)
    np.subtract(x, mean, out=out)
    out /= std
    return out
