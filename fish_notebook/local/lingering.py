"""Closing a connection so that the client reads everything sent before the close.

A socket closed while bytes from its peer are still unread answers with a reset (RST),
and a reset makes the peer's system throw away what it received but had not yet read: the
400 answer to a request whose body is still coming, or the close frame (code 1009) that
answers a WebSocket message over the size limit, while the rest of that message arrives.
Tornado closes the socket at once in both cases.

:class:`LingeringHTTPServer` gives every connection a :class:`LingeringIOStream`, whose
socket, when the stream closes, is shut down for sending (the peer sees the end after all
data) and read and dropped until the peer closes too, for at most :data:`LINGER` seconds:
the "lingering close" of HTTP servers. Tornado sees the stream closed at once, as before;
only the socket stays open that long (a peer that never closes costs a file descriptor for
``LINGER`` seconds, nothing else).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream

__all__ = ["LINGER", "LingeringHTTPServer", "LingeringIOStream"]

#: Longest a closed connection's socket is read and dropped, waiting for the peer (seconds).
LINGER = 5.0
_READ = 64 * 1024
_LINGERING: set[asyncio.Task[None]] = set()


class LingeringIOStream(IOStream):
    """An :class:`~tornado.iostream.IOStream` whose socket closes lingering (module doc)."""

    def close_fd(self) -> None:
        sock: socket.socket = self.socket
        self.socket = None  # type: ignore[assignment]  # as IOStream.close_fd leaves it
        try:
            sock.shutdown(socket.SHUT_WR)
            loop = asyncio.get_running_loop()
        except (OSError, RuntimeError):  # already reset, or no loop any more
            sock.close()
            return
        task = loop.create_task(_linger(loop, sock))
        _LINGERING.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(_LINGERING.discard)


async def _linger(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Read and drop until the peer closes (or LINGER passes), then close ``sock``."""

    async def drain() -> None:
        while await loop.sock_recv(sock, _READ):
            pass

    try:
        await asyncio.wait_for(drain(), LINGER)
    except (OSError, asyncio.TimeoutError):
        pass
    finally:
        sock.close()


class LingeringHTTPServer(HTTPServer):
    """Tornado's HTTP server with lingering closes on every connection."""

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        lingering = LingeringIOStream(
            stream.socket,
            max_buffer_size=stream.max_buffer_size,
            read_chunk_size=stream.read_chunk_size,
        )
        super().handle_stream(lingering, address)
