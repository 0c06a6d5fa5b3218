"""The layer kernels of ``fused_layers.c`` bound to one workspace's views, ready to call.

A step's arrays never move: the workspace's views of n rows (``Workspace.rows``) and the
network's bias views are fixed, so each kernel call is built once (a
:class:`~distnn.engine.fused.LayerCall` holding the pointers and sizes) and then costs one
ctypes call with one argument, about one ufunc call. Each replaces a chain of NumPy calls
with the same bits (``fused_layers.c`` says why); where a kernel is missing or an array's
layout does not fit one, the NumPy passes of :mod:`~distnn.engine.activations` and
:mod:`~distnn.engine.losses` run instead.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from distnn.engine import fused, fused_backprop
from distnn.engine.activations import (
    HALF,
    Activation,
    Identity,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Softmax,
    Softplus,
    Tanh,
)
from distnn.engine.fused_backprop import Layers

if TYPE_CHECKING:
    from distnn.engine.workspace import Workspace


# False: every network runs the NumPy passes (tests compare both ways in one process).
ENABLED = fused.LIBRARY is not None

# σ̇ in one kernel each: from the layer's output a (Δ ⊙= a(1 − a), Δ ⊙= 1 − a²) or from z.
_DERIVATIVES = {
    Sigmoid: ("sigmoid_derivative", "a"),
    Tanh: ("tanh_derivative", "a"),
    ReLU: ("relu_derivative", "z"),
    LeakyReLU: ("leaky_relu_derivative", "z"),
}

Step = Callable[[], None]


def _layout(x: np.ndarray) -> tuple[int, int, int, int] | None:
    """(blocks, rows, cols, elements from block to block) of a 2-D array or a stack of
    them whose rows are contiguous within each block; None for any other layout."""
    if x.ndim == 2:
        (rows, cols), (row_step, item), block_step = x.shape, x.strides, 0
        blocks = 1
    elif x.ndim == 3:
        (blocks, rows, cols), (block_step, row_step, item) = x.shape, x.strides
    else:
        return None
    size = x.itemsize
    fits = (item == size or cols <= 1) and (row_step == cols * size or rows <= 1)
    if not (fits and x.flags.aligned and block_step % size == 0):
        return None
    return blocks, rows, cols, block_step // size


def _fill(call: fused.LayerCall, slot: int, x: np.ndarray, shape: tuple) -> bool:
    """Point ``call.array[slot]`` at ``x`` if its layout is ``shape`` (blocks, rows, cols)."""
    layout = _layout(x)
    if layout is None or layout[:3] != shape:
        return False
    call.array[slot], call.stride[slot] = x.ctypes.data, layout[3]
    return True


class BoundLayers:
    """``net``'s layer kernels bound to the views of ``n`` rows of ``ws``.

    - ``forward[ℓ]``: steps (calls without arguments) that do z(ℓ) += b(ℓ) then
      a(ℓ) = σ(ℓ)(z(ℓ)); for the sigmoid, the bias kernel also halves z into a(ℓ), NumPy's
      tanh runs in place, and a second kernel does (a + 1)·0.5.
    - ``derivative[ℓ]``: steps doing Δ(ℓ) ⊙= σ̇(ℓ) (Z(ℓ), dead by then, may be their
      scratch, as for the NumPy passes), or None (the NumPy passes).
    - :meth:`scale_output_derivative` and :meth:`scaled_difference`: the loss's output
      delta, when a kernel does it.
    """

    def __init__(self, net: Layers, ws: Workspace, n: int) -> None:
        self.net = net
        self._calls: list[fused.LayerCall] = []  # what the prebuilt pointers point into
        self._dtype = net.dtype
        Z, A, D, _ = ws.rows(n)
        L = net.num_layers
        self.forward: list[Sequence[Step]] = [()]
        self.derivative: list[Sequence[Step] | None] = [None]
        for ell in range(1, L + 1):
            sigma, b = net.sigma[ell - 1], net.biases[ell - 1]
            z, a = Z[ell], A[ell]
            steps: list[Step | None]
            if type(sigma) is Sigmoid:
                steps = [self._bind("bias_half", (z, a), b), partial(np.tanh, a, a)]
                steps.append(self._bind("sigmoid_tail", (a,)))
            elif type(sigma) is Softmax:
                steps = [self._bind("bias_add", (z,), b), *self._softmax(z, a)]
            else:
                steps = [self._bind("bias_add", (z,), b), partial(sigma.apply, z, a)]
            if None in steps:  # the NumPy passes, as feed_forward does them
                steps = [partial(np.add, z, b, z), partial(sigma.apply, z, a)]
            self.forward.append(tuple(steps))
            self.derivative.append(self._derivative(sigma, z, a, D[ell]))
        self._delta, self._a = D[L], A[L]
        self._output = self._derivative(net.sigma[L - 1], Z[L], A[L], D[L], scaled=True)
        self._difference = self._bind("scaled_difference", (A[L], A[L], D[L]))
        self._y: np.ndarray | None = None
        # The whole backprop as one call, where it gives these bits (fused_backprop.c).
        self.whole = fused_backprop.bind(net, ws, n)

    def _derivative(
        self,
        sigma: Activation,
        z: np.ndarray,
        a: np.ndarray,
        delta: np.ndarray,
        scaled: bool = False,
    ) -> Sequence[Step] | None:
        """The steps of Δ ⊙= σ̇ (with ``scaled``, Δ·scale first: the output layer's), or
        None where no kernel does it."""
        kind = type(sigma)
        if kind is Identity and not scaled:
            return ()  # σ̇ = 1
        if kind is Softplus:  # σ̇ is the sigmoid: z/2 and tanh in NumPy, in z, then a kernel
            last = self._bind("sigmoid_tail_product", (delta, z), scaled=scaled)
            steps = [partial(np.multiply, z, HALF, z), partial(np.tanh, z, z), last]
        elif kind in _DERIVATIVES:
            name, reads = _DERIVATIVES[kind]
            last = self._bind(name, (delta, a if reads == "a" else z), scaled=scaled)
            if last is not None and kind is LeakyReLU:
                last.call.slope = sigma.slope
            steps = [last]
        else:
            return None
        return None if last is None else tuple(steps)

    @staticmethod
    def _softmax(z: np.ndarray, a: np.ndarray) -> list[Step]:
        """Softmax.apply's passes, its row maxima and sums kept in one buffer made here
        rather than in two new arrays each step (the same reductions, so the same bits)."""
        row = np.empty((*z.shape[:-1], 1), z.dtype)
        return [
            partial(np.maximum.reduce, z, -1, None, row, True),  # z.max(axis=-1, keepdims=True)
            partial(np.subtract, z, row, a),
            partial(np.exp, a, a),
            partial(np.add.reduce, a, -1, None, row, True),  # a.sum(axis=-1, keepdims=True)
            partial(np.divide, a, row, a),
        ]

    def _bind(
        self,
        name: str,
        arrays: tuple[np.ndarray, ...],
        bias: np.ndarray | None = None,
        scaled: bool = False,
    ) -> Step | None:
        """Kernel ``name`` on ``arrays`` (all of one layout) as a call without arguments,
        or None if there is no such kernel or an array does not fit it."""
        function = fused.layer_kernel(name, self._dtype)
        layout = _layout(arrays[0])
        if function is None or layout is None:
            return None
        call = fused.LayerCall(*layout[:3])
        call.scaled = scaled
        if not all(_fill(call, i, x, layout[:3]) for i, x in enumerate(arrays)):
            return None
        if any(x.dtype != self._dtype for x in arrays):
            return None
        if bias is not None:
            if bias.shape != (layout[2],) or not bias.flags.c_contiguous:
                return None
            call.bias = bias.ctypes.data
        self._calls.append(call)
        step = partial(function, ctypes.c_void_p(ctypes.addressof(call)))
        step.call = call  # type: ignore[attr-defined]  # (scale, y) are set before a call
        return step

    def scale_output_derivative(self, delta: np.ndarray, a: np.ndarray, scale: float) -> bool:
        """Δ(L) ← (Δ(L)·scale) ⊙ σ̇(L), its product in one pass, if a kernel does it for
        these arrays."""
        steps = self._output
        if steps is None or delta is not self._delta or a is not self._a:
            return False
        steps[-1].call.scale = scale
        for step in steps:
            step()
        return True

    def scaled_difference(
        self, a: np.ndarray, y: np.ndarray, delta: np.ndarray, scale: float
    ) -> bool:
        """Δ(L) ← (a(L) − y)·scale in one pass, if a kernel does it for these arrays."""
        step = self._difference
        if step is None or delta is not self._delta or a is not self._a:
            return False
        call = step.call
        if y is not self._y:  # the trainer passes the same targets buffer every step
            if y.dtype != self._dtype or not _fill(call, 1, y, (call.blocks, call.rows, call.cols)):
                self._y = None
                return False
            self._y = y  # held, so its address stays valid
        call.scale = scale
        step()
        return True


def bound_layers(net: Layers, ws: Workspace, n: int, at_once: bool) -> BoundLayers | None:
    """``net``'s kernels bound to ``ws``'s views of n rows (kept in ``ws``), or None: then
    the NumPy passes run, with the same bits.

    Binding costs about a hundred ufunc calls, which a workspace used once
    (``Network.forward``) would never win back: unless ``at_once`` (backprop, whose
    workspace is a training loop's, and whose every buffer should exist after its first
    step), the first step of ``net`` on these views runs the NumPy passes and the second
    binds.
    """
    if not ENABLED:
        return None
    seen = ws.bound.get(n)
    if type(seen) is BoundLayers and seen.net is net:
        return seen
    if at_once or seen is net:
        bound = ws.bound[n] = BoundLayers(net, ws, n)
        return bound
    ws.bound[n] = net
    return None
