"""The gradient noise scale, measured from the two batch sizes every step already has.

McCandlish et al. 2018, "An Empirical Model of Large-Batch Training", App. A. Let G be
the true gradient (the mean over the data of the per-sample gradients ∇C_k) and Σ their
covariance. A gradient averaged over b samples has E|G_b|² = |G|² + tr(Σ)/b. Each step
holds gradients at two batch sizes: each piece's own, G_v over its b_v rows (a rank's
shard, or a ``--deterministic`` virtual shard), and the global batch's, G_B over all B.
With ``s̄`` the mean over the V pieces of |G_v|² and ``h`` the mean of 1/b_v:

    E[s̄] = |G|² + tr(Σ)·h,    E|G_B|² = |G|² + tr(Σ)/B

so, unbiased for each step,

    tr(Σ) ≈ (s̄ − |G_B|²) / (h − 1/B),    |G|² ≈ |G_B|² − tr(Σ)/B.

Single steps' estimates swing over orders of magnitude (and go negative), so the noise
scale is a ratio of running averages, not an average of ratios: B_simple = EMA tr(Σ) /
EMA |G|² over the measured steps. It is in samples, per-sample normalised whatever the loss: the
global batch is the mean of the per-sample losses (MATH.md), so ∇C_k is one sample's.
The critical batch: a batch B takes S = S_min(1 + B_noise/B) steps and E = E_min(1 +
B/B_noise) samples to reach a target (McCandlish eqs. 2.11, 2.12): below B_noise a larger
batch cuts the steps nearly in proportion; far above it, extra ranks buy little time.

Each |G_v|² is summed in the step's one collective (the reducers), so measuring costs one
dot product per piece and one for G_B, and no extra message. It is measured on every
``NOISE_EVERY``-th step (the step count decides, so every rank and every world size
measures the same steps): a sample of the steps estimates the same averages, and the
dot products and their bookkeeping stay within 1% of a step even for small networks,
where a step is tens of microseconds.
"""

from __future__ import annotations

import numpy as np

NOISE_EVERY = 8  # steps between two measurements


class NoiseScale:
    """Running averages of each measured step's estimates; ``take()`` reads them.

    Exponential moving averages (weight ``1 − DECAY`` for the newest measurement, bias
    corrected as Adam's are), kept across epochs: a record's estimate covers about the
    last ``1/(1 − DECAY)`` measurements whatever the epoch's length, so a short epoch's
    few steps do not stand alone, and it still follows the noise scale as training moves.
    """

    DECAY = 0.9  # per measurement: about the last 10 (80 steps at NOISE_EVERY 8)

    def __init__(self, measures: bool) -> None:
        self.measures = measures  # False: one piece per batch, no second batch size
        self.trace_avg = self.norm_sq_avg = self.weight = 0.0
        self.steps = 0  # measurements since the last take()

    def add(
        self, pieces_sqnorm_mean: float, inv_b_small: float, global_sqnorm: float, B: int
    ) -> None:
        """One step: the mean over pieces of |G_v|², the mean of 1/b_v, |G_B|², B."""
        gap = inv_b_small - 1.0 / B
        if gap <= 0:  # one piece held the whole batch (B ≤ 1 rows per piece)
            return
        trace = (pieces_sqnorm_mean - global_sqnorm) / gap
        d = self.DECAY
        self.trace_avg = d * self.trace_avg + (1 - d) * trace
        self.norm_sq_avg = d * self.norm_sq_avg + (1 - d) * (global_sqnorm - trace / B)
        self.weight = d * self.weight + (1 - d)
        self.steps += 1

    def take(self) -> dict[str, float | None]:
        """``noise_scale`` (B_simple = tr(Σ)/|G|², samples), ``grad_norm_sq`` and
        ``grad_trace`` (the running averages); None where nothing was measured yet or
        where noise left the |G|² estimate ≤ 0."""
        self.steps = 0
        if not self.measures or not self.weight:
            return {"noise_scale": None, "grad_norm_sq": None, "grad_trace": None}
        norm_sq, trace = self.norm_sq_avg / self.weight, self.trace_avg / self.weight
        scale = trace / norm_sq if norm_sq > 0 and trace >= 0 else None
        return {"noise_scale": scale, "grad_norm_sq": norm_sq, "grad_trace": trace}


def steps_ratio(noise_scale: float | None, batch: int) -> float | None:
    """S/S_min = 1 + B_noise/B: the steps global batch ``batch`` needs to reach a target,
    relative to the fewest any batch could (McCandlish eq. 2.11)."""
    return None if noise_scale is None else 1.0 + noise_scale / batch


def efficiency(noise_scale: float | None, batch: int) -> float | None:
    """E_min/E = 1/(1 + B/B_noise): what each sample of global batch ``batch`` is worth
    next to a sample of a very small batch (McCandlish eq. 2.12). Goodput, the samples
    per second that count, is the throughput times this."""
    return None if noise_scale is None else 1.0 / (1.0 + batch / noise_scale)


def batch_hint(noise_scale: float | None, batch: int, ranks: int) -> str:
    """One line when the global batch is far from the noise scale, else ""."""
    if noise_scale is None or noise_scale <= 0:
        return ""
    ratio = batch / noise_scale
    if ratio >= 2:
        useful = max(1, round(ranks * noise_scale / batch))
        return (
            f"global batch {batch} is {ratio:,.0f}× the noise scale ({noise_scale:,.0f}): "
            f"each sample is worth {efficiency(noise_scale, batch):.1%} of one in a small "
            f"batch; at {batch // ranks} per rank, ranks beyond ~{useful} buy little time"
        )
    if ratio <= 0.5:
        return (
            f"global batch {batch} is {1 / ratio:,.0f}× below the noise scale "
            f"({noise_scale:,.0f}): it takes {steps_ratio(noise_scale, batch):.1f}× the fewest "
            "steps; a larger batch (more ranks), its rate scaled with it (--lr-scaling), "
            "would cut the steps nearly in proportion"
        )
    return ""


def piece_scales(B: int, bounds: list[tuple[int, int]]) -> np.ndarray:
    """Each piece's (B/b_v)²: backprop writes (1/B)·Σ∇C_k, and G_v = (1/b_v)·Σ∇C_k."""
    return np.array([(B / (hi - lo)) ** 2 if hi > lo else 0.0 for lo, hi in bounds])
