"""The live player: an anywidget that plays speech while it arrives.

:class:`Player` is a session listener (see ``session.py``): the session calls its ``on_*``
methods from its IO thread, and the player forwards what it hears to every open view.

What goes where, and why:

- Audio travels as binary comm buffers, one message per chunk
  (``{"kind": "audio", "seq": n, "chars": c}`` + the PCM bytes). It is never put in a trait:
  a growing trait would be re-sent whole on every change.
- Everything else a view needs (state, transcript with flush points, metrics, sample rate,
  error) lives in small synced traits, so a view opened late has it at once.
- Words in time (a session with ``timestamps=True``) go as they come, right after the audio
  they are heard in: ``{"kind": "words", "from": i, "words": [[text, start, end], ...]}``
  (``from`` = the index of the first one), seconds on the recording's timeline (0 = the
  first sample of chunk 0). They are not a trait, which would be re-sent whole as it grows:
  a view that missed some gets them all in the inventory below, and indices make a word
  that arrives twice land on the same place.
- Messages sent before the browser loaded the widget code are lost, so the browser asks for
  the recording (``{"kind": "replay-request"}``) as soon as the model exists; the player
  answers with the number of chunks recorded and every word so far
  (``{"kind": "recording", "total": n, "first": bool, "words": [...]}``, no ``words`` when
  there are none), the browser asks for the sequence numbers it lacks
  (``{"kind": "replay-request", "seqs": [...]}``) and gets them
  (``{"kind": "replay", "seqs": [...]}`` + buffers). Sequence numbers make the browser drop
  any chunk it already has, so nothing is duplicated or missed.
- Button clicks come back as ``{"kind": "flush"}`` and ``{"kind": "stop"}`` and are passed to
  the session (or to any object with ``flush()`` and ``stop()``).
- The browser publishes what it did (chunks scheduled, gaps, underruns, latencies) in the
  ``stats`` trait and in a ``data-stats`` attribute of the player element.

Nothing secret is ever put in a trait or an output: the session API exposes no key.

:func:`display_player` shows a player and, when the session ends, a standard ``<audio>``
element (WAV, or MP3 on request, as a data URI) in a second output, so a saved notebook
still plays where widgets do not run (nbviewer, nbconvert HTML). While the live player runs,
it hides that element so the audio is not shown twice.
"""

from __future__ import annotations

import base64
import contextvars
import logging
import pathlib
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import anywidget
import traitlets
from IPython.display import HTML, DisplayHandle, display

from . import formats
from .audio import wav_bytes
from .client import TimedWord
from .errors import FishNotebookError, MissingDependencyError, ValidationError
from .session import FINAL_STATES, SESSION_STATES

__all__ = ["Controls", "Player", "display_player"]

logger = logging.getLogger("fish_notebook.widget")

_STATIC = pathlib.Path(__file__).parent / "static"

#: The page's code, one file per job in static/player/, joined in this order into the one ES
#: module anywidget loads: the files share one scope, and only the last one exports.
_PLAYER_JS = (
    "common.js",
    "page.js",
    "queue.js",
    "receiving.js",
    "scheduling.js",
    "stats.js",
    "drawing.js",
    "transcript.js",
    "controls.js",
    "view.js",
    "player.js",
    "main.js",
)


def _player_esm() -> str:
    """The player's ES module: the files of static/player/ joined in ``_PLAYER_JS`` order."""
    folder = _STATIC / "player"
    return "\n".join(
        f"// ---- {name}\n{(folder / name).read_text(encoding='utf-8')}" for name in _PLAYER_JS
    )


#: What :func:`display_player` can embed for widget-less viewers.
FALLBACK_FORMATS = (*formats.SAVABLE, None)
FALLBACK_MP3_BITRATE = 64


#: Seconds between transcript updates sent to the browser while text streams in.
TRANSCRIPT_INTERVAL = 0.1

#: The recording is resent in messages of at most this many bytes of PCM.
_REPLAY_BATCH_BYTES = 1 << 20


class Controls(Protocol):
    """What the player's Flush and Stop buttons drive (a session satisfies it)."""

    def flush(self) -> None: ...

    def stop(self) -> None: ...


