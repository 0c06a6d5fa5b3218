"""The sweep's two figures, drawn from its CSV's rows alone (matplotlib: the ``plot``
extra). Each point is the mean over its reached seeds with a bootstrap 95% interval and
n in the legend; a run that never reached the target is a ▲ at the top of the axes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from distnn.scaling.summary import measured_noise_scale, points, steps_model, steps_rows

_UNREACHED = dict(marker="^", color="black", linestyle="none", markersize=8)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _yerr(intervals) -> np.ndarray:
    return np.array([[i.mean - i.low for i in intervals], [i.high - i.mean for i in intervals]])


def _limits(ax, values: list[float]) -> None:
    """Room for every run, reached or not (the ▲ sit at the top): log axes need limits
    when nothing was reached."""
    values = [v for v in values if v is not None and v > 0]
    if values:
        ax.set_ylim(min(values) / 1.5, max(values) * 2)


def _footer(fig, rows: list[dict[str, Any]]) -> None:
    loads = [r[k] for r in rows for k in ("start_load", "end_load") if r.get(k) is not None]
    load = f"load {min(loads):.1f}–{max(loads):.1f}" if loads else "load unknown"
    first = rows[0]
    fig.text(
        0.01,
        0.005,
        f"{first.get('host')} · {first.get('cpu_model')} · {first.get('cores')} cores · "
        f"{load} · {str(first.get('start_date'))[:10]} · commit {str(first.get('commit'))[:10]}",
        fontsize=7,
        color="0.4",
    )


def steps_figure(rows: list[dict[str, Any]], path: Path) -> None:
    """Steps to target against global batch (log-log), one colour per lr rule: the means
    with their intervals, perfect scaling from the smallest batch, the fitted
    S_min(1 + B_noise/B) and the measured noise scale."""
    plt = _pyplot()
    base = steps_rows(rows)
    fig, ax = plt.subplots(figsize=(7, 5))
    batches = sorted({r["batch"] for r in base})
    grid = np.geomspace(batches[0], batches[-1], 100)
    unreached_shown = False
    for k, rule in enumerate(sorted({r["lr_scaling"] for r in base})):
        color = f"C{k}"
        pts = [p for p in points(base) if p.rule == rule]
        done = [p for p in pts if p.steps is not None]
        if done:
            n = max(p.steps.n for p in done)
            ax.errorbar(
                [p.batch for p in done],
                [p.steps.mean for p in done],
                yerr=_yerr([p.steps for p in done]),
                fmt="o",
                color=color,
                capsize=3,
                label=f"{rule}: mean, 95% CI (n ≤ {n} seeds)",
            )
            first = done[0]
            ax.plot(
                grid,
                first.steps.mean * first.batch / grid,
                ":",
                color=color,
                alpha=0.6,
                label=f"{rule}: perfect scaling",
            )
        model = steps_model(rows, rule)
        if model is not None:
            ax.plot(
                grid,
                model.steps(grid),
                "-",
                color=color,
                alpha=0.8,
                label=f"{rule}: fit S_min={model.s_min:.0f}, B_noise={model.b_noise:.0f}",
            )
        for p in pts:
            for _ in range(p.unreached):
                unreached_shown = _mark_unreached(
                    ax, p.batch, unreached_shown, "a run that did not reach"
                )
    _limits(ax, [r["steps"] for r in base])
    noise = measured_noise_scale(base)
    if noise:
        ax.axvline(
            noise, color="0.3", linestyle="--", label=f"measured noise scale (median) {noise:.0f}"
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="global batch B (samples)",
        ylabel="steps to target",
        title=f"Steps to {rows[0]['target']} on {rows[0]['dataset']} ({base[0]['ranks']} rank(s))",
    )
    ax.legend(fontsize=7)
    _footer(fig, rows)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _mark_unreached(ax: Any, x: float, labelled: bool, label: str) -> bool:
    """A run that did not reach the target: a marker at the top of the axes at ``x``,
    labelled the first time; True from then on."""
    ax.plot(
        [x], [0.97], transform=ax.get_xaxis_transform(), **_UNREACHED,
        label=None if labelled else label,
    )  # fmt: skip
    return True


def time_figure(rows: list[dict[str, Any]], path: Path) -> None:
    """Training seconds to target against ranks, one panel per lr rule, a line per batch."""
    plt = _pyplot()
    rules = sorted({r["lr_scaling"] for r in rows})
    fig, axes = plt.subplots(1, len(rules), figsize=(5 * len(rules), 4.5), squeeze=False)
    ranks = sorted({r["ranks"] for r in rows})
    for ax, rule in zip(axes[0], rules, strict=True):
        pts = [p for p in points(rows) if p.rule == rule]
        unreached_shown = False
        for k, batch in enumerate(sorted({p.batch for p in pts})):
            line = [p for p in pts if p.batch == batch and p.seconds is not None]
            if line:
                n = max(p.seconds.n for p in line)
                ax.errorbar(
                    [p.ranks for p in line],
                    [p.seconds.mean for p in line],
                    yerr=_yerr([p.seconds for p in line]),
                    fmt="o-",
                    color=f"C{k}",
                    capsize=3,
                    label=f"B={batch} (n ≤ {n})",
                )
            for p in pts:
                if p.batch == batch and p.unreached:
                    unreached_shown = _mark_unreached(ax, p.ranks, unreached_shown, "did not reach")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="ranks",
            ylabel="training seconds to target",
            title=f"lr scaling: {rule}",
            xticks=ranks,
            xticklabels=[str(r) for r in ranks],
        )
        _limits(ax, [r["train_s"] for r in rows if r["lr_scaling"] == rule])
        ax.minorticks_off()
        ax.legend(fontsize=7)
    _footer(fig, rows)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
