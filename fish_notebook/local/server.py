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
import functools
import hmac
import http
import json
import logging
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .._net import RedactingLogger, is_loopback
from ..errors import ProtocolError, ValidationError
from ..protocol import (
    LIVE_PATH,
    LIVE_TIMESTAMP_PATH,
    Alignment,
    AlignmentSegment,
    AudioEvent,
    ClientEvent,
    ErrorEvent,
    FinishEvent,
    FlushEvent,
    LogEvent,
    ServerEvent,
    StartEvent,
    StopEvent,
    TextEvent,
    TTSRequest,
    pack,
    resolve_model,
    unpack_client_event,
)
from .chunker import TextChunker
from .encoding import SUPPORTED_FORMATS, StreamEncoder
from .engine import SpeechChunk, Voice, VoiceLibrary
from .recorder import Recorder, SessionRecord
from .timing import WordPlan, cut_at_words

__all__ = ["HEALTH_PATH", "VOICES_PATH", "LocalServer", "ThreadedServer"]

logger = logging.getLogger("fish_notebook.local")

HEALTH_PATH = "/healthz"
VOICES_PATH = "/v1/voices"

#: Largest audio payload in one ``audio`` event. The Fish SDK's WebSocket client refuses
#: messages over 64 KiB by default, so a long sentence goes out as several events.
MAX_AUDIO_PAYLOAD = 32 * 1024
#: Longest ``log`` / ``finish`` message. Messages quote what the client sent (an unknown
#: event name, a bad value): clipped, they cannot outgrow the SDK's 64 KiB or flood the log.
MAX_MESSAGE = 1000
#: Most characters handed to the voice at once. The chunker keeps one "word" whole however
#: long it is, but Piper's time and memory grow faster than its length (10,000 characters
#: without a space: 17 s, 30,000: 2 min, in one go) and a synthesis stops only between
#: pieces, even when its client has gone.
MAX_PIECE = 600


class _SessionFailed(Exception):
    """Ends one session with finish reason=error; the message goes to the client."""


_STOP = object()

#: Largest audio payload of one ``/with-timestamp`` event, where events hold whole words:
#: a word longer than ``MAX_AUDIO_PAYLOAD`` goes out whole, up to this (websockets' default
#: ``max_size``); only a longer one is cut.
MAX_TIMED_PAYLOAD = 1024 * 1024


@dataclass(frozen=True)
class _TimedPart:
    """Encoded audio of whole words, on its way from a synthesis thread to the socket."""

    data: bytes
    samples: int  # at the requested rate; 0 for an encoder's tail
    content: str
    alignment: Alignment


def _seconds(samples: int, rate: int, limit: float) -> float:
    """``samples`` at ``rate`` in seconds, microsecond-rounded, kept inside ``[0, limit]``."""
    return min(max(round(samples / rate, 6), 0.0), limit)


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
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
            raise ValidationError("max_sessions", max_sessions, "must be an int >= 1")
        if not idle_timeout > 0:
            raise ValidationError("idle_timeout", idle_timeout, "must be > 0 seconds")
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
            await _Session(self, connection, self._pool, release).run()
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


