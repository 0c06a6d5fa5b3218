"""Loss, accuracy and confusion counts over rows split across the ranks: one evaluation.

Training (test and validation sets, in every mode), ``distnn.evaluate`` and
``python -m distnn.evaluate`` all use :func:`evaluate_sharded`. The rows (several
parts laid end to end, e.g. train + test) are cut into fixed chunks of ``EVAL_CHUNK``
rows; rank r evaluates the contiguous chunks ``shard_bounds(chunks, r, P)``. Each chunk
owns one float64 slot for its loss sum, and the slots are added in index order after
one Allreduce (x + 0 + … + 0 is exact), so the loss is the same bits at any number of
ranks; confusion counts are integers, so they are exact too. One Allreduce carries both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from distnn.engine.metrics import macro_average, per_class
from distnn.engine.network import Network, standardize_rows
from distnn.engine.workspace import Workspace
from distnn.errors import DistnnError
from distnn.parallel.reducers import shard_bounds
from distnn.parallel.world import World, process_world

EVAL_CHUNK = 256  # rows per chunk, fixed so results do not depend on the world size

# Rows to evaluate: inputs, targets (one-hot rows for a classifier, or None to derive
# them from the labels), class labels (None for regression).
Part = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]


class Evaluation(NamedTuple):
    samples: int
    loss: float  # mean per sample, the model's own loss function
    accuracy: float | None  # None for regression
    confusion: np.ndarray | None  # K × K int64 (rows true, columns predicted), if asked


def _chunks(parts: Sequence[Part]) -> list[tuple[Part, int, int]]:
    """Every chunk as (part, start, stop): parts laid end to end, cut every EVAL_CHUNK rows.

    A chunk never spans two parts, so the chunking is fixed by the parts' sizes alone.
    """
    return [
        (part, lo, min(lo + EVAL_CHUNK, len(part[0])))
        for part in parts
        for lo in range(0, len(part[0]), EVAL_CHUNK)
    ]


def evaluate_sharded(
    net: Network,
    parts: Sequence[Part],
    world: World,
    ws: Workspace | None = None,
    raw_inputs: bool = False,
    confusion: bool = False,
) -> Evaluation:
    """Mean loss, accuracy and optionally the confusion matrix of ``net`` on ``parts``.

    Every rank calls this with the same parts; all get the same result. With
    ``raw_inputs`` the rows go through the model's saved standardization first (as in
    ``Network.predict``). ``ws``, if given, is a workspace of at least EVAL_CHUNK rows.
    """
    ws = ws if ws is not None and ws.max_rows >= EVAL_CHUNK else net.workspace(EVAL_CHUNK)
    chunks = _chunks(parts)
    n_samples = sum(len(p[0]) for p in parts)
    n_out = net.sizes[-1]
    classifier = any(labels is not None for _, _, labels in parts)
    # One vector, one Allreduce: a loss slot per chunk, then [correct] or the K × K counts.
    counts = (n_out * n_out if confusion else 1) if classifier else 0
    totals = np.zeros(len(chunks) + counts, np.float64)  # counts < 2**53 stay exact
    rows = np.empty((EVAL_CHUNK, net.sizes[0]), net.dtype)
    target = np.empty((EVAL_CHUNK, n_out), net.dtype)
    scratch = np.empty((EVAL_CHUNK, n_out), net.dtype)
    first, last = shard_bounds(len(chunks), world.rank, world.size)
    for c in range(first, last):
        (x, y, labels), lo, hi = chunks[c]
        n = hi - lo
        a_in = rows[:n]
        np.copyto(a_in, x[lo:hi], casting="unsafe")
        if raw_inputs and net.input_mean is not None:
            standardize_rows(a_in, net.input_mean, net.input_std, out=a_in)
        a = net.feed_forward(a_in, ws)
        if y is None:  # a classifier's targets: the labels' one-hot rows
            target[:n].fill(0)
            target[np.arange(n), labels[lo:hi]] = 1
        else:
            np.copyto(target[:n], y[lo:hi], casting="unsafe")
        totals[c] = net.loss_fn.value(a, target[:n], scratch[:n])
        if labels is not None:
            predicted = a.argmax(axis=1)
            if confusion:
                cm = totals[len(chunks) :].reshape(n_out, n_out)
                np.add.at(cm, (np.asarray(labels[lo:hi], np.int64), predicted), 1)
            else:
                totals[-1] += np.count_nonzero(predicted == labels[lo:hi])
    world.allreduce_sum(totals)
    loss = float(sum(totals[: len(chunks)].tolist())) / max(n_samples, 1)  # in slot order
    if not classifier:
        return Evaluation(n_samples, loss, None, None)
    if confusion:
        cm = totals[len(chunks) :].reshape(n_out, n_out).astype(np.int64)
        return Evaluation(n_samples, loss, int(np.trace(cm)) / n_samples, cm)
    return Evaluation(n_samples, loss, float(totals[-1]) / n_samples, None)


def evaluation_report(net: Network, result: Evaluation) -> dict:
    """``result`` as the dict ``python -m distnn.evaluate --json`` writes (JSON types)."""
    report: dict = {
        "samples": result.samples,
        "loss": result.loss,
        "loss_function": net.loss_fn.name,
        "accuracy": result.accuracy,
    }
    if result.confusion is not None:
        cm = result.confusion
        records = per_class(cm)
        report.update(
            correct=int(np.trace(cm)),
            n_classes=len(cm),
            confusion_matrix=cm.tolist(),
            per_class=records,
            macro_precision=macro_average(records, "precision"),
            macro_recall=macro_average(records, "recall"),
            macro_f1=macro_average(records, "f1"),
        )
        if net.class_names is not None:
            names = net.class_names + [str(k) for k in range(len(net.class_names), len(cm))]
            report["class_names"] = names
            for record in records:
                record["name"] = names[record["class"]]
    return report


def evaluate(
    net: Network, x: np.ndarray, y: np.ndarray | None = None, world: World | None = None
) -> dict:
    """Loss and accuracy of ``net`` on raw inputs ``x``; for a classifier, much more.

    ``y`` holds integer class labels (1-D) for a classifier (``net.is_classifier``) or
    target rows (N × outputs) for a regression model. Inputs go through the model's
    saved standardization. Returns the keys of ``python -m distnn.evaluate --json``:
    ``samples``, ``loss`` (mean per sample, the model's loss function),
    ``loss_function``, ``accuracy`` (None for regression) and, for a classifier,
    ``correct``, ``n_classes``, ``confusion_matrix`` (rows true class, columns
    predicted), ``per_class`` precision/recall/f1/support and the macro averages.
    Under ``mpirun`` every rank calls it with the same arrays; each evaluates its shard
    and all get the same result. Started alone (a script, a notebook) it needs no MPI
    library: ``world`` defaults to :func:`~distnn.parallel.world.process_world`. Bad
    shapes or labels raise DistnnError.
    """
    world = process_world() if world is None else world
    x, y = np.asarray(x), None if y is None else np.asarray(y)
    part: Part = (x, None, y) if net.is_classifier else (x, y, None)
    check_compatible(net, [part], "evaluate")
    result = evaluate_sharded(net, [part], world, raw_inputs=True, confusion=net.is_classifier)
    return evaluation_report(net, result)


def check_compatible(net: Network, parts: Sequence[Part], name: str) -> None:
    """DistnnError (one line, naming ``name``) unless every part fits the model."""
    n_in, n_out = net.sizes[0], net.sizes[-1]
    for x, y, labels in parts:
        if x.ndim != 2:
            raise DistnnError(f"{name}: inputs of shape {x.shape}; need rows of {n_in} features")
        if x.shape[1] != n_in:
            raise DistnnError(f"{name}: {x.shape[1]} features per row, but the model takes {n_in}")
        if net.is_classifier:
            if labels is None:
                raise DistnnError(
                    f"{name}: the model is a classifier but the data set has target vectors, "
                    "not class labels"
                )
            if labels.shape != (len(x),):
                raise DistnnError(f"{name}: {labels.shape} labels for {len(x)} input rows")
            if labels.dtype.kind not in "iu":
                raise DistnnError(f"{name}: class labels must be integers, not {labels.dtype}")
            if len(labels) and (labels.min() < 0 or labels.max() >= n_out):
                raise DistnnError(
                    f"{name}: class labels go from {labels.min()} to {labels.max()}, "
                    f"but the model has {n_out} classes (0..{n_out - 1})"
                )
        else:
            if labels is not None or y is None:
                raise DistnnError(
                    f"{name}: the model predicts target vectors, but the data set has class labels"
                )
            if y.shape != (len(x), n_out):
                raise DistnnError(
                    f"{name}: targets of shape {y.shape}, but the model predicts "
                    f"{n_out} outputs for each of {len(x)} rows"
                )
