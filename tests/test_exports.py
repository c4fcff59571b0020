"""The public surface: every name in ``__all__`` resolves; ``import fish_notebook`` is light."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import fish_notebook

# Every public module of the package (local/ has its own test): a new module is checked too.
MODULES = sorted(
    info.name
    for info in pkgutil.iter_modules(fish_notebook.__path__)
    if not info.name.startswith("_") and info.name != "local"
)


@pytest.mark.parametrize("module", ["", *MODULES])
def test_every_public_name_resolves(module: str) -> None:
    """Each name a module lists in __all__ exists."""
    mod = importlib.import_module(f"fish_notebook.{module}" if module else "fish_notebook")
    assert mod.__all__, f"{mod.__name__} has an empty __all__"
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert missing == []


def test_import_is_light() -> None:
    """`import fish_notebook` loads neither IPython, widgets nor websockets until they are used."""
    heavy = "('IPython', 'ipywidgets', 'anywidget', 'websockets')"
    code = f"import sys, fish_notebook; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert fish_notebook.RealtimeClient.__name__ == "RealtimeClient"  # lazily resolved


def test_public_functions_are_not_shadowed_by_their_modules() -> None:
    """Importing every module first leaves speak and play the functions (a module named like
    the function would replace it on the package)."""
    code = (
        "import importlib, pkgutil, fish_notebook as f\n"
        "for m in pkgutil.iter_modules(f.__path__):\n"
        "    importlib.import_module('fish_notebook.' + m.name)\n"
        "print(callable(f.play) and f.play.__module__, callable(f.speak) and f.speak.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["fish_notebook.playing", "fish_notebook.speaking"]
