"""Reading what ``python -m distnn.plot`` is given, whatever it is given.

A ``--metrics`` file is read line by line from a regular file only (a FIFO would block,
``/dev/zero`` never ends, a directory is no file), each line at most
:data:`MAX_LINE` bytes (a record is a few hundred), so memory stays bounded; each value
the plot reads is checked to be what distnn writes: an integer epoch, numbers (never
text, booleans, null where a number is drawn, or integers beyond a float's range),
fractions for accuracies, no negative losses, rates or times. NaN and infinities pass
(a diverged run writes them) and are left out of the lines. Every problem is a
DistnnError naming the file and, where there is one, the line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

from distnn.errors import DistnnError, one_line
from distnn.io.metrics_log import is_epoch
from distnn.io.safe_read import open_regular, read_limited, size_text

MAX_LINE = 16 << 20  # bytes in one record: a header with its config is a few KiB
MAX_TRACE = 1 << 30  # bytes of a --trace file (a long run's is tens of MiB)
MAX_EPOCH = 2**53  # the largest epoch a float (matplotlib's axis) holds exactly
PHASE_KEYS = ("data_s", "compute_s", "allreduce_s", "update_s")
FRACTION_KEYS = ("accuracy", "val_accuracy")
# Values that are drawn (or stacked) and so must be numbers, none negative.
NUMERIC_KEYS = (
    "loss",
    "test_loss",
    "val_loss",
    *FRACTION_KEYS,
    "samples_per_sec",
    "elapsed_s",
    *PHASE_KEYS,
)


def is_number(value: Any) -> bool:
    """A JSON number as a float can hold it (no bool, no integer beyond float's range)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def parse_json(text: str, where: str) -> Any:
    """``text`` as JSON; DistnnError naming ``where`` for anything the parser refuses
    (syntax, nesting too deep for it, integers too long for Python to convert)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DistnnError(f"{where}: not JSON ({e.msg}, column {e.colno})") from None
    except RecursionError:
        raise DistnnError(f"{where}: not JSON distnn wrote (nested too deeply)") from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        raise DistnnError(f"{where}: not JSON distnn wrote ({one_line(e)})") from None


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of ``path``, a regular file of UTF-8 lines of bounded length."""
    try:
        f = open_regular(path)
    except FileNotFoundError:
        raise DistnnError(f"{path}: no such file") from None
    except OSError as e:
        raise DistnnError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        line_no = 0
        while True:
            line_no += 1
            try:
                raw = f.readline(MAX_LINE + 1)
            except OSError as e:
                raise DistnnError(f"{path}: cannot read ({e.strerror or e})") from None
            if not raw:
                return
            where = f"{path} line {line_no}"
            if len(raw) > MAX_LINE:
                raise DistnnError(
                    f"{where}: longer than {size_text(MAX_LINE)} (is this a --metrics file?)"
                )
            try:
                yield line_no, raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DistnnError(f"{where}: not UTF-8 text") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_epoch_record(record: dict, where: str) -> int:
    """The record's epoch, once every value the plot draws is checked."""
    epoch = record.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise DistnnError(f"{where}: no integer 'epoch' (is this a --metrics file?)")
    if epoch > MAX_EPOCH:
        raise DistnnError(f"{where}: 'epoch' is {_short(epoch)}, beyond any run's")
    if not is_number(record.get("loss")):
        raise DistnnError(f"{where}: no numeric 'loss' (is this a --metrics file?)")
    for key in NUMERIC_KEYS:
        value = record.get(key)
        if value is None:
            continue
        if not is_number(value):
            raise DistnnError(f"{where}: '{key}' is {_short(value)}, not a number")
        if not math.isfinite(value):
            continue  # a diverged run's NaN: left out of the lines
        if value < 0:
            raise DistnnError(f"{where}: '{key}' is {value:g}, which is never negative")
        if key in FRACTION_KEYS and value > 1:
            raise DistnnError(f"{where}: '{key}' is {value:g}, not a fraction (0 to 1)")
    return epoch


def read_metrics(path: str) -> list[dict]:
    """The epoch records of a ``--metrics`` JSON-lines file, by epoch (the last one wins).

    Blank lines, header records, a supervisor's events and ``--eval-every`` evaluations
    are skipped (:func:`distnn.io.metrics_log.is_epoch`); anything else that is not an
    epoch's record as distnn writes it is a DistnnError naming the file and line.
    """
    by_epoch: dict[int, dict] = {}
    skipped = 0
    for line_no, text in _lines(path):
        where = f"{path} line {line_no}"
        if not text.strip():
            continue
        record = parse_json(text, where)
        if not isinstance(record, dict):
            raise DistnnError(f"{where}: expected a JSON object per line (one epoch's record)")
        if not is_epoch(record):
            skipped += 1
            continue
        by_epoch[check_epoch_record(record, where)] = record  # a resumed run repeats: last
    if not by_epoch:
        what = f"only {skipped} header, event or evaluation record(s)" if skipped else "empty file"
        raise DistnnError(f"{path}: no epoch records ({what})")
    return [by_epoch[e] for e in sorted(by_epoch)]


def is_trace(path: str) -> bool:
    """Whether ``path`` looks like a --trace file (a regular .json holding traceEvents)."""
    if not path.lower().endswith(".json"):
        return False
    try:
        with open_regular(path) as f:
            return b"traceEvents" in f.read(4096)
    except (OSError, DistnnError):
        return False


def load_trace(path: str) -> dict:
    """A --trace file's JSON object, read within bounds; DistnnError naming it otherwise."""
    try:
        data = read_limited(path, MAX_TRACE, "a trace file")
    except OSError as e:
        raise DistnnError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DistnnError(f"{path}: not UTF-8 text") from None
    trace = parse_json(text, path)
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        raise DistnnError(f"{path}: not a distnn trace file (no list 'traceEvents')")
    return trace
