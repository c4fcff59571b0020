"""The realtime streaming client: Fish Audio's WebSocket TTS protocol on ``websockets``.

Two faces over one async core, as httpx does it:

- :class:`AsyncRealtimeClient` — ``async with AsyncRealtimeClient() as client:``, then
  ``async for chunk in client.stream_websocket(tokens): ...``.
- :class:`RealtimeClient` — the same calls from plain synchronous code. It runs the async core on
  fish-notebook's background loop thread, never on the caller's loop (see KERNEL.md).

``stream_websocket`` has the Fish SDK's call shape, so a recipe written for ``fishaudio`` runs
with a changed import (``client.tts.stream_websocket`` works too). For code that drives a stream
by hand, :meth:`AsyncRealtimeClient.connect` opens an :class:`AsyncRealtimeStream` with
``send_text()``, ``flush()``, ``stop()`` and typed events.

Where to connect, first match wins: ``base_url`` argument; ``FISH_BASE_URL``; ``FISH_API_KEY``
set -> Fish Audio's cloud; otherwise the embedded local server, started on demand as a child
process on a free loopback port (needs ``fish-notebook[local]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, NamedTuple, TypeVar, overload

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from . import _loop, endpoints
from ._net import RedactingLogger
from ._version import __version__
from .endpoints import Endpoint
from .errors import (
    AuthenticationError,
    ConnectError,
    ConnectTimeout,
    FishNotebookError,
    ProtocolError,
    ReceiveTimeout,
    ServerBusyError,
    SessionStateError,
    ValidationError,
    WebSocketError,
)
from .protocol import (
    DEFAULT_MODEL,
    AudioEvent,
    ErrorEvent,
    FinishEvent,
    FlushEvent,
    Prosody,
    ServerEvent,
    StartEvent,
    StopEvent,
    TextEvent,
    TTSRequest,
    pack,
    unpack_server_event,
)
from .sources import iter_source
from .text import completes_sentence

__all__ = [
    "AsyncRealtimeClient",
    "AsyncRealtimeStream",
    "RealtimeClient",
    "StreamState",
    "TimedWord",
    "Timeout",
    "WordTimeline",
    "build_request",
]

logger = logging.getLogger("fish_notebook.client")

_UNSET: Any = object()
_T = TypeVar("_T")


@dataclass(frozen=True)
class Timeout:
    """Bounds, in seconds, on every wait of a stream. ``None`` disables one bound.

    ::

        Timeout()                     # connect 10 s, receive 30 s, close 5 s
        Timeout(5.0)                  # 5 s on every wait
        Timeout(connect=3.0)          # 3 s to connect, defaults elsewhere

    ``receive`` bounds silence from the server while audio is owed: after a ``flush`` that
    followed new text, and after ``stop``. While the source itself is quiet (an LLM thinking),
    the server owes nothing and no bound applies; keepalive pings still detect a dead peer.
    """

    connect: float | None = 10.0
    receive: float | None = 30.0
    close: float | None = 5.0

    @classmethod
    def coerce(cls, value: Timeout | float | None) -> Timeout:
        if isinstance(value, Timeout):
            return value
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return cls(value, value, value)
        raise ValidationError("timeout", value, "must be a Timeout, a number of seconds or None")


def build_request(
    config: Any = None,
    *,
    reference_id: str | list[str] | None = None,
    references: list[Any] | None = None,
    format: str | None = None,
    latency: str | None = None,
    speed: float | None = None,
    volume: float | None = None,
    prosody: Prosody | Mapping[str, Any] | None = None,
    sample_rate: int | None = None,
    **fields: Any,
) -> TTSRequest:
    """Merge a base config with per-call options, the SDK's way: options given win.

    ``config`` may be our :class:`~fish_notebook.protocol.TTSRequest`, the Fish SDK's
    ``TTSConfig``/``TTSRequest`` (anything with ``model_dump()``), a mapping, or None.
    Raises ValidationError naming the first bad field.
    """
    if config is None:
        base = TTSRequest()
    elif isinstance(config, TTSRequest):
        base = config
    elif hasattr(config, "model_dump"):
        base = TTSRequest.from_wire(config.model_dump())
    elif isinstance(config, Mapping):
        base = TTSRequest.from_wire(dict(config))
    else:
        raise ValidationError(
            "config", type(config).__name__, "must be a TTSRequest, the SDK's TTSConfig, or a dict"
        )
    changes: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    if reference_id is not None:
        changes["reference_id"] = reference_id
    if references is not None:
        changes["references"] = tuple(references)
    if format is not None:
        changes["format"] = format
    if latency is not None:
        changes["latency"] = latency
    if sample_rate is not None:
        changes["sample_rate"] = sample_rate
    if prosody is not None:
        changes["prosody"] = prosody if isinstance(prosody, Prosody) else Prosody.from_wire(prosody)
    if speed is not None or volume is not None:
        current = changes.get("prosody", base.prosody) or Prosody()
        changes["prosody"] = Prosody(
            speed=current.speed if speed is None else speed,
            volume=current.volume if volume is None else volume,
            normalize_loudness=current.normalize_loudness,
        )
    unknown = set(changes) - set(TTSRequest.__dataclass_fields__)
    if unknown:
        name = sorted(unknown)[0]
        raise ValidationError(name, changes[name], "is not a TTS request field")
    return base.replace(**changes) if changes else base


# --- words on one timeline (no I/O) ---------------------------------------------------------


class TimedWord(NamedTuple):
    """A word and when it is heard: seconds from the first sample of the session's audio."""

    text: str
    start: float
    end: float


