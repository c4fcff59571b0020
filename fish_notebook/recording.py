"""A speech session's recording, kept once: the session writes it, the player reads it.

A :class:`Recording` holds what a session sent and got back: the text pieces with their
flush points, the 16-bit mono PCM chunk by chunk (the audio lives here and nowhere else), the
words in time, the state, and the clock behind the metrics (first text, first audio, each
flush's latency, the end). It saves itself (audio through :mod:`fish_notebook.formats`,
subtitles through :mod:`fish_notebook.subtitles`) and tells its listeners of every change.

Guarantees:
    - Thread-safe: one writer (the session's IO thread, or whoever feeds a player by hand)
      and any number of readers.
    - Listeners hear every change in order, on the writer's thread, under the lock that
      orders the changes; ``add_listener(..., replay=True)`` first replays what already
      happened under that same lock, so a listener misses nothing and sees nothing twice.
    - A broken listener is logged and never stops the recording.

States: ``connecting`` -> ``streaming`` -> one of ``finished``, ``failed`` or ``stopped``
(:data:`SESSION_STATES`; the last three are :data:`FINAL_STATES`, after which it never changes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, get_args

from . import formats
from .errors import SessionStateError
from .protocol import AudioEvent
from .subtitles import KINDS as SUBTITLE_KINDS
from .subtitles import subtitles
from .timeline import TimedWord, WordChange, WordTimeline

__all__ = [
    "FINAL_STATES",
    "SESSION_STATES",
    "RecordedChunk",
    "Recording",
    "SessionListener",
    "SessionState",
]

logger = logging.getLogger("fish_notebook.recording")

SessionState = Literal["connecting", "streaming", "finished", "failed", "stopped"]
#: Every state a session passes through, in order; the last three are final. Declared once
#: here: the player hands them to the page (the widget's ``vocab`` trait), nobody retypes them.
SESSION_STATES: tuple[SessionState, ...] = get_args(SessionState)
FINAL_STATES: frozenset[str] = frozenset(SESSION_STATES[2:])
METRICS_INTERVAL = 0.25  # seconds between live metric updates to listeners


class SessionListener(Protocol):
    """What a recording (and so a session) tells its listeners. Called in event order.

    Optional methods (looked up with getattr; a listener without them never hears of it):

    - ``on_words(words: list[TimedWord], start: int)``: for a session with
      ``timestamps=True``, after the ``on_audio`` of the event that changed them: the
      recording's words from index ``start`` on are now ``words`` (replace every word from
      ``start``, however many there were: a server revises the words of the chunk it is
      rendering). Seconds on the recording's audio timeline (0 = the first sample of chunk
      0; the concatenated ``on_audio`` PCM at ``sample_rate``). Replay sends all words so
      far in one call, ``start`` 0, after the replayed audio.
    - ``on_skipped(text: str)``: markup the speakable filter did not speak (the original
      text), in order among ``on_text`` and ``on_flush``; replayed in its place.
    """

    def on_text(self, text: str) -> None: ...
    def on_flush(self) -> None: ...
    def on_audio(self, pcm: bytes, seq: int) -> None: ...
    def on_state(self, state: SessionState, error: str | None) -> None: ...
    def on_metrics(self, metrics: dict[str, Any]) -> None: ...


class RecordedChunk(NamedTuple):
    """One chunk of the recording: its sequence number, its PCM, and how many characters of
    text had been sent when it arrived (how far the transcript reaches at its start)."""

    seq: int
    pcm: bytes
    chars: int


class _Clock:
    """When things happened (``time.perf_counter``), for the metrics. Not thread-safe."""

    def __init__(self) -> None:
        self.first_text: float | None = None
        self.first_audio: float | None = None
        self.end: float | None = None
        self.flush_latencies: list[float] = []
        self._pending_flush: float | None = None  # a flush still waiting for its audio
        self._text_since_flush = False

    def start(self, now: float) -> None:
        if self.first_text is None:
            self.first_text = now

    def text(self, now: float) -> None:
        self.start(now)
        self._text_since_flush = True

    def flush(self, now: float) -> None:
        # Only a flush with text before it makes audio: an empty one has no latency.
        if self._text_since_flush and self._pending_flush is None:
            self._pending_flush = now
        self._text_since_flush = False

    def audio(self, now: float) -> None:
        if self.first_audio is None:
            self.first_audio = now
        if self._pending_flush is not None:
            self.flush_latencies.append(now - self._pending_flush)
            self._pending_flush = None

    def figures(self, audio_s: float) -> dict[str, Any]:
        end = self.end or time.perf_counter()
        start = self.first_text
        elapsed = end - start if start is not None else 0.0
        first = self.first_audio
        return {
            "ttfa_s": first - start if start is not None and first is not None else None,
            "ttfa_flush_s": list(self.flush_latencies),
            "audio_s": audio_s,
            "elapsed_s": elapsed,
            "rtf": (elapsed / audio_s) if audio_s > 0 else None,
        }


class Recording:
    """One session's recording; see the module docstring.

    Args:
        sample_rate: Hz of the PCM (16-bit mono) it will hold.
        timestamps: whether words in time come with the audio (then it saves subtitles).
        format: what :meth:`save` writes for a path without a suffix (``wav`` or ``mp3``).
    """

    def __init__(
        self, sample_rate: int = 44100, *, timestamps: bool = False, format: str = "wav"
    ) -> None:
        self.format = formats.savable(format).name
        self.timestamps = timestamps
        self.sample_rate = sample_rate  # Hz of the PCM; a WAV header may correct it
        self._lock = threading.RLock()
        self._listeners = _Fanout()
        self._state: SessionState = "connecting"
        self._error: str | None = None
        self._text = _TextLog()
        self._chunks: list[bytes] = []
        self._chunk_chars: list[int] = []  # characters of text sent when each chunk arrived
        self._pcm_bytes = 0
        self._words = _Words()
        self._clock = _Clock()
        self._metrics_pushed_at = 0.0

    def __repr__(self) -> str:
        m = self.metrics
        return f"<Recording {m['state']} audio={m['audio_s']:.2f}s chunks={m['chunks']}>"

    # --- writing (one writer) -------------------------------------------------------------

    def add_text(self, text: str) -> None:
        """A piece of text was sent."""
        with self._lock:
            self._clock.text(time.perf_counter())
            self._text.add(text)
            self._listeners.emit("on_text", text)

    def add_flush(self) -> None:
        """A flush point was sent."""
        with self._lock:
            self._clock.flush(time.perf_counter())
            self._text.add(None)
            self._listeners.emit("on_flush")

    def add_skipped(self, text: str) -> None:
        """Markup the speakable filter did not speak (the original ``text``): never sent, kept
        for the transcript (:attr:`transcript_entries`) and told to ``on_skipped``."""
        with self._lock:
            self._text.add({"skipped": text})
            self._listeners.emit_optional("on_skipped", text)

    def start_clock(self) -> None:
        """Start the metrics clock without text (audio that needs none, such as a playback)."""
        with self._lock:
            self._clock.start(time.perf_counter())

    def add_audio(
        self, pcm: bytes, *, sample_rate: int | None = None, words_of: AudioEvent | None = None
    ) -> int | None:
        """Record a chunk of PCM (none when ``pcm`` is empty), then the words of ``words_of``;
        return the chunk's sequence number (None when there was no PCM).

        ``sample_rate``: the rate the PCM really has (a WAV header's); taken when no audio was
        recorded yet, so nobody heard the old one. ``words_of``: the audio event ``pcm`` was
        decoded from; its alignment snapshot goes to the recording's
        :class:`~fish_notebook.timeline.WordTimeline` (words at the server's
        ``chunk_audio_offset_sec``; where this chunk starts only when the server gives
        none), and what it changed to the words and to ``on_words`` listeners.
        """
        with self._lock:
            start = self._pcm_bytes // 2 / self.sample_rate  # where this chunk starts
            seq = self._append(pcm, sample_rate) if pcm else None
            if words_of is not None:
                self._tell_words(self._words.from_event(words_of, start))
        if seq is not None:
            self.push_metrics()
        return seq

    def _append(self, pcm: bytes, sample_rate: int | None) -> int:
        if not self._chunks and sample_rate is not None:
            self.sample_rate = sample_rate
        self._clock.audio(time.perf_counter())
        seq = len(self._chunks)
        self._chunks.append(pcm)
        self._chunk_chars.append(self._text.chars)
        self._pcm_bytes += len(pcm)
        self._listeners.emit("on_audio", pcm, seq)
        return seq

    def add_words(self, words: Iterable[TimedWord], start: int | None = None) -> int:
        """Words already placed on the recording's timeline (seconds): they replace the words
        from index ``start`` on (by default they follow the ones so far). Returns ``start``.
        For a recording whose words are not given with ``add_audio(words_of=...)``."""
        with self._lock:
            change = self._words.given(list(words), start)
            self._tell_words(change)
            return len(self._words.list) if change is None else change.start

    def _tell_words(self, change: WordChange | None) -> None:
        if change is not None:
            self._listeners.emit_optional("on_words", list(change.words), change.start)

    def set_state(self, state: SessionState, error: str | None = None) -> None:
        """Move to ``state`` (with the error's text for ``failed``); a final state is kept for
        good, later calls do nothing. A final state also sends the final metrics."""
        with self._lock:
            if self._state in FINAL_STATES:
                return
            self._state, self._error = state, error
            self._listeners.emit("on_state", state, error)
        if state in FINAL_STATES:
            self.push_metrics(force=True)

    def stop_clock(self) -> None:
        """The session ended: elapsed time stops here (before saving, which is not speech)."""
        with self._lock:
            self._clock.end = time.perf_counter()

    def push_metrics(self, *, force: bool = False) -> None:
        """Tell listeners the metrics: at most every ``METRICS_INTERVAL`` unless ``force``."""
        now = time.perf_counter()
        with self._lock:
            if not force and now - self._metrics_pushed_at < METRICS_INTERVAL:
                return
            self._metrics_pushed_at = now
            self._listeners.emit("on_metrics", self.metrics)

    # --- reading (any thread) -------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def error(self) -> str | None:
        """The error's text, once the state is ``failed``."""
        return self._error

    @property
    def text(self) -> list[str | None]:
        """Text pieces sent, in order; ``None`` marks each flush point."""
        with self._lock:
            return [t for t in self._text.entries if not isinstance(t, dict)]

    @property
    def transcript_entries(self) -> list[str | dict[str, str] | None]:
        """:attr:`text` with the markup not spoken in its place, as ``{"skipped": text}``."""
        with self._lock:
            return [dict(t) if isinstance(t, dict) else t for t in self._text.entries]

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """No change (nor listener call) until the block ends: a reader that sends what it
        read down its listener calls' road keeps their order."""
        with self._lock:
            yield

    @property
    def transcript(self) -> str:
        """All text sent, flush points shown as `` | ``."""
        return "".join(" | " if t is None else t for t in self.text).strip()

    @property
    def audio(self) -> bytes:
        """All the PCM so far, joined (a new copy: prefer :attr:`chunks` for big ones)."""
        with self._lock:
            return b"".join(self._chunks)

    @property
    def chunks(self) -> list[bytes]:
        """The PCM as it arrived, chunk by chunk (index = sequence number); not copied."""
        with self._lock:
            return list(self._chunks)

    @property
    def chunk_count(self) -> int:
        return len(self._chunks)

    def chunk(self, seq: int) -> RecordedChunk:
        """Chunk ``seq`` with its place in the text; IndexError if there is none yet."""
        with self._lock:
            if not 0 <= seq < len(self._chunks):
                raise IndexError(f"no chunk {seq}: the recording has {len(self._chunks)}")
            return RecordedChunk(seq, self._chunks[seq], self._chunk_chars[seq])

    @property
    def duration(self) -> float:
        """Seconds of audio so far."""
        with self._lock:
            return self._pcm_bytes // 2 / self.sample_rate

    @property
    def words(self) -> list[TimedWord]:
        """Words heard so far, as ``(text, start, end)`` in seconds on the audio timeline;
        in order, never overlapping; punctuation stays with its word."""
        with self._lock:
            return list(self._words.list)

    @property
    def metrics(self) -> dict[str, Any]:
        """Live figures: ``ttfa_s`` (first text -> first audio), ``ttfa_flush_s`` (each flush
        -> its first audio), ``audio_s``, ``elapsed_s``, ``rtf`` (wall time / audio time
        since the first text; below 1 is faster than real time), ``chunks``, ``bytes``,
        ``state``, ``sample_rate``."""
        with self._lock:
            figures = self._clock.figures(self._pcm_bytes // 2 / self.sample_rate)
            return {
                "state": self._state,
                **figures,
                "chunks": len(self._chunks),
                "bytes": self._pcm_bytes,
                "sample_rate": self.sample_rate,
            }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the audio so far to ``path``: ``.wav`` (exact samples) or ``.mp3``; or the
        words so far as subtitles: ``.vtt`` (WebVTT) or ``.srt`` (SubRip), in short phrases.

        A path without a suffix gets :attr:`format`. Subtitles need ``timestamps``
        (SessionStateError otherwise); another suffix is a ValidationError.
        """
        return _save(self, Path(path))

    # --- listeners ------------------------------------------------------------------------

    def add_listener(self, listener: SessionListener, *, replay: bool = True) -> None:
        """Subscribe ``listener``; with ``replay`` it first sees everything so far."""
        with self._lock:
            if replay:
                self._replay(listener)
            self._listeners.add(listener)

    def _replay(self, listener: SessionListener) -> None:
        self._text.replay(listener)
        for seq, chunk in enumerate(self._chunks):
            _call(listener.on_audio, chunk, seq)
        on_words = getattr(listener, "on_words", None)
        if on_words is not None and self._words.list:
            _call(on_words, list(self._words.list), 0)
        _call(listener.on_state, self._state, self._error)
        _call(listener.on_metrics, self.metrics)

    def remove_listener(self, listener: SessionListener) -> None:
        """Unsubscribe ``listener``; nothing happens if it was not subscribed."""
        with self._lock:
            self._listeners.remove(listener)


class _TextLog:
    """What text went out, in order: pieces (``str``), flush points (``None``) and markup not
    spoken (``{"skipped": text}``); and how many characters were sent. Not thread-safe."""

    def __init__(self) -> None:
        self.entries: list[str | dict[str, str] | None] = []
        self.chars = 0

    def add(self, entry: str | dict[str, str] | None) -> None:
        self.entries.append(entry)
        if isinstance(entry, str):
            self.chars += len(entry)

    def replay(self, listener: SessionListener) -> None:
        """Tell ``listener`` every entry, as the recording told its listeners."""
        on_skipped = getattr(listener, "on_skipped", None)
        for entry in self.entries:
            if entry is None:
                _call(listener.on_flush)
            elif isinstance(entry, str):
                _call(listener.on_text, entry)
            elif on_skipped is not None:
                _call(on_skipped, entry["skipped"])


class _Words:
    """The recording's words: a :class:`WordTimeline`'s (from audio events), or words given
    already placed. Each change says what it replaced (a :class:`WordChange`). Not thread-safe."""

    def __init__(self) -> None:
        self.timeline = WordTimeline()
        self.list: list[TimedWord] = []

    def from_event(self, event: AudioEvent, fallback_offset: float) -> WordChange | None:
        change = self.timeline.add(event, fallback_offset=fallback_offset)
        if change is not None:
            self.list[change.start :] = change.words
        return change

    def given(self, words: list[TimedWord], start: int | None) -> WordChange | None:
        """``words`` from ``start`` on (after the last word when None, clamped to the list)."""
        at = len(self.list) if start is None else max(0, min(start, len(self.list)))
        if not words and at == len(self.list):
            return None  # nothing to replace
        self.list[at:] = words
        return WordChange(at, words)


class _Fanout:
    """Listeners, told in the order they subscribed. The recording's lock orders the calls."""

    def __init__(self) -> None:
        self._listeners: list[SessionListener] = []

    def add(self, listener: SessionListener) -> None:
        self._listeners.append(listener)

    def remove(self, listener: SessionListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def emit(self, name: str, *args: Any) -> None:
        for listener in list(self._listeners):
            _call(getattr(listener, name), *args)

    def emit_optional(self, name: str, *args: Any) -> None:
        """Tell the listeners that have ``name``; the others never hear of it."""
        for listener in list(self._listeners):
            method = getattr(listener, name, None)
            if method is not None:
                _call(method, *args)


def _save(recording: Recording, target: Path) -> Path:
    """:meth:`Recording.save`: audio or subtitles, by the suffix."""
    if not target.suffix:
        target, _ = formats.for_path(target, recording.format)
    kind = SUBTITLE_KINDS.get(target.suffix.lower())
    if kind is None:
        return formats.save_audio(target, recording.audio, recording.sample_rate)
    if not recording.timestamps:
        raise SessionStateError(
            f"cannot write {target.name}: this session has no word timestamps; "
            "create it with timestamps=True"
        )
    target.write_text(subtitles(recording.words, kind), encoding="utf-8")
    return target


def _call(method: Callable[..., None], *args: Any) -> None:
    try:
        method(*args)
    except Exception:  # a broken listener must not end the recording
        logger.exception("recording listener %r failed", method)
