"""Train and evaluate from Python, alone or on N ranks:

    python scripts/examples/fit_digits.py
    mpirun -n 4 python scripts/examples/fit_digits.py

Every rank runs this same script; ``distnn.fit`` splits each global batch across them
and every rank ends with the same trained network. Rank 0 prints and saves.
"""

import numpy as np

import distnn
from distnn.data import load_dataset

# Any arrays will do: rows of features, integer class labels (or target rows).
digits = load_dataset("digits")
x, y = digits.x, digits.labels
x_test, y_test = digits.x_test, digits.labels_test

net = distnn.Network([64, 32, 10], activations="relu", loss="cross-entropy", seed=0)


class BestEpoch:
    """A callback: called on every rank with each epoch's record."""

    def __init__(self) -> None:
        self.best = None

    def on_epoch_end(self, record: dict) -> None:
        if self.best is None or record["accuracy"] > self.best["accuracy"]:
            self.best = record


best = BestEpoch()
history = distnn.fit(
    net,
    x,
    y,
    test_data=(x_test, y_test),
    schedule="adam",
    lr=0.01,
    batch_size=64,
    epochs=15,
    standardize=True,  # saved with the model; predict and evaluate apply it to raw rows
    callbacks=[best],
    verbose=0,
)
report = distnn.evaluate(net, x_test, y_test)  # every rank evaluates its share

if distnn.World().is_root:  # every rank holds the same network; one speaks
    print(f"trained {len(history)} epochs; last training loss {history[-1]['loss']:.4f}")
    print(f"best epoch {best.best['epoch']}: test accuracy {best.best['accuracy']:.2%}")
    print(f"test accuracy {report['accuracy']:.2%}, macro F1 {report['macro_f1']:.3f}")
    net.save("digits-model.npz")
    again = distnn.Network.load("digits-model.npz")
    assert np.array_equal(again.predict(x_test[:5]), net.predict(x_test[:5]))
    print("saved digits-model.npz; classes of 5 test rows:", again.predict_classes(x_test[:5]))
