"""Predicted against measured: scaling.py's measured points beside the model's predictions,
the misses flagged, and the projection to thousands of ranks with its band and verdict.

A prediction at p ranks uses the compute fit (α_c, β_c at one rank) and the Allreduce fit
*at p ranks* (its own α, β: never another rank count's). A measured median outside the
prediction's 95% band widened by scaling_fit.MARGIN is a miss. The projection is
"validated" only when at least one multi-rank point with a core per rank was predicted
and no such point missed; otherwise it is labelled unvalidated. Misses where ranks share
cores are flagged too, but the model (and the projection) assumes a core per rank, so
they do not decide the verdict.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import perfmodel
import scaling_fit
from scaling_fit import MARGIN, LinearFit, band, is_miss

ZERO = LinearFit((0.0, 0.0), ((0.0, 0.0), (0.0, 0.0)), 0)
Model = Callable[[np.ndarray, np.ndarray], np.ndarray]


def given(first: float, second: float) -> LinearFit:
    """Parameters taken as exact (from the command line): no uncertainty."""
    return LinearFit((first, second), ZERO.cov, 0)


def scaled(fit: LinearFit, factor: float) -> LinearFit:
    """Both coefficients times ``factor`` (the compute of a net ``factor`` times larger)."""
    cov = tuple(tuple(c * factor**2 for c in row) for row in fit.cov)
    return LinearFit((fit.coef[0] * factor, fit.coef[1] * factor), cov, fit.points)  # type: ignore[arg-type]


def models(mode: str, algorithm: str, p: int, batch: int, params: int) -> dict[str, Model]:
    """samples/s and efficiency at p ranks as functions of (α_c, β_c) and (α, β) arrays."""
    shard, glob = (-(-batch // p), batch) if mode == "strong" else (batch, batch * p)
    nbytes = perfmodel.BYTES_PER_PARAM * params
    allreduce = perfmodel.ALLREDUCE[algorithm]

    def rate(c: np.ndarray, net: np.ndarray) -> np.ndarray:
        comm = allreduce(nbytes, p, net[:, 0], net[:, 1]) if p > 1 else 0.0
        return glob / (c[:, 0] + c[:, 1] * shard + comm)

    def efficiency(c: np.ndarray, net: np.ndarray) -> np.ndarray:
        return rate(c, net) * (c[:, 0] + c[:, 1] * batch) / batch / p

    return {"samples_per_sec": rate, "efficiency": efficiency}


def predict(
    rows: list[dict], compute: LinearFit, networks: dict[int, LinearFit], batch: int, params: int
) -> None:
    """Add each measured row's ring-model prediction, its band and whether it missed;
    rows at a rank count with no Allreduce fit get none (``miss`` None)."""
    for r in rows:
        network = ZERO if r["ranks"] == 1 else networks.get(r["ranks"])
        r["miss"] = None
        for key in ("samples_per_sec", "efficiency"):
            r[f"predicted_{key}"] = r[f"predicted_{key}_low"] = r[f"predicted_{key}_high"] = None
        if network is None:
            continue
        fns = models(r["mode"], "ring", r["ranks"], batch, params)
        for key, fn in fns.items():
            point, low, high = band(fn, compute, network)
            r[f"predicted_{key}"], r[f"predicted_{key}_low"] = point, low
            r[f"predicted_{key}_high"] = high
        r["miss"] = is_miss(
            r["samples_per_sec"],
            r["predicted_samples_per_sec_low"],
            r["predicted_samples_per_sec_high"],
        )


def verdict(rows: list[dict]) -> tuple[bool, list[str]]:
    """Whether the measurements validate the model, and the lines that say why."""
    checked = [r for r in rows if r["ranks"] > 1 and r["miss"] is not None]
    own = [r for r in checked if not r["oversubscribed"]]
    lines = []
    for r in (r for r in rows if r["miss"]):
        where = (
            " (oversubscribed: the model assumes a core per rank)" if r["oversubscribed"] else ""
        )
        lines.append(
            f"MISS: {r['mode']} at {r['ranks']} ranks measured {r['samples_per_sec']:,.0f} "
            f"samples/s, predicted {r['predicted_samples_per_sec']:,.0f} "
            f"[{r['predicted_samples_per_sec_low']:,.0f}–"
            f"{r['predicted_samples_per_sec_high']:,.0f}] ± {MARGIN:.0%}{where}"
        )
    if not own:
        lines.append("unvalidated: no point with a core per rank and more than one rank")
        return False, lines
    missed = [r for r in own if r["miss"]]
    if missed:
        lines.append(f"unvalidated: the model missed {len(missed)} of {len(own)} points")
        return False, lines
    lines.append(f"validated: {len(own)} multi-rank point(s) within the band ± {MARGIN:.0%}")
    return True, lines


def project(
    ranks: list[int], batch: int, params: int, compute: LinearFit, network: LinearFit
) -> list[dict]:
    """perfmodel's projection, each row with the 95% band of its samples/s and efficiency."""
    (alpha_c, beta_c), (alpha, beta) = compute.coef, network.coef
    model = {"params": params, "batch": batch, "alpha": alpha, "beta": beta}
    steps = perfmodel.project(ranks, **model, alpha_c=alpha_c, beta_c=beta_c)
    out = []
    for s in steps:
        row = asdict(s)
        for key, fn in models(s.mode, s.algorithm, s.ranks, batch, params).items():
            _, row[f"{key}_low"], row[f"{key}_high"] = band(fn, compute, network)
        out.append(row)
    return out


