"""The embedded Fish-compatible TTS server: ``/v1/tts/live`` on loopback with a Piper voice.

``async with LocalServer() as server:`` or ``with LocalServer().run_in_thread() as server:``;
from a shell, ``python -m fish_notebook.local``. Needs the ``local`` extra (Piper is GPL,
so it stays out of the core package).
"""

from __future__ import annotations

from .recorder import Recorder, SessionRecord
from .server import LocalServer, ThreadedServer

__all__ = ["LocalServer", "Recorder", "SessionRecord", "ThreadedServer"]