class _Session(Controls, Protocol):
    """The part of ``session.Session`` the player uses."""

    sample_rate: int

    def add_listener(self, listener: Any, *, replay: bool = True) -> None: ...

    def remove_listener(self, listener: Any) -> None: ...


class Player(anywidget.AnyWidget):
    """A live audio player for one speech session.

    Feed it by attaching a session (``Player(session)`` or :meth:`attach`), or by calling the
    ``on_*`` listener methods yourself (from any one thread at a time, in stream order).

    Guarantees:
        - Every chunk given to :meth:`on_audio` reaches every view, in order, exactly once,
          including views that open after it was sent (they receive the recording).
        - Traits hold only small state; audio is never stored in a trait.

    One voice at a time: the players of a page (every notebook and kernel in it) speak in the
    order their players were made, each waiting, "queued", until the one before has ended.
    The :attr:`playback` trait sets how a player shares the page's audio: its ``policy``
    (``"queue"``, the default; ``"interrupt"`` cuts whatever plays and speaks now;
    ``"overlap"`` plays at once, as if alone) and its ``order`` in the queue.
    """

    _esm = _player_esm()
    _css = _STATIC / "player.css"

    #: idle, connecting, streaming, finished, failed or stopped.
    status = traitlets.Unicode("idle").tag(sync=True)
    #: The session's error message when ``status == "failed"``.
    error = traitlets.Unicode("").tag(sync=True)
    #: Hz of the 16-bit mono PCM sent to the browser.
    sample_rate = traitlets.Int(44100).tag(sync=True)
    #: Text sent to the server, in pieces; ``None`` marks a flush point.
    transcript: traitlets.List[str | None] = traitlets.List().tag(sync=True)
    #: The session's live metrics (ttfa_s, rtf, audio_s, chunks, ...).
    metrics = traitlets.Dict().tag(sync=True)
    #: How many chunks were sent so far, so a view can tell it has them all.
    chunk_count = traitlets.Int(0).tag(sync=True)
    #: Identifies this player's fallback ``<audio>`` output in the page.
    player_id = traitlets.Unicode("").tag(sync=True)
    #: Vocabularies shared with the page, declared once in Python: ``states`` (every
    #: status, in order) and ``final_states`` (after which no more audio comes).
    vocab = traitlets.Dict(
        {"states": ["idle", *SESSION_STATES], "final_states": sorted(FINAL_STATES)}
    ).tag(sync=True)
    #: Written by the browser: what it received, scheduled and played (see player.js).
    stats = traitlets.Dict().tag(sync=True)
    #: How it shares the page's audio with other players (static/player/queue.js):
    #: ``{"policy": p, "order": ms}``. ``policy`` is ``"queue"`` (default: wait until the
    #: players started before it in the page have spoken, then play), ``"interrupt"`` (fade
    #: out whatever plays and speak now; queued ones still wait) or ``"overlap"`` (play at
    #: once, wait for nobody). ``order`` (this kernel's wall clock, in ms, when the player was
    #: made) is its place in the queue. Assign ``{"policy": ...}`` alone to keep the order;
    #: an unknown policy raises ValidationError.
    playback = traitlets.Dict().tag(sync=True)
    PLAYBACK_POLICIES: ClassVar[tuple[str, ...]] = ("queue", "interrupt", "overlap")
    _order_lock: ClassVar[threading.Lock] = threading.Lock()
    _last_order: ClassVar[float] = 0.0

    @traitlets.default("playback")
    def _default_playback(self) -> dict[str, Any]:
        return {"policy": "queue", "order": self._next_order()}

    @classmethod
    def _next_order(cls) -> float:
        """Now in ms on the wall clock (comparable across kernels), and never twice the same."""
        with cls._order_lock:
            cls._last_order = max(time.time() * 1000, cls._last_order + 0.001)
            return cls._last_order

    @traitlets.validate("playback")
    def _valid_playback(self, proposal: Any) -> dict[str, Any]:
        value = proposal["value"]
        if not isinstance(value, dict) or set(value) - {"policy", "order"}:
            raise ValidationError("playback", value, "must be {'policy': ..., 'order': ...}")
        current = self._trait_values.get("playback") or {}
        policy = value.get("policy", current.get("policy", "queue"))
        if policy not in self.PLAYBACK_POLICIES:
            allowed = ", ".join(map(repr, self.PLAYBACK_POLICIES))
            raise ValidationError("playback policy", policy, f"must be one of {allowed}")
        order = value.get("order", current.get("order"))
        if order is None:
            order = self._next_order()
        if isinstance(order, bool) or not isinstance(order, (int, float)) or order != order:
            raise ValidationError("playback order", order, "must be a number (ms)")
        return {"policy": policy, "order": float(order)}

    def __init__(
        self,
        session: _Session | None = None,
        *,
        sample_rate: int | None = None,
        controls: Controls | None = None,
        **kwargs: Any,
    ) -> None:
        """Create a player, optionally attached to ``session`` at once.

        Args:
            session: A ``Session`` to listen to (its recording so far is replayed).
            sample_rate: Hz of the PCM you will feed, when there is no session.
            controls: What Flush and Stop drive, when there is no session.
        """
        super().__init__(player_id=uuid.uuid4().hex, **kwargs)
        if sample_rate is not None:
            self.sample_rate = sample_rate
        self._lock = threading.Lock()
        self._chunks: list[bytes] = []
        self._chunk_chars: list[int] = []
        self._words: list[TimedWord] = []
        self._text: list[str | None] = []
        self._chars = 0
        self._transcript_sent_at = 0.0
        self._transcript_timer: threading.Timer | None = None
        self._replays = 0
        self._session: _Session | None = None
        self._controls: Controls | None = controls
        self._fallback: _Fallback | None = None
        self.on_msg(self._handle_message)
        if session is not None:
            self.attach(session)

    def __repr__(self) -> str:
        if "_lock" not in self.__dict__:  # still in __init__
            return "<Player>"
        with self._lock:
            samples = sum(len(c) for c in self._chunks) // 2
            chunks = len(self._chunks)
        seconds = samples / self.sample_rate if self.sample_rate else 0.0
        return f"<Player {self.status} audio={seconds:.2f}s chunks={chunks}>"

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is not None:
            # What viewers without widgets (nbviewer, GitHub) show in place of the player.
            bundle[0]["text/plain"] = "fish-notebook player (live when the notebook runs)"
        return bundle

    # -- wiring ------------------------------------------------------------------------------

    def attach(self, session: _Session) -> None:
        """Listen to ``session``: replay what it has so far, then follow it live.

        Raises:
            SessionStateError: This player already follows a session.
        """
        from .errors import SessionStateError

        if self._session is not None:
            raise SessionStateError("this player already follows a session: create a new Player")
        self._session = session
        self._controls = session
        self.sample_rate = session.sample_rate
        session.add_listener(self, replay=True)

    def detach(self) -> None:
        """Stop following the session (the recording stays). Safe to call twice."""
        session, self._session = self._session, None
        if session is not None:
            session.remove_listener(self)

    def close(self) -> None:
        """Detach from the session and close the widget in every view."""
        self.detach()
        super().close()

    @property
    def audio(self) -> bytes:
        """All PCM received so far (16-bit little-endian mono at :attr:`sample_rate`)."""
        with self._lock:
            return b"".join(self._chunks)

    def wav_bytes(self) -> bytes:
        """The recording so far as a WAV file."""
        return wav_bytes(self.audio, self.sample_rate)

    @property
    def words(self) -> list[TimedWord]:
        """The words in time received so far (empty unless the session has timestamps)."""
        with self._lock:
            return list(self._words)

    # -- SessionListener ---------------------------------------------------------------------

    def on_text(self, text: str) -> None:
        """A piece of text was sent to the server (shown within ``TRANSCRIPT_INTERVAL``)."""
        with self._lock:
            self._text.append(text)
            self._chars += len(text)
        self._publish_transcript()

    def on_flush(self) -> None:
        """A flush point was sent to the server."""
        with self._lock:
            self._text.append(None)
        self._publish_transcript(now=True)

    def _publish_transcript(self, *, now: bool = False) -> None:
        """Copy the text to the ``transcript`` trait, at most every TRANSCRIPT_INTERVAL.

        The trait is re-sent whole on each change, so an LLM streaming thousands of tokens
        would otherwise cost quadratic traffic; a pending update is sent by a timer.
        """
        with self._lock:
            wait = self._transcript_sent_at + TRANSCRIPT_INTERVAL - time.monotonic()
            if not now and wait > 0:
                if self._transcript_timer is None:
                    self._transcript_timer = threading.Timer(wait, self._publish_transcript)
                    self._transcript_timer.daemon = True
                    self._transcript_timer.start()
                return
            if self._transcript_timer is not None:
                self._transcript_timer.cancel()
                self._transcript_timer = None
            self._transcript_sent_at = time.monotonic()
            transcript = list(self._text)
        if transcript != self.transcript:
            self.transcript = transcript

    def on_audio(self, pcm: bytes, seq: int | None = None) -> None:
        """A chunk of 16-bit LE mono PCM arrived; it is sent to every view at once.

        ``seq`` is informational: the player numbers chunks in the order it receives them.
        On the first chunk the player takes the attached session's ``sample_rate``: a stream
        whose header names another rate than the one asked for (``play()`` of a WAV stream)
        corrects it just before its first audio, and the browser must play at that rate.
        """
        pcm = bytes(pcm)
        session = self._session
        if session is not None and not self._chunks and session.sample_rate != self.sample_rate:
            self.sample_rate = session.sample_rate  # reaches the page before the chunk
        with self._lock:
            seq = len(self._chunks)
            self._chunks.append(pcm)
            self._chunk_chars.append(self._chars)
            chars = self._chars
        self.send({"kind": "audio", "seq": seq, "chars": chars}, buffers=[pcm])
        self.chunk_count = seq + 1

    def on_words(self, words: list[TimedWord]) -> None:
        """Words in time were placed (after the audio they are heard in); sent at once.

        Each word is ``(text, start, end)`` in seconds on the recording's timeline; calls add
        to the words before, in order.
        """
        placed = [TimedWord(str(w[0]), float(w[1]), float(w[2])) for w in words]
        if not placed:
            return
        if self._transcript_timer is not None:
            # The page finds each word in the transcript: let the text arrive first.
            self._publish_transcript(now=True)
        with self._lock:
            first = len(self._words)
            self._words.extend(placed)
        self.send({"kind": "words", "from": first, "words": [list(w) for w in placed]})

    def on_state(self, state: str, error: str | None = None) -> None:
        """The session changed state; a terminal state publishes the static fallback."""
        self._publish_transcript(now=True)
        self.error = error or ""
        self.status = state
        if state in FINAL_STATES and self._fallback is not None:
            self._fallback.publish(self)

    def on_metrics(self, metrics: dict[str, Any]) -> None:
        """The session's metrics changed."""
        self.metrics = dict(metrics)

    # -- browser messages --------------------------------------------------------------------

    def _handle_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("kind")
        if kind == "replay-request":
            seqs = content.get("seqs")
            if isinstance(seqs, list):
                self._send_chunks([s for s in seqs if isinstance(s, int)])
            else:
                self._send_inventory()
        elif kind in ("flush", "stop"):
            controls = self._controls
            if controls is None:
                return
            try:
                controls.flush() if kind == "flush" else controls.stop()
            except FishNotebookError as exc:
                # A click that races the end of the session: show it, never raise in a callback.
                self.error = str(exc)

    def _send_inventory(self) -> None:
        """Tell a view how many chunks exist; it then asks for the ones it lacks.

        Two steps, because the request usually comes from a view that already received most
        chunks live (its answer waits while a cell blocks): only what is missing is resent.
        ``first`` tells the view whether it is the first to ask (a fresh display plays what
        it missed; a reloaded page of a finished session waits for Play).
        """
        with self._lock:
            total = len(self._chunks)
            words = [list(w) for w in self._words]
            self._replays += 1
            first = self._replays == 1
        message: dict[str, Any] = {"kind": "recording", "total": total, "first": first}
        if words:
            message["words"] = words
        self.send(message)

    def _send_chunks(self, seqs: list[int]) -> None:
        """Send the recorded chunks ``seqs`` in messages of at most about 1 MB of PCM."""
        with self._lock:
            wanted = [
                (s, self._chunks[s], self._chunk_chars[s])
                for s in seqs
                if 0 <= s < len(self._chunks)
            ]
        start = 0
        while start < len(wanted):
            end, size = start, 0
            while end < len(wanted) and (
                end == start or size + len(wanted[end][1]) <= _REPLAY_BATCH_BYTES
            ):
                size += len(wanted[end][1])
                end += 1
            batch = wanted[start:end]
            self.send(
                {
                    "kind": "replay",
                    "seqs": [seq for seq, _, _ in batch],
                    "chars": [chars for _, _, chars in batch],
                },
                buffers=[pcm for _, pcm, _ in batch],
            )
            start = end

    # -- static fallback ---------------------------------------------------------------------

    def _set_fallback(self, fallback: _Fallback) -> None:
        self._fallback = fallback
        if self.status in FINAL_STATES:
            fallback.publish(self)


