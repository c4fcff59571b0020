"""One speech session: a source, a realtime stream, and the recording, running in the background.

A :class:`Session` starts at once and streams on fish-notebook's background loop thread, so a
notebook cell returns immediately and audio keeps flowing while later cells run, even cells
that block (KERNEL.md: the kernel's own loop starves then; this thread does not).

It always asks the server for ``pcm`` so every consumer (the browser player, metrics, saving
to WAV or MP3) gets plain samples. Listeners (the player widget) see every event in order,
from the IO thread; ``add_listener(..., replay=True)`` first replays what already happened,
under the same lock that orders live events, so nothing is missed or seen twice.

States: ``connecting`` -> ``streaming`` -> one of ``finished`` (the server sent finish),
``failed`` (an error; ``error`` holds it, the audio so far is kept) or ``stopped`` (``stop()``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, cast, get_args

from . import _loop, formats
from .audio import AudioDecoder, PcmDecoder
from .client import (
    AsyncRealtimeClient,
    AsyncRealtimeStream,
    StreamState,
    TimedWord,
    WordTimeline,
    build_request,
)
from .errors import SessionStateError, StreamTimeout
from .protocol import AudioEvent, FlushEvent, LogEvent, TextEvent, TTSRequest
from .sources import iter_audio

__all__ = ["Playback", "Session", "SessionListener", "SessionState", "subtitles"]

logger = logging.getLogger("fish_notebook.session")

_S = TypeVar("_S", bound="Session")
SessionState = Literal["connecting", "streaming", "finished", "failed", "stopped"]
#: Every state a session passes through, in order; the last three are final. Declared once
#: here: the player hands them to the page (the widget's ``vocab`` trait), nobody retypes them.
SESSION_STATES: tuple[SessionState, ...] = get_args(SessionState)
FINAL_STATES: frozenset[str] = frozenset(SESSION_STATES[2:])
METRICS_INTERVAL = 0.25  # seconds between live metric updates to listeners


class SessionListener(Protocol):
    """What a session tells its listeners. Called on the IO thread, in event order.

    A listener may also have ``on_words(words: list[TimedWord])`` (optional, looked up
    with getattr): called, for a session with ``timestamps=True``, right after the
    ``on_audio`` of a chunk with the words that chunk placed, in seconds on the session's
    audio timeline (0 = the first sample of chunk 0; the concatenated ``on_audio`` PCM at
    ``sample_rate``). Each call adds to the ones before; replay sends all words so far in
    one call, after the replayed audio.
    """

    def on_text(self, text: str) -> None: ...
    def on_flush(self) -> None: ...
    def on_audio(self, pcm: bytes, seq: int) -> None: ...
    def on_state(self, state: SessionState, error: str | None) -> None: ...
    def on_metrics(self, metrics: dict[str, Any]) -> None: ...


class Session:
    """Speak ``source`` in the background; see the module docstring.

    Args:
        source: anything :func:`fish_notebook.sources.iter_source` takes (str, iterables,
            async iterables, LLM stream chunks, TextEvent/FlushEvent).
        client: an :class:`AsyncRealtimeClient`; by default one is made from ``api_key``,
            ``base_url`` and ``model`` (and so from FISH_BASE_URL / FISH_API_KEY, or the
            embedded local server).
        save: a path (.wav or .mp3) written when the session ends, whatever the ending.
        options: request fields (``reference_id``, ``latency``, ``speed``, ``volume``,
            ``sample_rate``, ``config``...); ``format`` only chooses how ``save`` writes a
            path without suffix: the wire format is always pcm.
        start: begin streaming now (default). Otherwise call :meth:`start`.
        timestamps: ask for word timestamps (``/v1/tts/live/with-timestamp``): then
            :attr:`words` fills as audio arrives, listeners with ``on_words`` hear of each
            word, and :meth:`save` also writes ``.vtt`` and ``.srt`` subtitles.
        early_flush: flush once as soon as the first sentence is complete (unless the
            source flushes first), so first audio comes early; see ``stream_websocket``.
    """

    def __init__(
        self,
        source: Any,
        *,
        client: AsyncRealtimeClient | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        model: str | None = None,
        save: str | os.PathLike[str] | None = None,
        format: str | None = None,
        config: Any = None,
        start: bool = True,
        timestamps: bool = False,
        early_flush: bool = True,
        **options: Any,
    ) -> None:
        request = build_request(config, **options)
        self.request: TTSRequest = request.replace(format="pcm")
        self._client = client or AsyncRealtimeClient(api_key, base_url)
        self._model = model
        self._source = source
        self._setup(self.request.effective_sample_rate, save, format)
        self.timestamps = timestamps
        self._early_flush = early_flush
        self._decoder: AudioDecoder = PcmDecoder(self.sample_rate)
        if start:
            self.start()

    def _setup(
        self, sample_rate: int, save: str | os.PathLike[str] | None, format: str | None
    ) -> None:
        """The recording, listeners and metrics: everything a session has whatever feeds it."""
        if format is not None:
            formats.savable(format)
        self._save_path = Path(save) if save is not None else None
        self._save_format = format or "wav"
        self.sample_rate: int = sample_rate
        self._lock = threading.RLock()
        self._listeners: list[SessionListener] = []
        self._state: SessionState = "connecting"
        self._text: list[str | None] = []
        self._chunks: list[bytes] = []
        self._pcm_bytes = 0  # the audio lives once, in _chunks; this is its length
        self._logs: list[str] = []
        self.error: BaseException | None = None
        self.saved_path: Path | None = None

        self._t_created = time.perf_counter()
        self._t_first_text: float | None = None
        self._t_first_audio: float | None = None
        self._t_end: float | None = None
        self._pending_flush: float | None = None  # time of a flush still waiting for audio
        self._flush_latencies: list[float] = []
        self._last_metrics_push = 0.0
        self._text_since_flush = False
        self.timestamps = False
        self._timeline = WordTimeline()

        self._stream: AsyncRealtimeStream | None = None
        self._task: asyncio.Task[None] | None = None
        self._future: concurrent.futures.Future[None] | None = None
        self._done = threading.Event()
        self._stop_requested = False

    # --- lifecycle --------------------------------------------------------------------

    def start(self: _S) -> _S:
        """Begin streaming on the background loop. Returns self; a second call is refused."""
        if self._future is not None:
            raise SessionStateError("this session has already started")
        self._future = asyncio.run_coroutine_threadsafe(self._run(), _loop.background_loop())
        return self

    async def _run(self) -> None:
        self._task = asyncio.current_task()
        try:
            await self._drive()
            self._finish("stopped" if self._stop_requested else "finished")
        except asyncio.CancelledError:
            self._finish("stopped")
        except BaseException as exc:
            if self._stop_requested and isinstance(exc, Exception):
                self._finish("stopped")  # the socket closed because we closed it
                return
            self.error = exc
            self._finish("failed")
            if not isinstance(exc, Exception):
                raise

    async def _drive(self) -> None:
        """Feed the source to the server and record what comes back."""
        feed = self._client.stream_events(
            self._source,
            request=self.request,
            model=self._model,
            timestamps=self.timestamps,
            early_flush=self._early_flush,
            on_sent=self._on_sent,
        )
        async with feed as events:
            self._stream = feed.stream
            self._set_state("streaming")
            async for event in events:
                if isinstance(event, AudioEvent):
                    offset = self._pcm_seconds()  # where this event's audio starts
                    self._on_audio(event.audio)
                    if event.alignment is not None:
                        self._on_alignment(event, offset)
                elif isinstance(event, LogEvent):
                    self._logs.append(event.message)
                if self._stop_requested:
                    break

    def _finish(self, state: SessionState) -> None:
        self._t_end = time.perf_counter()
        self._stream = None
        if self._save_path is not None:
            try:
                self.saved_path = self.save(self._save_path)
            except Exception as exc:
                logger.warning("could not save %s: %s", self._save_path, exc)
                if self.error is None:
                    self.error = exc
                    state = "failed"
        self._set_state(state)
        self._push_metrics(force=True)
        self._done.set()

    def flush(self) -> None:
        """Insert a flush point now: the server speaks what it has buffered.

        Thread-safe (a button click, another cell); does nothing once the session has ended.
        """
        if self.done:
            return
        loop = _loop.background_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._flush_now()))

    async def _flush_now(self) -> None:
        stream = self._current_stream()
        if stream is None:
            return
        with contextlib.suppress(Exception):  # a closed stream ends the session on its own
            await stream.flush()
            self._on_sent(FlushEvent())

    def _current_stream(self) -> AsyncRealtimeStream | None:
        stream = self._stream
        return stream if stream is not None and stream.state is StreamState.OPEN else None

    def stop(self) -> None:
        """End the session now: stop reading the source, close the socket, keep the audio.

        Thread-safe and idempotent. The state becomes ``stopped`` (unless already final).
        """
        if self.done or self._future is None:
            return
        self._stop_requested = True
        loop = _loop.background_loop()

        def cancel() -> None:
            # Three ways out, because one alone can be lost: Python 3.11's wait_for may
            # swallow a cancel that lands as recv() completes. Closing the socket ends
            # recv() for sure, and _drive checks the flag after every event.
            if self._task is not None and not self._task.done():
                self._task.cancel()
            elif self._future is not None:
                self._future.cancel()
            if self._stream is not None:
                loop.create_task(self._stream.aclose())

        loop.call_soon_threadsafe(cancel)

    def wait(self: _S, timeout: float | None = None) -> _S:
        """Block until the session ends; re-raise its error if it failed. Returns self.

        Usable from plain sync code and inside a notebook cell (nbclient/papermill runs).
        Ctrl-C (or the kernel's interrupt button) stops the session cleanly, then the
        KeyboardInterrupt propagates. Raises StreamTimeout if ``timeout`` runs out first;
        the session keeps running then.
        """
        if self._future is None:
            raise SessionStateError("the session was never started: call start() first")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not self._done.wait(0.1):
                if deadline is not None and time.monotonic() >= deadline:
                    raise StreamTimeout(
                        f"session still {self._state} after {timeout} s; "
                        "it keeps running: wait() again or stop() it"
                    )
        except KeyboardInterrupt:
            self.stop()
            self._done.wait(10.0)
            raise
        if self.error is not None:
            raise self.error
        return self

    def __await__(self) -> Generator[Any, None, Session]:
        return self._await().__await__()

    async def _await(self) -> Session:
        if self._future is None:
            raise SessionStateError("the session was never started: call start() first")
        with contextlib.suppress(concurrent.futures.CancelledError, asyncio.CancelledError):
            await asyncio.wrap_future(self._future)
        await asyncio.get_running_loop().run_in_executor(None, self._done.wait, 10.0)
        if self.error is not None:
            raise self.error
        return self

    # --- what happened ---------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def done(self) -> bool:
        """True once the session reached a final state."""
        return self._done.is_set()

    @property
    def text(self) -> list[str | None]:
        """Text pieces sent, in order; ``None`` marks each flush point."""
        with self._lock:
            return list(self._text)

    @property
    def transcript(self) -> str:
        """All text sent, flush points shown as `` | ``."""
        return "".join(" | " if t is None else t for t in self.text).strip()

    @property
    def audio(self) -> bytes:
        """16-bit mono PCM received so far, at :attr:`sample_rate`."""
        with self._lock:
            return b"".join(self._chunks)

    @property
    def chunks(self) -> list[bytes]:
        """The same audio as it arrived, chunk by chunk (index = sequence number)."""
        with self._lock:
            return list(self._chunks)

    @property
    def duration(self) -> float:
        """Seconds of audio received so far."""
        return self._pcm_seconds()

    @property
    def logs(self) -> list[str]:
        """Log messages the server sent (e.g. an unknown voice)."""
        return list(self._logs)

    @property
    def metrics(self) -> dict[str, Any]:
        """Live figures: ``ttfa_s`` (first text -> first audio), ``ttfa_flush_s`` (each flush
        -> its first audio), ``audio_s``, ``elapsed_s``, ``rtf`` (wall time / audio time
        since the first text; below 1 is faster than real time), ``chunks``, ``bytes``,
        ``state``."""
        with self._lock:
            end = self._t_end or time.perf_counter()
            audio_s = self._pcm_bytes // 2 / self.sample_rate
            start = self._t_first_text
            elapsed = end - start if start is not None else 0.0
            ttfa = (
                self._t_first_audio - start
                if start is not None and self._t_first_audio is not None
                else None
            )
            return {
                "state": self._state,
                "ttfa_s": ttfa,
                "ttfa_flush_s": list(self._flush_latencies),
                "audio_s": audio_s,
                "elapsed_s": elapsed,
                "rtf": (elapsed / audio_s) if audio_s > 0 else None,
                "chunks": len(self._chunks),
                "bytes": self._pcm_bytes,
                "sample_rate": self.sample_rate,
            }

    @property
    def words(self) -> list[TimedWord]:
        """Words heard so far, as ``(text, start, end)`` in seconds on the audio timeline
        (:class:`~fish_notebook.client.TimedWord`); empty unless ``timestamps=True``.
        In order, never overlapping; punctuation stays with its word."""
        with self._lock:
            return list(self._timeline.words)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the audio so far to ``path``: ``.wav`` (exact samples) or ``.mp3``; or the
        words so far as subtitles: ``.vtt`` (WebVTT) or ``.srt`` (SubRip), in short phrases.

        A path without a suffix gets the session's ``format`` (wav unless told). Subtitles
        need ``timestamps=True`` (SessionStateError otherwise).
        """
        target = Path(path)
        if not target.suffix:
            target = target.with_suffix(formats.savable(self._save_format).suffix)
        kind = target.suffix.lower()
        if kind in (".vtt", ".srt"):
            if not self.timestamps:
                raise SessionStateError(
                    f"cannot write {target.name}: this session has no word timestamps; "
                    "create it with timestamps=True"
                )
            text = subtitles(self.words, "vtt" if kind == ".vtt" else "srt")
            target.write_text(text, encoding="utf-8")
            return target
        return formats.save_audio(target, self.audio, self.sample_rate)

    def __repr__(self) -> str:
        m = self.metrics
        return f"<Session {m['state']} audio={m['audio_s']:.2f}s chunks={m['chunks']}>"

    # --- listeners -------------------------------------------------------------------

    def add_listener(self, listener: SessionListener, *, replay: bool = True) -> None:
        """Subscribe ``listener``; with ``replay`` it first sees everything so far."""
        with self._lock:
            if replay:
                for piece in self._text:
                    self._call(listener.on_flush) if piece is None else self._call(
                        listener.on_text, piece
                    )
                for seq, chunk in enumerate(self._chunks):
                    self._call(listener.on_audio, chunk, seq)
                on_words = getattr(listener, "on_words", None)
                if on_words is not None and self._timeline.words:
                    self._call(on_words, list(self._timeline.words))
                self._call(listener.on_state, self._state, self._error_text())
                self._call(listener.on_metrics, self.metrics)
            self._listeners.append(listener)

    def remove_listener(self, listener: SessionListener) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _emit(self, name: str, *args: Any) -> None:
        for listener in list(self._listeners):
            self._call(getattr(listener, name), *args)

    def _emit_optional(self, name: str, *args: Any) -> None:
        """Tell the listeners that have ``name``; the others never hear of it."""
        for listener in list(self._listeners):
            method = getattr(listener, name, None)
            if method is not None:
                self._call(method, *args)

    @staticmethod
    def _call(method: Callable[..., None], *args: Any) -> None:
        try:
            method(*args)
        except Exception:  # a broken listener must not end the session
            logger.exception("session listener %r failed", method)

    def _error_text(self) -> str | None:
        return None if self.error is None else f"{type(self.error).__name__}: {self.error}"

    # --- events from the stream (IO thread) -------------------------------------------

    def _on_sent(self, event: TextEvent | FlushEvent) -> None:
        now = time.perf_counter()
        with self._lock:
            if isinstance(event, TextEvent):
                if self._t_first_text is None:
                    self._t_first_text = now
                self._text_since_flush = True
                self._text.append(event.text)
                self._emit("on_text", event.text)
            else:
                if self._text_since_flush and self._pending_flush is None:
                    self._pending_flush = now
                self._text_since_flush = False
                self._text.append(None)
                self._emit("on_flush")

    def _on_audio(self, data: bytes) -> None:
        pcm = self._decoder.feed(data)
        if pcm:
            self._record_pcm(pcm)

    def _pcm_seconds(self) -> float:
        with self._lock:
            return self._pcm_bytes // 2 / self.sample_rate

    def _on_alignment(self, event: AudioEvent, offset: float) -> None:
        # Words sit where their audio starts in what this session received (the player's
        # timeline), whatever offset the server counted.
        with self._lock:
            placed = self._timeline.add(event, offset)
            if placed:
                self._emit_optional("on_words", placed)

    def _record_pcm(self, pcm: bytes) -> None:
        now = time.perf_counter()
        with self._lock:
            if not self._chunks and self._decoder.sample_rate != self.sample_rate:
                # A WAV header said otherwise: it is the truth, and no audio went out yet.
                self.sample_rate = self._decoder.sample_rate
            if self._t_first_audio is None:
                self._t_first_audio = now
            if self._pending_flush is not None:
                self._flush_latencies.append(now - self._pending_flush)
                self._pending_flush = None
            seq = len(self._chunks)
            self._chunks.append(pcm)
            self._pcm_bytes += len(pcm)
            self._emit("on_audio", pcm, seq)
        self._push_metrics()

    def _set_state(self, state: SessionState) -> None:
        with self._lock:
            if self._state in FINAL_STATES:
                return
            self._state = state
            self._emit("on_state", state, self._error_text())

    def _push_metrics(self, *, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_metrics_push < METRICS_INTERVAL:
            return
        self._last_metrics_push = now
        with self._lock:
            self._emit("on_metrics", self.metrics)


class Playback(Session):
    """A session fed with audio instead of text: any (async) iterable of audio bytes.

    For code that already has an audio stream, such as the Fish SDK's own
    ``stream_websocket`` output. Chunks are decoded to PCM as they arrive (``pcm``, ``wav``,
    or ``mp3`` with the ``mp3`` extra) and recorded, played and saved like any session's.
    ``flush()`` does nothing here (there is no text); ``stop()`` stops reading the stream.

    Args:
        stream: bytes, or a sync/async iterable of bytes (a sync one is read in a thread).
        format: what the bytes are: ``"mp3"`` (the SDK's default), ``"wav"`` or ``"pcm"``.
        sample_rate: the rate of ``pcm`` input, and the rate ``mp3`` is decoded to.
            For ``wav`` the header decides.
    """

    def __init__(
        self,
        stream: Any,
        *,
        format: str = "mp3",
        sample_rate: int = 44100,
        save: str | os.PathLike[str] | None = None,
        start: bool = True,
    ) -> None:
        stream_format = formats.get(format)
        self._source = stream
        self._stream_format = format
        self._setup(sample_rate, save, "mp3" if format == "mp3" else "wav")
        self._decoder = stream_format.decode_stream(sample_rate)
        if start:
            self.start()

    async def _drive(self) -> None:
        self._set_state("streaming")
        with self._lock:
            self._t_first_text = time.perf_counter()  # the clock for TTFA and RTF starts now
        async with iter_audio(self._source) as chunks:
            async for chunk in chunks:
                self._on_audio(cast(bytes, chunk))
        tail = self._decoder.finish()
        if tail:
            self._record_pcm(tail)

    def flush(self) -> None:
        """Nothing to flush: the audio is already made."""


# --- subtitles -------------------------------------------------------------------------------

CUE_MAX_WORDS = 8  # a cue is a short phrase: at most this many words,
CUE_MAX_CHARS = 42  # this many characters (a common subtitle line length),
CUE_MAX_SECONDS = 5.0  # and this long; a sentence end or a pause also closes it
CUE_PAUSE = 0.6


def subtitles(words: list[TimedWord], kind: Literal["vtt", "srt"]) -> str:
    """WebVTT or SubRip text for ``words`` (in order, not overlapping), in short phrases.

    A cue closes after a sentence end (``. ! ? …``), before a pause of ``CUE_PAUSE``
    seconds, or when it would exceed ``CUE_MAX_WORDS`` words, ``CUE_MAX_CHARS`` characters
    or ``CUE_MAX_SECONDS``. Every cue lasts at least a millisecond and none overlap.
    """
    cues: list[list[TimedWord]] = []
    for word in words:
        if cues and not _closes(cues[-1], word):
            cues[-1].append(word)
        else:
            cues.append([word])
    out = ["WEBVTT", ""] if kind == "vtt" else []
    last_end = 0
    for number, cue in enumerate(cues, 1):
        start = max(round(cue[0].start * 1000), last_end)
        end = max(round(cue[-1].end * 1000), start + 1)
        last_end = end
        text = " ".join(" ".join(w.text.split()) for w in cue)
        if kind == "vtt":
            text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            out += [f"{_clock(start, '.')} --> {_clock(end, '.')}", text, ""]
        else:
            out += [str(number), f"{_clock(start, ',')} --> {_clock(end, ',')}", text, ""]
    return "\n".join(out)


def _closes(cue: list[TimedWord], word: TimedWord) -> bool:
    last = cue[-1]
    chars = sum(len(w.text) + 1 for w in cue) + len(word.text)
    return (
        last.text.rstrip("\"')”’»]").endswith((".", "!", "?", "…"))
        or word.start - last.end >= CUE_PAUSE
        or len(cue) >= CUE_MAX_WORDS
        or chars > CUE_MAX_CHARS
        or word.end - cue[0].start > CUE_MAX_SECONDS
    )


def _clock(ms: int, separator: str) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"