class WordTimeline:
    """Places the words of ``/with-timestamp`` audio events on one session timeline.

    Call :meth:`add` with every audio event, in order; it returns the words that event
    placed (absolute times) and keeps them all in :attr:`words`. An event's words sit at
    its start on the timeline: the ``offset`` you pass (say, the seconds of audio you had
    before this event), else the event's ``chunk_audio_offset_sec``, else the end of the
    previous event (the sum of the ``audio_duration`` before it).

    Guarantees: words come out in the order received and never go back in time nor
    overlap (a start before the previous word's end is moved to that end; an end is never
    before its start). Events without alignment place no words. Not thread-safe.
    """

    def __init__(self) -> None:
        self.words: list[TimedWord] = []
        self._next_offset = 0.0

    def __repr__(self) -> str:
        return f"<WordTimeline {len(self.words)} words, {self._next_offset:.3f} s>"

    @property
    def duration(self) -> float:
        """Where the next event would start: the end of the last event with alignment."""
        return self._next_offset

    def add(self, event: AudioEvent, offset: float | None = None) -> list[TimedWord]:
        """Place ``event``'s words; return the ones placed (possibly none)."""
        alignment = event.alignment
        if alignment is None:
            return []
        if offset is None:
            offset = event.chunk_audio_offset_sec
        if offset is None:
            offset = self._next_offset
        floor = self.words[-1].end if self.words else 0.0
        placed: list[TimedWord] = []
        for segment in alignment.segments:
            start = max(offset + segment.start, floor)
            end = max(offset + segment.end, start)
            placed.append(TimedWord(segment.text, start, end))
            floor = end
        self.words.extend(placed)
        self._next_offset = max(self._next_offset, offset + alignment.audio_duration)
        return placed


# --- the stream ----------------------------------------------------------------------------