class _Fallback:
    """A display output that gets a standard ``<audio>`` element when the session ends.

    The update is published in the context of the cell that displayed the player, so it is
    addressed to that cell even though it comes from the session's thread.
    """

    def __init__(self, handle: DisplayHandle, player_id: str, audio_format: str = "wav") -> None:
        self._handle = handle
        self._player_id = player_id
        self._format = audio_format
        self._context = contextvars.copy_context()
        self._published = False
        self._lock = threading.Lock()

    def publish(self, player: Player) -> None:
        """Replace the placeholder by the recording. Only the first call does anything."""
        with self._lock:
            if self._published:
                return
            self._published = True
        with player._lock:
            chunks = list(player._chunks)
        if not chunks:
            return
        fmt, data = formats.get(self._format), b""
        if fmt.name != "wav":
            try:
                data = _encode_chunks(fmt, chunks, player.sample_rate)
            except MissingDependencyError:
                logger.info("no %s encoder is installed: the saved audio is WAV", fmt.name)
        if not data:
            fmt, data = formats.get("wav"), wav_bytes(b"".join(chunks), player.sample_rate)
        html = _fallback_html(self._player_id, _audio_tag(fmt.mime, data))
        self._context.copy().run(self._handle.update, HTML(html))


def _encode_chunks(fmt: formats.AudioFormat, chunks: list[bytes], sample_rate: int) -> bytes:
    """The recording in ``fmt``, encoded chunk by chunk: no second whole copy of the PCM."""
    encoder = fmt.encode_stream(sample_rate, FALLBACK_MP3_BITRATE)
    return b"".join([*(encoder.encode(chunk) for chunk in chunks), encoder.finish()])


