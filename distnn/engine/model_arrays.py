"""The checks a model file's arrays pass before they become a Network.

A model file is plain ``.npz`` that anyone can write, so ``Network.from_arrays`` trusts
nothing: every field's type, the chain of layer shapes, the activation names, finite
numbers, and a positive input scale are checked here, and each problem is one line
that names the file and the field.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from distnn.engine.activations import ACTIVATIONS
from distnn.engine.losses import LOSSES
from distnn.errors import DistnnError


def _scalar_text(arrays: Mapping[str, np.ndarray], key: str, source: str) -> str | None:
    if key not in arrays:
        return None
    a = arrays[key]
    if a.ndim != 0 or a.dtype.kind not in "US":
        raise DistnnError(f"{source}: '{key}' must be one string, not {a.dtype} {a.shape}")
    return str(a)


def _finite(a: np.ndarray, what: str, source: str) -> None:
    if a.dtype.kind != "f":
        raise DistnnError(f"{source}: {what} must hold floating-point numbers, not {a.dtype}")
    if not np.isfinite(a).all():
        raise DistnnError(f"{source}: {what} holds NaN or infinite values")


def check_model_arrays(arrays: Mapping[str, np.ndarray], source: str) -> None:
    """DistnnError (one line naming ``source``) unless ``arrays`` describe a valid model."""
    if "activations" not in arrays:
        raise DistnnError(f"{source}: not a distnn model (missing 'activations')")
    names = arrays["activations"]
    if names.ndim != 1 or names.dtype.kind not in "US" or len(names) == 0:
        raise DistnnError(f"{source}: 'activations' must be a list of names, one per layer")
    for name in map(str, names):
        if name not in ACTIVATIONS:
            raise DistnnError(
                f"{source}: unknown activation {name!r} (known: {', '.join(ACTIVATIONS)})"
            )
    loss = _scalar_text(arrays, "loss", source)
    if loss is not None and loss not in LOSSES:
        raise DistnnError(f"{source}: unknown loss {loss!r} (known: {', '.join(LOSSES)})")
    L = len(names)
    extra = sorted(k for k in arrays if k[:1] in "Wb" and k[1:].isdigit() and int(k[1:]) > L)
    if extra:
        raise DistnnError(f"{source}: {', '.join(extra)} beyond the {L} layers 'activations' names")
    previous = None
    for ell in range(1, L + 1):
        for key in (f"W{ell}", f"b{ell}"):
            if key not in arrays:
                raise DistnnError(f"{source}: not a distnn model (missing '{key}')")
        W, b = arrays[f"W{ell}"], arrays[f"b{ell}"]
        if W.ndim != 2 or b.ndim != 1 or b.shape[0] != W.shape[0] or 0 in W.shape:
            raise DistnnError(
                f"{source}: layer {ell}: W{ell} {W.shape} and b{ell} {b.shape} do not make a "
                "layer (W is outputs × inputs, b has one entry per output)"
            )
        if previous is not None and W.shape[1] != previous:
            raise DistnnError(
                f"{source}: layer {ell} takes {W.shape[1]} inputs, but layer {ell - 1} gives "
                f"{previous}"
            )
        _finite(W, f"W{ell}", source)
        _finite(b, f"b{ell}", source)
        if W.dtype != arrays["W1"].dtype or b.dtype != W.dtype:
            raise DistnnError(f"{source}: layer {ell}'s dtype differs from layer 1's")
        previous = W.shape[0]
    if "is_classifier" in arrays and (
        arrays["is_classifier"].ndim != 0 or arrays["is_classifier"].dtype != np.bool_
    ):
        raise DistnnError(f"{source}: 'is_classifier' must be one boolean")
    if ("input_mean" in arrays) != ("input_std" in arrays):
        raise DistnnError(f"{source}: 'input_mean' and 'input_std' come together")
    if "input_mean" in arrays:
        n_in = arrays["W1"].shape[1]
        for key in ("input_mean", "input_std"):
            if arrays[key].shape != (n_in,):
                raise DistnnError(
                    f"{source}: {key} has shape {arrays[key].shape}, the model takes {n_in} "
                    "features"
                )
            _finite(arrays[key], key, source)
        if not (arrays["input_std"] > 0).all():
            raise DistnnError(f"{source}: input_std must be positive")
