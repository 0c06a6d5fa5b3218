"""The Markdown report of a sweep: provenance, steps and seconds to target with their
intervals, the steps model against the measured noise scale. A function of the CSV's
rows only, so ``--plot-only`` regenerates it byte for byte."""

from __future__ import annotations

from typing import Any

from distnn.scaling.stats import Interval
from distnn.scaling.summary import (
    measured_noise_scale,
    points,
    ratio_checks,
    steps_model,
    steps_rows,
)


def _ci(i: Interval | None, digits: str = ".0f") -> tuple[str, str, str]:
    if i is None:
        return "—", "—", "—"
    return (
        format(i.mean, digits),
        f"{i.low:{digits}}–{i.high:{digits}}",
        f"{i.t_low:{digits}}–{i.t_high:{digits}}",
    )


def _num(x: float | None, digits: str = ".1f") -> str:
    return "—" if x is None else format(x, digits)


def provenance_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Where and when: the first row's machine, the study's span and its load range."""
    first = rows[0]
    loads = [r[k] for r in rows for k in ("start_load", "end_load") if r.get(k) is not None]
    steals = [r.get("end_steal_s") for r in rows if r.get("end_steal_s") is not None]
    steals += [r.get("start_steal_s") for r in rows if r.get("start_steal_s") is not None]
    dates = sorted(d for r in rows for d in (r.get("start_date"), r.get("end_date")) if d)
    return [
        f"- commit `{first.get('commit')}`, distnn {first.get('distnn')}, {first.get('mpi')}",
        f"- host `{first.get('host')}`: {first.get('cpu_model')}, {first.get('cores')} cores, "
        f"affinity {first.get('affinity')}",
        f"- from {dates[0] if dates else '?'} to {dates[-1] if dates else '?'}; "
        f"1-min load average {_num(min(loads) if loads else None, '.2f')}–"
        f"{_num(max(loads) if loads else None, '.2f')}; steal time over the study "
        f"{_num(max(steals) - min(steals) if steals else None, '.2f')} s",
        f"- {first.get('dataset')}, hidden {first.get('hidden')} ({first.get('activation')}), "
        f"{first.get('schedule')}, base batch {first.get('base_batch')}, evaluated every "
        f"{first.get('eval_every')} step(s), at most {first.get('max_epochs')} epochs, "
        f"deterministic {first.get('deterministic')}",
    ]


def report(rows: list[dict[str, Any]]) -> str:
    """The whole report, as Markdown."""
    if not rows:
        return "# Time to accuracy\n\nNo runs.\n"
    rules = sorted({r["lr_scaling"] for r in rows})
    fewest = min(r["ranks"] for r in rows)
    out = [f"# Time to accuracy: {rows[0]['target']} on {rows[0]['dataset']}", ""]
    out += [*provenance_lines(rows), ""]
    out += [
        f"## Steps to target ({fewest} rank(s)): mean over the reached seeds, 95% intervals",
        "",
        "| lr rule | global batch | reached | steps | bootstrap 95% | t 95% | noise scale |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    base = steps_rows(rows)
    for p in points(base):
        mean, boot, t = _ci(p.steps)
        noise = measured_noise_scale([r for r in base if r["batch"] == p.batch], p.rule)
        out.append(
            f"| {p.rule} | {p.batch} | {p.runs - p.unreached}/{p.runs} | {mean} | "
            f"{boot} | {t} | {_num(noise)} |"
        )
    out += [
        "",
        "## The steps model S = S_min·(1 + B_noise/B), least squares on 1/B",
        "",
        "| lr rule | S_min | B_noise (fitted) | noise scale (measured, median) | runs |",
        "|---|---:|---:|---:|---:|",
    ]
    for rule in rules:
        model = steps_model(rows, rule)
        measured = _num(measured_noise_scale(base, rule))
        if model is None:
            out.append(
                f"| {rule} | — | — (no fit: fewer than 2 batches or wrong shape) | {measured} | |"
            )
        else:
            out.append(
                f"| {rule} | {model.s_min:.0f} | {model.b_noise:.1f} | {measured} | "
                f"{model.points} |"
            )
    out += [
        "",
        "## Does the measured noise scale predict the steps saved by a larger batch?",
        "",
        "S(B1)/S(B2): 1 = no steps saved, B2/B1 = perfect scaling.",
        "",
        "| lr rule | B1 → B2 | measured | predicted by the noise scale | perfect |",
        "|---|---|---:|---:|---:|",
    ]
    for rule in rules:
        for c in ratio_checks(rows, rule):
            out.append(
                f"| {rule} | {c['from']} → {c['to']} | {c['measured']:.2f} | "
                f"{_num(c['predicted'], '.2f')} | {c['perfect']:.0f} |"
            )
    out += [
        "",
        "## Training seconds to target by ranks (noisy on a shared host)",
        "",
        "| lr rule | global batch | ranks | reached | seconds | bootstrap 95% | t 95% |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for p in points(rows):
        mean, boot, t = _ci(p.seconds, ".3f")
        out.append(
            f"| {p.rule} | {p.batch} | {p.ranks} | {p.runs - p.unreached}/{p.runs} | "
            f"{mean} | {boot} | {t} |"
        )
    return "\n".join(out) + "\n"
