"""The realtime endpoints on tornado: a WebSocket handler and the session's connection.

:class:`LiveSocketHandler` serves ``/v1/tts/live`` and ``/v1/tts/live/with-timestamp``.
One socket carries several sessions in turn, as Fish documents for the cloud ("after a
``finish`` you may send another ``start`` to run a new session on the same socket"):

- Each ``start`` takes a session slot, given back when that session's ``finish`` goes out.
  A ``start`` past ``max_sessions`` gets the cloud's ``error`` event with
  ``max_concurrency``, then close code 1013 (never a queue). An open socket between
  sessions holds no slot; sockets open at once are bounded apart (:data:`SOCKETS_PER_SLOT`
  for each session slot; one more gets the same refusal as it opens).
- After ``finish`` reason ``stop`` the socket stays open for the next ``start``; after
  ``finish`` reason ``error`` (or an ``error`` event) it closes. A socket with no session
  that sends nothing for ``idle_timeout`` is closed (code 1000, no event: there is no
  session to end); before its first ``start`` that wait is the first session's, which
  ends as idle with ``finish`` reason ``error`` as before.
- Every limit is per session (text, idle, frame size); each session is its own
  :class:`~.session.LiveSession`, run over a :class:`SessionChannel`.

What tornado does not do the way a client needs it:

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

from ..protocol import LIVE_TIMESTAMP_PATH, ErrorEvent, FinishEvent, pack
from .connection import ABNORMAL_CLOSURE, Disconnected
from .session import LiveSession

if TYPE_CHECKING:
    from .server import LocalServer

__all__ = [
    "MAX_QUEUE",
    "SOCKETS_PER_SLOT",
    "LiveSocketHandler",
    "SessionChannel",
    "TornadoConnection",
]

logger = logging.getLogger("fish_notebook.local")

#: Messages read ahead of the session before the socket is read no further.
MAX_QUEUE = 8
#: Longest wait for the client's side of the closing handshake (seconds).
CLOSE_TIMEOUT = 10.0
#: Open sockets allowed for each session slot: room for clients that keep a socket open
#: between sessions, still a bound on what idle sockets may hold (a file descriptor each).
SOCKETS_PER_SLOT = 4
_NORMAL_CLOSURE = 1000
_TRY_AGAIN_LATER = 1013
_GONE = object()
#: The frame that ends a session cleanly; the socket then stays open for the next one.
_CLEAN_FINISH = pack(FinishEvent("stop"))


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
        self._arrived = asyncio.Event()  # set whenever something is put in the inbox

    def __repr__(self) -> str:
        return f"TornadoConnection({self.path!r}, closed={self._closed.is_set()})"

    # --- fed by the handler ------------------------------------------------------------

    def deliver(self, message: str | bytes) -> Awaitable[None] | None:
        """A message from the client; an awaitable while the queue is full (tornado waits
        for it before it reads the next frame)."""
        if self._closing:
            return None  # the server is closing: keep reading up to the client's close
        self._inbox.put_nowait(message)
        self._arrived.set()
        if self._inbox.qsize() >= MAX_QUEUE:
            self._room.clear()
            return self._wait_for_room()
        return None

    async def _wait_for_room(self) -> None:
        await self._room.wait()

    def gone(self) -> None:
        """The connection ended (either side, cleanly or not)."""
        self._inbox.put_nowait(_GONE)
        self._arrived.set()
        self._room.set()
        self._closed.set()

    async def wait_for_frame(self, timeout: float) -> str:
        """Wait, at most ``timeout`` seconds, for what comes next without reading it:
        ``"frame"`` (a message waits), ``"gone"`` (the connection ended) or ``"timeout"``."""
        if self._inbox.empty():
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except asyncio.TimeoutError:
                return "timeout"
        # The end is always the last item: alone in the inbox, nothing comes before it.
        return "gone" if self._closed.is_set() and self._inbox.qsize() == 1 else "frame"

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


class SessionChannel:
    """One session's view of a socket that carries several sessions in turn.

    The session uses it as its :class:`~.connection.Connection`. Once the session has sent
    ``finish`` reason ``stop``, its normal close leaves the socket open for the client's
    next ``start``: :attr:`reusable` turns true and :attr:`close_code` reads 1000 (the
    session ended normally). Any other close (after an error, another code) closes the
    socket. ``expired``: the wait for this session's first frame already ran out, so the
    first :meth:`recv` raises TimeoutError at once (the session then ends as idle).
    """

    def __init__(self, connection: TornadoConnection, *, expired: bool = False) -> None:
        self._connection = connection
        self._expired = expired
        self._finished = False
        self.reusable = False

    def __repr__(self) -> str:
        return f"SessionChannel({self._connection!r}, reusable={self.reusable})"

    @property
    def path(self) -> str:
        return self._connection.path

    @property
    def headers(self) -> Mapping[str, str]:
        return self._connection.headers

    @property
    def close_code(self) -> int | None:
        return _NORMAL_CLOSURE if self.reusable else self._connection.close_code

    async def recv(self) -> bytes | str:
        if self._expired:
            self._expired = False
            raise asyncio.TimeoutError  # read as the idle timeout of the session's wait
        return await self._connection.recv()

    async def send(self, message: bytes) -> None:
        await self._connection.send(message)
        if message == _CLEAN_FINISH:
            self._finished = True

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._finished and code == _NORMAL_CLOSURE and self._connection.close_code is None:
            self.reusable = True  # the session is over; the socket waits for the next start
            return
        await self._connection.close(code, reason)

    def abort(self) -> None:
        self._connection.abort()


class LiveSocketHandler(WebSocketHandler):
    """``/v1/tts/live[/with-timestamp]``: sessions one after another, each within the limit."""

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
        if not sessions.connect():
            logger.warning("refused a connection: %d sockets already open", sessions.sockets)
            await self._refuse(_concurrency_refusal(sessions.limit))
            return
        self.connection = TornadoConnection(self)
        if self.request.path.rstrip("/") == LIVE_TIMESTAMP_PATH:
            self.server.warm_timed_voice()  # its first session will need it
        sessions.run(self._serve(self.connection), self.connection)

    async def _refuse(self, refusal: ErrorEvent) -> None:
        """The cloud's refusal: an ``error`` event, then close code 1013."""
        try:
            await self.write_message(pack(refusal), binary=True)
        except WebSocketClosedError:
            return
        self.close(_TRY_AGAIN_LATER, refusal.error)

    async def _serve(self, connection: TornadoConnection) -> None:
        try:
            first = True
            while await self._next_session(connection, first=first):
                first = False
        finally:
            self.server.sessions.disconnect()

    async def _next_session(self, connection: TornadoConnection, *, first: bool) -> bool:
        """Serve the socket's next session; True when the socket stays open for another."""
        came = await connection.wait_for_frame(self.server.idle_timeout)
        if not first and came != "frame":  # between sessions: nothing to end but the socket
            if came == "timeout":
                logger.debug("closed a socket idle between sessions")
                await connection.close(_NORMAL_CLOSURE, "idle between sessions")
            return False
        sessions = self.server.sessions
        if came == "frame" and not sessions.try_open():
            logger.warning("refused a session: %d sessions already open", sessions.active)
            await self._refuse(_concurrency_refusal(sessions.limit))
            return False
        held = came == "frame"  # the first session runs even without a frame: it ends as idle

        def release() -> None:
            nonlocal held
            if held:
                held = False
                sessions.release()

        channel = SessionChannel(connection, expired=came == "timeout")
        try:
            await LiveSession(self.server.session_context(), channel, release).run()
        finally:
            release()
        return channel.reusable

    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        return self.connection.deliver(message) if self.connection is not None else None

    def on_close(self) -> None:
        if self.connection is not None:
            self.connection.gone()


def _concurrency_refusal(limit: int) -> ErrorEvent:
    """The cloud's refusal, the same for a session and a socket past their limits."""
    return ErrorEvent("Concurrency limit exceeded", {"max_concurrency": limit})


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a write's failure as seen: a client gone mid-write is no error of ours."""
    if not future.cancelled():
        future.exception()
