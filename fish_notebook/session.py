"""One speech session: a source, a realtime stream, and the recording, running in the background.

A :class:`Session` starts at once and streams on fish-notebook's background loop thread, so a
notebook cell returns immediately and audio keeps flowing while later cells run, even cells
that block (KERNEL.md: the kernel's own loop starves then; this thread does not).

It always asks the server for ``pcm`` so every consumer (the browser player, metrics, saving
to WAV or MP3) gets plain samples. What it sends and receives goes into its
:class:`~fish_notebook.recording.Recording` (``session.recording``): the one copy of the text,
audio, words and metrics, which the player reads too. Listeners (the player widget) see every
event in order, from the IO thread; ``add_listener(..., replay=True)`` first replays what
already happened, under the same lock that orders live events, so nothing is missed or seen
twice.

A :class:`Playback` is the same lifecycle fed with audio instead of text; both are a
:class:`BaseSession`, which runs a ``_drive`` coroutine and ends in a final state.

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
from collections.abc import Generator
from pathlib import Path
from typing import Any, TypeVar, cast

from . import _loop, formats
from .audio import AudioDecoder, PcmDecoder
from .client import (
    AsyncRealtimeClient,
    AsyncRealtimeStream,
    StreamState,
    TimedWord,
    build_request,
)
from .errors import SessionStateError, StreamTimeout
from .protocol import AudioEvent, FlushEvent, LogEvent, TextEvent, TTSRequest
from .recording import (
    FINAL_STATES,
    METRICS_INTERVAL,
    SESSION_STATES,
    Recording,
    SessionListener,
    SessionState,
)
from .sources import SkippedText, SourceEvent, iter_audio
from .subtitles import subtitles

__all__ = [
    "FINAL_STATES",
    "METRICS_INTERVAL",
    "SESSION_STATES",
    "BaseSession",
    "Playback",
    "Session",
    "SessionListener",
    "SessionState",
    "subtitles",
]

logger = logging.getLogger("fish_notebook.session")

_S = TypeVar("_S", bound="BaseSession")


class BaseSession:
    """What every session has: a :class:`Recording` filled in the background by ``_drive``
    (a subclass's coroutine), and the lifecycle around it: start, flush, stop, wait, await.

    Args:
        recording: where what happens goes (its listeners hear it).
        decoder: turns the received bytes into PCM for the recording.
        save: a path (.wav, .mp3, or .vtt/.srt with timestamps) written when the session
            ends, whatever the ending.
    """

    def __init__(
        self,
        recording: Recording,
        decoder: AudioDecoder,
        save: str | os.PathLike[str] | None = None,
    ) -> None:
        self.recording = recording
        self._decoder = decoder
        self._save_path = Path(save) if save is not None else None
        self.error: BaseException | None = None
        self.saved_path: Path | None = None
        self._logs: list[str] = []
        self._stream: AsyncRealtimeStream | None = None  # closed by stop()
        self._task: asyncio.Task[None] | None = None
        self._future: concurrent.futures.Future[None] | None = None
        self._done = threading.Event()
        self._stop_requested = False
        #: The live player that ``widget.display_player`` made for this session, if any
        #: (a ``fish_notebook.widget.Player``): marimo shows it in place of the session.
        self.player: Any = None

    # --- lifecycle --------------------------------------------------------------------

    def start(self: _S) -> _S:
        """Begin streaming on the background loop. Returns self; a second call is refused."""
        if self._future is not None:
            raise SessionStateError("this session has already started")
        self._future = asyncio.run_coroutine_threadsafe(self._run(), _loop.background_loop())
        return self

    async def _drive(self) -> None:
        """Feed the recording until the source ends (a subclass says how)."""
        raise NotImplementedError

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

    def _record(self, data: bytes, event: AudioEvent | None = None) -> None:
        """Decode received bytes into the recording (with ``event``'s words, if any)."""
        pcm = self._decoder.feed(data)
        self.recording.add_audio(pcm, sample_rate=self._decoder.sample_rate, words_of=event)

    def _finish(self, state: SessionState) -> None:
        self.recording.stop_clock()
        self._stream = None
        if self._save_path is not None:
            try:
                self.saved_path = self.recording.save(self._save_path)
            except Exception as exc:
                logger.warning("could not save %s: %s", self._save_path, exc)
                if self.error is None:
                    self.error = exc
                    state = "failed"
        error = None if self.error is None else f"{type(self.error).__name__}: {self.error}"
        self.recording.set_state(state, error)
        self._done.set()

    def flush(self) -> None:
        """Insert a flush point now (a session with text overrides this; here: nothing)."""

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
                        f"session still {self.state} after {timeout} s; "
                        "it keeps running: wait() again or stop() it"
                    )
        except KeyboardInterrupt:
            self.stop()
            self._done.wait(10.0)
            raise
        if self.error is not None:
            raise self.error
        return self

    def __await__(self: _S) -> Generator[Any, None, _S]:
        return self._await().__await__()

    async def _await(self: _S) -> _S:
        if self._future is None:
            raise SessionStateError("the session was never started: call start() first")
        with contextlib.suppress(concurrent.futures.CancelledError, asyncio.CancelledError):
            await asyncio.wrap_future(self._future)
        await asyncio.get_running_loop().run_in_executor(None, self._done.wait, 10.0)
        if self.error is not None:
            raise self.error
        return self

    # --- what happened: the recording's, see Recording ------------------------------------

    @property
    def state(self) -> SessionState:
        return self.recording.state

    @property
    def done(self) -> bool:
        """True once the session reached a final state."""
        return self._done.is_set()

    @property
    def sample_rate(self) -> int:
        """Hz of the recording's 16-bit mono PCM."""
        return self.recording.sample_rate

    @property
    def timestamps(self) -> bool:
        """Whether words in time come with the audio."""
        return self.recording.timestamps

    @property
    def text(self) -> list[str | None]:
        """Text pieces sent, in order; ``None`` marks each flush point."""
        return self.recording.text

    @property
    def transcript(self) -> str:
        """All text sent, flush points shown as `` | ``."""
        return self.recording.transcript

    @property
    def audio(self) -> bytes:
        """16-bit mono PCM received so far, at :attr:`sample_rate`."""
        return self.recording.audio

    @property
    def chunks(self) -> list[bytes]:
        """The same audio as it arrived, chunk by chunk (index = sequence number)."""
        return self.recording.chunks

    @property
    def duration(self) -> float:
        """Seconds of audio received so far."""
        return self.recording.duration

    @property
    def words(self) -> list[TimedWord]:
        """Words heard so far (``timestamps=True``); see :attr:`Recording.words`."""
        return self.recording.words

    @property
    def metrics(self) -> dict[str, Any]:
        """Live figures (``ttfa_s``, ``rtf``, ...); see :attr:`Recording.metrics`."""
        return self.recording.metrics

    @property
    def logs(self) -> list[str]:
        """Log messages the server sent (e.g. an unknown voice)."""
        return list(self._logs)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the audio (.wav, .mp3) or subtitles (.vtt, .srt); see :meth:`Recording.save`."""
        return self.recording.save(path)

    def add_listener(self, listener: SessionListener, *, replay: bool = True) -> None:
        """Subscribe ``listener``; with ``replay`` it first sees everything so far."""
        self.recording.add_listener(listener, replay=replay)

    def remove_listener(self, listener: SessionListener) -> None:
        self.recording.remove_listener(listener)

    def __repr__(self) -> str:
        m = self.metrics
        name = type(self).__name__
        return f"<{name} {m['state']} audio={m['audio_s']:.2f}s chunks={m['chunks']}>"

    def _display_(self) -> Any:
        """marimo's display protocol (IPython ignores it): marimo shows a cell's last
        expression, not what ``display()`` is given, so a session there shows as its live
        player (its Stop and Flush buttons drive it), or as its repr when it has none."""
        return self.player if self.player is not None else _PlainText(repr(self))


class _PlainText:
    """Text that marimo shows as it is (its ``_mime_`` protocol), without quotes."""

    def __init__(self, text: str) -> None:
        self.text = text

    def _mime_(self) -> tuple[str, str]:
        return "text/plain", self.text


class Session(BaseSession):
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
        speakable: read markdown as words (code blocks as a note, URLs as their host; the
            transcript shows what was skipped, greyed). ``None`` (the default): on for an
            LLM's chunk objects, off for plain text. See ``sources.iter_source``.
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
        speakable: bool | None = None,
        **options: Any,
    ) -> None:
        request = build_request(config, **options)
        self.request: TTSRequest = request.replace(format="pcm")
        rate = self.request.effective_sample_rate
        recording = Recording(rate, timestamps=timestamps, format=format or "wav")
        super().__init__(recording, PcmDecoder(rate), save)
        self._client = client or AsyncRealtimeClient(api_key, base_url)
        self._model = model
        self._source = source
        self._early_flush = early_flush
        self._speakable = speakable
        if start:
            self.start()

    async def _drive(self) -> None:
        """Feed the source to the server and record what comes back."""
        feed = self._client.stream_events(
            self._source,
            request=self.request,
            model=self._model,
            timestamps=self.timestamps,
            early_flush=self._early_flush,
            speakable=self._speakable,
            on_sent=self._on_sent,
        )
        async with feed as events:
            self._stream = feed.stream
            self.recording.set_state("streaming")
            async for event in events:
                if isinstance(event, AudioEvent):
                    self._record(event.audio, event)
                elif isinstance(event, LogEvent):
                    self._logs.append(event.message)
                if self._stop_requested:
                    break

    def _on_sent(self, event: SourceEvent) -> None:
        if isinstance(event, TextEvent):
            self.recording.add_text(event.text)
        elif isinstance(event, SkippedText):
            self.recording.add_skipped(event.text)
        else:
            self.recording.add_flush()

    def flush(self) -> None:
        """Insert a flush point now: the server speaks what it has buffered.

        Thread-safe (a button click, another cell); does nothing once the session has ended.
        """
        if self.done:
            return
        loop = _loop.background_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._flush_now()))

    async def _flush_now(self) -> None:
        stream = self._stream
        if stream is None or stream.state is not StreamState.OPEN:
            return
        with contextlib.suppress(Exception):  # a closed stream ends the session on its own
            await stream.flush()
            self._on_sent(FlushEvent())


class Playback(BaseSession):
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
        save: a .wav or .mp3 path written when the stream ends; a path without a suffix
            gets .mp3 for an mp3 stream, .wav otherwise.
        start: begin reading now (default). Otherwise call :meth:`start`.
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
        decoder = formats.get(format).decode_stream(sample_rate)
        save_as = "mp3" if format == "mp3" else "wav"
        super().__init__(Recording(sample_rate, format=save_as), decoder, save)
        self._source = stream
        if start:
            self.start()

    async def _drive(self) -> None:
        self.recording.set_state("streaming")
        self.recording.start_clock()  # the clock for TTFA and RTF starts now
        async with iter_audio(self._source) as chunks:
            async for chunk in chunks:
                self._record(cast(bytes, chunk))
        tail = self._decoder.finish()
        self.recording.add_audio(tail, sample_rate=self._decoder.sample_rate)

    def flush(self) -> None:
        """Nothing to flush: the audio is already made."""
