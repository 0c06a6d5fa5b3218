"""The command-line options of ``python -m distnn.train``, parsed into a TrainConfig.

argparse's own error exit would print the same message from every rank; this parser
raises DistnnError instead, which the CLI reports once, and prints help on rank 0 only.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys

from distnn import __version__
from distnn.errors import DistnnError
from distnn.run.config_file import read_toml, to_toml
from distnn.run.declaring import Option
from distnn.run.options import GROUPS, TrainConfig, declared, flag_of, value_type


class CliParser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, and prints help on rank 0 only."""

    def __init__(self, *args, rank: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rank = rank

    def error(self, message: str):
        raise DistnnError(message + self._did_you_mean(message))

    def _did_you_mean(self, message: str) -> str:
        """The hint for an unknown flag near a known one (`` (did you mean --json?)``),
        as ``fit`` suggests the near keyword."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        flags = [w.split("=")[0] for w in message.split(":", 1)[1].split() if w.startswith("--")]
        known = [s for action in self._actions for s in action.option_strings]
        close = difflib.get_close_matches(flags[0], known, n=1) if flags else []
        return f" (did you mean {close[0]}?)" if close else ""

    def _print_message(self, message, file=None):
        if self.rank == 0:
            super()._print_message(message, file)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        message = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def build_parser(rank: int = 0) -> argparse.ArgumentParser:
    """``python -m distnn.train``'s parser, one argument per declared option."""
    p = CliParser(
        prog="python -m distnn.train",
        rank=rank,
        description=(
            "Train a feed-forward network data-parallel over MPI. Run under "
            "'mpirun -n N' for N ranks, or alone for one."
        ),
    )
    fields = {f.name: (f, opt) for f, opt in declared()}
    for title, names in GROUPS.items():
        group = p.add_argument_group(title)
        for name in names:
            _add_option(group, *fields[name])
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration as TOML and exit",
    )
    p.add_argument("--version", action="version", version=f"distnn {__version__}")
    return p


def _add_option(group: argparse._ArgumentGroup, f: dataclasses.Field, opt: Option) -> None:
    kind, element = value_type(f)
    flag = flag_of(f.name)
    if kind is bool:
        group.add_argument(flag, dest=f.name, action="store_true", help=opt.help)
        return
    convert = {int: _int_list, str: _name_list}[element] if kind is tuple else kind
    group.add_argument(
        flag, dest=f.name, type=convert, default=f.default, metavar=opt.metavar, help=opt.help
    )


def toml_to_argv(options: dict) -> list[str]:
    """Options read from TOML as the command-line words that would give them."""
    argv = []
    for name, value in options.items():
        flag = flag_of(name)
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif isinstance(value, tuple):
            argv += [flag, ",".join(map(str, value))]
        else:
            argv += [flag, str(value)]
    return argv


def parse_config(argv: list[str] | None, rank: int = 0) -> TrainConfig:
    """The run's configuration: defaults, then ``--config`` TOML, then the command line.

    TOML values pass through the same argparse conversions as typed options, so a bad
    value in a file gets the same one-line error as on the command line.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    first = CliParser(add_help=False, rank=rank)
    first.add_argument(flag_of("config_file"), dest="config_file")
    config_file = first.parse_known_args(argv)[0].config_file
    prefix = toml_to_argv(read_toml(config_file)) if config_file else []
    try:  # the file's values alone first, so that a bad one names its file
        from_file = vars(build_parser(rank).parse_args(prefix))
        del from_file["print_config"]
        TrainConfig(**from_file).check_values()
    except DistnnError as e:
        raise DistnnError(f"{config_file}: {e}") from None
    args = vars(build_parser(rank).parse_args(prefix + argv))
    print_config = args.pop("print_config")
    config = TrainConfig(**args)
    config.validate()
    if print_config:
        if rank == 0:
            print(to_toml(config), end="")
        raise SystemExit(0)
    return config
