"""Class labels given as names (``setosa``, ``versicolor``, …): one mapping to 0..K-1.

A CSV whose label column holds names trains a classifier like any other: the names are
mapped to class indices, and the names are saved with the model (``class_names`` in
its ``.npz``), so ``distnn.predict --classes`` writes names back and
``distnn.evaluate`` reports them. Evaluating that model on another file maps the
file's names through the model's list, so both agree on which index is which class.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from distnn.errors import DistnnError


def encode_class_names(
    data_name: str, y: np.ndarray, y_test: np.ndarray | None, known: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """Class names → int64 labels, with one mapping for the training and test labels.

    Names map to their index in ``known`` (a trained model's ``class_names``) when it is
    given, else to their index among all the names seen, sorted (as numbers when every
    name is an integer, so "10" comes after "9"), so the mapping depends on the data
    alone and every rank derives the same one.
    """
    train = np.char.strip(np.asarray(y).astype(str))
    test = None if y_test is None else np.char.strip(np.asarray(y_test).astype(str))
    seen = np.unique(train if test is None else np.concatenate([train, test]))
    if len(seen) and all(_is_integer_text(str(n)) for n in seen):
        seen = sorted(seen, key=lambda n: int(str(n)))
    names = tuple(str(n) for n in seen) if known is None else tuple(known)
    index = {name: k for k, name in enumerate(names)}
    unknown = [str(n) for n in seen if str(n) not in index]
    if unknown:
        raise DistnnError(
            f"{data_name}: class {unknown[0]!r} is not one of the model's classes "
            f"({', '.join(names)})"
        )

    def encode(a: np.ndarray) -> np.ndarray:
        uniq, inverse = np.unique(a, return_inverse=True)
        return np.array([index[str(u)] for u in uniq], np.int64)[inverse.reshape(-1)]

    return encode(train), None if test is None else encode(test), names


def integer_labels(y: np.ndarray) -> np.ndarray | None:
    """Object labels that all hold integers (Python or NumPy ints, whole floats), as int64:
    they are class indices like an integer array's, not names to sort as text. None when
    any is not one."""
    if y.dtype.kind != "O" or y.ndim != 1:
        return None
    for v in y.tolist():
        whole_float = isinstance(v, float) and v.is_integer()
        if isinstance(v, bool) or not (isinstance(v, numbers.Integral) or whole_float):
            return None
    try:
        return y.astype(np.int64)
    except OverflowError:
        return None


def _is_integer_text(name: str) -> bool:
    return name.lstrip("+-").isdigit() and name.isascii()
