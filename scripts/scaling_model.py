"""scaling.py's model stage: every parameter fitted (or taken from the command line), each
measured point predicted, the projection to --max-ranks drawn with its band and verdict,
and the report (report.md, fits.json) written beside the CSVs."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import perfmodel
import scaling_fit
from scaling_check import (
    MARGIN,
    describe,
    fit_networks,
    given,
    predict,
    project,
    scaled,
    table,
    verdict,
)
from scaling_plots import plot_projection


def model(
    args: argparse.Namespace, scaling: list[dict], sweep: list[dict], runs: list[dict]
) -> dict:
    """Fit (or take) every parameter; predict each measured point; project to --max-ranks
    with the band; return what the report needs."""
    fits, refused = fit_networks(sweep)
    if args.alpha is not None and args.beta is not None:
        fits = dict.fromkeys(fits or [0], given(args.alpha * 1e-6, 1 / (args.beta * 1e9)))
    elif not fits:
        reason = "; ".join(refused.values()) or "no Allreduce sweep to fit"
        title = f"no projection: {reason}: measure one, or pass --alpha and --beta"
        return {"title": title, "lines": [], "validated": False, "compute": None,
                "networks": {}, "refused": refused, "projection": None}  # fmt: skip
    measured_params = scaling[0]["params"] if scaling else None
    params = args.params or measured_params
    points = [(r["global_batch"], r["step_s"]) for r in runs if r["ranks"] == 1]
    if args.rate is not None:
        compute = given(0.0, 1 / args.rate)
    elif points and params:
        compute = scaled(scaling_fit.fit_compute(points), params / measured_params)
    else:
        sys.exit("scaling: nothing measured at 1 rank: measure, or pass --rate and --params")
    print(f"compute fit at 1 rank: {describe(compute, 'compute')}")
    same = bool(scaling) and params == measured_params and args.batch == scaling[0]["global_batch"]
    predict(scaling if same else [], compute, fits, args.batch, params)
    validated, lines = verdict(scaling if same else [])
    own = [n for n in fits if n <= args.cores] or list(fits)
    used = max(own)  # the largest rank count with a core per rank: closest to a cluster's
    source = "given" if args.alpha is not None else f"the {used}-rank fit"
    ranks = [2**k for k in range(args.max_ranks.bit_length()) if 2**k <= args.max_ranks]
    projection = project(ranks, args.batch, params, compute, fits[used])
    label = "validated" if validated else "unvalidated"
    title = f"projection ({label}), Allreduce α, β from {source}; {describe(fits[used], 'network')}"
    print(f"\n{title}\n" + "\n".join(lines))
    steps = [
        perfmodel.Step(**{k: r[k] for k in perfmodel.Step.__dataclass_fields__}) for r in projection
    ]
    print(perfmodel.format_table(steps))
    networks = {n: f.coef for n, f in fits.items() if n > 0}
    last = [
        r for r in sweep if r["try"] == max(x["try"] for x in sweep if x["ranks"] == r["ranks"])
    ]
    plot_projection(projection, scaling if same else [], last, networks, title,
                    args.plot_dir / "scaling-model.png")  # fmt: skip
    return {"title": title, "lines": lines, "validated": validated, "compute": compute,
            "networks": fits, "refused": refused, "projection": projection}  # fmt: skip


def write_report(out_dir: Path, scaling: list[dict], found: dict, info: dict) -> None:
    """report.md and fits.json beside the CSVs: provenance, fits, measured vs predicted."""
    compute = found["compute"]
    fits = {"compute": compute and asdict(compute), "margin": scaling_fit.MARGIN}
    fits |= {"networks": {n: asdict(f) for n, f in found["networks"].items()}}
    fits |= {"refused": found["refused"], "validated": found["validated"], "provenance": info}
    (out_dir / "fits.json").write_text(json.dumps(fits, indent=1) + "\n")
    text = ["# Throughput scaling: predicted against measured\n", f"`{shlex.join(sys.argv)}`\n"]
    text += ["Synthetic data the network cannot learn: this measures throughput only.\n"]
    text += [", ".join(f"{k} {v}" for k, v in info.items()) + "\n"]
    text += [f"- compute: {describe(compute, 'compute')}"] if compute else []
    for n, f in found["networks"].items():
        text += [f"- Allreduce {f'at {n} ranks' if n else 'given'}: {describe(f, 'network')}"]
    text += [f"- refused: {why}" for why in found["refused"].values()]
    text += ["", *table(scaling), "", f"**{found['title']}**", ""]
    text += [f"- {line}" for line in found["lines"]]
    text += [f"\nA miss: the median outside the prediction's 95% band ± {MARGIN:.0%}."]
    (out_dir / "report.md").write_text("\n".join(text) + "\n")
