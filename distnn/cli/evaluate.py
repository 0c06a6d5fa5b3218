"""``python -m distnn.evaluate``: loss, accuracy, confusion matrix of a saved model.

    python -m distnn.evaluate model.npz --dataset digits
    mpirun -n 4 python -m distnn.evaluate model.npz --dataset data/ --split all --json ev.json

Every rank loads the model and the data set; rank r evaluates the contiguous rows
``shard_bounds(N, r, P)`` of the chosen split, and one Allreduce sums [loss sum,
confusion-matrix counts]. The counts are integers, so the confusion matrix (and
accuracy, precision, recall) is exactly that of a one-process run; the loss agrees to
rounding. Raw inputs go through the standardization saved with the model
(``Network.predict``); the loss is the model's own loss function, averaged over samples
(as ``test_loss`` in training). Errors in the input are printed once by rank 0 and every
rank exits with status 2; any other error aborts the whole job.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from distnn.cli.options import CliParser
from distnn.cli.predict import atomic_write, refuse_overwrite
from distnn.engine.metrics import (
    confusion_matrix,
    macro_average,
    per_class,
    report,
    summary,
    to_json,
)
from distnn.engine.network import Network
from distnn.errors import DistnnError

if TYPE_CHECKING:
    from distnn.data.load import Dataset
    from distnn.parallel.world import World

CHUNK_ROWS = 8192  # rows per forward pass: bounds memory whatever the shard size
SPLITS = ("test", "train", "all")

# A part of the evaluated rows: inputs, regression targets (None for a classifier),
# class labels (None for regression).
Part = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]


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
            labels = np.asarray(labels)
            if labels.shape != (len(x),):
                raise DistnnError(f"{name}: {labels.shape} labels for {len(x)} input rows")
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


def _local_rows(parts: Sequence[Part], lo: int, hi: int) -> list[tuple[Part, int, int]]:
    """Rows [lo, hi) of the parts laid end to end, as (part, start, stop) within each."""
    pieces, offset = [], 0
    for part in parts:
        n = len(part[0])
        start, stop = max(lo - offset, 0), min(hi - offset, n)
        if start < stop:
            pieces.append((part, start, stop))
        offset += n
    return pieces


def evaluate_parts(
    net: Network, parts: Sequence[Part], world: World | None = None, chunk: int = CHUNK_ROWS
) -> dict:
    """``evaluate`` over several blocks of rows taken as one (e.g. train + test)."""
    n_total = sum(len(p[0]) for p in parts)
    if n_total == 0:
        raise DistnnError("no rows to evaluate")
    from distnn.parallel.trainer import shard_bounds  # (imports MPI: only when evaluating)

    rank, size = (0, 1) if world is None else (world.rank, world.size)
    lo, hi = shard_bounds(n_total, rank, size)
    n_out = net.sizes[-1]
    # The one reduction: [Σ loss, confusion counts]; integers below 2**53 are exact.
    totals = np.zeros(1 + (n_out * n_out if net.is_classifier else 0), np.float64)
    eye = np.eye(n_out, dtype=net.dtype)
    for (x, y, labels), start, stop in _local_rows(parts, lo, hi):
        for a in range(start, stop, chunk):
            b = min(a + chunk, stop)
            out = net.predict(x[a:b])
            if net.is_classifier:
                true = np.asarray(labels[a:b], np.int64)
                target = eye[true]
                cm = confusion_matrix(true, out.argmax(axis=1), n_out)
                totals[1:] += cm.ravel()
            else:
                target = np.asarray(y[a:b], net.dtype)
            totals[0] += net.loss_fn.value(out, target, np.empty_like(out))
    if world is not None:
        world.allreduce_sum(totals)
    result: dict = {
        "samples": n_total,
        "loss": float(totals[0]) / n_total,
        "loss_function": net.loss_fn.name,
        "accuracy": None,
    }
    if net.is_classifier:
        cm = totals[1:].reshape(n_out, n_out).astype(np.int64)
        records = per_class(cm)
        correct = int(np.trace(cm))
        result.update(
            accuracy=correct / n_total,
            correct=correct,
            n_classes=n_out,
            confusion_matrix=cm.tolist(),
            per_class=records,
            macro_precision=macro_average(records, "precision"),
            macro_recall=macro_average(records, "recall"),
            macro_f1=macro_average(records, "f1"),
        )
    return result


def evaluate(
    net: Network,
    x: np.ndarray,
    y: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    world: World | None = None,
) -> dict:
    """Loss and accuracy of ``net`` on raw inputs ``x``; for a classifier, more.

    A classifier (``net.is_classifier``) needs ``labels`` (int classes; ``y`` is then
    ignored: targets are their one-hot rows); a regression model needs targets ``y``
    (N × outputs). The result holds ``samples``, ``loss`` (mean per sample, the model's
    loss function), ``loss_function``, ``accuracy`` (None for regression) and, for a
    classifier, ``correct``, ``n_classes``, ``confusion_matrix`` (rows true class,
    columns predicted), ``per_class`` precision/recall/f1/support and macro averages.
    With ``world`` (a :class:`distnn.parallel.world.World`) every rank must call this with the
    same arrays; each evaluates its shard and all get the same result.
    """
    x = np.asarray(x)
    if net.is_classifier:
        y, labels = None, None if labels is None else np.asarray(labels)
    else:
        y = None if y is None else np.asarray(y)
    parts = [(x, y, labels)]
    check_compatible(net, parts, "evaluate")
    return evaluate_parts(net, parts, world)


def select_split(data: Dataset, split: str | None) -> tuple[str, list[Part], str]:
    """The parts of ``data`` to evaluate, the split's name, and a note (or "")."""
    train = (data.x, data.y, data.labels)
    test = (data.x_test, data.y_test, data.labels_test)
    if split is None:  # the test split if there is one, else the training rows
        if data.x_test is not None:
            return "test", [test], ""
        return "train", [train], f"{data.name} has no test split: evaluating its training rows"
    if split == "test" and data.x_test is None:
        raise DistnnError(f"{data.name} has no test split (use --split train)")
    parts = {"train": [train], "test": [test], "all": [train, test]}[split]
    return split, [p for p in parts if p[0] is not None], ""