def _clipped(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` cut in the middle to at most ``limit`` characters (its end says what to do)."""
    if len(message) <= limit:
        return message
    tail = limit // 3
    marker = f" ...[{len(message) - limit} characters cut]... "
    return message[: limit - tail - len(marker)] + marker + message[-tail:]


def _bounded(text: str, limit: int = MAX_PIECE) -> list[str]:
    """``text`` in parts of at most ``limit`` characters, cut at a space where there is one."""
    parts = []
    while len(text) > limit:
        cut = text.rfind(" ", 1, limit + 1)
        cut = cut if cut > 0 else limit
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    return [*parts, text] if text else parts


def _speakable(text: str) -> str:
    """Text with control characters (other than whitespace) removed, stripped."""
    return "".join(
        ch for ch in text if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cs")
    ).strip()


class _Session:
    """One WebSocket session: a reader of client frames and a speaker of queued pieces."""

    def __init__(
        self,
        server: LocalServer,
        connection: ServerConnection,
        pool: ThreadPoolExecutor,
        release: Callable[[], None] = lambda: None,
    ):
        self.server = server
        self.connection = connection
        self.pool = pool
        self.release = release  # frees the session's slot; called once finish is sent
        self.loop = asyncio.get_running_loop()
        request = connection.request
        headers = dict(request.headers.raw_items()) if request is not None else {}
        lowered = {name.lower(): value for name, value in headers.items()}
        self.model = resolve_model(lowered.get("model"))
        recorder = server.recorder
        self.record: SessionRecord | None = (
            recorder.open(lowered, self.model) if recorder is not None else None
        )
        self.request = TTSRequest()
        self.voice: Voice | None = None
        self.encoder: StreamEncoder | None = None
        self.chunker: TextChunker | None = None
        self.work: asyncio.Queue[object] = asyncio.Queue()
        self.pending_chars = 0  # text queued for the speaker, not yet synthesized
        self.busy = False  # the speaker is synthesizing or sending
        self.cancelled = False  # tells a synthesis thread to stop after its sentence
        # /v1/tts/live/with-timestamp: audio events also carry their words and timeline place.
        path = urlsplit(request.path).path.rstrip("/") if request is not None else ""
        self.timestamps = path == LIVE_TIMESTAMP_PATH
        self.began = self.loop.time()
        self.chunk_seq = 0  # audio events sent (timestamp sessions)
        self.samples_sent = 0  # audio samples sent, at the requested rate (timestamp sessions)
        self.estimate_noted = False
        # When the audio sent so far runs out at the listener (time.monotonic(); None before
        # the first audio): the deadline of this session's next sentence for a core slot.
        self.audio_until: float | None = None

    async def run(self) -> None:
        """Serve the session to its end: finish sent and socket closed, or client gone."""
        try:
            await self._start()
            await self._converse()
        except _SessionFailed as failure:
            await self._fail(str(failure))
        except ConnectionClosed:
            logger.debug("client went away")
        finally:
            self.cancelled = True
            if self.server.recorder is not None and self.record is not None:
                self.server.recorder.close(self.record, self.connection.close_code)

    async def _converse(self) -> None:
        """Read frames and speak at the same time; the first failure of either ends both."""
        pending = {asyncio.create_task(self._read()), asyncio.create_task(self._speak())}
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                # Read every finished task's outcome before raising the first, so a second
                # failure in the same step is not reported as "never retrieved".
                errors = [task.exception() for task in done if not task.cancelled()]
                for error in errors:
                    if error is not None:
                        raise error
        finally:
            self.cancelled = bool(pending)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # --- reading ----------------------------------------------------------------------

    async def _receive(self) -> ClientEvent:
        """The next client event. An idle client (nothing sent, nothing being spoken) fails."""
        while True:
            try:
                frame = await asyncio.wait_for(self.connection.recv(), self.server.idle_timeout)
            except asyncio.TimeoutError:
                if self.busy or not self.work.empty():
                    continue  # the client is listening, not idle
                raise _SessionFailed(
                    f"no frame from the client for {self.server.idle_timeout:g}s: "
                    "session closed as idle; send text or stop sooner"
                ) from None
            try:
                event = unpack_client_event(frame)
            except (ProtocolError, ValidationError) as exc:
                self._note_received(None, exc)
                raise _SessionFailed(f"bad frame: {exc}") from exc
            self._note_received(event, None)
            return event

    async def _start(self) -> None:
        event = await self._receive()
        if not isinstance(event, StartEvent):
            raise _SessionFailed(f"the first frame must be a 'start' event, got {event.event!r}")
        request = event.request
        if request.format not in SUPPORTED_FORMATS:
            raise _SessionFailed(
                f"format {request.format!r} is not available from the local server: "
                f"use one of {', '.join(SUPPORTED_FORMATS)}"
            )
        self.request = request
        self.voice = await self._pick_voice(request)
        if self.record is not None:
            self.record.voice = self.voice.name
        self.encoder = StreamEncoder(
            request.format, request.effective_sample_rate, mp3_bitrate=request.mp3_bitrate
        )
        min_length = min(request.min_chunk_length, request.chunk_length)
        self.chunker = TextChunker(
            chunk_length=request.chunk_length,
            min_chunk_length=min_length,
            latency=request.latency,
        )

    async def _pick_voice(self, request: TTSRequest) -> Voice:
        library = self.server.voices
        wanted = request.reference_id or None
        if isinstance(wanted, tuple):
            if len(wanted) > 1:
                await self._log(
                    "several reference_id values (multi-speaker) are not supported locally: "
                    f"speaking with {wanted[0]!r} only"
                )
            wanted = wanted[0] if wanted else None
        if request.references:
            await self._log("zero-shot cloning from 'references' is not available locally: ignored")
        if wanted is None:
            return await self.loop.run_in_executor(self.pool, self._load_default)
        find = functools.partial(library.find, alignment=self.timestamps or None)
        voice = await self.loop.run_in_executor(self.pool, find, wanted)
        if voice is None:
            voice = await self.loop.run_in_executor(self.pool, self._load_default)
            await self._log(
                f"reference_id {wanted!r} is not a local voice: speaking with the default "
                f"voice {voice.name!r}. Local voices: {', '.join(library.names())}"
            )
        return voice

    def _load_default(self) -> Voice:
        # Timestamp sessions need per-phoneme timing: that voice loads on first use.
        return self.server.voices.default(alignment=self.timestamps or None)

    async def _read(self) -> None:
        assert self.chunker is not None
        while True:
            event = await self._receive()
            if isinstance(event, StopEvent):
                self._queue(self.chunker.stop())
                self.work.put_nowait(_STOP)
                return
            if isinstance(event, TextEvent):
                waiting = self.pending_chars + len(self.chunker.buffered) + len(event.text)
                if waiting > self.server.max_text:
                    raise _SessionFailed(
                        f"more than {self.server.max_text} characters of text are waiting to "
                        "be spoken: send text at most as fast as it is spoken"
                    )
                self._queue(self.chunker.feed(event.text))
            elif isinstance(event, FlushEvent):
                self._queue(self.chunker.flush())
            else:
                raise _SessionFailed("a second 'start' event in one session; open a new one")

    def _queue(self, pieces: list[str]) -> None:
        for piece in pieces:
            for text in _bounded(_speakable(piece)):
                self.pending_chars += len(text)
                self.work.put_nowait(text)

    # --- speaking ---------------------------------------------------------------------

    async def _speak(self) -> None:
        assert self.encoder is not None
        while True:
            item = await self.work.get()
            if item is _STOP:
                break
            assert isinstance(item, str)
            self.busy = True
            try:
                await self._synthesize(item)
                self.pending_chars -= len(item)
                if self.work.empty():  # nothing queued: let the encoder's tail go out now
                    await self._send_audio(self.encoder.drain())
            finally:
                self.busy = False
        await self._send_audio(self.encoder.finish())
        await self._send(FinishEvent("stop"))
        self.release()
        await _close(self.connection)

    async def _synthesize(self, text: str) -> None:
        """Synthesize one piece in the pool; send each sentence's audio as it comes."""
        voice, encoder, request = self.voice, self.encoder, self.request
        assert voice is not None and encoder is not None
        if self.server.recorder is not None and self.record is not None:
            self.server.recorder.spoke(self.record, text)
        prosody = request.prosody
        speed = prosody.speed if prosody else 1.0
        volume = prosody.volume if prosody else 0.0
        normalize = not (prosody and prosody.normalize_loudness is False)
        ready: asyncio.Queue[object] = asyncio.Queue()
        done = object()

        def hand_over(item: object) -> None:
            try:
                self.loop.call_soon_threadsafe(ready.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening any more
                pass

        def job() -> None:
            try:
                plan = (
                    WordPlan(text, voice.phonemize(text), voice.phonemize_word)
                    if self.timestamps
                    else None
                )
                for index, chunk in enumerate(
                    voice.synthesize(
                        text,
                        speed=speed,
                        volume_db=volume,
                        normalize_loudness=normalize,
                        cancelled=self._is_cancelled,
                        deadline=self._deadline,
                    )
                ):
                    self._heard(chunk.duration)
                    if plan is not None:
                        for part in self._timed_parts(plan, index, chunk):
                            hand_over(part)
                        continue
                    for data in encoder.encode_slices(chunk.pcm, chunk.sample_rate):
                        hand_over(data)
            except Exception as exc:
                hand_over(exc)
            finally:
                hand_over(done)

        try:
            self.loop.run_in_executor(self.pool, job)
        except RuntimeError as exc:  # the pool is shut down
            raise _SessionFailed("the server is shutting down") from exc
        while (item := await ready.get()) is not done:
            if isinstance(item, Exception):
                logger.exception("synthesis failed", exc_info=item)
                raise _SessionFailed(f"synthesis failed: {type(item).__name__}: {item}")
            if isinstance(item, _TimedPart):
                await self._send_timed(item)
                continue
            assert isinstance(item, bytes)
            await self._send_audio(item)

    def _is_cancelled(self) -> bool:
        return self.cancelled

    def _deadline(self) -> float:
        """When this session's next sentence is needed: when its listener runs out of audio,
        or now for a listener with nothing left (so those are served first come, first served)."""
        now = time.monotonic()
        until = self.audio_until
        return until if until is not None and until > now else now

    def _heard(self, seconds: float) -> None:
        """Count ``seconds`` of audio leaving now (pool thread; one per session at a time)."""
        now = time.monotonic()
        start = now if self.audio_until is None else max(self.audio_until, now)
        self.audio_until = start + seconds

    # --- sending ----------------------------------------------------------------------

    def _timed_parts(self, plan: WordPlan, index: int, chunk: SpeechChunk) -> Iterator[_TimedPart]:
        """One sentence's audio cut at word boundaries, each part with its words (pool thread).

        A part holds whole words and at most half a second or ``MAX_AUDIO_PAYLOAD`` bytes of
        audio, unless one word alone is longer: then the part is that word (sliced only
        past ``MAX_TIMED_PAYLOAD``). Word times are relative to the part's first sample.
        """
        encoder = self.encoder
        assert encoder is not None
        samples = len(chunk.pcm) // 2
        rate = chunk.sample_rate
        words = plan.timed(index, chunk.phonemes, chunk.alignment, samples)
        if words is None:
            logger.warning("sentence %d is not the one planned: sent without words", index)
            words = []
        elif chunk.alignment is None and not self.estimate_noted:
            self.estimate_noted = True
            name = self.voice.name if self.voice is not None else "?"
            logger.warning("voice %s has no phoneme alignment: word times are estimates", name)
        per_second = encoder.byte_rate
        soft = int(min(0.5, MAX_AUDIO_PAYLOAD / per_second) * rate)
        hard = int(MAX_TIMED_PAYLOAD / per_second * rate)
        parts = cut_at_words(words, samples, max(1, soft), max(1, hard))
        cuts = [0, *(end for _, end, _ in parts)]
        encoded = encoder.encode_parts(chunk.pcm, rate, cuts)
        for (start, _, held), (data, out_samples) in zip(parts, encoded, strict=True):
            duration = round(out_samples / encoder.sample_rate, 6)
            segments = tuple(
                AlignmentSegment(
                    word.word.text,
                    _seconds(word.start - start, rate, duration),
                    _seconds(word.end - start, rate, duration),
                )
                for word in held
            )
            yield _TimedPart(data, out_samples, plan.content(held), Alignment(segments, duration))

    async def _send_timed(self, part: _TimedPart) -> None:
        assert self.encoder is not None
        event = AudioEvent(
            part.data,
            content=part.content,
            alignment=part.alignment,
            chunk_seq=self.chunk_seq,
            chunk_audio_offset_sec=round(self.samples_sent / self.encoder.sample_rate, 6),
            time=round((self.loop.time() - self.began) * 1000, 1),
        )
        self.chunk_seq += 1
        self.samples_sent += part.samples
        await self._send(event)

    async def _send_audio(self, data: bytes) -> None:
        if self.timestamps and data:  # an encoder's tail: bytes that add no time of their own
            await self._send_timed(_TimedPart(data, 0, "", Alignment((), 0.0)))
            return
        for start in range(0, len(data), MAX_AUDIO_PAYLOAD):
            await self._send(AudioEvent(data[start : start + MAX_AUDIO_PAYLOAD]))

    async def _send(self, event: ServerEvent) -> None:
        # A client that stops reading fills the socket buffers and send() waits forever,
        # holding a session slot (websockets' keepalive ping waits behind it too). Past
        # idle_timeout the connection is dropped; send() then raises ConnectionClosed.
        watchdog = self.loop.call_later(self.server.idle_timeout, self._drop_stuck_client)
        try:
            await self.connection.send(pack(event))
        finally:
            watchdog.cancel()
        if self.server.recorder is not None and self.record is not None:
            self.server.recorder.sent(self.record, event)

    def _drop_stuck_client(self) -> None:
        logger.warning(
            "the client read nothing for %gs while audio waited: connection dropped",
            self.server.idle_timeout,
        )
        self.connection.transport.abort()

    async def _log(self, message: str) -> None:
        message = _clipped(message)
        logger.info("session: %s", message)
        await self._send(LogEvent(message))

    async def _fail(self, message: str) -> None:
        message = _clipped(message)
        logger.warning("session ended with an error: %s", message)
        try:
            await self._send(LogEvent(message))
            await self._send(FinishEvent("error", message))
            self.release()
            await _close(self.connection)
        except ConnectionClosed:
            pass

    def _note_received(self, event: ClientEvent | None, error: object) -> None:
        if self.server.recorder is not None and self.record is not None:
            self.server.recorder.received(self.record, event, error)


class ThreadedServer:
    """A :class:`LocalServer` running on a private event loop in a daemon thread.

    ``with LocalServer().run_in_thread() as server:`` starts it (bounded by ``timeout``)
    and stops it on exit. For synchronous tests and code that has no event loop of its own.
    """

    def __init__(self, server: LocalServer, *, timeout: float = 60.0) -> None:
        self.server = server
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return f"ThreadedServer({self.server!r})"

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def http_url(self) -> str:
        return self.server.http_url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def recorder(self) -> Recorder | None:
        return self.server.recorder

    def start(self) -> ThreadedServer:
        """Start the thread and wait until the server listens. Raises what start raised."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="fish-notebook-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.timeout):
            raise TimeoutError(f"the local server did not start within {self.timeout}s")
        if self._error is not None:
            raise self._error
        return self

    def close(self) -> None:
        """Stop the server and its thread. Safe to call twice."""
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass
        if thread is not None:
            thread.join(self.timeout)

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` on the server's loop and return its result (bounded)."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(_call(function), self._loop)
        return future.result(self.timeout)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.close()


async def _call(function: Callable[[], Any]) -> Any:
    return function()
