"""The realtime endpoints on tornado: a WebSocket handler and the session's connection.

:class:`LiveSocketHandler` serves ``/v1/tts/live`` and ``/v1/tts/live/with-timestamp``: it
refuses a session past the limit (the cloud's ``error`` event with ``max_concurrency``,
then close code 1013, never a queue) and runs a :class:`~.session.LiveSession` over a
:class:`TornadoConnection` otherwise. What tornado does not do the way a client needs it:

- **Back-pressure.** Messages wait in a queue of :data:`MAX_QUEUE`; while it is full the
  handler does not read the socket (tornado waits for ``on_message``), as websockets did.
- **A close the client can read.** After a message over the size limit tornado sends close
  code 1009 and closes the socket at once, while the rest of the huge message still
  arrives; the server's streams close lingering (:mod:`.lingering`), so the client reads
  that close frame instead of a reset.
- **Closing while the client still sends.** Once the server closes, messages are dropped
  unread, so the client's closing frame is seen at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

from tornado.websocket import WebSocketClosedError, WebSocketHandler

from ..protocol import ErrorEvent, pack
from .connection import ABNORMAL_CLOSURE, Disconnected
from .session import LiveSession

if TYPE_CHECKING:
    from .server import LocalServer

__all__ = ["MAX_QUEUE", "LiveSocketHandler", "TornadoConnection"]

logger = logging.getLogger("fish_notebook.local")

#: Messages read ahead of the session before the socket is read no further.
MAX_QUEUE = 8
#: Longest wait for the client's side of the closing handshake (seconds).
CLOSE_TIMEOUT = 10.0
_TRY_AGAIN_LATER = 1013
_GONE = object()


class TornadoConnection:
    """A tornado WebSocket as a session's :class:`~.connection.Connection`."""

    def __init__(self, handler: LiveSocketHandler) -> None:
        self._handler = handler
        request = handler.request
        self.path = request.path.rstrip("/")
        self.headers: Mapping[str, str] = {k.lower(): v for k, v in request.headers.get_all()}
        self._inbox: asyncio.Queue[object] = asyncio.Queue()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._closed = asyncio.Event()

    def __repr__(self) -> str:
        return f"TornadoConnection({self.path!r}, closed={self._closed.is_set()})"

    # --- fed by the handler ------------------------------------------------------------

    def deliver(self, message: str | bytes) -> Awaitable[None] | None:
        """A message from the client; an awaitable while the queue is full (tornado waits
        for it before it reads the next frame)."""
        if self._closing:
            return None  # the server is closing: keep reading up to the client's close
        self._inbox.put_nowait(message)
        if self._inbox.qsize() >= MAX_QUEUE:
            self._room.clear()
            return self._wait_for_room()
        return None

    async def _wait_for_room(self) -> None:
        await self._room.wait()

    def gone(self) -> None:
        """The connection ended (either side, cleanly or not)."""
        self._inbox.put_nowait(_GONE)
        self._room.set()
        self._closed.set()

    # --- the Connection protocol ---------------------------------------------------------

    @property
    def close_code(self) -> int | None:
        if not self._closed.is_set():
            return None
        code = self._handler.close_code
        return ABNORMAL_CLOSURE if code is None else code

    async def recv(self) -> bytes | str:
        item = await self._inbox.get()
        if self._inbox.qsize() < MAX_QUEUE:
            self._room.set()
        if item is _GONE:
            self._inbox.put_nowait(_GONE)  # for any later recv
            raise Disconnected
        assert isinstance(item, (bytes, str))
        return item

    async def send(self, message: bytes) -> None:
        # Like websockets: no wait while the socket takes the bytes, so events sent one
        # after the other (finish, then the close frame) leave together; a wait only when
        # the client reads slower than we send.
        try:
            sent = self._handler.write_message(message, binary=True)
        except WebSocketClosedError as exc:
            raise Disconnected from exc
        sent.add_done_callback(_retrieve)
        protocol = self._handler.ws_connection
        if protocol is not None and protocol.stream is not None and protocol.stream.writing():
            try:
                await sent
            except WebSocketClosedError as exc:
                raise Disconnected from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._closing = True
        while not self._inbox.empty():  # unread messages: dropped, the sender may go on
            self._inbox.get_nowait()
        self._room.set()
        if self._closed.is_set():
            return
        self._handler.close(code, reason or None)
        try:
            await asyncio.wait_for(self._closed.wait(), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            self.abort()

    def abort(self) -> None:
        protocol = self._handler.ws_connection
        stream = protocol.stream if protocol is not None else None
        if stream is not None:
            stream.close()  # tornado then ends the connection (on_close)


class LiveSocketHandler(WebSocketHandler):
    """``/v1/tts/live[/with-timestamp]``: one session per connection, within the limit."""

    def initialize(self, server: LocalServer) -> None:
        self.server = server
        self.connection: TornadoConnection | None = None

    async def prepare(self) -> None:
        self.server.gate.log_request(self)
        if not self.server.gate.authorized(self):
            self.server.gate.refuse(self)

    def get_compression_options(self) -> dict[str, Any] | None:
        # Negotiated when a client offers it, as before; inflation is bounded by the
        # message size limit (tornado closes with 1009 past it).
        return {}

    async def open(self, *args: str, **kwargs: str) -> None:
        sessions = self.server.sessions
        if not sessions.try_open():
            logger.warning("refused a session: %d sessions already open", sessions.active)
            refusal = ErrorEvent("Concurrency limit exceeded", {"max_concurrency": sessions.limit})
            try:
                await self.write_message(pack(refusal), binary=True)
            except WebSocketClosedError:
                return
            self.close(_TRY_AGAIN_LATER, "Concurrency limit exceeded")
            return
        self.connection = TornadoConnection(self)
        sessions.run(self._serve(self.connection), self.connection)

    async def _serve(self, connection: TornadoConnection) -> None:
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.server.sessions.release()

        try:
            await LiveSession(self.server.session_context(), connection, release).run()
        finally:
            release()

    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        return self.connection.deliver(message) if self.connection is not None else None

    def on_close(self) -> None:
        if self.connection is not None:
            self.connection.gone()


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a write's failure as seen: a client gone mid-write is no error of ours."""
    if not future.cancelled():
        future.exception()
