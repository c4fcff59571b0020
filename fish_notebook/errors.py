"""Every exception fish-notebook raises on purpose, in one tree.

The tree follows what the caller can do about the error::

    FishNotebookError
    ├── TransportError                 cannot reach the server, or it went silent: check, retry
    │   ├── ConnectError               (also ConnectionError) refused, unreachable, bad handshake
    │   └── StreamTimeout              (also TimeoutError) a bounded wait ran out
    │       ├── ConnectTimeout         the handshake did not finish in time
    │       └── ReceiveTimeout         the server sent nothing for too long
    ├── WebSocketError                 the stream failed: finish reason=error, an error event,
    │   │                              or the socket closed without ``finish``
    │   └── ServerBusyError            the server's concurrency limit was hit: retry later
    ├── AuthenticationError            the server refused the key (HTTP 401/403)
    ├── ProtocolError                  (also ValueError) a frame that breaks PROTOCOL.md
    ├── ValidationError                (also ValueError) a bad option: names field, value, range
    ├── SessionStateError              (also RuntimeError) misuse: reuse after close, and so on
    ├── MissingDependencyError         (also ImportError) an optional extra is not installed
    └── MicrophoneError                the page could not capture the microphone: refused,
                                       none found, busy, or a page that may not ask

Messages say what went wrong and what to do next. None of them ever contains the API key:
the client only ever passes redacted URLs and server-supplied reasons into them.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AuthenticationError",
    "ConnectError",
    "ConnectTimeout",
    "FishNotebookError",
    "MicrophoneError",
    "MissingDependencyError",
    "ProtocolError",
    "ReceiveTimeout",
    "ServerBusyError",
    "SessionStateError",
    "StreamTimeout",
    "TransportError",
    "ValidationError",
    "WebSocketError",
    "refused",
    "require",
]


class FishNotebookError(Exception):
    """Root of every error fish-notebook raises on purpose."""


class TransportError(FishNotebookError):
    """The server could not be reached, or stopped answering."""


class ConnectError(TransportError, ConnectionError):
    """The connection or the WebSocket handshake failed."""


class StreamTimeout(TransportError, TimeoutError):
    """A bounded wait ran out."""


class ConnectTimeout(StreamTimeout):
    """The connection and handshake did not complete within the connect timeout."""


class ReceiveTimeout(StreamTimeout):
    """The server sent nothing for longer than the receive timeout."""


class WebSocketError(FishNotebookError):
    """The stream failed: the server ended it with an error, or the socket closed early.

    Same name as the Fish SDK's exception, so ``except WebSocketError`` reads the same.
    ``reason`` holds what the server said, when it said anything.
    """

    def __init__(self, message: str, *, reason: str | None = None, close_code: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.close_code = close_code


class ServerBusyError(WebSocketError):
    """The server refused a new session because its concurrency limit was reached."""

    def __init__(
        self, message: str, *, max_concurrency: int | None = None, reason: str | None = None
    ):
        super().__init__(message, reason=reason)
        self.max_concurrency = max_concurrency


class AuthenticationError(FishNotebookError):
    """The server refused the credentials (HTTP 401 or 403 on the handshake)."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class ProtocolError(FishNotebookError, ValueError):
    """A frame that is not a MessagePack map of a known shape."""


class ValidationError(FishNotebookError, ValueError):
    """An option with a bad value. ``field``, ``value`` and ``allowed`` say which and why."""

    def __init__(self, field: str, value: Any, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}={value!r} is not valid: {allowed}")


class SessionStateError(FishNotebookError, RuntimeError):
    """An object was used in a state that does not allow it (for example after close)."""


class MissingDependencyError(FishNotebookError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str):
        self.package = package
        self.extra = extra
        super().__init__(
            f"{purpose} needs the {package!r} package: pip install 'fish-notebook[{extra}]'"
        )


def refused(status: int, where: str, said: str) -> FishNotebookError | None:
    """The error for an HTTP refusal that means the same on every endpoint (the WebSocket
    handshake, ``/v1/asr``, ...): refused credentials (401, 403) or a rate limit (429);
    None for any other status. ``where`` names the server, ``said`` its words (or "")."""
    said = f": {said}" if said else ""
    if status in (401, 403):
        return AuthenticationError(
            f"{where} refused the credentials (HTTP {status}){said}. Check FISH_API_KEY "
            "(or the api_key argument / the local server's --token).",
            status=status,
        )
    if status == 429:
        return ServerBusyError(f"{where} is rate limiting (HTTP 429){said}: retry later")
    return None


def require(module: str, package: str, extra: str, purpose: str) -> Any:
    """Import an optional dependency, or raise MissingDependencyError naming its extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(package, extra, purpose) from exc


class MicrophoneError(FishNotebookError):
    """The page could not capture the microphone (the voice chat widget).

    ``reason`` says why, in a word the code can test: ``"denied"`` (the user or the browser
    refused), ``"no-device"``, ``"busy"`` (in use, or it failed to start), ``"insecure"``
    (the page is neither https nor localhost), ``"unsupported"`` (no Web Audio capture),
    ``"ended"`` (the device went away) or ``"failed"``. ``name`` is the browser's own
    error name (``NotAllowedError``, ``NotFoundError``, ...), when it gave one.
    """

    def __init__(self, message: str, *, reason: str = "failed", name: str = ""):
        super().__init__(message)
        self.reason = reason
        self.name = name
