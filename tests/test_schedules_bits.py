"""Every update rule gives the same bits as the implementation it replaced.

The rules now hand NumPy their constants as 0-d arrays of the gradient's dtype
(faster per call); determinism across rank counts and every saved checkpoint rely on
the step being the same bits as before. ``Reference`` below is a frozen copy of the
rules as they were (commit 482ac96, Python floats as ufunc operands): each rule is run
beside it over many steps, several dtypes, sizes and LR schedules, and compared with
``array_equal`` on the raw bits, never a tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from distnn.engine.lr_schedules import Constant, Cosine, StepDecay, Warmup, as_lr_schedule
from distnn.engine.schedules import SCHEDULES, make_schedule


class Reference:
    """Today's rules before the change, verbatim in their arithmetic."""

    def __init__(self, name: str, lr, shape, dtype) -> None:
        self.name, self.lr_schedule, self.t = name, as_lr_schedule(lr), 0
        self.beta = self.beta1 = self.rho = 0.9
        self.beta2, self.eps = 0.999, 1e-8
        zeros = np.zeros(shape, dtype)
        self.a, self.b, self.out, self.scratch = (zeros.copy() for _ in range(4))

    def __call__(self, grad: np.ndarray) -> np.ndarray:
        lr, out = float(self.lr_schedule(self.t)), self.out
        getattr(self, "_" + self.name)(grad, lr, out)
        self.t += 1
        return out

    def _normalized(self, grad, lr, out):
        np.abs(grad, out=out)
        gmax = out.max()
        if gmax == 0:
            out.fill(0)
            return
        np.divide(grad, gmax, out=out)
        np.multiply(out, out, out=self.scratch)
        out *= lr / math.sqrt(float(self.scratch.sum()))

    def _sgd(self, grad, lr, out):
        np.multiply(grad, lr, out=out)

    def _momentum(self, grad, lr, out, nesterov=False):
        v = self.a
        v *= self.beta
        v += grad
        if nesterov:
            np.multiply(v, self.beta, out=out)
            out += grad
            out *= lr
        else:
            np.multiply(v, lr, out=out)

    def _nesterov(self, grad, lr, out):
        self._momentum(grad, lr, out, nesterov=True)

    def _adagrad(self, grad, lr, out):
        np.multiply(grad, grad, out=out)
        self.a += out
        np.sqrt(self.a, out=out)
        out += self.eps
        np.divide(grad, out, out=out)
        out *= lr

    def _rmsprop(self, grad, lr, out):
        s = self.a
        s *= self.rho
        np.multiply(grad, grad, out=out)
        out *= 1.0 - self.rho
        s += out
        np.sqrt(s, out=out)
        out += self.eps
        np.divide(grad, out, out=out)
        out *= lr

    def _adam(self, grad, lr, out):
        k = self.t + 1
        b1, b2, m, v = self.beta1, self.beta2, self.a, self.b
        m *= b1
        np.multiply(grad, 1.0 - b1, out=out)
        m += out
        v *= b2
        np.multiply(grad, grad, out=out)
        out *= 1.0 - b2
        v += out
        np.divide(v, 1.0 - b2**k, out=out)
        np.sqrt(out, out=out)
        out += self.eps
        np.divide(m, out, out=out)
        out *= lr / (1.0 - b1**k)


LR_SCHEDULES = {
    "const": lambda: Constant(0.01),
    "odd": lambda: Constant(0.1 / 3),  # not representable: the cast to float32 matters
    "step": lambda: StepDecay(0.05, every=3, gamma=0.3),
    "warmup-cosine": lambda: Warmup(Cosine(0.2, total_steps=12, min_lr=1e-4), steps=4),
}


def gradients(n: int, dtype, steps: int, seed: int):
    """A sequence of gradients spanning many magnitudes, with zeros and sign changes."""
    rng = np.random.default_rng(seed)
    for t in range(steps):
        g = rng.standard_normal(n) * 10.0 ** rng.integers(-6, 4, n)
        g[rng.random(n) < 0.05] = 0.0
        yield (g * (1.0 if t % 4 else 1e-3)).astype(dtype)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 4099, 70_001])
@pytest.mark.parametrize("lr", sorted(LR_SCHEDULES))
def test_rule_is_bit_identical_to_previous_implementation(name, dtype, n, lr):
    rule, reference = make_schedule(name, LR_SCHEDULES[lr]()), None
    reference = Reference(name, LR_SCHEDULES[lr](), n, dtype)
    theta_new = np.linspace(-1, 1, n).astype(dtype)
    theta_ref = theta_new.copy()
    for t, g in enumerate(gradients(n, dtype, steps=10, seed=n)):
        step_new, step_ref = rule(g), reference(g)
        assert step_new.dtype == step_ref.dtype == dtype
        assert np.array_equal(step_new.view(np.uint8), step_ref.view(np.uint8)), (name, t)
        theta_new -= step_new
        theta_ref -= step_ref
    assert np.array_equal(theta_new.view(np.uint8), theta_ref.view(np.uint8))


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_bits_survive_a_resume_and_a_dtype_change(name):
    """State loaded mid-run (as from a checkpoint) continues with the previous bits; a
    schedule first used in float64 and then given float32 casts its constants anew."""
    n = 513
    rule, reference = make_schedule(name, 0.02), Reference(name, 0.02, n, np.float32)
    grads = list(gradients(n, np.float32, steps=6, seed=1))
    for g in grads[:3]:
        rule(g), reference(g)
    resumed = make_schedule(name, 0.02)
    resumed(grads[0].astype(np.float64))  # buffers and constants made for float64 first
    resumed.load_state_dict(rule.state_dict())
    for g in grads[3:]:
        step, expected = resumed(g), reference(g)
        assert step.dtype == np.float32
        assert np.array_equal(step.view(np.uint8), expected.view(np.uint8))