class StreamState(Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    STOPPING = "stopping"  # stop sent, waiting for finish
    CLOSED = "closed"


class AsyncRealtimeStream:
    """One realtime TTS session over one WebSocket.

    Get one from :meth:`AsyncRealtimeClient.connect`. Send with :meth:`send_text`,
    :meth:`flush` and :meth:`stop`; read typed events by iterating (``async for event in
    stream``): :class:`~fish_notebook.protocol.AudioEvent`, ``LogEvent``, ``UnknownEvent`` and
    finally ``FinishEvent`` (reason ``stop``), after which iteration ends and the socket closes.

    A failed stream raises, from the iteration: WebSocketError (finish reason=error, an error
    event, socket closed without finish), ServerBusyError, ReceiveTimeout, ProtocolError.
    ``aclose()`` is safe to call twice and from any path; it closes the socket.
    Sending and receiving may run in different tasks at the same time.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        request: TTSRequest,
        *,
        model: str,
        headers: Mapping[str, str],
        timeout: Timeout,
        log: logging.LoggerAdapter,
        timestamps: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.timestamps = timestamps
        self.request = request
        self.model = model
        self._headers = dict(headers)
        self._timeout = timeout
        self._log = log
        self._ws: ClientConnection | None = None
        self._state = StreamState.UNOPENED
        self._opened = asyncio.Event()
        self._owed_since: float | None = None  # when audio became owed (flush after text, stop)
        self._text_since_flush = False
        self.finish: FinishEvent | None = None

    def __repr__(self) -> str:
        where = self.endpoint.safe_base
        return f"<AsyncRealtimeStream {self._state.value} {where} model={self.model}>"

    @property
    def state(self) -> StreamState:
        return self._state

    async def open(self) -> AsyncRealtimeStream:
        """Connect, handshake and send ``start``. Bounded by ``timeout.connect``."""
        if self._state is not StreamState.UNOPENED:
            raise SessionStateError(f"stream already {self._state.value}; open a new one")
        url = self.endpoint.ws_url(timestamps=self.timestamps)
        try:
            self._ws = await websockets.connect(
                url,
                additional_headers=self._headers,
                user_agent_header=f"fish-notebook/{__version__}",
                open_timeout=self._timeout.connect,
                close_timeout=self._timeout.close,
                ping_interval=20,
                ping_timeout=20,
                max_size=None,
                compression=None,
                proxy=None if self.endpoint.is_loopback else True,
                logger=self._log,
            )
        except InvalidStatus as exc:
            raise _status_error(exc, url) from exc
        except InvalidURI as exc:
            raise ValidationError("base_url", url, "is not a valid WebSocket URL") from exc
        except TimeoutError as exc:
            raise ConnectTimeout(
                f"no WebSocket handshake with {url} within {self._timeout.connect} s: "
                "is the server up and the URL right?"
            ) from exc
        except (OSError, InvalidHandshake) as exc:
            raise ConnectError(
                f"cannot connect to {url} ({type(exc).__name__}: {exc}): "
                f"{self.endpoint.advice()}, or start a server with `fish-notebook serve`"
            ) from exc
        self._state = StreamState.OPEN
        self._opened.set()
        await self._send(StartEvent(self.request))
        return self

    async def send_text(self, text: str) -> None:
        """Append text to the server's buffer. Empty text is not sent."""
        if not isinstance(text, str):
            raise TypeError(f"send_text() takes a str, got {type(text).__name__}")
        if text:
            await self._send(TextEvent(text))
            self._text_since_flush = True

    async def flush(self) -> None:
        """Ask the server to speak everything buffered now."""
        await self._send(FlushEvent())
        if self._text_since_flush and self._owed_since is None:
            self._owed_since = time.monotonic()
        self._text_since_flush = False

    async def stop(self) -> None:
        """No more text; the server speaks the rest and sends ``finish``. Safe to call twice."""
        if self._state in (StreamState.STOPPING, StreamState.CLOSED):
            return
        await self._send(StopEvent())
        self._state = StreamState.STOPPING
        self._owed_since = time.monotonic()

    async def send(self, event: TextEvent | FlushEvent) -> None:
        """Send one source event (text or flush)."""
        if isinstance(event, TextEvent):
            await self.send_text(event.text)
        else:
            await self.flush()

    async def _send(self, event: StartEvent | TextEvent | FlushEvent | StopEvent) -> None:
        if self._state is StreamState.UNOPENED:
            await self._opened.wait()
        if self._ws is None or self._state is StreamState.CLOSED:
            raise SessionStateError("the stream is closed; open a new one to send more")
        if self._state is StreamState.STOPPING:
            raise SessionStateError("stop() was sent; no more text can follow on this stream")
        try:
            await self._ws.send(pack(event))
        except ConnectionClosed as exc:
            raise _closed_error(exc) from exc

    async def receive(self) -> ServerEvent | None:
        """The next event, or None once the stream has finished cleanly."""
        if self._state is StreamState.CLOSED or self._ws is None:
            return None
        frame = await self._recv_frame()
        try:
            event = unpack_server_event(frame)
        except ProtocolError:
            await self.aclose()
            raise
        if isinstance(event, AudioEvent):
            # After stop every frame restarts the clock; otherwise the owed audio has come.
            self._owed_since = time.monotonic() if self._state is StreamState.STOPPING else None
        elif isinstance(event, FinishEvent):
            self.finish = event
            await self.aclose()
            if event.reason != "stop":
                detail = f": {event.message}" if event.message else ""
                raise WebSocketError(
                    f"the server ended the stream with an error{detail}",
                    reason=event.message or event.reason,
                )
        elif isinstance(event, ErrorEvent):
            await self.aclose()
            if event.max_concurrency is not None or "concurren" in event.error.lower():
                raise ServerBusyError(
                    f"{event.error} (max {event.max_concurrency} sessions): "
                    "wait for another session to end, then retry",
                    max_concurrency=event.max_concurrency,
                    reason=event.error,
                )
            raise WebSocketError(f"the server reported an error: {event.error}", reason=event.error)
        return event

    async def _recv_frame(self) -> bytes | str:
        """One frame, bounded by ``timeout.receive`` while audio is owed.

        Sleeps in one-second slices while nothing is owed, so a flush or stop sent by another
        task starts the clock even if this wait began before it (cancelling recv is safe).
        """
        assert self._ws is not None
        bound = self._timeout.receive
        while True:
            owed_since = self._owed_since
            if owed_since is not None and bound is not None:
                wait = owed_since + bound - time.monotonic()
                if wait <= 0:
                    await self.aclose()
                    waiting = (
                        "finish after stop"
                        if self._state is StreamState.STOPPING
                        else "audio after flush"
                    )
                    raise ReceiveTimeout(
                        f"the server sent nothing for {bound} s while {waiting} was owed; "
                        "it may be overloaded or stuck: retry with a new stream"
                    )
            else:
                wait = 1.0
            try:
                return await _recv_within(self._ws, wait)
            except TimeoutError:
                continue
            except ConnectionClosed as exc:
                await self.aclose()
                raise _closed_error(exc) from exc

    def __aiter__(self) -> AsyncIterator[ServerEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[ServerEvent]:
        while True:
            event = await self.receive()
            if event is None:
                return
            yield event

    async def aclose(self) -> None:
        """Close the socket (bounded by ``timeout.close``). Safe to call twice."""
        if self._state is StreamState.CLOSED:
            return
        self._state = StreamState.CLOSED
        self._opened.set()  # release senders still waiting for the open
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), self._timeout.close)

    async def __aenter__(self) -> AsyncRealtimeStream:
        if self._state is StreamState.UNOPENED:
            await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __await__(self) -> Any:
        return self.open().__await__()


