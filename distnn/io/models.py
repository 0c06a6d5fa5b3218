"""Saving and loading a trained network as a plain ``.npz`` any NumPy user can read.

The file holds ``W1``..``WL`` (n_ℓ × n_{ℓ-1}), ``b1``..``bL``, ``activations`` (one
name per layer), ``loss``, ``is_classifier``, and with ``--standardize`` the
``input_mean`` and ``input_std`` that ``Network.predict`` applies to raw inputs. It is
written atomically (temporary file, fsync, rename), so a crash never leaves a
half-written model, and read without pickle, so a crafted file cannot run code.
"""

from __future__ import annotations

import os
import tempfile
import zipfile

import numpy as np

from distnn.engine.network import Network
from distnn.errors import DistnnError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_savez(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as .npz so that ``path`` is always whole or absent."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 is for secrets, not models
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def model_arrays(net: Network) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for ell, (W, b) in enumerate(zip(net.weights, net.biases, strict=True), start=1):
        arrays[f"W{ell}"], arrays[f"b{ell}"] = W, b
    arrays["activations"] = np.array(net.activation_names)
    arrays["loss"] = np.array(net.loss_fn.name)
    arrays["is_classifier"] = np.array(net.is_classifier)
    if net.input_mean is not None:
        arrays["input_mean"], arrays["input_std"] = net.input_mean, net.input_std
    return arrays


def save_model(net: Network, path: str) -> None:
    atomic_savez(path, model_arrays(net))


def load_model(path: str) -> Network:
    """The network saved at ``path``; DistnnError naming the file if it is not one."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
    except FileNotFoundError:
        raise DistnnError(f"{path}: no such model file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DistnnError(f"{path}: not a readable model file ({e})") from None
    try:
        names = [str(a) for a in arrays["activations"]]
        loss = str(arrays.get("loss", np.array("squared")))
        L = len(names)
        weights = [arrays[f"W{ell}"] for ell in range(1, L + 1)]
        biases = [arrays[f"b{ell}"] for ell in range(1, L + 1)]
    except KeyError as e:
        raise DistnnError(f"{path}: not a distnn model (missing {e})") from None
    sizes = [weights[0].shape[1]] + [W.shape[0] for W in weights]
    try:
        net = Network(sizes, names, loss=loss, dtype=weights[0].dtype)
    except ValueError as e:
        raise DistnnError(f"{path}: not a valid distnn model ({e})") from None
    for ell, (W, b) in enumerate(zip(weights, biases, strict=True)):
        if W.shape != net.weights[ell].shape or b.shape != net.biases[ell].shape:
            raise DistnnError(f"{path}: layer {ell + 1} has inconsistent shapes")
        net.weights[ell][...], net.biases[ell][...] = W, b
    net.is_classifier = bool(arrays.get("is_classifier", net.is_classifier))
    if "input_mean" in arrays:
        mean, std = arrays["input_mean"], arrays.get("input_std")
        if std is None or mean.shape != (sizes[0],) or std.shape != (sizes[0],):
            raise DistnnError(f"{path}: input standardization does not fit {sizes[0]} features")
        net.input_mean, net.input_std = mean.astype(net.dtype), std.astype(net.dtype)
    return net
