"""CSV data files (``.csv`` or ``.csv.gz``): a header row, then rows of numbers.

One column holds integer class labels (classification, one-hot targets); every other
column is a feature. The label column is ``label_column`` (a name, or a 0-based index)
or by default the column named ``label``, else ``y``, else ``target`` (any case), else
the last one. Parsing is numpy's fast ``loadtxt``; when it fails, or finds NaN/inf or a
fractional label, a second pass with the ``csv`` module finds the first bad line and
cell for the message.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import warnings
import zlib

import numpy as np

from distnn.data.dataset import Dataset, Source, from_arrays
from distnn.errors import DistnnError

DEFAULT_LABEL_COLUMNS = ("label", "y", "target")
MAX_LISTED = 12  # column names listed in a message before "..."


def is_csv(spec: str) -> bool:
    return spec.lower().endswith((".csv", ".csv.gz"))


def load_csv(path: str, ftype: np.dtype, label_column: str | int | None = None) -> Dataset:
    text = _read_text(path)
    stream = io.StringIO(text)
    header = [cell.strip() for cell in next(csv.reader(stream), [])]
    if not any(header):
        what = "empty file" if not text.strip() else "line 1 is blank"
        raise DistnnError(f"{path}: {what}; need a header row naming the columns, then data rows")
    if all(_is_number(cell) for cell in header):
        raise DistnnError(
            f"{path}: line 1 is numbers, not a header; add a header row naming the columns"
        )
    if len(header) < 2:
        raise DistnnError(
            f"{path}: only one column ({header[0]!r}); need feature columns and a label column"
        )
    li = _label_index(path, header, label_column)
    body = stream.read()
    table, detail = _parse_fast(body)
    if table is not None and table.shape[0] == 0:
        raise DistnnError(f"{path}: no data rows after the header")
    if (
        table is None
        or table.shape[1] != len(header)
        or not np.isfinite(table).all()
        or (table[:, li] != np.floor(table[:, li])).any()
    ):
        _scan(path, header, body, li)  # raises, naming the line and cell
        raise DistnnError(f"{path}: cannot parse as CSV of numbers ({detail})")
    x = np.delete(table, li, axis=1)
    src = Source(path, {"x": "feature columns", "y": f"label column {header[li]!r}"})
    return from_arrays(src, {"x": x, "y": table[:, li]}, ftype)


def _read_text(path: str) -> str:
    try:
        if path.lower().endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8-sig") as f:
                return f.read()
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError:
        raise DistnnError(f"{path}: not a text file (not UTF-8)") from None
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise DistnnError(f"{path}: cannot open file ({exc.strerror or exc})") from None
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise DistnnError(f"{path}: not a valid gzip file ({detail})") from None


def _columns(header: list[str]) -> str:
    names = ", ".join(repr(name) for name in header[:MAX_LISTED])
    more = f", ... ({len(header)} columns)" if len(header) > MAX_LISTED else ""
    return f"columns: {names}{more}"


def _label_index(path: str, header: list[str], label_column: str | int | None) -> int:
    """The 0-based index of the label column."""
    if label_column is None:
        lowered = [name.lower() for name in header]
        for name in DEFAULT_LABEL_COLUMNS:
            if lowered.count(name) > 1:
                raise DistnnError(
                    f"{path}: {lowered.count(name)} columns are named {name!r}; "
                    "choose one with --label-column INDEX"
                )
            if name in lowered:
                return lowered.index(name)
        return len(header) - 1
    if isinstance(label_column, str) and label_column in header:
        if header.count(label_column) > 1:
            raise DistnnError(
                f"{path}: {header.count(label_column)} columns are named {label_column!r}; "
                "choose one with --label-column INDEX"
            )
        return header.index(label_column)
    if isinstance(label_column, str) and label_column.isdigit():
        label_column = int(label_column)
    if isinstance(label_column, int) and not isinstance(label_column, bool):
        if 0 <= label_column < len(header):
            return label_column
        raise DistnnError(
            f"{path}: label column index {label_column} is out of range: the header has "
            f"{len(header)} columns (0..{len(header) - 1})"
        )
    raise DistnnError(f"{path}: no label column {label_column!r} ({_columns(header)})")


def _parse_fast(body: str) -> tuple[np.ndarray | None, str]:
    """The body as a 2-D float64 table, or None and numpy's complaint."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            table = np.loadtxt(
                io.StringIO(body),
                delimiter=",",
                dtype=np.float64,
                ndmin=2,
                comments=None,
                quotechar='"',
            )
    except ValueError as exc:
        return None, " ".join(str(exc).split())
    return table, "NaN, infinite or fractional labels"


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _scan(path: str, header: list[str], body: str, li: int) -> None:
    """Raise a DistnnError naming the first ragged row or bad cell, if there is one."""
    reader = csv.reader(io.StringIO(body))
    for row in reader:
        if not row:
            continue  # blank line: numpy skips it too
        line = reader.line_num + 1  # the header is line 1
        if len(row) != len(header):
            raise DistnnError(
                f"{path}: line {line} has {len(row)} cells but the header has {len(header)} columns"
            )
        try:
            values = [float(cell) for cell in row]
            if all(map(math.isfinite, values)) and values[li] == math.floor(values[li]):
                continue
        except ValueError:
            pass
        for i, cell in enumerate(row):  # the problem is in this row: find its cell
            where = f"{path}: line {line}, column {header[i]!r} (index {i})"
            if not _is_number(cell):
                what = "empty cell" if not cell.strip() else f"non-numeric value {cell!r}"
                raise DistnnError(f"{where}: {what}")
            if not math.isfinite(float(cell)):
                raise DistnnError(f"{where}: {cell.strip()!r} is not a finite number")
            if i == li and float(cell) != math.floor(float(cell)):
                raise DistnnError(f"{where}: {cell.strip()!r} is not an integer class label")
