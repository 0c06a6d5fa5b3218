"""Saving and loading a trained network as a plain ``.npz`` any NumPy user can read.

The file holds ``W1``..``WL`` (n_ℓ × n_{ℓ-1}), ``b1``..``bL``, ``activations`` (one
name per layer), ``loss``, ``is_classifier``, and with ``--standardize`` the
``input_mean`` and ``input_std`` that ``Network.predict`` applies to raw inputs, and
for labels given as names the ``class_names`` (class k's name; absent in older
models, which still load). It is
written atomically (:func:`distnn.io.outputs.atomic_savez`), so a crash never leaves a
half-written model, and read without pickle, so a crafted file cannot run code.

The conversion between a network and these arrays is ``Network.to_arrays`` /
``Network.from_arrays`` (pure NumPy, in the engine); this module is what the command
lines call, so that the engine never imports the I/O layer's model code.
"""

from __future__ import annotations

from distnn.engine.network import Network


def save_model(net: Network, path: str) -> None:
    """Write ``net`` to ``path`` atomically; DistnnError (one line) if it cannot be written."""
    net.save(path)


def load_model(path: str) -> Network:
    """The network saved at ``path``; DistnnError naming the file if it is not one."""
    return Network.load(path)
