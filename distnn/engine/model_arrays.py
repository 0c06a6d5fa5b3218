"""The model file: a plain ``.npz`` any NumPy user can read, and the checks it passes.

It holds W1..WL (n_ℓ × n_{ℓ-1}), b1..bL, ``activations`` (one name per layer), ``loss``,
``is_classifier``; with ``--standardize``, ``input_mean`` and ``input_std``, which
``predict`` applies to raw inputs; for labels given as names, ``class_names`` (class k's
name; absent in older models, which still load). ``Network.save`` writes it atomically
(:mod:`distnn.io.outputs`), so a crash never leaves half a model; it is read without
pickle, so a crafted file cannot run code.

Anyone can write such a file, so :func:`from_arrays` trusts nothing: every field's type,
the chain of layer shapes, the activation names, finite numbers, and a positive input
scale are checked (:func:`check_model_arrays`), and each problem is one line that names
the file and the field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

import numpy as np

from distnn.engine.activations import ACTIVATIONS
from distnn.engine.losses import LOSSES
from distnn.errors import DistnnError
from distnn.io.safe_read import read_npz


class SavedNetwork(Protocol):
    """What a model file records of a :class:`~distnn.engine.network.Network`."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    activation_names: list[str]
    is_classifier: bool
    input_mean: np.ndarray | None
    input_std: np.ndarray | None
    class_names: list[str] | None
    dtype: np.dtype

    @property
    def loss_fn(self) -> object: ...


N = TypeVar("N", bound=SavedNetwork)


def to_arrays(net: SavedNetwork) -> dict[str, np.ndarray]:
    """Everything a saved model holds, as named arrays (views of the weights)."""
    arrays: dict[str, np.ndarray] = {}
    for ell, (W, b) in enumerate(zip(net.weights, net.biases, strict=True), start=1):
        arrays[f"W{ell}"], arrays[f"b{ell}"] = W, b
    arrays["activations"] = np.array(net.activation_names)
    arrays["loss"] = np.array(net.loss_fn.name)
    arrays["is_classifier"] = np.array(net.is_classifier)
    if net.input_mean is not None:
        arrays["input_mean"], arrays["input_std"] = net.input_mean, net.input_std
    if net.class_names is not None:
        arrays["class_names"] = np.array(net.class_names, dtype=str)  # not pickled
    return arrays


def from_arrays(
    make: Callable[..., N], arrays: Mapping[str, np.ndarray], source: str = "model"
) -> N:
    """The network ``to_arrays`` described, made by ``make(sizes, activations, loss=,
    dtype=)`` (the Network class); DistnnError naming ``source`` if it is not one."""
    check_model_arrays(arrays, source)
    try:
        names = [str(a) for a in arrays["activations"]]
        loss = str(arrays.get("loss", np.array("squared")))
        L = len(names)
        weights = [arrays[f"W{ell}"] for ell in range(1, L + 1)]
        biases = [arrays[f"b{ell}"] for ell in range(1, L + 1)]
    except KeyError as e:
        raise DistnnError(f"{source}: not a distnn model (missing {e})") from None
    try:
        sizes = [weights[0].shape[1]] + [W.shape[0] for W in weights]
        net = make(sizes, names, loss=loss, dtype=weights[0].dtype)
    except (ValueError, IndexError, TypeError) as e:
        raise DistnnError(f"{source}: not a valid distnn model ({e})") from None
    for ell, (W, b) in enumerate(zip(weights, biases, strict=True)):
        if W.shape != net.weights[ell].shape or b.shape != net.biases[ell].shape:
            raise DistnnError(f"{source}: layer {ell + 1} has inconsistent shapes")
        net.weights[ell][...], net.biases[ell][...] = W, b
    net.is_classifier = bool(arrays.get("is_classifier", net.is_classifier))
    if "input_mean" in arrays:
        mean, std = arrays["input_mean"], arrays.get("input_std")
        if std is None or mean.shape != (sizes[0],) or std.shape != (sizes[0],):
            raise DistnnError(f"{source}: input standardization does not fit {sizes[0]} features")
        net.input_mean, net.input_std = mean.astype(net.dtype), std.astype(net.dtype)
    if "class_names" in arrays:  # models saved before class names have none
        net.class_names = _class_names(arrays["class_names"], sizes, source)
    return net


def _class_names(names: np.ndarray, sizes: Sequence[int], source: str) -> list[str]:
    if names.ndim != 1 or names.dtype.kind != "U" or len(names) > sizes[-1]:
        raise DistnnError(
            f"{source}: class_names must be at most {sizes[-1]} strings, one per output"
        )
    return [str(n) for n in names]


def read_model_file(path: str) -> Mapping[str, np.ndarray]:
    """The arrays of the model file at ``path``, read without pickle (sizes checked before
    anything is read); DistnnError (one line) naming the file if it cannot be read."""
    try:
        return read_npz(path, "model file")
    except FileNotFoundError:
        raise DistnnError(f"{path}: no such model file") from None
    except OSError as e:
        raise DistnnError(f"{path}: not a readable model file ({e.strerror or e})") from None


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
