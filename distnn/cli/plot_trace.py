"""``python -m distnn.plot TRACE.json -o timeline.png``: a --trace file as a picture.

Perfetto and chrome://tracing open the trace itself; this draws the same lanes (one per
rank, each phase its colour) for a report or a README, without a browser.
"""

from __future__ import annotations

import json
import os

from distnn.errors import DistnnError
from distnn.io.outputs import atomic_write
from distnn.parallel.timeline import PHASES

COLORS = dict(zip(PHASES, ("C2", "C0", "C3", "C1", "C4", "C5"), strict=True))


def is_trace(path: str) -> bool:
    """Whether ``path`` looks like a --trace file (a .json holding traceEvents)."""
    if not path.lower().endswith(".json"):
        return False
    try:
        with open(path, encoding="utf-8") as f:
            return "traceEvents" in f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False


def read_trace(path: str) -> dict[int, list[tuple[str, float, float]]]:
    """Complete events per rank: (phase, start µs, duration µs)."""
    try:
        with open(path, encoding="utf-8") as f:
            events = json.load(f)["traceEvents"]
        lanes: dict[int, list[tuple[str, float, float]]] = {}
        for e in events:
            if e.get("ph") == "X":
                lanes.setdefault(int(e["pid"]), []).append((e["name"], e["ts"], e["dur"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DistnnError(f"{path}: not a distnn trace file ({e})") from None
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
    atomic_write(output, lambda f: fig.savefig(f, format=fmt), protect=[path])
    n = sum(len(e) for e in lanes.values())
    return f"wrote {output}: {len(lanes)} rank(s), {n:,} events"