def table(rows: list[dict]) -> list[str]:
    """Measured against predicted, one Markdown row per (mode, ranks)."""
    out = [
        "| mode | ranks | global batch | n | measured samples/s [95%] | speed-up [95%] "
        "| predicted samples/s [95%] | measured / predicted | miss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        star = "*" if r["oversubscribed"] else ""
        measured = _cell(r, "samples_per_sec", ",.0f")
        speedup = _cell(r, "speedup", ".2f")
        if r.get("predicted_samples_per_sec") in (None, ""):
            predicted, ratio, miss = "no fit", "—", "—"
        else:
            predicted = _cell(r, "predicted_samples_per_sec", ",.0f")
            ratio = f"{r['samples_per_sec'] / r['predicted_samples_per_sec']:.2f}"
            miss = "**MISS**" if r["miss"] else "ok"
        out.append(
            f"| {r['mode']} | {r['ranks']}{star} | {r['global_batch']} | {r['n']} | {measured} "
            f"| {speedup} | {predicted} | {ratio} | {miss} |"
        )
    return out


def _cell(row: dict, key: str, spec: str) -> str:
    return f"{row[key]:{spec}} [{row[f'{key}_low']:{spec}}–{row[f'{key}_high']:{spec}}]"


def fit_networks(sweep: list[dict]) -> tuple[dict[int, LinearFit], dict[int, str]]:
    """Each rank count's own α, β from its last sweep; a non-monotone one is refused."""
    fits, refused = {}, {}
    for n in sorted({r["ranks"] for r in sweep}):
        last = max(r["try"] for r in sweep if r["ranks"] == n)
        rows = [r for r in sweep if r["ranks"] == n and r["try"] == last]
        tag = " (oversubscribed)" if rows[0]["oversubscribed"] else ""
        if problem := scaling_fit.monotone_problem([(r["bytes"], r["seconds"]) for r in rows], n):
            refused[n] = f"{problem} (after {last} tries): no model at {n} ranks"
            print(f"Allreduce fit at {n} ranks{tag}: refused: {refused[n]}", file=sys.stderr)
            continue
        fits[n] = scaling_fit.fit_allreduce([(r["bytes"], n, r["seconds"]) for r in rows])
        print(f"Allreduce fit at {n} ranks{tag}: {describe(fits[n], 'network')}")
    return fits, refused


def describe(fit: LinearFit, kind: str) -> str:
    """A fit's two parameters with their 95% intervals, in the units benchmarks print."""
    (a_lo, a_hi), (b_lo, b_hi) = fit.interval(0), fit.interval(1)
    if kind == "compute":
        us = [f"{v * 1e6:,.3g}" for v in (fit.coef[0], a_lo, a_hi, fit.coef[1], b_lo, b_hi)]
        return (
            f"α_c = {us[0]} µs [{us[1]}–{us[2]}] per step, "
            f"β_c = {us[3]} µs [{us[4]}–{us[5]}] per sample"
        )
    gbs = [f"{1 / b / 1e9:.2f}" if b > 0 else "∞" for b in (fit.coef[1], b_hi, b_lo)]
    return (f"α = {fit.coef[0] * 1e6:.2f} µs [{a_lo * 1e6:.2f}–{a_hi * 1e6:.2f}], "
            f"β = 1/({gbs[0]} GB/s) [1/{gbs[1]}–1/{gbs[2]}]")  # fmt: skip
