"""fish-notebook: realtime streaming text-to-speech as a first-class citizen of Jupyter.

``import fish_notebook`` stays light: the notebook parts (widgets, magics) load only when used.

- ``%load_ext fish_notebook`` -> the ``%%speak`` cell magic and ``%speak`` line magic.
- :func:`speak` -> a :class:`Session` playing in the notebook while audio arrives.
- :class:`VoiceChat` -> talk to an agent through the microphone (``%%converse`` too).
- :class:`RealtimeClient` / :class:`AsyncRealtimeClient` -> Fish Audio's realtime protocol,
  the same ``stream_websocket`` call as the Fish SDK, against the cloud or the embedded server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    AuthenticationError,
    ConnectError,
    ConnectTimeout,
    FishNotebookError,
    MicrophoneError,
    MissingDependencyError,
    ProtocolError,
    ReceiveTimeout,
    ServerBusyError,
    SessionStateError,
    StreamTimeout,
    TransportError,
    ValidationError,
    WebSocketError,
)
from .protocol import (
    CloseEvent,
    FlushEvent,
    Prosody,
    ReferenceAudio,
    StopEvent,
    TextEvent,
    TTSRequest,
)

if TYPE_CHECKING:
    from .client import AsyncRealtimeClient, RealtimeClient, Timeout
    from .panel import SpeakPanel
    from .playing import play
    from .session import Playback, Session
    from .speaking import speak
    from .voicechat import VoiceChat
    from .voiceloop import VoiceLoop

__all__ = [
    "AsyncRealtimeClient",
    "AuthenticationError",
    "CloseEvent",
    "ConnectError",
    "ConnectTimeout",
    "FishNotebookError",
    "FlushEvent",
    "MicrophoneError",
    "MissingDependencyError",
    "Playback",
    "Prosody",
    "ProtocolError",
    "RealtimeClient",
    "ReceiveTimeout",
    "ReferenceAudio",
    "ServerBusyError",
    "Session",
    "SessionStateError",
    "SpeakPanel",
    "StopEvent",
    "StreamTimeout",
    "TTSRequest",
    "TextEvent",
    "Timeout",
    "TransportError",
    "ValidationError",
    "VoiceChat",
    "VoiceLoop",
    "WebSocketError",
    "__version__",
    "load_ipython_extension",
    "play",
    "speak",
    "unload_ipython_extension",
]

# Public names that live in heavier modules, imported on first access.
_LAZY = {
    "AsyncRealtimeClient": "client",
    "RealtimeClient": "client",
    "Timeout": "client",
    "Session": "session",
    "Playback": "session",
    "play": "playing",
    "speak": "speaking",
    "SpeakPanel": "panel",
    "VoiceChat": "voicechat",
    "VoiceLoop": "voiceloop",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fish_notebook' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext fish_notebook``: register the magics."""
    from .warmup import start_warmup

    start_warmup()  # first: the embedded server starts while the magics are imported
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .magics import unload_ipython_extension as unload

    unload(ipython)