# --- the command line ---------------------------------------------------------------


def parse_args(argv: list[str] | None, rank: int) -> argparse.Namespace:
    p = CliParser(
        prog="python -m distnn.evaluate",
        rank=rank,
        description="Loss, accuracy and (for classifiers) confusion matrix and per-class "
        "precision/recall of a saved model. Run alone or under 'mpirun -n N'.",
    )
    p.add_argument("model", help="a model saved by 'python -m distnn.train --save'")
    p.add_argument("--dataset", required=True, help="the data set, as for distnn.train")
    p.add_argument(
        "--split",
        choices=SPLITS,
        help="rows to evaluate (default: test if the data set has a test split, else train)",
    )
    p.add_argument("--json", metavar="OUT", help="also write every number to this JSON file")
    p.add_argument("--seed", type=int, default=0, help="seed of synthetic:… data (default 0)")
    p.add_argument("--label-column", metavar="COL", help="CSV data: the column holding the class")
    p.add_argument("--quiet", action="store_true", help="print only the loss/accuracy line")
    return p.parse_args(argv)


def header(model: str, net: Network, data_name: str, split: str, n: int, ranks: int) -> str:
    """Two lines: the model evaluated, and on which rows."""
    kind = "classifier" if net.is_classifier else "regression"
    std = ", standardized inputs" if net.input_mean is not None else ""
    return (
        f"model {model}: {net.describe()}, {kind}{std}\n"
        f"data {data_name}, {split} split: {n:,} samples | {ranks} rank(s)"
    )


def main(argv: list[str] | None = None) -> int:
    from distnn.data.load import load_dataset
    from distnn.io.models import load_model
    from distnn.parallel.world import World, check_launch, install_abort_on_error

    world = World()
    install_abort_on_error(world)
    error = None
    try:
        args = parse_args(argv, world.rank)
        check_launch(world)  # a launcher of another MPI: N separate worlds of 1
        net = load_model(args.model)
        extra = {} if args.label_column is None else {"label_column": args.label_column}
        data = load_dataset(args.dataset, seed=args.seed, dtype=net.dtype.name, **extra)
        split, parts, note = select_split(data, args.split)
        check_compatible(net, parts, data.name)
        if args.json:
            refuse_overwrite(args.json, [args.model, args.dataset])
            if not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
                raise DistnnError(f"{args.json}: no such directory")
    except DistnnError as e:
        error = str(e)
    if world.setup_failed(error):
        return DistnnError.exit_code

    result = evaluate_parts(net, parts, world)
    error = None
    if world.is_root:
        if note and not args.quiet:
            print(f"note: {note}", file=sys.stderr)
        if args.quiet:
            print(summary(result))
        else:
            print(header(args.model, net, data.name, split, result["samples"], world.size))
            print(report(result))
        if args.json:
            where = {"model": args.model, "dataset": data.name, "split": split}
            text = to_json(where | {"ranks": world.size} | result)
            try:
                atomic_write(args.json, lambda f: f.write(text.encode()))
            except DistnnError as e:
                error = str(e)
                print(f"distnn: error: {error}", file=sys.stderr)
    if world.size > 1:  # every rank ends with rank 0's status
        error = world.comm.bcast(error)
    return DistnnError.exit_code if error else 0


if __name__ == "__main__":
    sys.exit(main())
