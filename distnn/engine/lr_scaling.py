"""How the learning rate follows the global batch: ``--lr-scaling`` with ``--base-batch``.

The learning rate a user gives is the one tuned for a global batch of ``B0`` samples;
a run with global batch ``B`` steps with ``lr · factor``:

* ``none``: factor 1 (the rate is used as given, whatever the batch);
* ``linear``: factor B/B0 (Goyal et al. 2017, "Accurate, Large Minibatch SGD: Training
  ImageNet in 1 Hour"): k times the batch averages k times the samples per step, so k
  times the step keeps the distance moved per sample, as long as the gradient changes
  little over k small steps;
* ``sqrt``: factor √(B/B0) (Krizhevsky 2014, "One weird trick for parallelizing
  convolutional neural networks"): keeps the variance of the update per sample, since
  the batch gradient's variance falls as 1/B.

Both hold only up to a point (the critical batch size); the linear rule usually wants a
warm-up (``+warmup:N`` or ``+warmup:Nep``) when B/B0 is large.
"""

from __future__ import annotations

import math

LR_SCALINGS = ("none", "linear", "sqrt")


def lr_factor(rule: str, batch: int, base_batch: int) -> float:
    """The factor on the given learning rate at global batch ``batch`` (see the module)."""
    if rule == "none":
        return 1.0
    if rule == "linear":
        return batch / base_batch
    if rule == "sqrt":
        return math.sqrt(batch / base_batch)
    raise ValueError(f"unknown learning-rate scaling {rule!r} (choose from {LR_SCALINGS})")


def describe_factor(rule: str, batch: int, base_batch: int) -> str:
    """How the factor was found, for the run's header: ``× 128/32``, ``× √(128/32)``."""
    if rule == "none":
        return ""
    ratio = f"{batch}/{base_batch}"
    return f"× {ratio}" if rule == "linear" else f"× √({ratio})"
