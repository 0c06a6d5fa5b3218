"""scaling.py's two figures: the measured speed-up and efficiency (error bars: bootstrap
95% intervals of the median over n repeats), and the model's projection to thousands of
ranks with its band, each measured point beside its prediction."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import perfmodel


def _errorbar(ax, rows: Sequence[dict], key: str, **style) -> None:
    """Measured medians of ``key`` with their bootstrap intervals as error bars."""
    if not rows:
        return
    y = np.array([r[key] for r in rows])
    low = y - np.array([r[f"{key}_low"] for r in rows])
    high = np.array([r[f"{key}_high"] for r in rows]) - y
    ax.errorbar([r["ranks"] for r in rows], y, yerr=[low, high], capsize=3, **style)


def plot_scaling(rows: list[dict], cores: int, path: Path) -> None:
    """Speed-up and efficiency against ranks, strong and weak, with the ideal; ranks past
    the cores (oversubscribed) shaded; n repeats per point stated in the title."""
    if (plt := perfmodel.pyplot()) is None:
        return
    fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    ranks = sorted({r["ranks"] for r in rows})
    for mode, color in (("strong", "C0"), ("weak", "C1")):
        mine = [r for r in rows if r["mode"] == mode]
        kind = "global batch" if mode == "strong" else "batch per rank"
        label = f"{mode}, {kind} {mine[0]['global_batch']}"
        for ax, key in ((ax_s, "speedup"), (ax_e, "efficiency")):
            _errorbar(ax, mine, key, fmt="o-", color=color, label=label)
    ax_s.plot(ranks, ranks, "k--", lw=1, label="ideal")
    ax_e.axhline(1, color="k", ls="--", lw=1, label="ideal")
    n = min(r["n"] for r in rows)
    ax_s.set(ylabel="speed-up X(N) / X(1)", title=f"distnn scaling: median of n = {n} runs, 95% CI")
    ax_e.set(ylabel="efficiency speed-up / N", ylim=(0, 1.1), title="parallel efficiency")
    for ax in (ax_s, ax_e):
        if ranks[-1] > cores:
            over = f"oversubscribed (> {cores} cores)"
            ax.axvspan(cores * 1.2, ranks[-1] * 1.2, color="0.9", label=over)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="ranks N", xticks=ranks, xticklabels=[str(n) for n in ranks])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"plot: {path}")


def plot_projection(
    projection: Sequence[dict],
    measured: Sequence[dict],
    sweep: Sequence[dict],
    networks: dict[int, tuple[float, float]],
    verdict: str,
    path: Path,
) -> None:
    """(a) the Allreduce sweep with each rank count's own fitted ring line; (b) efficiency
    and (c) throughput projected with the 95% band of the ring model, the measured points
    (error bars) beside their predictions (diamonds). ``verdict`` titles the figure."""
    if (plt := perfmodel.pyplot()) is None:
        return
    fig, (ax_ar, ax_eff, ax_x) = plt.subplots(1, 3, figsize=(15, 4.6), layout="constrained")
    fig.suptitle(verdict, color="C3" if "unvalidated" in verdict else "k")
    sizes = np.array(perfmodel.message_sizes(max([r["bytes"] for r in sweep], default=16 << 20)))
    for i, p in enumerate(sorted({r["ranks"] for r in sweep})):
        rows = [r for r in sweep if r["ranks"] == p and r.get("used", True)]
        over = bool(rows) and rows[0]["oversubscribed"]
        label = f"{p} ranks" + (", oversubscribed" if over else "")
        style = {"color": f"C{i}", "mfc": "none" if over else None}
        ax_ar.loglog([r["bytes"] for r in rows], [r["seconds"] for r in rows], "o", **style)
        if p in networks:
            model = perfmodel.ring_allreduce(sizes, p, *networks[p])
            ax_ar.loglog(sizes, model, "-", color=f"C{i}", lw=1, label=f"{label}: own fit")
        else:
            ax_ar.plot([], [], "o", **style, label=f"{label}: fit refused")
    gradient = projection[0]["gradient_bytes"] if projection else 0
    if gradient:
        ax_ar.axvline(gradient, color="k", ls=":", label=f"gradient, {gradient / 1e6:.2f} MB")
    panels = ((ax_eff, "efficiency"), (ax_x, "samples_per_sec"))
    for mode, color in (("strong", "C0"), ("weak", "C1")):
        for algorithm, dash in (("ring", "-"), ("tree", "--")):
            line = [s for s in projection if s["mode"] == mode and s["algorithm"] == algorithm]
            ranks = [s["ranks"] for s in line]
            for ax, key in panels if line else ():
                label = f"{mode}, {algorithm} model"
                ax.plot(ranks, [s[key] for s in line], color=color, ls=dash, label=label)
                if algorithm == "ring":
                    low, high = ([s[f"{key}_{e}"] for s in line] for e in ("low", "high"))
                    ax.fill_between(ranks, low, high, color=color, alpha=0.2, lw=0)
        mine = [r for r in measured if r["mode"] == mode]
        n = min((r["n"] for r in mine), default=0)
        for ax, key in panels if mine else ():
            _errorbar(ax, mine, key, fmt="o", color=color, label=f"{mode}, measured (n = {n})")
            predicted = [r for r in mine if r.get(f"predicted_{key}") not in (None, "")]
            ax.plot(
                [r["ranks"] * 1.08 for r in predicted],
                [r[f"predicted_{key}"] for r in predicted],
                "D",
                mfc="none",
                color=color,
                label=f"{mode}, predicted there",
            )
    ax_ar.set(xlabel="message (bytes)", ylabel="seconds per Allreduce")
    ax_ar.set_title("Allreduce sweep; ring model fitted per rank count")
    ax_eff.set(ylabel="parallel efficiency E", ylim=(0, 1.1), title="efficiency (band: 95%)")
    ax_x.set(ylabel="samples/s", yscale="log", title="throughput (band: 95%)")
    ranks = sorted({s["ranks"] for s in projection} | {r["ranks"] for r in measured})
    ticks = [p for p in ranks if p.bit_length() % 2]  # 1, 4, 16, …
    for ax in (ax_eff, ax_x):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(p) for p in ticks])
        ax.set_xlabel("ranks p")
    for ax in (ax_ar, ax_eff, ax_x):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"plot: {path}")
