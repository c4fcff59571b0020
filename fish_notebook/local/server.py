"""The embedded Fish-compatible server: ``/v1/tts/live`` on loopback with a Piper voice.

A client sees what it would see from Fish Audio's cloud (PROTOCOL.md): binary MessagePack
frames both ways, ``start`` / ``text`` / ``flush`` / ``stop`` in, ``audio`` / ``log`` /
``finish`` / ``error`` out. Guarantees:

- Each sentence is spoken as soon as it is complete (see :mod:`.chunker`), and its audio
  is sent as soon as it is synthesized; ``flush`` speaks the buffer now.
- ``finish`` (reason ``stop``) comes only after the client's ``stop`` and after all the
  audio, also for a session with no text; then the socket closes.
- Synthesis runs in a thread pool with one slot per allowed session, so reading frames,
  answering pings, flushes and other sessions never wait for a synthesis. A session's
  pieces are synthesized and sent in order. Sessions share the cores earliest deadline
  first (:mod:`.slots`): the next sentence of the session whose listener runs out of audio
  soonest is synthesized first, a session with nothing left to play is served at once.
- A bad frame, a request the server cannot serve (``opus``), too much buffered text or an
  idle client ends *that* session with ``finish`` reason ``error`` and a ``message``
  (also sent as a ``log`` event and logged); every other session goes on.
- Safe defaults: bound to 127.0.0.1; an optional bearer token (HTTP 401 without it); at
  most ``max_sessions`` sessions (one more gets an ``error`` event with
  ``max_concurrency`` and is closed, never queued); bounded frame size and buffered text;
  idle sessions closed. A non-loopback host needs a token unless ``allow_insecure``.

``/v1/tts/live/with-timestamp`` speaks the same protocol, and each ``audio`` event also
carries ``content`` (the words it holds), ``alignment`` (``segments`` of ``{text, start,
end}`` in seconds from the event's first sample, ``audio_duration``), ``chunk_seq`` (0, 1,
...), ``chunk_audio_offset_sec`` (where the event starts on the session's audio timeline)
and ``time`` (ms since the session began). Word times come from the voice's phoneme
alignment (see :mod:`.timing`). Events are cut between words: an event holds whole words,
at most half a second or ``MAX_AUDIO_PAYLOAD`` bytes of them unless a single word is longer
(then that word alone, up to ``MAX_TIMED_PAYLOAD``). For ``mp3`` the timeline is the PCM
that was encoded; the encoder's tail goes out as an event with no words and no duration.

Plain HTTP on the same port: ``GET /healthz`` answers ``ok``; ``GET /v1/voices`` answers
``{"voices": [{"id", "default", "sample_rate"}]}``.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .._checks import check_number
from .._net import RedactingLogger, is_loopback
from ..errors import ValidationError
from ..protocol import LIVE_PATH, LIVE_TIMESTAMP_PATH, ErrorEvent, pack
from .connection import Disconnected
from .engine import VoiceLibrary
from .recorder import Recorder
from .session import LiveSession, SessionContext
from .threaded import ThreadedServer

__all__ = ["HEALTH_PATH", "VOICES_PATH", "LocalServer", "ThreadedServer"]

logger = logging.getLogger("fish_notebook.local")

HEALTH_PATH = "/healthz"
VOICES_PATH = "/v1/voices"


class LocalServer:
    """A Fish-compatible realtime TTS server on ``ws://host:port/v1/tts/live``.

    Use it as ``async with LocalServer() as server:`` (then :attr:`url`, :attr:`port`), or
    from synchronous code as ``with LocalServer().run_in_thread() as server:``. Starting
    loads the default voice (once per process) before the socket is bound, so the first
    session is as fast as any other.

    Args:
        host: Address to bind; loopback by default.
        port: Port to bind; 0 picks a free one (read :attr:`port` after start).
        token: When set, every WebSocket and ``/v1/voices`` request must carry
            ``Authorization: Bearer <token>``; others get HTTP 401. Never logged.
        max_sessions: Sessions served at once; one more gets an ``error`` event.
        voices_dir: A folder of extra Piper voices (``NAME.onnx`` + ``NAME.onnx.json``).
        idle_timeout: Seconds a session may send nothing while nothing is being spoken, or
            read nothing while audio waits for it (then the connection is dropped).
        max_frame_size: Largest client frame in bytes (the connection closes with 1009).
        max_text: Most characters of text a session may have waiting to be spoken.
        record: Keep a :class:`~.recorder.Recorder` of every session (for tests).
        alignment: Load every voice with per-phoneme timing at once. Without it, sessions
            on ``/v1/tts/live/with-timestamp`` load the timed voice on first use (~1 s).
        allow_insecure: Allow a non-loopback ``host`` without a ``token``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        max_sessions: int = 8,
        voices_dir: str | None = None,
        idle_timeout: float = 60.0,
        max_frame_size: int = 8 * 1024 * 1024,
        max_text: int = 200_000,
        record: bool = False,
        alignment: bool = False,
        allow_insecure: bool = False,
    ) -> None:
        check_number("max_sessions", max_sessions, 1, integer=True)
        check_number("idle_timeout", idle_timeout, above=0)
        check_number("max_frame_size", max_frame_size, 1, integer=True)
        check_number("max_text", max_text, 1, integer=True)
        if token is not None and not token:
            raise ValidationError("token", "<empty>", "must be a non-empty string or None")
        if not is_loopback(host) and token is None and not allow_insecure:
            raise ValidationError(
                "host",
                host,
                "is not a loopback address: anyone who can reach it could use this server. "
                "Set a token, or allow_insecure=True (--insecure) if you really mean it",
            )
        self.host = host
        self._requested_port = port
        self._token = token
        self.max_sessions = max_sessions
        self.idle_timeout = float(idle_timeout)
        self.max_frame_size = max_frame_size
        self.max_text = max_text
        self.voices = VoiceLibrary(voices_dir, alignment=alignment)
        self.recorder: Recorder | None = Recorder() if record else None
        self._server: Server | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._active = 0
        self.port: int = 0

    def __repr__(self) -> str:
        state = f"url={self.url!r}" if self._server else "not started"
        auth = ", token=<set>" if self._token else ""
        return f"LocalServer({state}, max_sessions={self.max_sessions}{auth})"

    @property
    def url(self) -> str:
        """``ws://host:port``: the base URL clients connect to (append ``/v1/tts/live``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    @property
    def http_url(self) -> str:
        """``http://host:port``: the base URL the Fish SDK takes."""
        return "http" + self.url[2:]

    @property
    def active_sessions(self) -> int:
        """Sessions being served now."""
        return self._active

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> LocalServer:
        """Load the default voice, bind the socket, start serving. Returns self."""
        if self._server is not None:
            return self
        self._pool = ThreadPoolExecutor(self.max_sessions, thread_name_prefix="fish-notebook-tts")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self.voices.default)
        self._server = await serve(
            self._handle,
            self.host,
            self._requested_port,
            process_request=self._process_request,
            max_size=self.max_frame_size,
            max_queue=8,
            server_header=None,
            # websockets logs request headers at DEBUG: never a token or a client's key.
            logger=RedactingLogger(logging.getLogger("websockets.server"), self._token),
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        logger.info("serving %s%s", self.url, LIVE_PATH)
        if not is_loopback(self.host) and self._token is None:
            logger.warning(
                "serving on %s with no token: anyone who can reach it can use it", self.host
            )
        return self

    async def close(self) -> None:
        """Stop accepting, close open sessions (code 1001), wait for them. Safe twice."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> LocalServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def run_in_thread(self, timeout: float = 60.0) -> ThreadedServer:
        """This server on its own event loop in a daemon thread; use as a context manager."""
        return ThreadedServer(self, timeout=timeout)

    # --- HTTP side -----------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        if self._token is None:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), self._token.encode()
        )

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path.rstrip("/") or "/"
        if path == HEALTH_PATH:
            return _cors(connection.respond(http.HTTPStatus.OK, "ok\n"))
        if path not in (LIVE_PATH, LIVE_TIMESTAMP_PATH, VOICES_PATH):
            return connection.respond(
                http.HTTPStatus.NOT_FOUND, f"Not found. The TTS WebSocket is at {LIVE_PATH}\n"
            )
        if not self._authorized(request):
            response = connection.respond(
                http.HTTPStatus.UNAUTHORIZED,
                "Missing or wrong token: send the header 'Authorization: Bearer <token>' "
                "with the token the server was started with\n",
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="fish-notebook"'
            return _cors(response)
        if path == VOICES_PATH:
            body = json.dumps({"voices": [v.to_json() for v in self.voices.voices()]})
            response = connection.respond(http.HTTPStatus.OK, body)
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "application/json"
            return _cors(response)
        return None  # the WebSocket handshake goes on

    # --- WebSocket side ------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        if self._active >= self.max_sessions:
            logger.warning("refused a session: %d sessions already open", self._active)
            refusal = ErrorEvent(
                "Concurrency limit exceeded", {"max_concurrency": self.max_sessions}
            )
            try:
                await connection.send(pack(refusal))
                await _close(connection, 1013, "Concurrency limit exceeded")
            except ConnectionClosed:
                pass
            return
        self._active += 1
        released = False

        def release() -> None:
            # The slot is free once the session has said its last word (finish), before the
            # closing handshake: a client that starts its next session as soon as this one
            # closes must not be refused for it.
            nonlocal released
            if not released:
                released = True
                self._active -= 1

        try:
            assert self._pool is not None
            context = SessionContext(
                self.voices, self._pool, self.idle_timeout, self.max_text, self.recorder
            )
            await LiveSession(context, _WebsocketsConnection(connection), release).run()
        finally:
            release()


async def _close(connection: ServerConnection, code: int = 1000, reason: str = "") -> None:
    """Close, reading and dropping whatever the client still sends meanwhile.

    Nothing else reads the connection by then. Without this, a client that keeps sending
    fills the incoming queue, websockets stops reading the socket, never sees the client's
    closing frame, and the session stays open until the close timeout (10 s) aborts it.
    """

    async def discard() -> None:
        try:
            while True:
                await connection.recv()
        except ConnectionClosed:
            pass

    reader = asyncio.create_task(discard())
    try:
        await connection.close(code, reason)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


def _cors(response: Response) -> Response:
    # The voice list and health are not secret; a browser panel may read them directly.
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


class _WebsocketsConnection:
    """A websockets server connection as a session's :class:`~.connection.Connection`."""

    def __init__(self, connection: ServerConnection) -> None:
        self._connection = connection
        request = connection.request
        self.path = urlsplit(request.path).path.rstrip("/") if request is not None else ""
        raw = request.headers.raw_items() if request is not None else []
        self.headers: Mapping[str, str] = {name.lower(): value for name, value in raw}

    @property
    def close_code(self) -> int | None:
        return self._connection.close_code

    async def recv(self) -> bytes | str:
        try:
            return await self._connection.recv()
        except ConnectionClosed as exc:
            raise Disconnected from exc

    async def send(self, message: bytes) -> None:
        try:
            await self._connection.send(message)
        except ConnectionClosed as exc:
            raise Disconnected from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            await _close(self._connection, code, reason)
        except ConnectionClosed:
            pass

    def abort(self) -> None:
        self._connection.transport.abort()
