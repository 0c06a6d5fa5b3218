"""``python -m distnn.evaluate``: loss, accuracy, confusion matrix of a saved model.

    python -m distnn.evaluate model.npz --dataset digits
    mpirun -n 4 python -m distnn.evaluate model.npz --dataset data/ --split all --json ev.json

Every rank loads the model and the data set, and checks that every other rank holds the
same model, options and rows (:mod:`distnn.parallel.agreement`); each evaluates its
share of the chosen split's fixed chunks, and one Allreduce sums [chunk losses,
confusion-matrix counts] (:mod:`distnn.parallel.evaluation`): the same numbers, to the
last bit, at any number of ranks. Raw inputs go through the standardization saved with the model
(``Network.predict``); the loss is the model's own loss function, averaged over samples
(as ``test_loss`` in training). Errors in the input are printed once by rank 0 and every
rank exits with status 2; any other error aborts the whole job.
"""

from __future__ import annotations

import argparse
import sys

from distnn.cli import command_world
from distnn.cli.options import CliParser
from distnn.data import Dataset, load_dataset
from distnn.data.load import dataset_path
from distnn.engine.metrics import report, summary, to_json
from distnn.engine.network import Network
from distnn.errors import DistnnError
from distnn.io.outputs import atomic_write, check_no_clash, check_output_path
from distnn.parallel.agreement import check_same_everywhere
from distnn.parallel.evaluation import (
    Part,
    check_compatible,
    evaluate_sharded,
    evaluation_report,
)
from distnn.parallel.world import World, check_launch

SPLITS = ("test", "train", "all")


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
    world = command_world()  # alone, no MPI library is needed

    def setup() -> tuple:
        args = parse_args(argv, world.rank)
        check_launch(world)  # a launcher of another MPI: N separate worlds of 1
        if args.json:  # before any work: a report that cannot be written is not worth it
            inputs = [("model", args.model), ("--dataset", dataset_path(args.dataset))]
            check_no_clash([("--json", args.json)], inputs)
            check_output_path(args.json, "--json")
        net = Network.load(args.model)
        extra = {} if args.label_column is None else {"label_column": args.label_column}
        if net.class_names is not None:  # the model's mapping of names to classes
            extra["class_names"] = net.class_names
        data = load_dataset(args.dataset, seed=args.seed, dtype=net.dtype.name, **extra)
        split, parts, note = select_split(data, args.split)
        check_compatible(net, parts, data.name)
        return args, net, data, split, parts, note

    try:
        args, net, data, split, parts, note = world.agree(setup)
        same = {"options": repr(sorted(vars(args).items())), "model": net.params}
        for i, (x, y, labels) in enumerate(parts):
            same |= {f"inputs[{i}]": x, f"targets[{i}]": y, f"labels[{i}]": labels}
        check_same_everywhere(world, same)  # else a silent mix, or MPI's raw error
        evaluation = evaluate_sharded(
            net, parts, world, raw_inputs=True, confusion=net.is_classifier
        )
        result = evaluation_report(net, evaluation)
        world.on_root(lambda: report_and_write(args, net, data.name, split, note, result, world))
    except DistnnError as e:
        if world.is_root:
            print(f"distnn: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def report_and_write(
    args: argparse.Namespace,
    net: Network,
    data_name: str,
    split: str,
    note: str,
    result: dict,
    world: World,
) -> None:
    """Rank 0: print the report, and write ``--json``."""
    if note and not args.quiet:
        print(f"note: {note}", file=sys.stderr)
    if args.quiet:
        print(summary(result))
    else:
        print(header(args.model, net, data_name, split, result["samples"], world.size))
        print(report(result))
    if args.json:
        where = {"model": args.model, "dataset": data_name, "split": split}
        text = to_json(where | {"ranks": world.size} | result)
        atomic_write(args.json, lambda f: f.write(text.encode()))


if __name__ == "__main__":
    sys.exit(main())
