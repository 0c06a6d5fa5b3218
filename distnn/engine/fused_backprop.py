"""Backprop of a small network in one compiled call (``fused_backprop.c``), the same bits.

``Network.backprop`` on one block of rows makes about twenty NumPy calls; on the default
network (64-32-10, batch 32) they cost as much as the matrix products themselves. The
compiled step makes the same BLAS calls and runs NumPy's own tanh, exp, log and add loops
(the very functions NumPy calls, which :mod:`~distnn.engine.numpy_routines` finds), with
the rest of its elementwise work in ``fused_layers.c``'s kernels, so its results are
NumPy's to the bit.

It takes what it can prove equal and nothing else: any elementwise σ with the squared
loss, or such hidden layers and a softmax output with cross-entropy (up to 4,096
classes), when the NumPy loops they need were found and give NumPy's bits; at most 16
layers; every width and the row count above 1 (NumPy takes other BLAS routes for
vectors); aligned arrays of the network's dtype with contiguous rows; NumPy's wheels'
BLAS (scipy-openblas, ILP64) on Linux. A stacked workspace
(``--deterministic``) runs piece by piece, as np.matmul does. Anything else gets None
from :func:`bind` (or from the call, for arrays that do not fit), and the NumPy calls run.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from distnn.engine import fused, numpy_routines
from distnn.engine.activations import (
    Activation,
    Identity,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Softmax,
    Softplus,
    Tanh,
)

if TYPE_CHECKING:
    from distnn.engine.workspace import Workspace

MAX_LAYERS = 16
# fused_backprop.c's enums, and the NumPy loops each σ needs beyond BLAS (softmax's
# include cross-entropy's log: a softmax output comes only with that loss)
KINDS = {Identity: 0, Sigmoid: 1, Tanh: 2, Softmax: 3, ReLU: 4, LeakyReLU: 5, Softplus: 6}
NEEDS = {
    Identity: (),
    Sigmoid: ("tanh",),
    Tanh: ("tanh",),
    Softmax: ("exp", "add", "log"),
    ReLU: ("maximum",),
    LeakyReLU: ("maximum",),
    Softplus: ("logaddexp", "tanh"),  # tanh for its σ̇, the sigmoid
}
LOSSES = {"squared": 0, "cross-entropy": 1}
MAX_CLASSES = 4096  # softmax's row sums: one NumPy loop call per row, as np.add.reduce's


class NamedLoss(Protocol):
    """A loss as far as the call needs it: its name (losses.py's ``LOSSES`` keys)."""

    name: str


class Layers(Protocol):
    """What the kernels are bound to: a :class:`~distnn.engine.network.Network`'s layers
    and loss (a protocol, so that the engine's kernel modules, which the network uses,
    need no import of it)."""

    dtype: np.dtype
    sizes: list[int]
    sigma: list[Activation]
    params: np.ndarray
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    loss_fn: NamedLoss

    @property
    def num_layers(self) -> int: ...

    def views(self, flat: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]: ...


_Slots = ctypes.c_void_p * (MAX_LAYERS + 1)


class NumpyLoop(ctypes.Structure):
    """fused_backprop.c's ``numpy_loop``: a ufunc's inner loop and its data."""

    _fields_ = (("function", ctypes.c_void_p), ("data", ctypes.c_void_p))


class BackpropCall(ctypes.Structure):
    """fused_backprop.c's ``backprop_call``."""

    _fields_ = (
        ("layers", ctypes.c_ssize_t),
        ("rows", ctypes.c_ssize_t),
        ("width", ctypes.c_ssize_t * (MAX_LAYERS + 1)),
        ("kind", ctypes.c_int * (MAX_LAYERS + 1)),
        ("x", ctypes.c_void_p),
        ("y", ctypes.c_void_p),
        ("ones", ctypes.c_void_p),
        ("W", _Slots),
        ("b", _Slots),
        ("Z", _Slots),
        ("A", _Slots),
        ("D", _Slots),
        ("grad_W", _Slots),
        ("grad_b", _Slots),
        ("gemm", ctypes.c_void_p),
        ("gemv", ctypes.c_void_p),
        ("dot", ctypes.c_void_p),
        ("tanh", NumpyLoop),
        ("exp", NumpyLoop),
        ("log", NumpyLoop),
        ("add", NumpyLoop),
        ("maximum", NumpyLoop),
        ("logaddexp", NumpyLoop),
        ("slope", ctypes.c_double * (MAX_LAYERS + 1)),
        ("loss_kind", ctypes.c_int),
        ("pieces", ctypes.c_ssize_t),
        ("x_step", ctypes.c_ssize_t),
        ("y_step", ctypes.c_ssize_t),
        ("grad_step", ctypes.c_ssize_t),
        ("step", ctypes.c_ssize_t * (MAX_LAYERS + 1)),
        ("real_rows", ctypes.c_void_p),
        ("sums", ctypes.c_void_p),
        ("scale", ctypes.c_double),
        ("loss", ctypes.c_double),
    )


_FOUND = numpy_routines.find() if fused.LIBRARY is not None else None
# False: Network.backprop makes its NumPy (and layer kernel) calls (tests compare both).
ENABLED = _FOUND is not None


def _blocks(x: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> int | None:
    """Elements from one block to the next if ``x`` is ``shape`` of ``dtype`` with each
    block's rows contiguous (a 2-D array: one block); else None."""
    if x.shape != shape or x.dtype != dtype or not x.flags.aligned:
        return None
    size, (*lead, rows, cols) = x.itemsize, x.shape
    if (cols > 1 and x.strides[-1] != size) or (rows > 1 and x.strides[-2] != cols * size):
        return None
    if not lead:
        return 0
    if x.strides[0] < 0 or x.strides[0] % size:
        return None
    return x.strides[0] // size


class WholeBackprop:
    """``net``'s backprop over the views of ``n`` rows of ``ws`` as one compiled call.

    A stacked workspace runs each piece as its own block, with its own products: the
    products np.matmul makes for the stack, one matrix at a time. The inputs, targets and
    gradient buffer are bound on first use and again whenever the caller passes other
    arrays (the trainer passes the same buffers every step).
    """

    def __init__(
        self, net: Layers, ws: Workspace, n: int, found: dict[str, int], kernel: Callable
    ) -> None:
        self.net, self.n = net, n  # found: numpy_routines.find()'s entry for net.dtype
        Z, A, D, ones = ws.rows(n)
        call = self.call = BackpropCall()
        L = call.layers = len(net.sizes) - 1
        self.pieces = call.pieces = 1 if Z[1].ndim == 2 else Z[1].shape[0]
        call.rows = n
        call.width[: L + 1] = net.sizes
        call.kind[1 : L + 1] = [KINDS[type(s)] for s in net.sigma]
        call.ones = ones.ctypes.data
        for ell in range(1, L + 1):
            call.W[ell] = net.weights[ell - 1].ctypes.data
            call.b[ell] = net.biases[ell - 1].ctypes.data
            call.Z[ell], call.A[ell] = Z[ell].ctypes.data, A[ell].ctypes.data
            call.D[ell] = D[ell].ctypes.data
            call.step[ell] = _blocks(Z[ell], Z[ell].shape, net.dtype)
        for name in ("gemm", "gemv", "dot"):
            setattr(call, name, found[name])
        for name in ("tanh", "exp", "log", "add", "maximum", "logaddexp"):
            setattr(call, name, NumpyLoop(*found.get(name, (None, None))))
        call.slope[1 : L + 1] = [getattr(sigma, "slope", 0.0) for sigma in net.sigma]
        call.loss_kind = LOSSES[net.loss_fn.name]
        self._sums = None
        if Z[1].ndim == 3:  # each piece's Σ_k C_k, where the NumPy calls put them
            self._sums = ws.sums[: self.pieces]
            call.sums = self._sums.ctypes.data
        self._real_rows = np.full(self.pieces, n, np.int64)  # a stack's padding
        call.real_rows = self._real_rows.ctypes.data
        self._padded = False
        self._run = kernel
        self._address = ctypes.c_void_p(ctypes.addressof(call))
        self._held = (Z, A, D, ones)  # what the pointers point into
        self._x = self._y = self._grad = None

    def __call__(
        self,
        X: np.ndarray,
        Y: np.ndarray,
        grad: np.ndarray,
        scale: float,
        padding: Sequence[tuple[int, int]] = (),
    ) -> float | np.ndarray | None:
        """Σ_k C_k (a stack: each piece's) with ``grad`` written, as ``Network.backprop``;
        None if these arrays do not fit (then nothing was touched)."""
        bound = X is self._x and Y is self._y and grad is self._grad
        if not (bound or self._bind_arrays(X, Y, grad)):
            return None
        if padding or self._padded:  # a stack's short pieces: the epoch's last batch
            self._real_rows[:] = self.n
            for piece, rows in padding:
                self._real_rows[piece] = rows
            self._padded = bool(padding)
        call = self.call
        call.scale = scale
        self._run(self._address)
        return call.loss if self._sums is None else self._sums

    def _bind_arrays(self, X: np.ndarray, Y: np.ndarray, grad: np.ndarray) -> bool:
        net, n, dtype = self.net, self.n, self.net.dtype
        self._x = self._y = self._grad = None
        lead = () if self._sums is None else (self.pieces,)
        if grad.shape != (*lead, net.params.size) or not grad.flags.c_contiguous:
            return False
        grad_W, grad_b = net.views(grad)
        x_step = _blocks(X, (*lead, n, net.sizes[0]), dtype)
        y_step = _blocks(Y, (*lead, n, net.sizes[-1]), dtype)
        if x_step is None or y_step is None or grad.dtype != dtype or not grad.flags.aligned:
            return False
        call = self.call
        call.x, call.y, call.x_step, call.y_step = X.ctypes.data, Y.ctypes.data, x_step, y_step
        call.grad_step = net.params.size if lead else 0
        for ell, (g_W, g_b) in enumerate(zip(grad_W, grad_b, strict=True), start=1):
            call.grad_W[ell], call.grad_b[ell] = g_W.ctypes.data, g_b.ctypes.data
        self._x, self._y, self._grad = X, Y, grad  # held, so the addresses stay valid
        return True


def _takes(net: Layers, found: dict) -> bool:
    """Whether ``net``'s loss and σ are ones the call does as NumPy does, with the NumPy
    loops they need found: the squared loss after elementwise σ only, or cross-entropy
    with a softmax output (up to MAX_CLASSES) after such hidden layers."""
    kinds = [type(sigma) for sigma in net.sigma]
    if any(kind not in NEEDS for kind in kinds) or Softmax in kinds[:-1]:
        return False
    softmax_output = kinds[-1] is Softmax
    if net.loss_fn.name not in LOSSES or softmax_output != (net.loss_fn.name == "cross-entropy"):
        return False
    if softmax_output and net.sizes[-1] > MAX_CLASSES:
        return False
    return {name for kind in kinds for name in NEEDS[kind]} <= set(found)


def bind(net: Layers, ws: Workspace, n: int) -> WholeBackprop | None:
    """The compiled backprop of ``net`` on ``ws``'s views of ``n`` rows, or None where it
    would not give NumPy's bits (see the module's docstring)."""
    found = _FOUND.get(np.dtype(net.dtype)) if ENABLED and _FOUND else None
    if (
        found is None
        or len(net.sizes) - 1 > MAX_LAYERS
        or min(net.sizes) < 2
        or n < 2
        or not _takes(net, found)
    ):
        return None
    arrays = [*net.weights, *net.biases]
    if not all(a.flags.c_contiguous and a.flags.aligned for a in arrays):
        return None
    kernel = fused.backprop_kernel(net.dtype)
    return None if kernel is None else WholeBackprop(net, ws, n, found, kernel)
