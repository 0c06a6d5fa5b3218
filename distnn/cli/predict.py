"""``python -m distnn.predict``: a saved model's outputs (or classes) for new inputs.

    python -m distnn.predict model.npz inputs.npy -o outputs.npy
    python -m distnn.predict model.npz inputs.csv -o classes.csv --classes
    python -m distnn.predict model.npz inputs.npy -o - | head     # CSV on stdout

Inputs are raw features, one row per sample, as the model was trained on them (the
model applies its own saved standardization):

- ``.npy``: a 2-D array (N × features), memory-mapped; an array of images
  (N × 28 × 28 …) is flattened to rows;
- ``.npz``: its array ``x`` (or its only array);
- ``.csv`` / ``.csv.gz``: comma-separated numbers, feature columns only. A first row
  in which any field is not a number is a header and is skipped.

The output format follows ``-o``'s extension: ``.npy`` (N × outputs in the model's
dtype, or N classes with ``--classes``: int64 indices, or strings when the model was
trained on named classes) or ``.csv`` (header ``output_0,…`` or ``class``, values
printed so that they read back to the same floats); ``-o -`` writes that CSV to stdout
and nothing else there. A file is written atomically and never replaces the input.
Prediction runs in one process: under ``mpirun`` rank 0 does the work and the other
ranks only wait for its status.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from collections.abc import Iterable

import numpy as np

from distnn.cli.options import CliParser
from distnn.data.csv import read_number_table
from distnn.engine.network import Network
from distnn.errors import DistnnError
from distnn.io.outputs import atomic_write, check_no_clash, check_output_path
from distnn.io.safe_read import Npz, npy_header

INPUT_KINDS = (".npy", ".npz", ".csv", ".csv.gz")
OUTPUT_KINDS = (".npy", ".csv")


def _kind(path: str, kinds: Iterable[str]) -> str | None:
    return next((k for k in kinds if path.lower().endswith(k)), None)


def read_inputs(path: str, n_features: int) -> np.ndarray:
    """The rows to predict from ``path``, checked against the model's input width."""
    kind = _kind(path, INPUT_KINDS)
    if kind is None:
        raise DistnnError(f"{path}: inputs must be {', '.join(INPUT_KINDS)}")
    if not os.path.isfile(path):
        raise DistnnError(f"{path}: no such file")
    if kind.startswith(".csv"):
        _, x = read_number_table(path)  # NaN and inf are counted below, as for .npy
    else:
        # Bounded readers (distnn.io.safe_read): a header's shape is checked against the
        # file and the memory before anything is allocated or mapped.
        try:
            if kind == ".npy":
                shape, dtype, fortran, offset = npy_header(path)
                order = "F" if fortran else "C"
                x = np.memmap(path, dtype, "r", offset, shape, order) if shape else np.empty(0)
            else:
                with Npz(path, "input file") as f:
                    if "x" not in f.files and len(f.files) != 1:
                        raise DistnnError(f"{path}: no array 'x' (arrays: {', '.join(f.files)})")
                    x = f.read_all(["x" if "x" in f.files else f.files[0]]).popitem()[1]
        except (OSError, ValueError, EOFError) as e:
            raise DistnnError(f"{path}: not a readable {kind} file ({e})") from None
    if x.dtype.kind not in "biuf":
        raise DistnnError(f"{path}: non-numeric dtype {x.dtype}")
    if x.ndim == 0 or len(x) == 0:
        raise DistnnError(f"{path}: no rows to predict")
    if x.ndim > 2 and int(np.prod(x.shape[1:])) == n_features:
        x = x.reshape(len(x), n_features)
    if x.ndim != 2:
        raise DistnnError(f"{path}: shape {x.shape}; need rows of {n_features} features")
    if x.shape[1] != n_features:
        hint = " (a label column? give features only)" if x.shape[1] == n_features + 1 else ""
        raise DistnnError(
            f"{path}: {x.shape[1]} features per row, but the model takes {n_features}{hint}"
        )
    if x.dtype.kind == "f":
        step = 65536  # in blocks: a memory-mapped x is not read into memory at once
        bad = sum(
            int(np.count_nonzero(~np.isfinite(x[i : i + step]))) for i in range(0, len(x), step)
        )
        if bad:
            raise DistnnError(f"{path}: {bad} NaN or infinite values")
    return x


