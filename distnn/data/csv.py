"""CSV files of numbers (``.csv`` or ``.csv.gz``): training sets and inputs to predict.

:func:`read_number_table` is the one CSV reader: an optional header row, then rows of
numbers, returned as float64. Parsing is numpy's fast ``loadtxt``; when it fails (or
finds NaN/inf where they are refused), a second pass with the ``csv`` module finds the
first bad line and cell, so every problem is one line naming the file, line and column.

:func:`load_csv` reads a training set with it: a header row is required, one column
holds the class labels (classification, one-hot targets) and every other column is a
feature. Labels are integers 0..K-1, or class names (``setosa``, ``versicolor``, …),
mapped to 0..K-1 in sorted order (:mod:`distnn.data.labels`). The label column is
``label_column`` (a name, or a 0-based index) or by default the column named
``label``, else ``y``, else ``target`` (any case), else the last one.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import warnings
from collections.abc import Sequence

import numpy as np

from distnn.data.dataset import Dataset, Source, from_arrays
from distnn.errors import DistnnError
from distnn.io.memory_room import available_memory
from distnn.io.safe_read import read_limited

DEFAULT_LABEL_COLUMNS = ("label", "y", "target")
MAX_LISTED = 12  # column names listed in a message before "..."
MAX_TEXT_BYTES = 16 << 30  # a CSV's text, at most (less when memory is short)


def is_csv(spec: str) -> bool:
    return spec.lower().endswith((".csv", ".csv.gz"))


def load_csv(
    path: str,
    ftype: np.dtype,
    label_column: str | int | None = None,
    class_names: Sequence[str] | None = None,
) -> Dataset:
    """A training set: feature columns and one label column, under a header row.

    Labels are integer classes, or class names (``setosa``, …) when the first data
    row's label is not a number: names map to 0..K-1 in sorted order, or in the order
    of ``class_names`` (a trained model's) when given.
    """
    try:
        return _load_csv(path, ftype, label_column, class_names)
    except csv.Error as exc:
        raise DistnnError(f"{path}: not a readable CSV file ({exc})") from None


def _load_csv(
    path: str,
    ftype: np.dtype,
    label_column: str | int | None,
    class_names: Sequence[str] | None,
) -> Dataset:
    header, body, offset = _split_header(path, header=True)
    assert header is not None  # header=True: the reader insists on one
    if len(header) < 2:
        raise DistnnError(
            f"{path}: only one column ({header[0]!r}); need feature columns and a label column"
        )
    li = _label_index(path, header, label_column)
    src = Source(path, {"x": "feature columns", "y": f"label column {header[li]!r}"})
    first = next((row for row in csv.reader(io.StringIO(body)) if row), None)
    if first is not None and li < len(first) and not _is_number(first[li]):
        names = _name_labels(path, header, body, offset, li)  # checks every row's width
        x = _number_body(path, header, body, offset, finite=True, skip=li)
        return from_arrays(src, {"x": x, "y": names}, ftype, class_names=class_names)
    table = _number_body(path, header, body, offset, finite=True)
    if table.shape[0] == 0:
        raise DistnnError(f"{path}: no data rows after the header")
    fractional = np.flatnonzero(table[:, li] != np.floor(table[:, li]))
    if fractional.size:
        raise DistnnError(
            _cell_problem(path, header, int(fractional[0]), li, "is not an integer class label")
        )
    x = np.delete(table, li, axis=1)
    return from_arrays(src, {"x": x, "y": table[:, li]}, ftype, class_names=class_names)


def _name_labels(path: str, header: list[str], body: str, offset: int, li: int) -> np.ndarray:
    """Column ``li`` of every data row as stripped strings; DistnnError for a ragged row
    or an empty name, naming the line."""
    names, reader = [], csv.reader(io.StringIO(body))
    for row in reader:
        if not row:
            continue
        line = reader.line_num + offset
        if len(row) != len(header):
            raise DistnnError(
                f"{path}: line {line} has {len(row)} cells but the header has {len(header)} columns"
            )
        name = row[li].strip()
        if not name:
            raise DistnnError(f"{path}: line {line}, {_column(header, li)}: empty class name")
        names.append(name)
    return np.array(names, dtype=str)


def read_number_table(
    path: str, header: bool | None = None, finite: bool = False
) -> tuple[list[str] | None, np.ndarray]:
    """The header (or None) and the rows of numbers of a ``.csv``/``.csv.gz`` file, as float64.

    ``header=True``: line 1 must name the columns; ``False``: there is none; ``None``:
    line 1 is a header if any of its fields is not a number. Blank lines are skipped.
    With ``finite``, NaN and infinities are refused. Every problem is a one-line
    DistnnError naming the file, and for bad data the line and the column.
    """
    try:
        names, body, offset = _split_header(path, header)
        return names, _number_body(path, names, body, offset, finite)
    except csv.Error as exc:
        raise DistnnError(f"{path}: not a readable CSV file ({exc})") from None


def _split_header(path: str, header: bool | None) -> tuple[list[str] | None, str, int]:
    """(column names or None, the text after them, the number of lines before it)."""
    text = _read_text(path)
    stream = io.StringIO(text)
    names: list[str] | None = None
    if header is not False:
        first = [cell.strip() for cell in next(csv.reader(stream), [])]
        if header and not any(first):
            what = "empty file" if not text.strip() else "line 1 is blank"
            raise DistnnError(
                f"{path}: {what}; need a header row naming the columns, then data rows"
            )
        is_header = any(first) and not all(_is_number(cell) for cell in first)
        if header and not is_header:
            raise DistnnError(
                f"{path}: line 1 is numbers, not a header; add a header row naming the columns"
            )
        if is_header:
            names = first
        else:
            stream.seek(0)  # line 1 is data
    offset = 1 if names is not None else 0  # line numbers of the body start after a header
    return names, stream.read(), offset


def _number_body(
    path: str,
    names: list[str] | None,
    body: str,
    offset: int,
    finite: bool,
    skip: int | None = None,
) -> np.ndarray:
    """The rows of ``body`` as float64, without column ``skip`` (a column of names)."""
    usecols = None
    if skip is not None and names is not None:
        usecols = [i for i in range(len(names)) if i != skip]
    table, detail = _parse_fast(body, usecols)
    width = None if names is None else len(names) - (skip is not None)
    if table is not None and table.shape[0] == 0:
        return np.empty((0, width or 0))
    if (
        table is None
        or (width is not None and table.shape[1] != width)
        or (finite and not np.isfinite(table).all())
    ):
        _scan(path, names, body, offset, finite, skip)  # raises, naming the line and cell
        raise DistnnError(f"{path}: cannot parse as CSV of numbers ({detail})")
    return table


def _column(header: list[str] | None, i: int) -> str:
    """How a message names column ``i`` (0-based, as --label-column takes it)."""
    return f"column {header[i]!r} (index {i})" if header else f"column index {i}"


def _cell_problem(path: str, header: list[str] | None, row: int, col: int, what: str) -> str:
    """'<path>: line L, column …: '<cell>' <what>' for data row ``row`` of a table that
    ``read_number_table`` returned (slow: rereads the file; for error messages only)."""
    reader = csv.reader(io.StringIO(_read_text(path)))
    if header is not None:
        next(reader)
    rows = (fields for fields in reader if fields)  # numpy skips blank lines too
    fields = next(itertools.islice(rows, row, None))
    where = f"{path}: line {reader.line_num}, {_column(header, col)}"
    return f"{where}: {fields[col].strip()!r} {what}"


def _read_text(path: str) -> str:
    """The file's text, read (and gunzipped) only up to what parsing it can afford: a
    table of float64 takes about four times its text, so the text may use an eighth of
    the memory available; a gzip that inflates further stops there."""
    available = available_memory()
    limit = MAX_TEXT_BYTES if available is None else min(MAX_TEXT_BYTES, available // 8)
    try:
        data = read_limited(path, limit, "a CSV file")
    except OSError as exc:
        raise DistnnError(f"{path}: cannot open file ({exc.strerror or exc})") from None
    try:  # as open() in text mode reads: universal newlines
        return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig").read()
    except UnicodeDecodeError as exc:
        raise DistnnError(f"{path}: not a text file (not UTF-8 at byte {exc.start:,})") from None


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


def _parse_fast(body: str, usecols: list[int] | None = None) -> tuple[np.ndarray | None, str]:
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
                usecols=usecols,
            )
    except ValueError as exc:
        return None, " ".join(str(exc).split())
    return table, "rows of unequal length, or NaN or infinite values"


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _scan(
    path: str,
    header: list[str] | None,
    body: str,
    offset: int,
    finite: bool,
    skip: int | None = None,
) -> None:
    """Raise a DistnnError naming the first ragged row or bad cell, if there is one.

    The slow second pass, run only when the fast parse failed: the ``csv`` module reads
    the rows again so the message can say where. ``offset`` lines precede ``body``;
    column ``skip`` (class names) is not checked.
    """
    reader = csv.reader(io.StringIO(body))
    width, first = (len(header), 0) if header else (None, 0)
    for row in reader:
        if not row:
            continue  # blank line: numpy skips it too
        line = reader.line_num + offset
        if width is None:
            width, first = len(row), line
        if len(row) != width:
            than = f"the header has {width} columns" if header else f"line {first} has {width}"
            raise DistnnError(f"{path}: line {line} has {len(row)} cells but {than}")
        try:
            values = [float(cell) for i, cell in enumerate(row) if i != skip]
            if not finite or all(map(math.isfinite, values)):
                continue
        except ValueError:
            pass
        for i, cell in enumerate(row):  # the problem is in this row: find its cell
            if i == skip:
                continue
            where = f"{path}: line {line}, {_column(header, i)}"
            if not _is_number(cell):
                what = "empty cell" if not cell.strip() else f"non-numeric value {cell!r}"
                raise DistnnError(f"{where}: {what}")
            if finite and not math.isfinite(float(cell)):
                raise DistnnError(f"{where}: {cell.strip()!r} is not a finite number")
