"""One declaration of the run's options drives the CLI, fit, TOML, the resume
fingerprint, the path checks and the documentation's tables: each derived piece is checked
against the declaration here, so a new option cannot be half added."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

import distnn
from distnn.cli.options import build_parser, parse_config, toml_to_argv
from distnn.errors import DistnnError
from distnn.run.checkpointing import fingerprint_names, run_fingerprint
from distnn.run.config_file import read_toml, to_toml
from distnn.run.options import TrainConfig, declared, flag_of
from distnn.run.outputs import input_paths, output_paths

DOCS = Path(__file__).resolve().parent.parent / "docs"
OPTIONS_PAGE = (DOCS / "options.md").read_text(encoding="utf-8")  # the options, by group
FAULTS_PAGE = (DOCS / "faults.md").read_text(encoding="utf-8")  # what resume must match
OPTIONS = [f.name for f, _ in declared()]
NET = distnn.Network([4, 5, 3], seed=0)

# A value that breaks each declared bound, by the bound's wording.
BREAKS = {
    "must be at least 1": 0,
    "must be 0 or more": -1,
    "must be a positive number": 0.0,
    "must be a positive number of seconds": float("inf"),
    "must be in [0, 1)": 1.0,
    "widths must be positive": (0,),
}
BOUNDED = [(f.name, opt) for f, opt in declared() if opt.bound]
CHOOSING = [(f.name, opt) for f, opt in declared() if opt.choices]


def parser_flags() -> dict[str, str]:
    """flag → dest for every option the parser knows."""
    return {
        flag: action.dest
        for action in build_parser()._actions
        for flag in action.option_strings
        if flag.startswith("--")
    }


def test_the_parser_has_one_flag_per_option_and_nothing_else():
    flags = parser_flags()
    extras = {"--help", "--print-config", "--version"}
    assert {flag: flags[flag] for flag in flags if flag not in extras} == {
        flag_of(name): name for name in OPTIONS
    }


def test_parser_defaults_are_the_declared_defaults():
    assert vars(build_parser().parse_args([])) == {
        **{f.name: f.default for f, _ in declared()},
        "print_config": False,
    }


@pytest.mark.parametrize(("name", "opt"), BOUNDED, ids=[n for n, _ in BOUNDED])
@pytest.mark.parametrize("spelling", ["cli", "fit"])
def test_every_bound_is_checked_and_named_in_the_interfaces_words(name, opt, spelling):
    config = TrainConfig(spelling=spelling)
    setattr(config, name, BREAKS[opt.bound.says])
    with pytest.raises(DistnnError) as caught:
        config.validate()
    word = flag_of(name) if spelling == "cli" else name
    assert str(caught.value).startswith(f"{word} {opt.bound.says}")


@pytest.mark.parametrize(("name", "opt"), CHOOSING, ids=[n for n, _ in CHOOSING])
def test_every_choice_is_checked(name, opt):
    is_tuple = name == "activations"  # one per layer: hidden (32,) and the output
    for good in opt.choices:
        config = TrainConfig(**{name: (good, good) if is_tuple else good})
        config.validate()
    bad = "no-such-choice"
    config = TrainConfig(**{name: (bad, bad) if is_tuple else bad})
    with pytest.raises(DistnnError, match=f"unknown {flag_of(name)} '{bad}'"):
        config.validate()


def test_every_option_travels_through_toml_and_the_command_line(tmp_path):
    """A config with every option away from its default comes back whole from TOML."""
    changed = TrainConfig(
        dataset="synthetic:100:4:3", hidden=(7, 5), activation="tanh", activations=None,
        loss="cross-entropy", schedule="sgd", lr=0.5, lr_schedule="exp:0.9",
        lr_scaling="sqrt", base_batch=16, batch_size=9,
        epochs=3, seed=4, dtype="float64", save="m.npz", metrics="m.jsonl", quiet=True,
        checkpoint_dir="ck", checkpoint_every=5, keep_checkpoints=2, resume=True,
        overlap=False, deterministic=True, virtual_shards=2, label_column="k",
        standardize=True, val_fraction=0.25, patience=3, target_loss=0.1,
        target="val_accuracy>=0.9", eval_every=10, max_time=60.0,
        verbose=True, init_from=None, progress="lines", log_every=7, tensorboard="tb",
        watchdog=30.0,
        trace="t.json", trace_steps="1:9",
    )  # fmt: skip
    unchanged = [n for n in OPTIONS if getattr(changed, n) == getattr(TrainConfig(), n)]
    assert unchanged == ["activations", "overlap", "init_from", "config_file"]
    path = tmp_path / "run.toml"
    path.write_text(to_toml(changed))
    assert parse_config(toml_to_argv(read_toml(str(path)))) == changed
    assert parse_config(["--config", str(path)]) == dataclasses.replace(
        changed, config_file=str(path)
    )


def other_value(value: object) -> object:
    """A value of the same kind that differs from ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 0.25 if isinstance(value, float) else value + 1
    if isinstance(value, tuple):
        return (*value, 3)
    return f"{value}x"


