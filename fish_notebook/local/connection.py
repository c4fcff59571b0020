"""What a session needs of its client's WebSocket: whole messages in and out, a close, a drop.

The session code (:mod:`.session` and its parts) talks only to a :class:`Connection`, never
to a server library, so the library that carries the bytes can change without touching it.
A connection that learns its client is gone raises :class:`Disconnected` from
:meth:`~Connection.recv` and :meth:`~Connection.send`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

__all__ = ["ABNORMAL_CLOSURE", "Connection", "Disconnected"]

#: The close code a session records when the connection ended without a closing handshake.
ABNORMAL_CLOSURE = 1006


class Disconnected(Exception):
    """The client is gone (it closed, or the connection dropped): nothing more goes either way."""


class Connection(Protocol):
    """One client's WebSocket as a session sees it."""

    @property
    def path(self) -> str:
        """The request path, without query and trailing slash."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """The handshake's request headers, names in lower case."""
        ...

    @property
    def close_code(self) -> int | None:
        """The close code once closed (1006 for a dropped connection); None while open."""
        ...

    async def recv(self) -> bytes | str:
        """The next message from the client. Raises Disconnected when there is none to come."""
        ...

    async def send(self, message: bytes) -> None:
        """Send one binary message; returns once it is on its way (the client reads).
        Raises Disconnected."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """The closing handshake, dropping whatever the client still sends meanwhile
        (bounded). Safe after the client is gone."""
        ...

    def abort(self) -> None:
        """Drop the connection now, without a closing handshake."""
        ...
