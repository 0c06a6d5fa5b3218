"""distnn.data.csv.read_number_table: the one CSV reader, for training sets and predict inputs."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from distnn.data.csv import load_csv, read_number_table
from distnn.errors import DistnnError


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return str(path)


def error(call) -> str:
    with pytest.raises(DistnnError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and info.value.__cause__ is None
    return message


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz"])
def test_header_is_detected(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, name, '\ufeffa, b\n1,"2.5"\n\n3,4\n')  # BOM, quotes, blank line
    header, table = read_number_table(path)
    assert header == ["a", "b"]
    np.testing.assert_array_equal(table, [[1, 2.5], [3, 4]])
    assert table.dtype == np.float64


def test_no_header(tmp_path: Path) -> None:
    header, table = read_number_table(write(tmp_path, "t.csv", "1,2\n3,4\n"))
    assert header is None and table.shape == (2, 2)
    assert read_number_table(write(tmp_path, "e.csv", ""))[1].shape[0] == 0


@pytest.mark.parametrize(
    ("text", "header", "words"),
    [
        ("1,2,3\n1,x,3\n", None, "line 2, column index 1: non-numeric value 'x'"),
        ("a,b\n1,2\n1,\n", None, "line 3, column 'b' (index 1): empty cell"),
        ("1,2,3\n\n1,2\n", None, "line 3 has 2 cells but line 1 has 3"),
        ("a,b,c\n1,2\n", None, "line 2 has 2 cells but the header has 3 columns"),
        ("a,b\n1,2\n", False, "line 1, column index 0: non-numeric value 'a'"),
        ("1,2\n", True, "line 1 is numbers, not a header"),
        ("\n1,2\n", True, "line 1 is blank"),
    ],
)
def test_bad_table_names_line_and_column(
    tmp_path: Path, text: str, header: bool | None, words: str
) -> None:
    path = write(tmp_path, "t.csv", text)
    message = error(lambda: read_number_table(path, header=header))
    assert message.startswith(f"{path}: ") and words in message, message


def test_finite(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "a,b\n1,2\n3,inf\n")
    assert np.isinf(read_number_table(path)[1][1, 1])  # predict counts them itself
    message = error(lambda: read_number_table(path, finite=True))
    assert "line 3, column 'b' (index 1): 'inf' is not a finite number" in message


def test_fractional_label_line_counts_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "a,label\n1,0\n\n2,1\n3,0.5\n")
    message = error(lambda: load_csv(path, np.dtype(np.float32)))
    assert "line 5, column 'label' (index 1): '0.5' is not an integer class label" in message
