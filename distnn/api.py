"""``distnn.fit``: train a network from Python, alone or under ``mpirun``.

    net = distnn.Network([64, 32, 10], activations="sigmoid", seed=0)
    history = distnn.fit(net, "digits", epochs=10)

``fit``'s options are the run's declared options (:mod:`distnn.run.options`) that are
not the network's own: the same names, defaults (but ``epochs``) and checks as the
CLI's flags, with messages that name them as keywords. It builds the one
:class:`~distnn.run.options.TrainConfig` the CLI builds from its flags and runs
:func:`distnn.run.loop.train_config`, the CLI's code path: the same options and seed
give the same bytes either way.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from distnn.engine.network import Network
from distnn.engine.update_schedule import GradientUpdateSchedule
from distnn.errors import DistnnError
from distnn.parallel.world import World
from distnn.run.loop import History, train_config
from distnn.run.options import TrainConfig, declared, fit_default_of

# fit's keyword options: every declared option but the network's shape and the CLI's
# own, with its default.
OPTIONS: dict[str, Any] = {
    f.name: fit_default_of(f, opt) for f, opt in declared() if not opt.cli_only
}


def fit(
    net: Network,
    x: np.ndarray | str,
    y: np.ndarray | None = None,
    *,
    test_data: tuple[np.ndarray, np.ndarray] | None = None,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    callbacks: Sequence[Any] = (),
    verbose: int = 1,
    world: World | None = None,
    **options: Any,
) -> History:
    """Train ``net`` in place, data-parallel over every rank of ``world`` (default: all).

    ``x`` is an array of rows (memory-mapped welcome) with ``y`` integer class labels
    (1-D) or target rows (2-D), or a data set spec as ``--dataset`` takes it
    ("digits", "synthetic:N:F:C", a file or folder), with ``y`` None. ``callbacks``
    are objects with ``on_epoch_end(record)`` and optionally ``on_step(step, loss)``,
    called on every rank. ``verbose``: 0 silent, 1 progress on rank 0, 2 every rank.
    Every rank calls ``fit`` with the same arguments (checked). Returns the
    :class:`History`. The options below mean what the CLI's flags of the same names
    mean; ``schedule`` may also be a :class:`GradientUpdateSchedule` instance.
    """
    unknown = sorted(options.keys() - OPTIONS.keys())
    if unknown:
        close = difflib.get_close_matches(unknown[0], OPTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TypeError(f"fit() got an unexpected keyword argument {unknown[0]!r}{hint}")
    check_callbacks(callbacks)
    options = OPTIONS | options
    schedule = options["schedule"]
    if isinstance(schedule, GradientUpdateSchedule):
        options["schedule"] = f"{type(schedule).__module__}:{type(schedule).__qualname__}"
    world = World() if world is None else world
    spec = x if isinstance(x, str | os.PathLike) else "arrays"
    names = list(net.activation_names)
    if names[-1] == "softmax":  # cross-entropy's output; the config names a σ for every layer
        names[-1] = names[0] if len(names) > 1 else "sigmoid"
    config = TrainConfig(
        dataset=os.fspath(spec),
        hidden=tuple(net.sizes[1:-1]),
        activation=names[0],
        activations=tuple(names) if len(set(names)) > 1 else None,
        loss=net.loss_fn.name,
        dtype=net.dtype.name,
        quiet=verbose == 0,
        verbose=verbose >= 2,
        spelling="fit",
        validation_given=validation_data is not None,
        **options,
    )
    arrays = None if spec != "arrays" else {"x": x, "y": y}
    if arrays is not None and test_data is not None:
        arrays["x_test"], arrays["y_test"] = test_data
    return train_config(
        config,
        world,
        net=net,
        arrays=arrays,
        validation_data=validation_data,
        schedule=schedule if isinstance(schedule, GradientUpdateSchedule) else None,
        callbacks=callbacks,
    )


def check_callbacks(callbacks: Sequence[Any]) -> None:
    """DistnnError now, not after an epoch's work, unless every callback has a method
    ``fit`` calls (``on_epoch_end`` or ``on_step``)."""
    if isinstance(callbacks, str | bytes) or not hasattr(callbacks, "__iter__"):
        raise DistnnError(
            f"fit: callbacks must be a list of objects, not {type(callbacks).__name__}"
        )
    for i, callback in enumerate(callbacks):
        found = [m for m in ("on_epoch_end", "on_step") if callable(getattr(callback, m, None))]
        if not found:
            raise DistnnError(
                f"fit: callbacks[{i}] ({type(callback).__name__}) has neither on_epoch_end(record) "
                "nor on_step(step, loss): it would never be called"
            )


def _options_help() -> str:
    lines = ["", "Options (keyword only; the CLI's flag of the same name says more):"]
    for f, opt in declared():
        if f.name in OPTIONS:
            text = opt.help.replace("%(default)s", repr(OPTIONS[f.name]))
            lines.append(f"    {f.name}={OPTIONS[f.name]!r}: {text}")
    return "\n".join(lines) + "\n"


# help(distnn.fit) and editors show every option with its default, read off the declaration.
fit.__signature__ = inspect.signature(fit).replace(
    parameters=[
        *(p for p in inspect.signature(fit).parameters.values() if p.kind != p.VAR_KEYWORD),
        *(
            inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
            for k, v in OPTIONS.items()
        ),
    ]
)
fit.__doc__ = (fit.__doc__ or "") + _options_help()
