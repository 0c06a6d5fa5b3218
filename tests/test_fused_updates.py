"""``schedule.apply(g, θ)`` (the one-pass C kernels) gives the same bits as the NumPy passes.

The kernels of ``distnn/engine/fused_updates.c`` redo each rule's arithmetic element by
element; determinism across rank counts, the byte-identity tests and every checkpoint rely
on them giving exactly ``θ -= schedule(g)``. Each rule runs both ways side by side (the
parameters and every state array compared as raw bytes after every step, never with a
tolerance), over sizes that do and do not fill a vector register, both dtypes, the LR
schedules of test_schedules_bits.py (one with a value float32 cannot hold), gradients
spanning ten orders of magnitude with zeros, and a resume from a state dict.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from distnn.engine import fused
from distnn.engine.schedules import SCHEDULES, Adam, make_schedule
from tests.test_schedules_bits import LR_SCHEDULES, gradients

needs_kernels = pytest.mark.skipif(
    fused.LIBRARY is None, reason="the fused kernels are not built (no C compiler at install)"
)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def run_both(name: str, lr: str, n: int, dtype, steps: int = 10):
    """Each step: the rule through apply, and the same rule through θ -= rule(g)."""
    fused_rule, numpy_rule = (
        make_schedule(name, LR_SCHEDULES[lr]()),
        make_schedule(name, LR_SCHEDULES[lr]()),
    )
    theta_fused = np.linspace(-1, 1, n).astype(dtype)
    theta_numpy = theta_fused.copy()
    grad = np.empty(n, dtype)  # one gradient buffer, refilled, as the reducer's is
    for t, g in enumerate(gradients(n, dtype, steps=steps, seed=n)):
        grad[...] = g
        fused_rule.apply(grad, theta_fused)
        theta_numpy -= numpy_rule(grad)
        assert same_bits(theta_fused, theta_numpy), (name, t)
        for state in fused_rule.state_arrays:
            assert same_bits(getattr(fused_rule, state), getattr(numpy_rule, state)), (state, t)
    assert fused_rule.t == numpy_rule.t == steps
    return fused_rule


@needs_kernels
@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 4099, 70_001])
@pytest.mark.parametrize("lr", sorted(LR_SCHEDULES))
def test_apply_is_bit_identical_to_the_numpy_passes(name, dtype, n, lr):
    rule = run_both(name, lr, n, dtype)
    # Every rule with a kernel used it after the first step (the normalized step has none).
    assert (rule._bound is not None) == (rule.kernel is not None or name == "nesterov")


@needs_kernels
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_apply_after_a_resume_continues_with_the_same_bits(name):
    n = 513
    grads = list(gradients(n, np.float32, steps=8, seed=3))
    reference, theta_ref = make_schedule(name, 0.02), np.linspace(-1, 1, n).astype(np.float32)
    fused_rule, theta = make_schedule(name, 0.02), theta_ref.copy()
    grad = np.empty(n, np.float32)
    for g in grads[:4]:
        grad[...] = g
        theta_ref -= reference(grad)
        fused_rule.apply(grad, theta)
    resumed = make_schedule(name, 0.02)
    resumed.apply(grads[0].astype(np.float64), theta.astype(np.float64))  # bound to float64
    resumed.load_state_dict(fused_rule.state_dict())  # a checkpoint: new state arrays
    for g in grads[4:]:
        grad[...] = g
        theta_ref -= reference(grad)
        resumed.apply(grad, theta)
        assert same_bits(theta, theta_ref)


@needs_kernels
def test_a_subclass_with_its_own_arithmetic_never_runs_the_kernel():
    class SignAdam(Adam):
        def _step(self, grad, lr, out):
            super()._step(np.sign(grad), lr, out)

    rule, theta = SignAdam(0.1), np.zeros(5)
    for g in ([1.0, -2, 3, 0, 5], [-4.0, 1, 1, 1, 2]):
        rule.apply(np.array(g), theta)
    expected, reference = np.zeros(5), SignAdam(0.1)
    for g in ([1.0, -2, 3, 0, 5], [-4.0, 1, 1, 1, 2]):
        expected -= reference(np.array(g))
    assert rule._bound is None and same_bits(theta, expected)


@needs_kernels
def test_arrays_the_kernel_cannot_take_fall_back_to_numpy():
    rule, theta = make_schedule("adam", 0.1), np.zeros(8, np.float32)
    strided = np.arange(16, dtype=np.float32)[::2]
    rule.apply(strided, theta)
    rule.apply(strided, theta)
    assert rule._bound is None
    reference, expected = make_schedule("adam", 0.1), np.zeros(8, np.float32)
    expected -= reference(strided)
    expected -= reference(strided)
    assert same_bits(theta, expected)


def test_without_the_kernels_apply_is_the_numpy_passes():
    """DISTNN_FUSED_KERNELS=0 (or no compiler at install): no library, same results."""
    code = (
        "from distnn.engine import fused; import numpy as np;"
        "from distnn.engine.schedules import make_schedule;"
        "r = make_schedule('adam', 0.1); t = np.zeros(3, np.float32);"
        "[r.apply(np.ones(3, np.float32), t) for _ in range(3)];"
        "print(fused.LIBRARY is None, r._bound is None, t.tobytes().hex())"
    )
    env = {**os.environ, "DISTNN_FUSED_KERNELS": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    reference, expected = make_schedule("adam", 0.1), np.zeros(3, np.float32)
    for _ in range(3):
        expected -= reference(np.ones(3, np.float32))
    assert out.stdout.split() == ["True", "True", expected.tobytes().hex()]
