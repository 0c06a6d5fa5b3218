"""A run's configuration as a TOML file: written beside its model and metrics
(``model.npz`` → ``model.toml``, and ``--print-config``), read back by ``--config``.

Only declared options are written and read (:func:`distnn.run.options.declared`), by
field name; a file is read bounded and without following it into a FIFO.
"""

from __future__ import annotations

import json
import tomllib

from distnn.errors import DistnnError
from distnn.io.safe_read import read_limited  # bounded, and never blocks on a FIFO
from distnn.run.options import TrainConfig, declared


def to_toml(config: TrainConfig) -> str:
    """The configuration as a TOML file ``--config`` reads back (unset options left out)."""
    lines = ["# distnn run configuration: python -m distnn.train --config THIS_FILE"]
    for f, opt in declared():
        value = getattr(config, f.name)
        if value is None or not opt.in_toml:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (tuple, list)):
            text = json.dumps(list(value))
        else:  # JSON's strings and numbers are valid TOML
            text = json.dumps(value)
        lines.append(f"{f.name} = {text}")
    return "\n".join(lines) + "\n"


def read_toml(path: str) -> dict:
    """Options from a TOML file, by field name (``batch-size`` and ``batch_size`` alike)."""
    try:  # a configuration is small: 1 MiB is plenty
        text = read_limited(path, 1 << 20, "a configuration file")
        raw = tomllib.loads(text.decode("utf-8"))
    except FileNotFoundError:
        raise DistnnError(f"{path}: no such configuration file") from None
    except RecursionError:
        raise DistnnError(f"{path}: not a valid TOML file (nested too deeply)") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DistnnError(f"{path}: not a valid TOML file ({e})") from None
    fields = [f.name for f, opt in declared() if opt.in_toml]
    options = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in fields:
            raise DistnnError(f"{path}: unknown option {key!r} (valid: {', '.join(fields)})")
        options[name] = tuple(value) if isinstance(value, list) else value
    return options
