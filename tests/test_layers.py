"""The package's layers import downward only: engine, data, io and parallel never import
the run, the API or the command lines, and the engine does not reach into the layers
that use it. Read from the source (every import, at any depth), not from what loads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "distnn"

# layer → the modules it must never import
FORBIDDEN = {
    "engine": ("distnn.run", "distnn.api", "distnn.cli", "distnn.parallel", "distnn.data"),
    # data reads files through io's bounded readers (io/safe_read.py): io is the bottom layer
    "data": ("distnn.run", "distnn.api", "distnn.cli", "distnn.parallel"),
    "io": ("distnn.run", "distnn.api", "distnn.cli", "distnn.parallel", "distnn.engine"),
    "parallel": ("distnn.run", "distnn.api", "distnn.cli"),
    "run": ("distnn.api", "distnn.cli"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def offends(module: str, forbidden: tuple[str, ...]) -> bool:
    return any(module == f or module.startswith(f + ".") for f in forbidden)


@pytest.mark.parametrize("layer", FORBIDDEN)
def test_layers_import_downward_only(layer):
    files = sorted((PACKAGE / layer).glob("*.py"))
    assert files, layer
    wrong = [
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in files
        for module in sorted(imported_modules(path))
        if offends(module, FORBIDDEN[layer])
    ]
    assert wrong == []


def test_the_checker_sees_function_level_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from distnn.run.options import TrainConfig\n")
    assert offends("distnn.run.options", FORBIDDEN["parallel"])
    assert "distnn.run.options" in imported_modules(source)


def test_the_top_level_holds_only_the_entry_points():
    """Everything else lives in a layer's package (the run's modules in run/)."""
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert top == {
        "__init__.py", "__main__.py", "api.py", "errors.py",
        "train.py", "evaluate.py", "predict.py", "plot.py", "launch.py",
    }  # fmt: skip
