"""How an option is declared and checked: :class:`Option`, the field metadata that
:class:`distnn.run.options.TrainConfig` carries, with its :class:`Bound`; and the check of
one value against its declaration (type, choices, range)."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field

from distnn.errors import DistnnError


@dataclass(frozen=True)
class Bound:
    """A numeric option's range: ``holds(value)``, and how a message says it."""

    holds: Callable[[float], bool]
    says: str


AT_LEAST_1 = Bound(lambda v: v >= 1, "must be at least 1")
ZERO_OR_MORE = Bound(lambda v: v >= 0, "must be 0 or more")
POSITIVE = Bound(lambda v: v > 0 and math.isfinite(v), "must be a positive number")
POSITIVE_SECONDS = Bound(
    lambda v: v > 0 and math.isfinite(v), "must be a positive number of seconds"
)
FRACTION = Bound(lambda v: 0 <= v < 1, "must be in [0, 1)")
WIDTHS = Bound(lambda v: v >= 1, "widths must be positive")


@dataclass(frozen=True)
class Option:
    """What one field of :class:`TrainConfig` is, beyond its name, type and default."""

    help: str
    metavar: str | None = None
    choices: tuple[str, ...] = ()  # the allowed values (of each element, for a tuple)
    bound: Bound | None = None  # the allowed range (of each element, for a tuple)
    fingerprint: bool = False  # --resume continues only a run with the same value
    path: str | None = None  # "input", "output" (a file) or "output folder"
    cli_only: bool = False  # not a fit keyword (fit reads it off its network, or has its own)
    fit_default: object = None  # fit's default, where it differs (see fit_default_of)
    flag: str | None = None  # default: --name-with-dashes
    in_toml: bool = True  # written to and read from a run's TOML file


def option(default: object, help: str, **what: object) -> dataclasses.Field:
    return field(default=default, metadata={"option": Option(help, **what)})


@functools.cache
def _type_hints(cls: type) -> dict[str, object]:
    """``typing.get_type_hints(cls)``, evaluated once: it compiles every annotation string
    anew on each call (0.2 s of a command's start-up when asked once per option)."""
    return typing.get_type_hints(cls)


def value_type(cls: type, f: dataclasses.Field) -> tuple[type, type | None]:
    """The field's type without ``None``: (int, None), or (tuple, int) for ``tuple[int, ...]``."""
    hint = _type_hints(cls)[f.name]
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return tuple, typing.get_args(hint)[0]
    return hint, None


def check_value(cls: type, name: str, value: object, f: dataclasses.Field, opt: Option) -> None:
    """DistnnError unless ``value`` fits field ``f`` of ``cls`` as ``opt`` declares it;
    the message names the option ``name``."""
    if value is None and f.default is None:
        return
    kind, element = value_type(cls, f)
    items = value if kind is tuple and isinstance(value, tuple) else (value,)
    want = element or kind
    wrong = kind is tuple and not isinstance(value, tuple)
    for item in items:
        if wrong or not _is_a(item, want):
            what = f"a tuple of {want.__name__}" if kind is tuple else f"{_article(want)}"
            raise DistnnError(f"{name} must be {what}, got {value!r}")
        if opt.choices and item not in opt.choices:
            raise DistnnError(f"unknown {name} {item!r} (choose from {', '.join(opt.choices)})")
        if opt.bound and not opt.bound.holds(item):
            raise DistnnError(f"{name} {opt.bound.says}, got {value}")


def _is_a(value: object, kind: type) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _article(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "True or False"}[kind]
