"""The buffers one training step works in: preallocated, reused, never grown.

The network's feed-forward and backprop (``distnn.engine.network``) read and write
only these arrays and the flat parameter and gradient buffers, so a steady-state step
allocates no array.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class Workspace:
    """Preallocated per-layer buffers for up to ``max_rows`` samples (per piece, if stacked).

    ``Z[ℓ]``, ``A[ℓ]`` and ``D[ℓ]`` (= ∂C/∂z(ℓ), the Δ(ℓ) of MATH.md) are
    ``max_rows × n_ℓ`` for ℓ = 1..L; index 0 is unused (A(0) is the input itself).
    With ``pieces`` = k they are stacks ``k × max_rows × n_ℓ``, one block per piece
    (``--deterministic``'s virtual shards): every matrix product then runs once per
    piece with that piece's shape, in one NumPy call. A step on fewer rows uses
    leading-row views, made once per row count (``rows``).
    """

    def __init__(
        self, sizes: Sequence[int], max_rows: int, dtype: np.dtype, pieces: int | None = None
    ) -> None:
        self.max_rows = max_rows
        lead = (max_rows,) if pieces is None else (pieces, max_rows)
        self.Z = [None] + [np.empty((*lead, n), dtype) for n in sizes[1:]]
        self.A = [None] + [np.empty((*lead, n), dtype) for n in sizes[1:]]
        self.D = [None] + [np.empty((*lead, n), dtype) for n in sizes[1:]]
        self.ones = np.ones(max_rows, dtype)  # column sums as a matrix-vector product
        self.sums = np.empty((pieces or 1, 1, 1), dtype)  # each piece's Σ_k C_k
        self._views: dict[int, tuple] = {}
        # The network's layer kernels bound to the views of n rows, or the network that
        # has used them once (engine/bound_layers.py).
        self.bound: dict[int, object] = {}

    def rows(self, n: int) -> tuple[list, list, list, np.ndarray]:
        """Views of Z, A, D on the first ``n`` rows (of every piece), and ``ones[:n]``."""
        views = self._views.get(n)
        if views is None:
            cut = (slice(None), slice(0, n)) if self.Z[1].ndim == 3 else (slice(0, n),)
            views = tuple([None] + [M[cut] for M in Ms[1:]] for Ms in (self.Z, self.A, self.D))
            views = self._views[n] = (*views, self.ones[:n])
        return views