def predict(net: Network, x: np.ndarray, classes: bool = False) -> np.ndarray:
    """Outputs a(L) of ``net`` for raw inputs ``x`` (N × outputs), or N classes: their
    names if the model was trained on named classes, else their indices."""
    if classes and not net.is_classifier:
        raise DistnnError("--classes: the model is not a classifier (it predicts target vectors)")
    if not classes:
        return net.predict(x)
    indices = net.predict_classes(x).astype(np.int64)
    if net.class_names is None:
        return indices
    names = np.array(net.class_names, dtype=str)
    if indices.max(initial=0) >= len(names):  # a wider output layer than named classes
        names = np.append(names, [str(k) for k in range(len(names), net.sizes[-1])])
    return names[indices]


def write_outputs(path: str, out: np.ndarray, protect: list[str]) -> None:
    """``out`` to ``path`` as .npy or .csv, atomically; never over a file in ``protect``."""
    if path.lower().endswith(".npy"):
        atomic_write(path, lambda f: np.save(f, out), protect)
        return
    if out.dtype.kind == "U":  # class names: the csv module quotes a name with a comma
        atomic_write(path, lambda f: f.write(_names_csv(out).encode()), protect)
        return
    atomic_write(path, lambda f: _write_csv(f, out), protect)


def _write_csv(f, out: np.ndarray) -> None:
    """Numbers as CSV with a header (``class`` or ``output_0,…``) to the open file ``f``."""
    if out.ndim == 1:
        header, fmt = "class", "%d"
    else:
        header = ",".join(f"output_{k}" for k in range(out.shape[1]))
        fmt = "%.9g" if out.dtype == np.float32 else "%.17g"  # reads back to the same float
    np.savetxt(f, out, fmt=fmt, delimiter=",", header=header, comments="")


def write_stdout(out: np.ndarray) -> None:
    """``out`` as CSV on stdout (``-o -``), as ``write_outputs`` writes a .csv file."""
    if out.dtype.kind == "U":
        sys.stdout.write(_names_csv(out))
    else:
        _write_csv(sys.stdout, out)


def _names_csv(names: np.ndarray) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["class"])
    writer.writerows([name] for name in names.tolist())
    return text.getvalue()


def parse_args(argv: list[str] | None, rank: int) -> argparse.Namespace:
    p = CliParser(
        prog="python -m distnn.predict",
        rank=rank,
        description="Outputs (or --classes) of a saved model for raw inputs. "
        "Inputs: .npy, .npz (array x), .csv[.gz] (features only; a non-numeric first "
        "row is a header). Output: .npy or .csv, written atomically.",
    )
    p.add_argument("model", help="a model saved by 'python -m distnn.train --save'")
    p.add_argument("inputs", help="raw input rows: .npy, .npz, .csv or .csv.gz")
    p.add_argument(
        "-o", "--output", required=True, help="where to write: .npy or .csv, or - for CSV on stdout"
    )
    p.add_argument(
        "--classes",
        action="store_true",
        help="write classes instead of outputs: their names if the model was trained on "
        "named classes, else their indices",
    )
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    """Do the whole prediction; the line to print on success."""

    to_stdout = args.output == "-"  # the one output that is not a regular file, on purpose
    if not to_stdout:  # before any work: a prediction that cannot be written is not worth it
        check_no_clash([("-o", args.output)], [("model", args.model), ("inputs", args.inputs)])
        check_output_path(args.output, "-o")  # also: not a device, FIFO, socket (/dev/full)
    if not to_stdout and _kind(args.output, OUTPUT_KINDS) is None:
        kinds = " or ".join(OUTPUT_KINDS)
        raise DistnnError(f"{args.output}: output must be {kinds}, or - for stdout")
    net = Network.load(args.model)
    x = read_inputs(args.inputs, net.sizes[0])
    out = predict(net, x, args.classes)
    if to_stdout:
        write_stdout(out)
        return ""  # stdout holds the CSV alone
    write_outputs(args.output, out, protect=[args.inputs, args.model])
    if not args.classes:
        what = f"rows × {out.shape[1]} outputs"
    else:
        what = "class names" if out.dtype.kind == "U" else "class indices"
    return f"wrote {args.output}: {len(out):,} {what}"


def main(argv: list[str] | None = None) -> int:
    from distnn.cli import command_world

    world = command_world()  # alone, no MPI library is needed
    try:  # every rank parses (--help, bad options); one predicts, the others wait for it
        args = parse_args(argv, world.rank)
        line = world.on_root(lambda: run(args))
    except DistnnError as e:
        if world.is_root:
            print(f"distnn: error: {e}", file=sys.stderr)
        return e.exit_code
    if world.is_root and line and not args.quiet:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
