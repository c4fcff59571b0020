"""The embedded Fish-compatible TTS server: ``/v1/tts/live`` on loopback with a Piper voice.

``async with LocalServer() as server:`` or ``with LocalServer().run_in_thread() as server:``;
from a shell, ``python -m fish_notebook.local``. Needs the ``local`` extra (Piper is GPL,
so it stays out of the core package).

The names load on first use, so that ``python -m fish_notebook.local`` can start loading the
voice before the server's own imports (:mod:`.cli`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .recorder import Recorder, SessionRecord
    from .server import LocalServer, ThreadedServer

__all__ = ["LocalServer", "Recorder", "SessionRecord", "ThreadedServer"]

_HOMES = {
    "LocalServer": "server",
    "ThreadedServer": "server",
    "Recorder": "recorder",
    "SessionRecord": "recorder",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'fish_notebook.local' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value
