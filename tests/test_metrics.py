"""distnn.engine.metrics: per-class and macro figures as scikit-learn computes them.

The contract is ``precision_recall_fscore_support(true, pred, labels=range(K),
zero_division=0)``: scikit-learn is the reference users check our figures against, so
the comparison tests run it (it is in the ``test`` extra; they skip where it is absent).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from distnn.engine.metrics import confusion_matrix, format_per_class, macro_average, per_class

KEYS = ("precision", "recall", "f1")


def test_hand_computed_case_with_unpredicted_and_absent_classes():
    # Three classes: class 1 is in the data but never predicted, class 2 is neither.
    # Skipping undefined values (the old rule) gave macro precision 2/3, recall 1/2 and
    # F1 0.8: an F1 above both. Every class counts, with zeros, in scikit-learn's macro.
    cm = confusion_matrix(np.array([0, 0, 1]), np.array([0, 0, 0]), 3)
    records = per_class(cm)
    assert records == [
        {"class": 0, "precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2},
        {"class": 1, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        {"class": 2, "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0},
    ]
    assert macro_average(records, "precision") == pytest.approx(2 / 9, abs=1e-15)
    assert macro_average(records, "recall") == pytest.approx(1 / 3, abs=1e-15)
    assert macro_average(records, "f1") == pytest.approx(4 / 15, abs=1e-15)
    # The table's macro row prints the same figures, and no "—" for a class any more.
    macro_row = format_per_class(records).splitlines()[-1].split()
    assert macro_row == ["macro", "0.2222", "0.3333", "0.2667", "3"]


def test_macro_f1_is_the_mean_of_per_class_f1_not_f1_of_the_means():
    # Class 0: P = 1, R = 1/2, F1 = 2/3; class 1: P = 1/2, R = 1, F1 = 2/3. The F1 of the
    # macro precision and recall (both 3/4) would be 3/4.
    records = per_class(confusion_matrix(np.array([0, 0, 1]), np.array([0, 1, 1]), 2))
    assert [r["f1"] for r in records] == pytest.approx([2 / 3, 2 / 3], abs=1e-15)
    assert macro_average(records, "f1") == pytest.approx(2 / 3, abs=1e-15)


def test_no_classes_has_no_macro_average():
    assert macro_average([], "f1") is None


def random_draws(count: int = 200, seed: int = 0):
    """Seeded (true, pred, K) draws over 2–7 classes that often leave a class out.

    Each draw uses a random subset of the classes for the truth and another for the
    predictions, so classes never predicted and classes absent from the data are
    frequent rather than rare, and some draws are a single sample.
    """
    rng = np.random.default_rng(seed)
    for _ in range(count):
        k = int(rng.integers(2, 8))
        n = int(rng.choice([1, 2, 5, int(rng.integers(1, 60))]))
        seen = rng.choice(k, size=int(rng.integers(1, k + 1)), replace=False)
        guessed = rng.choice(k, size=int(rng.integers(1, k + 1)), replace=False)
        true = rng.choice(seen, size=n)
        # Mostly right where the class can be guessed, so the ratios are not all 0.
        pred = np.where(
            np.isin(true, guessed) & (rng.random(n) < 0.6), true, rng.choice(guessed, size=n)
        )
        yield true, pred, k


def test_the_draws_cover_the_edge_cases():
    unpredicted = absent = both = 0
    for true, pred, k in random_draws():
        in_data, predicted = set(true.tolist()), set(pred.tolist())
        unpredicted += bool(in_data - predicted)
        absent += bool(predicted - in_data)
        both += bool(set(range(k)) - in_data - predicted)
    assert min(unpredicted, absent, both) >= 30, (unpredicted, absent, both)


def test_per_class_and_macro_match_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    for true, pred, k in random_draws():
        records = per_class(confusion_matrix(true, pred, k))
        with warnings.catch_warnings():
            # zero_division=0 is the choice made; its warnings say nothing new.
            warnings.simplefilter("ignore")
            p, r, f, s = metrics.precision_recall_fscore_support(
                true, pred, labels=range(k), average=None, zero_division=0
            )
            macro = metrics.precision_recall_fscore_support(
                true, pred, labels=range(k), average="macro", zero_division=0
            )
        case = f"true={true.tolist()} pred={pred.tolist()} K={k}"
        assert [rec["class"] for rec in records] == list(range(k))
        assert [rec["support"] for rec in records] == s.tolist(), case
        for key, theirs in zip(KEYS, (p, r, f), strict=True):
            ours = [rec[key] for rec in records]
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12, err_msg=case)
        for key, theirs in zip(KEYS, macro[:3], strict=True):
            assert macro_average(records, key) == pytest.approx(theirs, rel=0, abs=1e-12), case
