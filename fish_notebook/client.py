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

The stream's logic (states, what the server's events mean, the owed-audio clock, the early
flush) lives in :mod:`fish_notebook.realtime`, with no I/O; the classes here move its events
over the socket and turn foreign exceptions into ours in one place
(``AsyncRealtimeStream._foreign_errors``). Where to connect is :mod:`fish_notebook.endpoints`'
answer: ``base_url``; ``FISH_BASE_URL``; ``FISH_API_KEY`` set -> Fish Audio's cloud; otherwise
the embedded local server, started on demand (needs ``fish-notebook[local]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from enum import Enum
from functools import cached_property
from typing import Any, Generic, Literal, TypeVar, overload

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
    ServerBusyError,
    SessionStateError,
    ValidationError,
    WebSocketError,
)
from .options import SocketOptions, StreamSpec, Timeout, build_request
from .protocol import (
    DEFAULT_MODEL,
    AudioEvent,
    ClientEvent,
    FinishEvent,
    FlushEvent,
    ServerEvent,
    TextEvent,
    TTSRequest,
    pack,
)
from .realtime import EarlyFlush, RealtimeProtocol, StreamState
from .sources import SkippedText, SourceEvent, SourceIterator, iter_source

# Re-exported for modules that import them from here still; their home is timeline.py.
from .timeline import TimedWord, WordTimeline

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


# --- the stream ----------------------------------------------------------------------------


