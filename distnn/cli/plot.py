"""``python -m distnn.plot``: learning curves and throughput from ``--metrics`` files.

    python -m distnn.plot m.jsonl -o curves.png
    python -m distnn.plot run1/m.jsonl run2/m.jsonl --labels "2 ranks,4 ranks" -o cmp.png

One figure, three panels against the epoch: loss (training solid, test dashed,
validation dotted; log scale), accuracy (test solid, validation dotted) and training
samples/s. Each run (file) has its own colour; the legend names it by its path or by
``--labels``. The image format follows ``-o``'s extension (.png, .svg, .pdf).

matplotlib is an optional extra (``pip install 'distnn[plot]'``); it draws with the Agg
backend, so no display is needed. Every problem (matplotlib missing, a file missing,
a line that is not an epoch record) is one line naming the file and line, exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence

from distnn.cli.options import CliParser
from distnn.cli.plot_input import is_number, is_trace, read_metrics
from distnn.cli.plot_trace import draw_trace
from distnn.errors import DistnnError, one_line
from distnn.io.outputs import atomic_write, check_no_clash, check_output_path

FORMATS = ("png", "svg", "pdf")
# Panel contents: (record key, line style, what the line style means).
LOSS_LINES = (
    ("loss", "-", "training"),
    ("test_loss", "--", "test"),
    ("val_loss", ":", "validation"),
)
ACCURACY_LINES = (("accuracy", "-", "test"), ("val_accuracy", ":", "validation"))
INSTALL_HINT = "pip install 'distnn[plot]' (or: pip install matplotlib)"


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Epochs and values of ``key`` where it is a finite number."""
    pairs = [
        (r["epoch"], float(r[key]))
        for r in records
        if is_number(r.get(key)) and math.isfinite(r[key])
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _marker(epochs: list[int]) -> dict:
    """Dots on short series, so that a run of one epoch still shows."""
    return {"marker": "o", "markersize": 3} if len(epochs) <= 20 else {}


def _import_matplotlib():
    """matplotlib's Figure class on the Agg backend; DistnnError if it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter
    except ImportError:
        raise DistnnError(
            f"plotting needs matplotlib, which is not installed: {INSTALL_HINT}"
        ) from None
    return Figure, Line2D, FuncFormatter, MaxNLocator, PercentFormatter


def draw(
    runs: list[tuple[str, list[dict]]],
    path: str,
    title: str | None = None,
    protect: Sequence[str] = (),
) -> None:
    """Loss, accuracy and samples/s of every run on one figure, written atomically to ``path``.

    ``path`` must not be one of the files in ``protect`` (the metrics read).
    """
    Figure, Line2D, FuncFormatter, MaxNLocator, PercentFormatter = _import_matplotlib()
    split = next((r for _, r in runs if any("compute_s" in x for x in r)), None)
    fig = Figure(figsize=(20 if split else 15, 4.6), layout="constrained", dpi=100)
    axes = fig.subplots(1, 4 if split else 3)
    ax_loss, ax_acc, ax_speed = axes[:3]
    if split:
        _draw_time_split(axes[3], split)
    drawn: dict[str, set[str]] = {"loss": set(), "accuracy": set()}
    for i, (_, records) in enumerate(runs):
        color = f"C{i % 10}"
        for ax, lines, panel in (
            (ax_loss, LOSS_LINES, "loss"),
            (ax_acc, ACCURACY_LINES, "accuracy"),
        ):
            for key, style, meaning in lines:
                epochs, values = _series(records, key)
                if epochs:
                    ax.plot(epochs, values, style, color=color, **_marker(epochs))
                    drawn[panel].add(meaning)
        epochs, values = _series(records, "samples_per_sec")
        if epochs:
            ax_speed.plot(epochs, values, "-", color=color, **_marker(epochs))

    losses = [v for _, r in runs for key, _, _ in LOSS_LINES for v in _series(r, key)[1]]
    if losses and min(losses) > 0:
        ax_loss.set_yscale("log")
    ax_loss.set_title("loss (mean per sample)")
    kinds = sorted(drawn["accuracy"])
    ax_acc.set_title(f"{kinds[0]} accuracy" if len(kinds) == 1 else "accuracy")
    ax_acc.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax_speed.set_title("training throughput (samples/s)")
    ax_speed.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax_speed.set_ylim(bottom=0)
    for ax, panel, lines in ((ax_loss, "loss", LOSS_LINES), (ax_acc, "accuracy", ACCURACY_LINES)):
        styles = [
            Line2D([], [], color="0.3", linestyle=style, label=meaning)
            for _, style, meaning in lines
            if meaning in drawn[panel]
        ]
        if len(styles) > 1:
            ax.legend(handles=styles, loc="best", fontsize="small")
    if not kinds:
        ax_acc.text(
            0.5,
            0.5,
            "no accuracy recorded\n(no test set, or regression)",
            ha="center",
            va="center",
            transform=ax_acc.transAxes,
            color="0.4",
        )
    for ax in (ax_loss, ax_acc, ax_speed):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    run_handles = [
        Line2D([], [], color=f"C{i % 10}", linewidth=2, label=label)
        for i, (label, _) in enumerate(runs)
    ]
    fig.legend(
        handles=run_handles, loc="outside lower center", ncols=min(len(runs), 5), frameon=False
    )
    if title:
        fig.suptitle(title)
    fmt = os.path.splitext(path)[1][1:].lower()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format=fmt), protect)
    except (ValueError, OverflowError) as e:  # matplotlib's limits (an axis it cannot tick)
        raise DistnnError(f"{path}: cannot draw these values ({one_line(e)})") from None


PHASE_COLORS = {"data_s": "C2", "compute_s": "C0", "allreduce_s": "C3", "update_s": "C1"}


def _finite(value: object) -> float:
    """A phase's seconds as drawn: a missing or non-finite value is no bar."""
    return float(value) if is_number(value) and math.isfinite(value) else 0.0


def _draw_time_split(ax, records: list[dict]) -> None:
    """Rank 0's seconds per phase in each epoch, stacked (the first run that has them)."""
    rows = [r for r in records if "compute_s" in r]
    epochs = [r["epoch"] for r in rows]
    bottom = [0.0] * len(rows)
    for key, color in PHASE_COLORS.items():
        values = [_finite(r.get(key)) for r in rows]
        ax.bar(epochs, values, bottom=bottom, color=color, label=key[:-2], width=0.8)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_title("step time per epoch on rank 0 (s)")
    ax.legend(loc="best", fontsize="small")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CliParser(
        prog="python -m distnn.plot",
        description="Plot loss, accuracy and samples/s per epoch from 'distnn.train "
        "--metrics' files; several files are compared on one figure. Needs matplotlib: "
        "pip install 'distnn[plot]'.",
    )
    p.add_argument(
        "metrics",
        nargs="+",
        help="JSON-lines files written by --metrics, or one trace file written by --trace",
    )
    p.add_argument("-o", "--output", required=True, help="the image: .png, .svg or .pdf")
    p.add_argument("--labels", help="comma-separated legend names, one per file")
    p.add_argument("--title", help="a title above the panels")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    """Read, check, draw; the line to print on success."""
    # Before reading and drawing: -o lands on no input, and is not a device, FIFO, socket.
    check_no_clash([("-o", args.output)], [("metrics file", p) for p in args.metrics])
    check_output_path(args.output, "-o")
    fmt = os.path.splitext(args.output)[1][1:].lower()
    if fmt not in FORMATS:
        raise DistnnError(f"{args.output}: the image must be {', '.join('.' + f for f in FORMATS)}")
    labels = args.metrics
    if args.labels is not None:
        labels = [label.strip() for label in args.labels.split(",")]
        if len(labels) != len(args.metrics):
            raise DistnnError(
                f"--labels gives {len(labels)} names for {len(args.metrics)} metrics files"
            )
    if len(args.metrics) == 1 and is_trace(args.metrics[0]):  # a --trace file
        _import_matplotlib()
        return draw_trace(args.metrics[0], args.output, args.title)
    runs = [(label, read_metrics(path)) for label, path in zip(labels, args.metrics, strict=True)]
    draw(runs, args.output, args.title, protect=args.metrics)
    epochs = ", ".join(str(len(records)) for _, records in runs)
    return f"wrote {args.output}: {len(runs)} run(s), {epochs} epoch(s)"


def main(argv: list[str] | None = None) -> int:
    try:
        print(run(parse_args(argv)))
    except DistnnError as e:
        print(f"distnn: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
