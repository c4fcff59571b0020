"""The embedded Fish-compatible server: ``/v1/tts/live`` on loopback with a Piper voice.

A client sees what it would see from Fish Audio's cloud (PROTOCOL.md): binary MessagePack
frames both ways, ``start`` / ``text`` / ``flush`` / ``stop`` in, ``audio`` / ``log`` /
``finish`` / ``error`` out. Guarantees:

- Each sentence is spoken as soon as it is complete (see :mod:`.chunker`), and its audio
  is sent as soon as it is synthesized; ``flush`` speaks the buffer now.
- ``finish`` (reason ``stop``) comes only after the client's ``stop`` and after all the
  audio, also for a session with no text; then the socket stays open for another
  ``start`` (see :mod:`.websocket`: several sessions per socket, an idle socket between
  sessions closed after ``idle_timeout``).
- Synthesis runs in a thread pool with one slot per allowed session, so reading frames,
  answering pings, flushes and other sessions never wait for a synthesis. A session's
  pieces are synthesized and sent in order. Sessions share the cores earliest deadline
  first (:mod:`.slots`): the next sentence of the session whose listener runs out of audio
  soonest is synthesized first, a session with nothing left to play is served at once.
- A bad frame, a request the server cannot serve (``opus``), too much buffered text or an
  idle client ends *that* session with ``finish`` reason ``error`` and a ``message``
  (also sent as a ``log`` event and logged); every other session goes on.
- Safe defaults: bound to 127.0.0.1; an optional bearer token (HTTP 401 without it); at
  most ``max_sessions`` sessions in progress, counted from ``start`` to ``finish`` (one
  more ``start`` gets an ``error`` event with ``max_concurrency`` and is closed, never
  queued; a socket open between sessions holds no slot, and at most four sockets per
  session slot may be open); bounded frame size, HTTP body size
  and buffered text; idle sessions and slow HTTP senders closed; a WebSocket handshake
  from a browser page of another origin refused (403). A non-loopback host needs a token
  unless ``allow_insecure``.

``/v1/tts/live/with-timestamp`` speaks the same protocol in the cloud's documented shape
(PROTOCOL.md): each piece of text the voice speaks is one ``chunk_seq`` (0, 1, ...) with one
``chunk_audio_offset_sec`` (where that chunk starts on the stream); its ``audio`` events carry
``alignment: null`` until the chunk's first word is heard, then a cumulative snapshot of every
word of the chunk so far (times from the chunk's first sample, ``audio_duration`` so far), which
replaces the one before; ``content`` is the chunk's text up to its last heard word, and
``time`` the ms since the session began. Word times come from the voice's phoneme alignment
(:mod:`.timing`); the snapshots are built in :mod:`.synthesis`, sent by :mod:`.output`.
Delivery cues and speaker tags are never spoken and never words (:mod:`.directions`).

Plain HTTP on the same port (:mod:`.http`): ``GET /healthz`` answers ``ok``; ``GET
/v1/voices`` answers ``{"voices": [{"id", "default", "sample_rate"}]}``; ``POST /v1/tts``
(:mod:`.speech`); ``POST /v1/asr`` (:mod:`.transcription`: Whisper, with the ``listen``
extra); ``GET /model[/{id}]`` (:mod:`.models`).

HTTP and WebSocket share one port through tornado. Why tornado: websockets' own server
answers only ``GET`` (no ``POST /v1/tts``); tornado serves both on one port, is one pure
Python package that every Jupyter install already has (ipykernel and jupyter_server depend
on it), and has the bounds this server needs built in: message size (checked from a
frame's header, and after inflation), HTTP body size and body/idle timeouts, keepalive
pings. aiohttp would do too, with a larger dependency tree that Jupyter does not bring.
What tornado does differently from what clients expect is mended in :mod:`.websocket`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from tornado.netutil import bind_sockets
from tornado.web import Application

from .._checks import check_number
from .._net import is_loopback
from ..errors import ValidationError
from ..protocol import LIVE_PATH, LIVE_TIMESTAMP_PATH
from .asr import Transcriber
from .connection import Connection
from .engine import Voice, VoiceLibrary
from .http import Gate, HealthHandler, NotFoundHandler, VoicesHandler, log_access
from .lingering import LingeringHTTPServer
from .models import MODEL_PATH, ModelHandler, ModelsHandler
from .recorder import Recorder
from .session import SessionContext
from .speech import TTS_PATH, TTSHandler
from .threaded import ThreadedServer
from .transcription import ASR_PATH, ASR_SOLO_THREADS, ASR_THREADS, ASRHandler
from .websocket import SOCKETS_PER_SLOT, LiveSocketHandler

__all__ = ["HEALTH_PATH", "VOICES_PATH", "Admission", "LocalServer", "ThreadedServer"]

logger = logging.getLogger("fish_notebook.local")

HEALTH_PATH = "/healthz"
VOICES_PATH = "/v1/voices"
#: Seconds that open sessions get to end when the server closes.
SHUTDOWN_TIMEOUT = 10.0


def _log_timed_voice_failure(loading: Future[Voice]) -> None:
    # A session on the timestamp path loads it again and reports what goes wrong.
    if not loading.cancelled() and loading.exception() is not None:
        logger.warning("loading the timed voice ahead failed: %s", loading.exception())


#: Keepalive pings (as websockets sends them): every 20 s, a pong due within 20 s.
PING_INTERVAL = PING_TIMEOUT = 20.0


class Admission:
    """At most ``limit`` sessions at once, counted from ``start`` to ``finish``; at most
    ``SOCKETS_PER_SLOT * limit`` WebSocket connections open (busy or between sessions);
    the tasks that serve them.

    A session or a connection past its limit is refused at once, never queued.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self.sockets = 0
        self.max_sockets = SOCKETS_PER_SLOT * limit
        self._tasks: dict[asyncio.Task[None], Connection] = {}

    def __repr__(self) -> str:
        return f"Admission(active={self.active}, limit={self.limit}, sockets={self.sockets})"

    def connect(self) -> bool:
        """Count a new WebSocket connection; False when ``max_sockets`` are open."""
        if self.sockets >= self.max_sockets:
            return False
        self.sockets += 1
        return True

    def disconnect(self) -> None:
        """A connection counted by :meth:`connect` has ended."""
        self.sockets -= 1

    def try_open(self) -> bool:
        """Take a slot; False when all are taken."""
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        """Give a slot back (once per successful :meth:`try_open`)."""
        self.active -= 1

    def run(self, session: Coroutine[Any, Any, None], connection: Connection) -> None:
        """Run a session's coroutine as a task the server ends when it closes."""
        task = asyncio.ensure_future(session)
        self._tasks[task] = connection
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def drain(self, timeout: float) -> None:
        """Close every session's connection (code 1001) and wait for the sessions to end,
        cancelling those still running after ``timeout``."""
        tasks = dict(self._tasks)
        if not tasks:
            return
        closing = [c.close(1001, "the server is shutting down") for c in tasks.values()]
        await asyncio.gather(*closing, return_exceptions=True)
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)


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
        max_sessions: Sessions served at once (from ``start`` to ``finish``, WebSocket and
            HTTP alike); one more gets an ``error`` event (HTTP 429).
        voices_dir: A folder of extra Piper voices (``NAME.onnx`` + ``NAME.onnx.json``).
        idle_timeout: Seconds a session may send nothing while nothing is being spoken, or
            read nothing while audio waits for it (then the connection is dropped); also
            how long a socket may wait between sessions before it is closed.
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
        self.gate = Gate(token)
        self.sessions = Admission(max_sessions)
        self._transcriber: Transcriber | None = None
        self._timed_voice: Future[Voice] | None = None
        self._http: LingeringHTTPServer | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._stopped = asyncio.Event()
        self.port: int = 0

    def __repr__(self) -> str:
        state = f"url={self.url!r}" if self._http else "not started"
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
        return self.sessions.active

    def session_context(self) -> SessionContext:
        """What a session of this server needs (only while the server runs)."""
        assert self._pool is not None
        return SessionContext(
            self.voices, self._pool, self.idle_timeout, self.max_text, self.recorder
        )

    @property
    def timed_voice_warming(self) -> Future[Voice] | None:
        """The load of the timed default voice :meth:`warm_timed_voice` started, if any."""
        return self._timed_voice

    def warm_timed_voice(self) -> None:
        """Load the default voice with per-phoneme timing in the background, once: a socket
        opened on the timestamp path will ask for it (1.5-2 s to load here), and a voice
        loop opens its answer's socket as the user starts speaking, seconds before the
        answer. Nothing to do when every voice is loaded with timing, or when stopped."""
        if self._timed_voice is None and self._pool is not None and not self.voices.alignment:
            self._timed_voice = self._pool.submit(self.voices.default, alignment=True)
            self._timed_voice.add_done_callback(_log_timed_voice_failure)

    def transcriber(self) -> Transcriber:
        """The speech recogniser of ``POST /v1/asr``, made on first use; its model loads on
        its first run. Raises MissingDependencyError without the ``listen`` extra."""
        if self._transcriber is None:
            self._transcriber = Transcriber(cpu_threads=ASR_THREADS, solo_threads=ASR_SOLO_THREADS)
        return self._transcriber

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> LocalServer:
        """Load the default voice, bind the socket, start serving. Returns self."""
        if self._http is not None:
            return self
        self._pool = ThreadPoolExecutor(self.max_sessions, thread_name_prefix="fish-notebook-tts")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self.voices.default)
        sockets = bind_sockets(self._requested_port, self.host or None)
        self._http = LingeringHTTPServer(
            self._application(),
            max_body_size=self.max_frame_size,
            max_buffer_size=2 * self.max_frame_size + (1 << 20),
            body_timeout=2 * self.idle_timeout,  # a backstop: POST /v1/tts answers 408 first
            idle_connection_timeout=self.idle_timeout,
        )
        self._http.add_sockets(sockets)
        self._stopped.clear()
        self.port = int(sockets[0].getsockname()[1])
        logger.info("serving %s%s", self.url, LIVE_PATH)
        if not is_loopback(self.host) and self._token is None:
            logger.warning(
                "serving on %s with no token: anyone who can reach it can use it", self.host
            )
        return self

    def _application(self) -> Application:
        route = {"server": self}
        live = f"(?:{LIVE_PATH}|{LIVE_TIMESTAMP_PATH})/?"
        return Application(
            [
                (f"{HEALTH_PATH}/?", HealthHandler, route),
                (f"{VOICES_PATH}/?", VoicesHandler, route),
                (f"{TTS_PATH}/?", TTSHandler, route),
                (f"{ASR_PATH}/?", ASRHandler, route),
                (f"{MODEL_PATH}/?", ModelsHandler, route),
                (f"{MODEL_PATH}/([^/]+)/?", ModelHandler, route),
                (live, LiveSocketHandler, route),
            ],
            default_handler_class=NotFoundHandler,
            default_handler_args=route,
            log_function=log_access,
            websocket_max_message_size=self.max_frame_size,
            websocket_ping_interval=PING_INTERVAL,
            websocket_ping_timeout=PING_TIMEOUT,
        )

    async def close(self) -> None:
        """Stop accepting, close open sessions (code 1001), wait for them. Safe twice."""
        http, self._http = self._http, None
        if http is not None:
            http.stop()
            await self.sessions.drain(SHUTDOWN_TIMEOUT)
            await http.close_all_connections()
            self._stopped.set()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        await self.start()
        await self._stopped.wait()

    async def __aenter__(self) -> LocalServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def run_in_thread(self, timeout: float = 60.0) -> ThreadedServer:
        """This server on its own event loop in a daemon thread; use as a context manager."""
        return ThreadedServer(self, timeout=timeout)