def test_the_fingerprint_holds_exactly_the_fingerprinted_options():
    config = TrainConfig(deterministic=True)
    base = run_fingerprint(config, NET, "hash", 100)
    names = fingerprint_names(config)
    assert set(names) == set(base)  # every entry has a name for messages
    for f, opt in declared():
        if f.name in ("deterministic",):
            continue
        changed = dataclasses.replace(config, **{f.name: other_value(getattr(config, f.name))})
        moved = run_fingerprint(changed, NET, "hash", 100) != base
        assert moved == opt.fingerprint, f.name


def test_paths_come_from_the_declaration():
    config = TrainConfig(
        dataset="synthetic_data.npz", save="m.npz", metrics="m.jsonl", checkpoint_dir="ck",
        tensorboard="tb", trace="t.json", init_from="w.npz", config_file="run.toml",
    )  # fmt: skip
    assert dict(input_paths(config)) == {
        "--dataset": "synthetic_data.npz", "--init-from": "w.npz", "--config": "run.toml",
    }  # fmt: skip
    assert sorted(p for _, p in output_paths(config)) == sorted(
        ["m.npz", "m.jsonl", "ck", "tb", "t.json", "m.toml"]
    )
    assert dict(input_paths(TrainConfig(dataset="synthetic:10:2:2")))["--dataset"] is None
    fit_config = TrainConfig(spelling="fit", save="m.npz")
    assert ("save", "m.npz") in output_paths(fit_config)


def options_table() -> list[str]:
    """Every row of docs/options.md's tables, one table per group of options."""
    return [line for line in OPTIONS_PAGE.splitlines() if line.startswith("| `")]


def test_options_table_names_only_real_flags_with_their_defaults():
    flags = parser_flags()
    rows = options_table()
    assert len(rows) > 20
    for row in rows:
        first_cell = row.split(" | ")[0]
        for flag in re.findall(r"`(--[a-z-]+)", first_cell):
            assert flag in flags, row
        for default in re.findall(r"\(default:? ([\w.]+)\)", row):
            (flag,) = re.findall(r"`(--[a-z-]+)", first_cell)[-1:]
            declared_default = TrainConfig.__dataclass_fields__[flags[flag]].default
            if isinstance(declared_default, float):
                assert declared_default == float(default), row
            else:
                assert str(declared_default) == default, row


def test_options_table_lists_every_declared_option():
    """docs/options.md is the full list: every declared option has a row in some group."""
    named = {f for row in options_table() for f in re.findall(r"`(--[a-z-]+)", row.split(" | ")[0])}
    missing = [flag_of(f.name) for f, _ in declared() if flag_of(f.name) not in named]
    assert not missing, f"options with no row in docs/options.md: {missing}"


def test_every_option_is_in_one_group_and_the_docs_sections_are_the_groups():
    from distnn.run.options import GROUPS

    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f, _ in declared()), "in no group, or in two"
    sections = re.split(r"^## ", OPTIONS_PAGE, flags=re.M)[1:]
    titles = [section.split("\n", 1)[0].strip().lower() for section in sections]
    assert titles == list(GROUPS), "docs/options.md's sections are --help's groups, in order"
    for title, section in zip(titles, sections, strict=True):
        rows = [line for line in section.splitlines() if line.startswith("| `")]
        flags = {f for row in rows for f in re.findall(r"`(--[a-z-]+)", row.split(" | ")[0])}
        flags -= {"--print-config"}
        assert flags == {flag_of(name) for name in GROUPS[title]}, title
    helped = build_parser().format_help()
    assert [t for t in GROUPS if f"\n{t}:\n" in helped] == list(GROUPS)


def test_resume_list_is_the_fingerprint():
    """docs/faults.md's list of what a checkpoint must match is the declaration's."""
    paragraph = FAULTS_PAGE.split("**Resume continues the same run, or nothing.**", 1)[1]
    paragraph = paragraph.split("What may change on resume", 1)[0]
    listed = set(re.findall(r"`(--[a-z-]+)`", paragraph.replace("`/`", "` `"))) - {"--resume"}
    declared_flags = {flag_of(f.name) for f, opt in declared() if opt.fingerprint}
    assert listed == declared_flags | {"--dtype", "--deterministic"}


def test_fit_and_the_cli_build_the_same_config():
    """fit's keywords and the CLI's flags meet in one TrainConfig (spelling aside)."""
    from distnn.api import OPTIONS as FIT

    cli = parse_config(["--epochs", "10"])
    fit = TrainConfig(**FIT, spelling="fit")
    assert dataclasses.replace(fit, spelling="cli") == cli
    assert np.dtype(cli.dtype) == NET.dtype