class AsyncRealtimeStream:
    """One realtime TTS session over one WebSocket.

    Get one from :meth:`AsyncRealtimeClient.connect`. Send with :meth:`send_text`,
    :meth:`flush` and :meth:`stop`; read typed events by iterating (``async for event in
    stream``): :class:`~fish_notebook.protocol.AudioEvent`, ``LogEvent``, ``UnknownEvent`` and
    finally ``FinishEvent`` (reason ``stop``), after which iteration ends and the socket closes.

    A failed stream raises, from the iteration: WebSocketError (finish reason=error, an error
    event, socket closed without finish), ServerBusyError, ReceiveTimeout, ProtocolError.
    ``aclose()`` is safe to call twice and from any path; it closes the socket.
    Sending and receiving may run in different tasks at the same time; sends made before
    the stream is open wait for it (``start`` always goes first).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        spec: StreamSpec,
        *,
        headers: Mapping[str, str],
        timeout: Timeout,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.endpoint = endpoint
        self.request = spec.request
        self.model = spec.model
        self.timestamps = spec.timestamps
        self.url = endpoint.ws_url(timestamps=spec.timestamps)
        self._socket = spec.socket
        self._headers = dict(headers)
        self._timeout = timeout
        self._log = log
        self._protocol = RealtimeProtocol(spec.request)
        self._ws: ClientConnection | None = None
        self._opened = asyncio.Event()  # set once start is sent, or on close

    def __repr__(self) -> str:
        where = self.endpoint.safe_base
        return f"<AsyncRealtimeStream {self.state.value} {where} model={self.model}>"

    @property
    def state(self) -> StreamState:
        return self._protocol.state

    @property
    def finish(self) -> FinishEvent | None:
        """The ``finish`` event of a clean end (``FinishEvent``), or None before it."""
        return self._protocol.finish

    async def open(self) -> AsyncRealtimeStream:
        """Connect, handshake and send ``start``. Bounded by ``timeout.connect``."""
        self._protocol.connecting()
        s = self._socket
        with self._foreign_errors():
            self._ws = await websockets.connect(
                self.url,
                additional_headers=self._headers,
                user_agent_header=f"fish-notebook/{__version__}",
                open_timeout=self._timeout.connect,
                close_timeout=self._timeout.close,
                ping_interval=s.ping_interval,
                ping_timeout=s.ping_timeout,
                max_size=s.max_size,
                max_queue=s.max_queue,
                compression=None,
                proxy=None if self.endpoint.is_loopback else True,
                logger=self._log,
            )
        try:
            await self._transmit(self._protocol.opened())
        except BaseException:
            await self.aclose()  # closed while connecting, or start could not go out
            raise
        self._opened.set()
        return self

    async def send_text(self, text: str) -> None:
        """Append text to the server's buffer. Empty text is not sent."""
        await self._wait_open()
        await self._transmit(self._protocol.send_text(text))

    async def flush(self) -> None:
        """Ask the server to speak everything buffered now."""
        await self._wait_open()
        await self._transmit(self._protocol.send_flush(time.monotonic()))

    async def stop(self) -> None:
        """No more text; the server speaks the rest and sends ``finish``. Safe to call twice."""
        await self._wait_open()
        await self._transmit(self._protocol.send_stop(time.monotonic()))

    async def send(self, event: TextEvent | FlushEvent) -> None:
        """Send one source event (text or flush)."""
        if isinstance(event, TextEvent):
            await self.send_text(event.text)
        else:
            await self.flush()

    async def _wait_open(self) -> None:
        if self._protocol.state is StreamState.UNOPENED:
            await self._opened.wait()

    async def _transmit(self, event: ClientEvent | None) -> None:
        if event is None:
            return
        if self._ws is None:  # the protocol allowed it, so only a bug gets here
            raise SessionStateError("the stream has no socket; open it first")
        with self._foreign_errors():
            await self._ws.send(pack(event))

    async def receive(self) -> ServerEvent | None:
        """The next event, or None once the stream has finished cleanly or was closed."""
        if self._ws is None or self._protocol.state is StreamState.CLOSED:
            return None
        try:
            with self._foreign_errors():
                frame = await self._recv_frame(self._ws)
            event = self._protocol.receive_frame(frame, time.monotonic())
        except FishNotebookError:
            await self.aclose()
            raise
        if self._protocol.state is StreamState.CLOSED:
            await self.aclose()  # finish: the stream is over
        return event

    async def _recv_frame(self, ws: ClientConnection) -> bytes | str:
        """One frame, bounded by ``timeout.receive`` while audio is owed.

        Waits in one-second slices while nothing is owed, so a flush or stop sent by another
        task starts the clock even if this wait began before it (cancelling recv is safe).
        """
        while True:
            left = self._protocol.time_left(time.monotonic(), self._timeout.receive)
            try:
                return await _recv_within(ws, 1.0 if left is None else left)
            except TimeoutError:
                continue

    @contextlib.contextmanager
    def _foreign_errors(self) -> Iterator[None]:
        """The one place where websockets' and the OS's exceptions become ours: most specific
        first, the cause kept. Every socket call of this class runs inside it."""
        try:
            yield
        except FishNotebookError:
            raise  # ours already (ConnectError is also an OSError)
        except InvalidStatus as exc:
            raise _status_error(exc, self.url) from exc
        except InvalidURI as exc:
            raise ValidationError("base_url", self.url, "is not a valid WebSocket URL") from exc
        except ConnectionClosed as exc:
            raise _closed_error(exc) from exc
        except (TimeoutError, asyncio.TimeoutError) as exc:  # only the handshake waits on theirs
            raise ConnectTimeout(
                f"no WebSocket handshake with {self.url} within {self._timeout.connect} s: "
                "is the server up and the URL right?"
            ) from exc
        except (InvalidHandshake, OSError) as exc:
            raise ConnectError(
                f"cannot connect to {self.url} ({type(exc).__name__}: {exc}): "
                f"{self.endpoint.advice()}, or start a server with `fish-notebook serve`"
            ) from exc

    def __aiter__(self) -> AsyncIterator[ServerEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[ServerEvent]:
        while (event := await self.receive()) is not None:
            yield event

    async def aclose(self) -> None:
        """Close the socket (bounded by ``timeout.close``). Safe to call twice."""
        self._protocol.close()
        self._opened.set()  # release senders still waiting for the open
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), self._timeout.close)

    async def __aenter__(self) -> AsyncRealtimeStream:
        if self._protocol.state is StreamState.UNOPENED:
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
    rcvd, sent = exc.rcvd, exc.sent
    code = rcvd.code if rcvd else None
    reason = rcvd.reason if rcvd and rcvd.reason else None
    how = f"code {code}" + (f", {reason}" if reason else "") if rcvd else "no close frame"
    if sent is not None and sent.reason and rcvd is None:
        how += f"; closed on this side: code {sent.code}, {sent.reason}"  # e.g. keepalive
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


_Audio = TypeVar("_Audio")  # what a face's stream_websocket returns: an (async) iterator...
_Events = TypeVar("_Events")  # ... of bytes, or of AudioEvents with timestamps=True
_Self = TypeVar("_Self", bound="_Client[Any, Any]")


