"""The import-linter contract in pyproject.toml names every module of the package."""

from __future__ import annotations

import pkgutil
from pathlib import Path

import tomllib

import fish_notebook

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _layered_modules() -> set[str]:
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    return {name.strip() for layer in layers for name in layer.split("|")}


def test_every_module_stands_in_a_layer() -> None:
    """A new module must be placed in the layers, or the import check would not see it."""
    named = _layered_modules()
    modules = [
        f"fish_notebook.{info.name}" for info in pkgutil.iter_modules(fish_notebook.__path__)
    ]
    missing = [m for m in modules if m not in named]
    assert missing == []
    assert all(name.startswith("fish_notebook.") for name in named)
    assert len(named) == len(modules)  # and no layer names a module that is gone
