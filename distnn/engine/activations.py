"""The squishification functions σ(ℓ) of MATH.md and their derivatives σ̇(ℓ).

Each activation works in place on preallocated arrays, because it runs on every
layer of every training step:

- ``apply(z, out)`` writes a = σ(z).
- ``scale_by_derivative(delta, z, a, scratch)`` multiplies ``delta`` in place by
  σ̇(z), the ⊙ σ̇(ℓ)(z(ℓ)) factor of MATH.md's backprop. It may read the layer's
  output ``a`` instead of ``z`` where σ̇ is cheaper that way (σ̇ = a(1 − a) for the
  sigmoid), and may overwrite ``scratch``, an array of the same shape.

``softmax`` is not elementwise: it is only allowed as the output layer of the
cross-entropy loss, which computes ∂C/∂z(L) for it directly (see ``losses``).
"""

from __future__ import annotations

import numpy as np

# Exact constants as 0-d arrays: a ufunc takes them in about half the time of a Python
# float, and float32 0.5, 1, 2 promote to a float64 network's dtype unchanged.
HALF, ONE, TWO = (np.array(v, np.float32) for v in (0.5, 1.0, 2.0))
for _constant in (HALF, ONE, TWO):
    _constant.flags.writeable = False


class Activation:
    """σ and σ̇ for one name."""

    name: str
    he_init: bool = False  # He (ReLU family) rather than Glorot initialization

    def apply(self, z: np.ndarray, out: np.ndarray) -> None:
        raise NotImplementedError

    def scale_by_derivative(
        self, delta: np.ndarray, z: np.ndarray, a: np.ndarray, scratch: np.ndarray
    ) -> None:
        raise NotImplementedError


class Sigmoid(Activation):
    """σ(z) = 1 / (1 + e^(−z)),  σ̇ = σ(1 − σ)."""

    name = "sigmoid"

    def apply(self, z, out):
        # 0.5·(1 + tanh(z/2)) is the sigmoid without overflow for large |z|.
        np.multiply(z, HALF, out=out)
        np.tanh(out, out=out)
        np.add(out, ONE, out=out)
        np.multiply(out, HALF, out=out)

    def scale_by_derivative(self, delta, z, a, scratch):
        np.subtract(ONE, a, out=scratch)
        np.multiply(scratch, a, out=scratch)
        np.multiply(delta, scratch, out=delta)


class Tanh(Activation):
    """σ(z) = tanh z,  σ̇ = 1 − tanh² z."""

    name = "tanh"

    def apply(self, z, out):
        np.tanh(z, out=out)

    def scale_by_derivative(self, delta, z, a, scratch):
        np.multiply(a, a, out=scratch)
        np.subtract(ONE, scratch, out=scratch)
        np.multiply(delta, scratch, out=delta)


class ReLU(Activation):
    """σ(z) = max(0, z),  σ̇ = 1 where z > 0, else 0."""

    name = "relu"
    he_init = True

    def apply(self, z, out):
        np.maximum(z, 0.0, out=out)

    def scale_by_derivative(self, delta, z, a, scratch):
        np.greater(z, 0.0, out=scratch)
        delta *= scratch


class LeakyReLU(Activation):
    """σ(z) = z for z > 0, else αz (α = 0.01);  σ̇ = 1 or α."""

    name = "leaky_relu"
    he_init = True
    slope = 0.01

    def apply(self, z, out):
        np.multiply(z, self.slope, out=out)
        np.maximum(z, out, out=out)

    def scale_by_derivative(self, delta, z, a, scratch):
        np.greater(z, 0.0, out=scratch)
        scratch *= 1.0 - self.slope
        scratch += self.slope
        delta *= scratch


class Identity(Activation):
    """σ(z) = z,  σ̇ = 1 (a linear layer, e.g. a regression output)."""

    name = "identity"

    def apply(self, z, out):
        if out is not z:
            np.copyto(out, z)

    def scale_by_derivative(self, delta, z, a, scratch):
        pass


class Softplus(Activation):
    """σ(z) = log(1 + e^z),  σ̇ = 1 / (1 + e^(−z)), the sigmoid."""

    name = "softplus"
    he_init = True

    def apply(self, z, out):
        np.logaddexp(z, 0.0, out=out)

    def scale_by_derivative(self, delta, z, a, scratch):
        Sigmoid.apply(self, z, scratch)
        delta *= scratch


class Softmax(Activation):
    """a_i = e^(z_i) / Σ_j e^(z_j) over each row; output layer of cross-entropy only."""

    name = "softmax"

    def apply(self, z, out):
        # Subtracting the row maximum leaves softmax unchanged and keeps exp finite.
        np.subtract(z, z.max(axis=-1, keepdims=True), out=out)
        np.exp(out, out=out)
        out /= out.sum(axis=-1, keepdims=True)

    def scale_by_derivative(self, delta, z, a, scratch):
        raise TypeError("softmax has no elementwise derivative; use loss='cross-entropy'")


ACTIVATIONS: dict[str, Activation] = {
    cls.name: cls() for cls in (Sigmoid, Tanh, ReLU, LeakyReLU, Identity, Softplus, Softmax)
}


def get_activation(name: str) -> Activation:
    """The activation called ``name``; ValueError listing the valid names otherwise."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r} (choose from {', '.join(ACTIVATIONS)})"
        ) from None