def _status_error(exc: InvalidStatus, url: str) -> FishNotebookError:
    status = exc.response.status_code
    body = exc.response.body.decode("utf-8", "replace").strip()[:200] if exc.response.body else ""
    said = f": {body}" if body else ""
    if status in (401, 403):
        return AuthenticationError(
            f"the server at {url} refused the credentials (HTTP {status}){said}. "
            "Check FISH_API_KEY (or the api_key argument / the local server's --token).",
            status=status,
        )
    if status == 429:
        return ServerBusyError(
            f"the server at {url} is rate limiting (HTTP 429){said}: retry later"
        )
    return ConnectError(
        f"the server at {url} refused the WebSocket handshake (HTTP {status}){said}"
    )


def _closed_error(exc: ConnectionClosed) -> WebSocketError:
    rcvd = exc.rcvd
    code = rcvd.code if rcvd else None
    reason = rcvd.reason if rcvd and rcvd.reason else None
    how = f"code {code}" + (f", {reason}" if reason else "") if rcvd else "no close frame"
    if code == 1013:
        return ServerBusyError(f"the server is busy ({how}): retry later", reason=reason)
    return WebSocketError(
        f"the connection closed before the stream finished ({how}); "
        "the audio received so far is kept: retry with a new stream",
        reason=reason,
        close_code=code,
    )


