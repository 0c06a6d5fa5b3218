"""``python -m distnn.plot TRACE.json -o timeline.png``: a --trace file as a picture.

Perfetto and chrome://tracing open the trace itself; this draws the same lanes (one per
rank, each phase its colour) for a report or a README, without a browser.
"""

from __future__ import annotations

import math
import os

from distnn.cli.plot_input import is_number, load_trace
from distnn.errors import DistnnError, one_line
from distnn.io.outputs import atomic_write
from distnn.parallel.timeline import PHASES

MAX_RANKS = 1 << 24  # lanes a figure could ever hold
COLORS = dict(zip(PHASES, ("C2", "C0", "C3", "C1", "C4", "C5"), strict=True))


def read_trace(path: str) -> dict[int, list[tuple[str, float, float]]]:
    """Complete events per rank: (phase, start µs, duration µs), each checked: a known
    phase, a rank that is a small non-negative integer, finite times."""
    lanes: dict[int, list[tuple[str, float, float]]] = {}
    for i, e in enumerate(load_trace(path)["traceEvents"]):
        if not isinstance(e, dict) or e.get("ph") != "X" or e.get("name") not in PHASES:
            continue  # metadata, counters, phases of other tools
        pid, ts, dur = e.get("pid"), e.get("ts"), e.get("dur")
        if not (isinstance(pid, int) and not isinstance(pid, bool) and 0 <= pid < MAX_RANKS):
            raise DistnnError(f"{path}: event {i}: 'pid' is {pid!r:.40}, not a rank")
        if not (is_number(ts) and is_number(dur) and math.isfinite(ts) and math.isfinite(dur)):
            raise DistnnError(f"{path}: event {i}: 'ts' and 'dur' must be finite numbers")
        lanes.setdefault(pid, []).append((e["name"], float(ts), float(dur)))
    if not lanes:
        raise DistnnError(f"{path}: the trace holds no events")
    return lanes


def draw_trace(path: str, output: str, title: str | None = None) -> str:
    """One lane per rank; the line to print on success."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    lanes = read_trace(path)
    fig = Figure(figsize=(14, 1.0 + 0.55 * len(lanes)), layout="constrained", dpi=100)
    ax = fig.subplots()
    for rank, events in lanes.items():
        for phase in PHASES:
            spans = [(s / 1e3, d / 1e3) for name, s, d in events if name == phase]
            if spans:
                ax.broken_barh(spans, (rank - 0.4, 0.8), facecolors=COLORS[phase])
    ax.set_yticks(sorted(lanes), [f"rank {r}" for r in sorted(lanes)])
    ax.invert_yaxis()
    ax.set_xlabel("ms since the ranks' clocks were aligned")
    ax.legend(handles=[Patch(color=COLORS[p], label=p) for p in PHASES], ncols=6,
              loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(lanes) < 3 else -0.2),
              frameon=False, fontsize="small")  # fmt: skip
    ax.set_title(title or os.path.basename(path))
    fmt = os.path.splitext(output)[1][1:].lower()
    try:
        atomic_write(output, lambda f: fig.savefig(f, format=fmt), protect=[path])
    except (ValueError, OverflowError) as e:  # matplotlib's limits (an axis it cannot tick)
        raise DistnnError(f"{output}: cannot draw these values ({one_line(e)})") from None
    n = sum(len(e) for e in lanes.values())
    return f"wrote {output}: {len(lanes)} rank(s), {n:,} events"