def _audio_tag(mime: str, data: bytes) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<audio controls preload="none" src="data:{mime};base64,{encoded}"></audio>'


def _fallback_html(player_id: str, body: str) -> str:
    return f'<div class="fishnb-fallback" data-fishnb-player="{player_id}">{body}</div>'


def display_player(
    session: _Session | None = None,
    *,
    fallback: str | None = "wav",
    display_fn: Callable[..., Any] = display,
    **kwargs: Any,
) -> Player:
    """Display a live player for ``session`` (or an unattached one) and return it.

    Args:
        session: The session to play; ``None`` gives a player you feed yourself.
        fallback: When the session ends, also put a standard ``<audio>`` element holding the
            recording in the output, so a saved notebook plays where widgets do not run
            (nbviewer, nbconvert HTML). ``"wav"`` (exact, about 88 kB per second at
            44.1 kHz), ``"mp3"`` (about 11 kB per second; needs ``fish-notebook[local]``,
            WAV otherwise) or ``None``. The live player hides it while it runs.
        display_fn: How to display (IPython's ``display`` by default).
        **kwargs: Passed to :class:`Player`.

    Raises:
        ValidationError: ``fallback`` is not one of the values above.
    """
    if fallback not in FALLBACK_FORMATS:
        raise ValidationError("fallback", fallback, "must be 'wav', 'mp3' or None")
    player = Player(**kwargs)
    display_fn(player)
    if fallback is not None:
        handle = display_fn(HTML(_fallback_html(player.player_id, "")), display_id=True)
        if isinstance(handle, DisplayHandle):
            player._set_fallback(_Fallback(handle, player.player_id, fallback))
    if session is not None:
        player.attach(session)
    return player