# --- clients --------------------------------------------------------------------------------


class _ClientState(Enum):
    OPEN = "open"
    CLOSED = "closed"


class AsyncRealtimeClient:
    """Async realtime TTS client. Holds configuration only; each stream is its own socket.

    Args:
        api_key: Fish Audio API key; defaults to ``FISH_API_KEY``. Sent as a bearer token,
            never shown in a repr, log line or message.
        base_url: ``http(s)://`` or ``ws(s)://`` server base; see the module docstring for
            what happens when it is not given.
        model: the ``model`` header (default ``s2-pro``); unknown names fall back server-side.
        timeout: a :class:`Timeout` or seconds for every bound.
        backend: ``"auto"`` (the order in :mod:`fish_notebook.endpoints`), ``"local"`` (the
            embedded server whatever the environment says; no key is ever sent to it) or
            ``"cloud"``; an explicit ``base_url`` wins over it.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        model: str = DEFAULT_MODEL,
        timeout: Timeout | float | None = _UNSET,
        backend: str = "auto",
    ) -> None:
        if api_key is not None and not isinstance(api_key, str):
            raise ValidationError("api_key", type(api_key).__name__, "must be a str or None")
        if not isinstance(model, str) or not model:
            raise ValidationError("model", model, "must be a non-empty str")
        if api_key is None:
            api_key = os.environ.get("FISH_API_KEY") or None
        self._api_key = None if backend == "local" and not base_url else api_key
        self._base_url = base_url
        self._backend = backend
        endpoints.plan(base_url, self._api_key, backend)  # validate now, fail early
        self.model = model
        self.timeout = Timeout() if timeout is _UNSET else Timeout.coerce(timeout)
        self._state = _ClientState.OPEN
        self._log = RedactingLogger(logger, self._api_key)

    def __repr__(self) -> str:
        where = endpoints.describe(self._base_url, self._api_key, self._backend)
        key = "set" if self._api_key else "none"
        return f"<AsyncRealtimeClient {where} model={self.model} api_key={key}>"

    @property
    def tts(self) -> AsyncRealtimeClient:
        """So ``client.tts.stream_websocket(...)`` reads as with the Fish SDK."""
        return self

    async def resolve(self) -> Endpoint:
        """Where streams connect, starting the embedded server if that is the answer."""
        return await endpoints.aresolve(self._base_url, self._api_key, self._backend)

    def _headers(self, model: str, endpoint: Endpoint | None = None) -> dict[str, str]:
        headers = {"model": model}
        # The embedded server gets its own token, never the user's Fish key.
        local = endpoint is not None and endpoint.origin == "local"
        key = endpoint.token if local and endpoint is not None else self._api_key
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _check_open(self) -> None:
        if self._state is _ClientState.CLOSED:
            raise SessionStateError("this client is closed; create a new one")

    def connect(
        self,
        config: Any = None,
        *,
        model: str | None = None,
        timestamps: bool = False,
        **options: Any,
    ) -> _PendingStream:
        """Open a stream: ``async with client.connect(format="pcm") as stream:``.

        ``options`` are request fields or the shortcuts of :func:`build_request`. Validation
        happens here, before any I/O. Also awaitable: ``stream = await client.connect()``.
        """
        self._check_open()
        request = build_request(config, **options)
        return _PendingStream(self, request, model or self.model, timestamps)

    async def _open_stream(
        self, request: TTSRequest, model: str, timestamps: bool
    ) -> AsyncRealtimeStream:
        stream = self._new_stream(await self.resolve(), request, model, timestamps)
        await stream.open()
        return stream

    def _new_stream(
        self, endpoint: Endpoint, request: TTSRequest, model: str, timestamps: bool
    ) -> AsyncRealtimeStream:
        return AsyncRealtimeStream(
            endpoint,
            request,
            model=model,
            headers=self._headers(model, endpoint),
            timeout=self.timeout,
            log=self._log,
            timestamps=timestamps,
        )

    @overload
    def stream_websocket(
        self, text_stream: Any, *, timestamps: Literal[False] = False, **options: Any
    ) -> AsyncIterator[bytes]: ...

    @overload
    def stream_websocket(
        self, text_stream: Any, *, timestamps: Literal[True], **options: Any
    ) -> AsyncIterator[AudioEvent]: ...

    def stream_websocket(
        self,
        text_stream: Any,
        *,
        reference_id: str | list[str] | None = None,
        references: list[Any] | None = None,
        format: str | None = None,
        latency: str | None = None,
        speed: float | None = None,
        volume: float | None = None,
        config: Any = None,
        model: str | None = None,
        max_workers: int | None = None,
        ws_options: Any = None,
        timestamps: bool = False,
        early_flush: bool = True,
        **options: Any,
    ) -> AsyncIterator[bytes] | AsyncIterator[AudioEvent]:
        """Stream text in, get audio ``bytes`` out while the text is still arriving.

        ``text_stream`` is anything :func:`fish_notebook.sources.iter_source` takes: a str,
        a (sync or async) iterable of str, ``TextEvent``/``FlushEvent`` (ours or the SDK's),
        or LLM stream chunks. The connection and ``start`` open at once, while the source is
        still producing its first token. Concatenated chunks are the whole file in ``format``
        (mp3 by default, as in the cloud).

        If the source raises, ``stop`` is sent, the audio owed for text already sent is still
        yielded, and then the source's exception propagates. ``max_workers`` and
        ``ws_options`` exist for drop-in compatibility with the Fish SDK and are ignored.

        ``early_flush`` (on by default) sends one ``flush`` as soon as the first sentence
        is complete, unless the source flushed first: the first audio then leaves while the
        rest is still being written, instead of when the server's buffer fills. Later text is
        buffered by the server as usual.

        ``timestamps=True`` uses ``/v1/tts/live/with-timestamp`` and yields whole
        :class:`~fish_notebook.protocol.AudioEvent` objects instead of bytes: ``.audio``,
        plus ``.content`` and ``.alignment`` (each word's seconds from that event's start).
        Feed them to a :class:`WordTimeline` to place the words on one timeline.
        """
        self._check_open()
        request = build_request(
            config,
            reference_id=reference_id,
            references=references,
            format=format,
            latency=latency,
            speed=speed,
            volume=volume,
            **options,
        )
        model = model or self.model
        if timestamps:
            return self._audio_events(text_stream, request, model, True, early_flush)
        return self._audio(text_stream, request, model, early_flush)

    async def _audio(
        self, source: Any, request: TTSRequest, model: str, early_flush: bool
    ) -> AsyncIterator[bytes]:
        async for event in self._audio_events(source, request, model, False, early_flush):
            yield event.audio

    async def _audio_events(
        self, source: Any, request: TTSRequest, model: str, timestamps: bool, early_flush: bool
    ) -> AsyncIterator[AudioEvent]:
        feed = self.stream_events(
            source, request=request, model=model, timestamps=timestamps, early_flush=early_flush
        )
        async with feed as events:
            async for event in events:
                if isinstance(event, AudioEvent):
                    yield event

    def stream_events(
        self,
        source: Any,
        *,
        request: TTSRequest | None = None,
        model: str | None = None,
        timestamps: bool = False,
        on_sent: Callable[[TextEvent | FlushEvent], None] | None = None,
        early_flush: bool = True,
    ) -> _EventStream:
        """Feed ``source`` and read typed server events; the core of ``stream_websocket``.

        ``on_sent`` is called after each text or flush event went out (for transcripts and
        metrics). Use as ``async with client.stream_events(src) as events: async for e in
        events``; leaving the block early closes the socket and stops reading the source.
        """
        self._check_open()
        return _EventStream(
            self,
            source,
            request or TTSRequest(),
            model or self.model,
            timestamps,
            on_sent,
            early_flush,
        )

    async def aclose(self) -> None:
        """Mark the client closed. Streams already open finish on their own."""
        self._state = _ClientState.CLOSED

    async def __aenter__(self) -> AsyncRealtimeClient:
        self._check_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _PendingStream:
    """What ``connect()`` returns: await it or use it with ``async with``."""

    def __init__(
        self, client: AsyncRealtimeClient, request: TTSRequest, model: str, timestamps: bool
    ):
        self._client, self._request, self._model, self._timestamps = (
            client,
            request,
            model,
            timestamps,
        )
        self._stream: AsyncRealtimeStream | None = None

    def __await__(self) -> Any:
        return self._client._open_stream(self._request, self._model, self._timestamps).__await__()

    async def __aenter__(self) -> AsyncRealtimeStream:
        self._stream = await self._client._open_stream(self._request, self._model, self._timestamps)
        return self._stream

    async def __aexit__(self, *exc_info: object) -> None:
        if self._stream is not None:
            await self._stream.aclose()


class _EventStream:
    """A stream fed from a source by a sender task, read by the caller.

    The sender starts before the connection is open, so the source's first token and the
    handshake overlap. Exactly one of these ends a run: ``finish`` from the server; an error
    (raised from iteration); the caller leaving early (socket closed, sender cancelled).
    """

    def __init__(
        self,
        client: AsyncRealtimeClient,
        source: Any,
        request: TTSRequest,
        model: str,
        timestamps: bool,
        on_sent: Callable[[TextEvent | FlushEvent], None] | None,
        early_flush: bool = True,
    ) -> None:
        self._client = client
        self._early_flush = early_flush
        self._source = source
        self._request = request
        self._model = model
        self._timestamps = timestamps
        self._on_sent = on_sent
        self._sender: asyncio.Task[None] | None = None
        self._source_error: BaseException | None = None
        self.stream: AsyncRealtimeStream | None = None

    async def __aenter__(self) -> AsyncIterator[ServerEvent]:
        endpoint = await self._client.resolve()
        self.stream = self._client._new_stream(
            endpoint, self._request, self._model, self._timestamps
        )
        self._sender = asyncio.create_task(self._send_all(self.stream), name="fish-notebook-sender")
        try:
            await self.stream.open()
        except BaseException:
            await self._cancel_sender()
            raise
        return self._events(self.stream)

    async def _send_all(self, stream: AsyncRealtimeStream) -> None:
        events = iter_source(self._source)
        early_flush = self._early_flush
        recent = ""  # the tail of the text sent, to see where the first sentence ends
        try:
            async for event in events:
                if early_flush:
                    if isinstance(event, FlushEvent):
                        early_flush = False
                    elif completes_sentence(recent, event.text):
                        # Speak the first sentence now rather than when the server's
                        # buffer fills: first audio leaves while the LLM writes on.
                        await self._send(stream, FlushEvent())
                        early_flush = False
                    else:
                        recent = (recent + event.text)[-64:]
                await self._send(stream, event)
        except (SessionStateError, WebSocketError):
            return  # the receiver reports why the stream ended
        except BaseException as exc:  # the user's source failed: keep what it already produced
            if not isinstance(exc, asyncio.CancelledError):
                self._source_error = exc
            else:
                raise
        finally:
            await events.aclose()
        with contextlib.suppress(SessionStateError, WebSocketError):
            await stream.stop()

    async def _send(self, stream: AsyncRealtimeStream, event: TextEvent | FlushEvent) -> None:
        await stream.send(event)
        if self._on_sent is not None:
            self._on_sent(event)

    async def _events(self, stream: AsyncRealtimeStream) -> AsyncIterator[ServerEvent]:
        async for event in stream:
            yield event
        if self._sender is not None:
            await self._sender
        if self._source_error is not None:
            raise self._source_error

    async def _cancel_sender(self) -> None:
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._sender, 5.0)

    async def __aexit__(self, *exc_info: object) -> None:
        await self._cancel_sender()
        if self.stream is not None:
            await self.stream.aclose()


class RealtimeClient:
    """The synchronous face: same arguments and calls as :class:`AsyncRealtimeClient`.

    Work runs on fish-notebook's background loop thread, so it is safe inside a running
    event loop (a notebook cell) and from plain scripts. Ctrl-C while iterating stops the
    stream and closes the socket.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        model: str = DEFAULT_MODEL,
        timeout: Timeout | float | None = _UNSET,
    ) -> None:
        self._async = AsyncRealtimeClient(api_key, base_url, model=model, timeout=timeout)

    def __repr__(self) -> str:
        return repr(self._async).replace("AsyncRealtimeClient", "RealtimeClient")

    @property
    def tts(self) -> RealtimeClient:
        return self

    @property
    def async_client(self) -> AsyncRealtimeClient:
        return self._async

    @overload
    def stream_websocket(
        self, text_stream: Any, *, timestamps: Literal[False] = False, **options: Any
    ) -> Iterator[bytes]: ...

    @overload
    def stream_websocket(
        self, text_stream: Any, *, timestamps: Literal[True], **options: Any
    ) -> Iterator[AudioEvent]: ...

    def stream_websocket(
        self, text_stream: Any, *, timestamps: bool = False, **options: Any
    ) -> Iterator[bytes] | Iterator[AudioEvent]:
        """Blocking twin of :meth:`AsyncRealtimeClient.stream_websocket`: an iterator of bytes
        (of :class:`~fish_notebook.protocol.AudioEvent` with ``timestamps=True``)."""
        if timestamps:
            events = self._async.stream_websocket(text_stream, timestamps=True, **options)
            return _iterate_in_background(events)
        return _iterate_in_background(self._async.stream_websocket(text_stream, **options))

    def close(self) -> None:
        _loop.run_sync(self._async.aclose(), 5.0)

    def __enter__(self) -> RealtimeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Raised:
    """Carries an exception from the background loop to the iterating thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()
_WINDOW = 64  # items the loop may run ahead of the consumer
_CREDIT_BATCH = 16  # items consumed before the loop is woken to produce more


def _iterate_in_background(agen: AsyncIterator[_T]) -> Iterator[_T]:
    """Drive an async iterator on the background loop and yield its items here.

    One task on the loop pushes items into a thread-safe queue, at most ``_WINDOW`` ahead;
    the consumer gives credit back in batches. That costs one thread wake-up per batch
    rather than a task and a round trip per item. Closing this generator (or Ctrl-C while
    it waits) cancels the task, which closes ``agen``.
    """
    loop = _loop.background_loop()
    items: queue.SimpleQueue[Any] = queue.SimpleQueue()
    credit: list[asyncio.Semaphore] = []
    finished = threading.Event()  # set once agen is closed, whatever the ending

    async def pump() -> None:
        window = asyncio.Semaphore(_WINDOW)
        credit.append(window)
        try:
            async for item in agen:
                await window.acquire()
                items.put(item)
        except Exception as exc:
            items.put(_Raised(exc))
        else:
            items.put(_DONE)
        finally:
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            finished.set()

    def give_credit() -> None:
        for _ in range(_CREDIT_BATCH):
            credit[0].release()

    future = asyncio.run_coroutine_threadsafe(pump(), loop)
    future.add_done_callback(lambda _: finished.set())  # also when cancelled before it ran
    consumed = 0
    try:
        while True:
            try:
                item = items.get(timeout=0.5)  # a bounded wait keeps Ctrl-C responsive
            except queue.Empty:
                if future.done() and items.empty():
                    future.result()  # surfaces a cancellation or a bug in pump
                    return
                continue
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.error
            consumed += 1
            if consumed % _CREDIT_BATCH == 0:
                loop.call_soon_threadsafe(give_credit)
            yield item
    finally:
        if not finished.is_set():
            future.cancel()  # cancels the task; its finally closes agen
            finished.wait(10.0)


async def _recv_within(ws: ClientConnection, seconds: float) -> bytes | str:
    """``ws.recv()`` bounded by ``seconds``; TimeoutError when they run out.

    ``asyncio.timeout`` where it exists: it creates no task per frame, and unlike 3.11's
    ``wait_for`` it never swallows a cancellation that lands as ``recv()`` completes.
    """
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await ws.recv()
    return await asyncio.wait_for(ws.recv(), seconds)  # pragma: no cover - Python 3.10
