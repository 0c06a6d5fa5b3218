"""Classification metrics from a confusion matrix, and the tables that print them.

The confusion matrix ``cm`` is K × K integer counts, rows the true class and columns
the predicted class (scikit-learn's convention): ``cm[i, j]`` samples of class i were
predicted as j. Everything else follows from it:

- accuracy = trace(cm) / Σ cm
- precision of class j = cm[j, j] / Σ_i cm[i, j] (of the samples predicted as j, the
  share that are j); 0 when no sample was predicted as j
- recall of class i = cm[i, i] / Σ_j cm[i, j] (of the samples of class i, the share
  found); 0 when the data holds no sample of class i
- f1 of class k = 2 · cm[k, k] / (Σ_i cm[i, k] + Σ_j cm[k, j]), the harmonic mean of
  its precision and recall; 0 when both are 0

These are scikit-learn's ``precision_recall_fscore_support(true, pred,
labels=range(K), zero_division=0)``, so figures agree with what users compute there.
Macro averages are plain means over all K classes, as there: a class never predicted,
or absent from the data, counts with its zeros. (Averaging only the defined values
would reward a model for never predicting a hard class, and the mean of per-class F1
could then exceed both mean precision and mean recall.) Macro F1 is the mean of the
per-class F1, not the F1 of macro precision and macro recall.
"""

from __future__ import annotations

import json

import numpy as np

# Larger matrices go to --json only: a 100-column table does not read on a terminal.
MAX_PRINTED_CLASSES = 20


def confusion_matrix(true: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """K × K int64 counts of (true class, predicted class) pairs."""
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (np.asarray(true, np.int64), np.asarray(pred, np.int64)), 1)
    return cm


def _ratio(num: int, den: int) -> float:
    """``num / den``, or 0.0 when ``den`` is 0 (scikit-learn's ``zero_division=0``)."""
    return num / den if den else 0.0


def per_class(cm: np.ndarray) -> list[dict]:
    """One record per class: ``class``, ``precision``, ``recall``, ``f1``, ``support``.

    ``support`` is the number of samples of that (true) class. A ratio with a zero
    denominator is 0.0, as scikit-learn's ``zero_division=0`` (see the module docstring).
    """
    records = []
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    for k in range(cm.shape[0]):
        hit = int(cm[k, k])
        records.append(
            {
                "class": k,
                "precision": _ratio(hit, int(predicted[k])),
                "recall": _ratio(hit, int(actual[k])),
                # From the counts rather than from precision and recall: exact where
                # 2PR/(P+R) rounds twice, and defined (0) where either ratio is 0/0.
                "f1": _ratio(2 * hit, int(predicted[k]) + int(actual[k])),
                "support": int(actual[k]),
            }
        )
    return records


def macro_average(records: list[dict], key: str) -> float | None:
    """Mean of ``key`` over all classes, zeros included; None only if there are no classes.

    Every class counts, as in scikit-learn's ``average='macro'`` with ``labels=range(K)``:
    skipping the zeros of a class never predicted would raise the average.
    """
    values = [r[key] for r in records]
    return sum(values) / len(values) if values else None


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def format_confusion(cm: np.ndarray, names: list[str] | None = None) -> str:
    """The matrix as aligned text, rows true class, columns predicted class.

    With ``names`` the rows are labelled ``name (index)`` and the columns by index
    alone: names are too wide for columns of counts.
    """
    k = cm.shape[0]
    width = max(len(str(int(cm.max()))), len(str(k - 1)), 3) + 1
    rows = [str(i) if names is None else f"{names[i]} ({i})" for i in range(k)]
    lead = "true \\ pred"
    lead_width = max(len(lead), *(len(r) for r in rows))
    lines = [f"{lead:<{lead_width}}" + "".join(f"{j:>{width}}" for j in range(k))]
    for i in range(k):
        lines.append(f"{rows[i]:>{lead_width}}" + "".join(f"{int(c):>{width}}" for c in cm[i]))
    return "\n".join(lines)


def format_per_class(records: list[dict]) -> str:
    """Precision, recall, f1 and support per class, then the macro averages."""
    labels = [str(r.get("name", r["class"])) for r in records]
    w = max(5, *(len(label) for label in labels))
    lines = [f"{'class':>{w}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>7}"]
    for label, r in zip(labels, records, strict=True):
        lines.append(
            f"{label:>{w}}  {_cell(r['precision']):>9}  {_cell(r['recall']):>9}  "
            f"{_cell(r['f1']):>9}  {r['support']:>7}"
        )
    macro = [_cell(macro_average(records, key)) for key in ("precision", "recall", "f1")]
    total = sum(r["support"] for r in records)
    lines.append(f"{'macro':>{w}}  {macro[0]:>9}  {macro[1]:>9}  {macro[2]:>9}  {total:>7}")
    return "\n".join(lines)


def report(result: dict) -> str:
    """The readable text of an evaluation result: summary line, then the tables."""
    lines = [summary(result)]
    k = result.get("n_classes")
    if k is not None and k <= MAX_PRINTED_CLASSES:
        cm = np.array(result["confusion_matrix"])
        lines += ["", "confusion matrix (rows: true class, columns: predicted class)"]
        names = result.get("class_names")
        lines += [format_confusion(cm, names), "", format_per_class(result["per_class"])]
    elif k is not None:
        lines.append(f"{k} classes: confusion matrix and per-class table in --json")
    return "\n".join(lines)


def summary(result: dict) -> str:
    """One line: loss and, for a classifier, accuracy."""
    line = f"loss {result['loss']:.4f} ({result['loss_function']}, mean per sample)"
    if result["accuracy"] is not None:
        line += (
            f" | accuracy {result['accuracy']:.2%} ({result['correct']:,}/{result['samples']:,})"
        )
    return line


def to_json(record: dict) -> str:
    """``record`` as JSON text: one key per line, a matrix or table one row per line."""
    lines = []
    for key, value in _json_safe(record).items():
        if isinstance(value, list) and value and isinstance(value[0], list | dict):
            rows = ",\n".join("    " + json.dumps(row) for row in value)
            lines.append(f"  {json.dumps(key)}: [\n{rows}\n  ]")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _json_safe(value):
    if isinstance(value, float) and not np.isfinite(value):
        return None  # JSON has no NaN or infinity
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