class _Client(Generic[_Audio, _Events]):
    """What both faces share, with no I/O (httpx's ``BaseClient``): configuration, a call's
    options validated into a :class:`~fish_notebook.options.StreamSpec`, and the streams
    built from it. A face says only how its caller iterates (:meth:`_iterate`).
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
        return f"<{type(self).__name__} {where} model={self.model} api_key={key}>"

    @property
    def tts(self: _Self) -> _Self:
        """So ``client.tts.stream_websocket(...)`` reads as with the Fish SDK."""
        return self

    async def resolve(self) -> Endpoint:
        """Where streams connect, starting the embedded server if that is the answer."""
        return await endpoints.aresolve(self._base_url, self._api_key, self._backend)

    @overload
    def stream_websocket(
        self, text_stream: Any, *, timestamps: Literal[False] = False, **options: Any
    ) -> _Audio: ...

    @overload
    def stream_websocket(
        self, text_stream: Any, *, timestamps: Literal[True], **options: Any
    ) -> _Events: ...

    def stream_websocket(
        self,
        text_stream: Any,
        *,
        config: Any = None,
        model: str | None = None,
        max_workers: int | None = None,
        ws_options: Any = None,
        timestamps: bool = False,
        early_flush: bool = True,
        speakable: bool | None = False,
        **options: Any,
    ) -> Any:
        """Stream text in, get audio ``bytes`` out while the text is still arriving.

        ``text_stream`` is anything :func:`fish_notebook.sources.iter_source` takes: a str,
        a (sync or async) iterable of str, ``TextEvent``/``FlushEvent`` (ours or the SDK's),
        or LLM stream chunks. The connection and ``start`` open at once, while the source is
        still producing its first token. Concatenated chunks are the whole file in ``format``
        (mp3 by default, as in the cloud). ``options`` are request fields and the shortcuts
        of :func:`build_request` (``reference_id``, ``format``, ``latency``, ``speed``, ...),
        validated here, before any I/O.

        If the source raises, ``stop`` is sent, the audio owed for text already sent is still
        yielded, and then the source's exception propagates. ``ws_options`` is the Fish SDK's
        ``WebSocketOptions`` (or a dict of its fields): keepalive ping interval and timeout,
        largest message, receive queue. ``max_workers`` exists for drop-in compatibility with
        the Fish SDK and is ignored.

        ``early_flush`` (on by default) sends one ``flush`` right after the first sentence,
        unless the source flushed first: the first audio then leaves while the rest is still
        being written, instead of when the server's buffer fills. It finds the sentence's end
        whatever the token boundaries, and a short pause of the source confirms an end that
        nothing follows yet (:class:`fish_notebook.realtime.EarlyFlush`). Later text is
        buffered by the server as usual.

        ``speakable`` passes the text through the speakable filter (markdown read as words,
        code blocks as a note; see :func:`fish_notebook.sources.iter_source`): off by
        default here, as in the Fish SDK; ``None`` turns it on for LLM chunk objects.

        ``timestamps=True`` uses ``/v1/tts/live/with-timestamp`` and yields whole
        :class:`~fish_notebook.protocol.AudioEvent` objects instead of bytes: ``.audio``,
        plus ``.content`` and ``.alignment`` (each word's seconds from that event's start).
        Feed them to a :class:`~fish_notebook.timeline.WordTimeline` to place the words on
        one timeline.
        """
        spec = self._spec(config, model, timestamps, ws_options, options)
        feed = _EventStream(self, spec, text_stream, early_flush=early_flush, speakable=speakable)
        return self._iterate(_audio_of(feed, timestamps))

    def _iterate(self, chunks: AsyncIterator[Any]) -> Any:
        """What this face's ``stream_websocket`` returns for ``chunks``."""
        raise NotImplementedError

    def _spec(
        self,
        config: Any,
        model: str | None,
        timestamps: bool,
        ws_options: Any,
        options: Mapping[str, Any],
    ) -> StreamSpec:
        self._check_open()
        return StreamSpec(
            build_request(config, **options),
            model or self.model,
            timestamps,
            SocketOptions.from_ws_options(ws_options),
        )

    def _new_stream(self, endpoint: Endpoint, spec: StreamSpec) -> AsyncRealtimeStream:
        headers = self._headers(spec.model, endpoint)
        return AsyncRealtimeStream(
            endpoint, spec, headers=headers, timeout=self.timeout, log=self._log
        )

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


class AsyncRealtimeClient(_Client[AsyncIterator[bytes], AsyncIterator[AudioEvent]]):
    """Async realtime TTS client. Holds configuration only; each stream is its own socket.

    Args:
        api_key: Fish Audio API key; defaults to ``FISH_API_KEY``. Sent as a bearer token,
            never shown in a repr, log line or message.
        base_url: ``http(s)://`` or ``ws(s)://`` server base; see the module docstring for
            what happens when it is not given.
        model: the ``model`` header (default ``s2-pro``); unknown names fall back server-side.
        timeout: a :class:`~fish_notebook.options.Timeout` or seconds for every bound.
        backend: ``"auto"`` (the order in :mod:`fish_notebook.endpoints`), ``"local"`` (the
            embedded server whatever the environment says; no key is ever sent to it) or
            ``"cloud"``; an explicit ``base_url`` wins over it.
    """

    def _iterate(self, chunks: AsyncIterator[Any]) -> Any:
        return chunks

    def connect(
        self,
        config: Any = None,
        *,
        model: str | None = None,
        timestamps: bool = False,
        ws_options: Any = None,
        **options: Any,
    ) -> _PendingStream:
        """Open a stream: ``async with client.connect(format="pcm") as stream:``.

        ``options`` are request fields or the shortcuts of :func:`build_request`. Validation
        happens here, before any I/O. Also awaitable: ``stream = await client.connect()``.
        """
        return _PendingStream(self, self._spec(config, model, timestamps, ws_options, options))

    async def _open_stream(self, spec: StreamSpec) -> AsyncRealtimeStream:
        stream = self._new_stream(await self.resolve(), spec)
        await stream.open()
        return stream

    def stream_events(
        self,
        source: Any,
        *,
        request: TTSRequest | None = None,
        model: str | None = None,
        timestamps: bool = False,
        on_sent: Callable[[SourceEvent], None] | None = None,
        early_flush: bool = True,
        ws_options: Any = None,
        speakable: bool | None = False,
    ) -> _EventStream:
        """Feed ``source`` and read typed server events; the core of ``stream_websocket``.

        ``on_sent`` is called after each text or flush event went out (for transcripts and
        metrics), and with each :class:`~fish_notebook.sources.SkippedText` the speakable
        filter left out. Use as ``async with client.stream_events(src) as events: async for e in
        events``; leaving the block early closes the socket and stops reading the source.
        """
        spec = self._spec(request, model, timestamps, ws_options, {})
        return _EventStream(
            self, spec, source, on_sent=on_sent, early_flush=early_flush, speakable=speakable
        )

    async def aclose(self) -> None:
        """Mark the client closed. Streams already open finish on their own."""
        self._state = _ClientState.CLOSED

    async def __aenter__(self) -> AsyncRealtimeClient:
        self._check_open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class RealtimeClient(_Client[Iterator[bytes], Iterator[AudioEvent]]):
    """The synchronous face: same arguments and calls as :class:`AsyncRealtimeClient`.

    Work runs on fish-notebook's background loop thread, so it is safe inside a running
    event loop (a notebook cell) and from plain scripts. Ctrl-C while iterating stops the
    stream and closes the socket.
    """

    def _iterate(self, chunks: AsyncIterator[Any]) -> Any:
        return _loop.iterate_in_background(chunks)

    @cached_property
    def async_client(self) -> AsyncRealtimeClient:
        """An async client with the same configuration."""
        return AsyncRealtimeClient(
            self._api_key,
            self._base_url,
            model=self.model,
            timeout=self.timeout,
            backend=self._backend,
        )

    def close(self) -> None:
        """Mark the client closed. Safe to call twice."""
        self._state = _ClientState.CLOSED

    def __enter__(self) -> RealtimeClient:
        self._check_open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _PendingStream:
    """What ``connect()`` returns: await it or use it with ``async with``."""

    def __init__(self, client: AsyncRealtimeClient, spec: StreamSpec) -> None:
        self._client = client
        self._spec = spec
        self._stream: AsyncRealtimeStream | None = None

    def __await__(self) -> Any:
        return self._client._open_stream(self._spec).__await__()

    async def __aenter__(self) -> AsyncRealtimeStream:
        self._stream = await self._client._open_stream(self._spec)
        return self._stream

    async def __aexit__(self, *exc_info: object) -> None:
        if self._stream is not None:
            await self._stream.aclose()


async def _audio_of(feed: _EventStream, timestamps: bool) -> AsyncIterator[Any]:
    """The audio of a fed stream: bytes, or whole AudioEvents with ``timestamps``."""
    async with feed as events:
        async for event in events:
            if isinstance(event, AudioEvent):
                yield event if timestamps else event.audio


class _EventStream:
    """A stream fed from a source by a sender task, read by the caller.

    The sender starts before the connection is open, so the source's first token and the
    handshake overlap. Exactly one of these ends a run: ``finish`` from the server; an error
    (raised from iteration); the caller leaving early (socket closed, sender cancelled).
    """

    def __init__(
        self,
        client: _Client[Any, Any],
        spec: StreamSpec,
        source: Any,
        *,
        on_sent: Callable[[SourceEvent], None] | None = None,
        early_flush: bool = True,
        speakable: bool | None = False,
    ) -> None:
        self._client = client
        self._speakable = speakable
        self._spec = spec
        self._source = source
        self._on_sent = on_sent
        self._early_flush = early_flush
        self._sender: asyncio.Task[None] | None = None
        self._source_error: BaseException | None = None
        self.stream: AsyncRealtimeStream | None = None

    async def __aenter__(self) -> AsyncIterator[ServerEvent]:
        endpoint = await self._client.resolve()
        self.stream = self._client._new_stream(endpoint, self._spec)
        self._sender = asyncio.create_task(self._send_all(self.stream), name="fish-notebook-sender")
        try:
            await self.stream.open()
        except BaseException:
            await self._cancel_sender()
            raise
        return self._events(self.stream)

    async def _send_all(self, stream: AsyncRealtimeStream) -> None:
        source = iter_source(self._source, speakable=self._speakable)
        early = EarlyFlush(self._early_flush)
        try:
            while (event := await self._next_event(source, early, stream)) is not None:
                if isinstance(event, SkippedText):  # not spoken: only the transcript shows it
                    if self._on_sent is not None:
                        self._on_sent(event)
                    continue
                for piece in early.feed(event):
                    await self._send(stream, piece)
        except (SessionStateError, WebSocketError):
            return  # the receiver reports why the stream ended
        except BaseException as exc:  # the user's source failed: keep what it already produced
            if isinstance(exc, asyncio.CancelledError):
                raise
            self._source_error = exc
        finally:
            await source.aclose()
        with contextlib.suppress(SessionStateError, WebSocketError):
            await stream.stop()

    async def _next_event(
        self, source: SourceIterator, early: EarlyFlush, stream: AsyncRealtimeStream
    ) -> SourceEvent | None:
        """The source's next event, None at its end. While the text so far may end the first
        sentence, a pause of the source confirms it: the early flush goes out during the wait."""
        if not early.waiting:
            return await _pull(source)
        pending = asyncio.ensure_future(_pull(source))
        try:
            # asyncio.wait looks at `pending` after it wakes: an event that came with the
            # timeout still counts as no pause, whatever the load.
            done, _ = await asyncio.wait({pending}, timeout=early.idle_after)
            if not done:
                for piece in early.idle():
                    await self._send(stream, piece)
            return await pending
        except BaseException:
            pending.cancel()
            raise

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


async def _pull(source: SourceIterator) -> SourceEvent | None:
    """The source's next event, or None at its end."""
    try:
        return await source.__anext__()
    except StopAsyncIteration:
        return None


async def _recv_within(ws: ClientConnection, seconds: float) -> bytes | str:
    """``ws.recv()`` bounded by ``seconds``; TimeoutError when they run out.

    ``asyncio.timeout`` where it exists: it creates no task per frame, and unlike 3.11's
    ``wait_for`` it never swallows a cancellation that lands as ``recv()`` completes.
    """
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await ws.recv()
    try:  # pragma: no cover - Python 3.10, where asyncio's TimeoutError is not the builtin
        return await asyncio.wait_for(ws.recv(), seconds)
    except asyncio.TimeoutError:  # pragma: no cover
        raise TimeoutError from None
