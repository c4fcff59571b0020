"""Every public name of fish_notebook.local's modules exists, and nothing drags in the client."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

MODULES = [
    "fish_notebook.local",
    "fish_notebook.local.asr",
    "fish_notebook.local.cast",
    "fish_notebook.local.chunker",
    "fish_notebook.local.directions",
    "fish_notebook.local.cli",
    "fish_notebook.local.encoding",
    "fish_notebook.local.engine",
    "fish_notebook.local.model_cache",
    "fish_notebook.local.recorder",
    "fish_notebook.local.server",
    "fish_notebook.local.slots",
    "fish_notebook.local.synthesis",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    """Each name in a module's __all__ is defined there."""
    module = importlib.import_module(name)
    assert module.__all__
    for public in module.__all__:
        assert hasattr(module, public), f"{name}.{public}"


def test_importing_the_server_loads_no_client_or_notebook_parts() -> None:
    """fish_notebook.local imports neither the client nor IPython, and not Piper until needed."""
    code = (
        "import sys, fish_notebook.local; "
        "bad = [m for m in ('fish_notebook.client', 'IPython', 'piper') if m in sys.modules]; "
        "print(bad)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=60, text=True
    )
    assert result.stdout.strip() == "[]", result.stderr
