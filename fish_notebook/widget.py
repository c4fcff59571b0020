"""The live player: an anywidget that plays speech while it arrives.

:class:`Player` is a session listener (see ``session.py``): the session calls its ``on_*``
methods from its IO thread, and the player forwards what it hears to every open view. It
keeps no copy of what it plays: it reads the session's
:class:`~fish_notebook.recording.Recording` (a player fed by hand records into one of its own).

What goes where, and why:

- Audio travels as binary comm buffers, one message per chunk
  (``{"kind": "audio", "seq": n, "chars": c}`` + the PCM bytes). It is never put in a trait:
  a growing trait would be re-sent whole on every change.
- Everything else a view needs (state, transcript with flush points, metrics, sample rate,
  error) lives in small synced traits, so a view opened late has it at once. The transcript
  goes already cut into what the page shows (:func:`transcript_parts`: words, delivery cues,
  speaker tags, skipped markup), so the cue rules live in Python only (``cues.py``).
- Words in time (a session with ``timestamps=True``) go as they change, right after the
  audio of the event that changed them: ``{"kind": "words", "from": i, "words": [[text,
  start, end], ...]}``, seconds on the recording's timeline (0 = the first sample of chunk
  0), meaning "from index ``i`` on, the words are these": the page replaces its words from
  ``i`` (a server revises the words of the chunk it is rendering), never appends. They are
  not a trait, which would be re-sent whole as it grows: a view that missed some gets them
  all in the inventory below (``from`` 0). The inventory is read and sent with the
  recording held still, so it and the live messages reach the page in the order the
  changes happened.
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
import contextlib
import contextvars
import itertools
import logging
import pathlib
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Protocol

import anywidget
import traitlets
from IPython.display import HTML, DisplayHandle, display

from . import formats
from .audio import wav_bytes
from .client import TimedWord
from .cues import split_cues
from .errors import (
    FishNotebookError,
    MissingDependencyError,
    SessionStateError,
    ValidationError,
)
from .recording import FINAL_STATES, PLAYBACK_POLICIES, SESSION_STATES, Recording

__all__ = ["Controls", "Player", "display_player", "transcript_parts"]

logger = logging.getLogger("fish_notebook.widget")

_STATIC = pathlib.Path(__file__).parent / "static"

#: What every widget's page code shares, in static/shared/: joined first into each module.
_SHARED_JS = ("views.js", "figures.js")
#: ...and the style rules every widget shares, joined first into each style sheet.
_SHARED_CSS = "shared/widget.css"

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
    "voice.js",
    "main.js",
)


def joined_esm(folder: str, names: Sequence[str]) -> str:
    """One ES module from the files of static/shared/ (``_SHARED_JS``), then the files
    ``names`` of static/``folder``/, joined in that order (they share one scope; only the last
    one exports)."""
    paths = [f"shared/{name}" for name in _SHARED_JS] + [f"{folder}/{name}" for name in names]
    return "\n".join(
        f"// ---- {path}\n{(_STATIC / path).read_text(encoding='utf-8')}" for path in paths
    )


def joined_css(name: str) -> str:
    """A widget's style sheet: the rules every widget shares (``_SHARED_CSS``), then its own
    static/``name``."""
    return "\n".join(
        f"/* ---- {path} */\n{(_STATIC / path).read_text(encoding='utf-8')}"
        for path in (_SHARED_CSS, name)
    )


def _player_esm() -> str:
    """The player's ES module: the files of static/player/ joined in ``_PLAYER_JS`` order."""
    return joined_esm("player", _PLAYER_JS)


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

    @property
    def recording(self) -> Recording: ...

    player: Any  # the player shown for it (marimo displays the session as this)

    def add_listener(self, listener: Any, *, replay: bool = True) -> None: ...

    def remove_listener(self, listener: Any) -> None: ...


class Player(anywidget.AnyWidget):
    """A live audio player for one speech session.

    Feed it by attaching a session (``Player(session)`` or :meth:`attach`): it then reads the
    session's :class:`~fish_notebook.recording.Recording` and keeps no copy of its own. Or
    call the ``on_*`` listener methods yourself (from any one thread at a time, in stream
    order): it then records what you give it in a Recording of its own (:attr:`recording`).

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
    _css = joined_css("player.css")

    #: idle, connecting, streaming, finished, failed or stopped.
    status = traitlets.Unicode("idle").tag(sync=True)
    #: The session's error message when ``status == "failed"``.
    error = traitlets.Unicode("").tag(sync=True)
    #: Hz of the 16-bit mono PCM sent to the browser.
    sample_rate = traitlets.Int(44100).tag(sync=True)
    #: The transcript as the page shows it: words (``str``), ``None`` at a flush point, and
    #: ``{"cue" | "break" | "speaker" | "skipped": text}`` parts (:func:`transcript_parts`).
    transcript: traitlets.List[str | dict[str, Any] | None] = traitlets.List().tag(sync=True)
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
    PLAYBACK_POLICIES: ClassVar[tuple[str, ...]] = PLAYBACK_POLICIES
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
        # Fed by hand until attached; attaching swaps in the session's recording.
        self._recording = Recording(self.sample_rate)
        self._fed_by_hand = True
        # The transcript trait is re-sent whole on each change, so an LLM streaming
        # thousands of tokens would cost quadratic traffic: it is updated at most this often.
        self._publish_transcript = _Throttle(self._send_transcript, TRANSCRIPT_INTERVAL)
        self._replays = itertools.count()  # thread-safe: next() holds the GIL
        self._session: _Session | None = None
        self._controls: Controls | None = controls
        self._fallback: _Fallback | None = None
        self.on_msg(self._handle_message)
        if session is not None:
            self.attach(session)

    def __repr__(self) -> str:
        if "_recording" not in self.__dict__:  # still in __init__
            return "<Player>"
        seconds, chunks = self._recording.duration, self._recording.chunk_count
        return f"<Player {self.status} audio={seconds:.2f}s chunks={chunks}>"

    def _repr_mimebundle_(self, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is not None:
            # What viewers without widgets (nbviewer, GitHub) show in place of the player.
            bundle[0]["text/plain"] = "fish-notebook player (live when the notebook runs)"
        return bundle

    @traitlets.observe("sample_rate")
    def _rate_changed(self, change: Any) -> None:
        if self.__dict__.get("_fed_by_hand"):  # a session's recording knows its own rate
            self._recording.sample_rate = change["new"]

    # -- wiring ------------------------------------------------------------------------------

    def attach(self, session: _Session) -> None:
        """Listen to ``session``: replay what it has so far, then follow it live.

        Raises:
            SessionStateError: This player follows (or followed) a session, or was fed audio
                by hand.
        """
        if not self._fed_by_hand:  # attached now or before: its views hold that recording
            raise SessionStateError("this player already follows a session: create a new Player")
        if self._recording.chunk_count:
            raise SessionStateError("this player was fed audio by hand: create a new Player")
        self._session, self._controls = session, session
        self._fed_by_hand = False
        self._recording = session.recording
        self.sample_rate = session.recording.sample_rate
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
    def recording(self) -> Recording:
        """What this player plays: its session's recording, or its own when fed by hand."""
        return self._recording

    @property
    def audio(self) -> bytes:
        """All PCM received so far (16-bit little-endian mono at :attr:`sample_rate`)."""
        return self._recording.audio

    def wav_bytes(self) -> bytes:
        """The recording so far as a WAV file."""
        return wav_bytes(self.audio, self.sample_rate)

    @property
    def words(self) -> list[TimedWord]:
        """The words in time received so far (empty unless the session has timestamps)."""
        return self._recording.words

    # -- SessionListener ---------------------------------------------------------------------

    def on_text(self, text: str) -> None:
        """A piece of text was sent to the server (shown within ``TRANSCRIPT_INTERVAL``)."""
        if self._fed_by_hand:
            self._recording.add_text(text)
        self._publish_transcript()

    def on_flush(self) -> None:
        """A flush point was sent to the server."""
        if self._fed_by_hand:
            self._recording.add_flush()
        self._publish_transcript(now=True)

    def on_skipped(self, text: str) -> None:
        """Markup the speakable filter did not speak: shown greyed in the transcript."""
        if self._fed_by_hand:
            self._recording.add_skipped(text)
        self._publish_transcript()

    def _send_transcript(self) -> None:
        """The recording's transcript, cut into parts, to the trait (``_publish_transcript``)."""
        transcript = transcript_parts(self._recording.transcript_entries)
        if transcript != self.transcript:
            self.transcript = transcript

    def on_audio(self, pcm: bytes, seq: int | None = None) -> None:
        """A chunk of 16-bit LE mono PCM arrived; it is sent to every view at once.

        Fed by hand, ``seq`` is informational: the player numbers chunks as they come. The
        recording's ``sample_rate`` reaches the page first: a WAV stream's header may have
        corrected it just before its first audio (``play()``).
        """
        if self._fed_by_hand:
            seq = self._recording.add_audio(bytes(pcm))
        if seq is None:
            return  # no samples: nothing to play
        chunk = self._recording.chunk(seq)
        if self._recording.sample_rate != self.sample_rate:
            self.sample_rate = self._recording.sample_rate  # reaches the page before the chunk
        self.send({"kind": "audio", "seq": seq, "chars": chunk.chars}, buffers=[chunk.pcm])
        self.chunk_count = seq + 1

    def on_words(self, words: list[TimedWord], start: int | None = None) -> None:
        """From index ``start`` on, the words in time are now ``words`` (``(text, start,
        end)``, seconds on the recording's timeline): sent at once, the page replaces its
        words from there. Fed by hand, no ``start`` means after the words so far."""
        placed = [TimedWord(str(w[0]), float(w[1]), float(w[2])) for w in words]
        if start is None and not placed:
            return
        if self._publish_transcript.pending:  # the page finds words in the text: text first
            self._publish_transcript(now=True)
        if self._fed_by_hand:
            start = self._recording.add_words(placed, start)
        elif start is None:
            start = len(self._recording.words) - len(placed)  # they are the last ones
        self.send({"kind": "words", "from": start, "words": [list(w) for w in placed]})

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
            playhead = content.get("playhead")
            if kind == "stop" and isinstance(playhead, (int, float)) and playhead >= 0:
                # What the listener heard ends there (session.heard); a hand-fed player's
                # controls may not keep it.
                with contextlib.suppress(AttributeError):
                    controls.playhead = float(playhead)  # type: ignore[attr-defined]
            try:
                controls.flush() if kind == "flush" else controls.stop()
            except FishNotebookError as exc:
                # A click that races the end of the session: show it, never raise in a callback.
                self.error = str(exc)

    def _send_inventory(self) -> None:
        """Tell a view how many chunks exist (it then asks for the ones it lacks): see
        :func:`_inventory`."""
        with self._recording.held():  # no live words message may overtake this one
            self.send(_inventory(self._recording, first=next(self._replays) == 0))

    def _send_chunks(self, seqs: list[int]) -> None:
        """Send the recorded chunks among ``seqs``, in messages of bounded size."""
        for content, buffers in _replay_messages(self._recording, seqs):
            self.send(content, buffers=buffers)

    # -- static fallback ---------------------------------------------------------------------

    def _set_fallback(self, fallback: _Fallback) -> None:
        self._fallback = fallback
        if self.status in FINAL_STATES:
            fallback.publish(self)


def _inventory(recording: Recording, *, first: bool) -> dict[str, Any]:
    """The answer to a view's first ``replay-request``: how many chunks are recorded, whether
    it is the ``first`` to ask, and every word so far.

    Two steps, because the request usually comes from a view that already received most
    chunks live (its answer waits while a cell blocks): only what is missing is resent.
    ``first`` tells the view whether it is the first to ask (a fresh display plays what it
    missed; a reloaded page of a finished session waits for Play).
    """
    message: dict[str, Any] = {"kind": "recording", "total": recording.chunk_count}
    message["first"] = first
    words = [list(w) for w in recording.words]
    if words:
        message["words"] = words
    return message


def transcript_parts(
    entries: list[str | dict[str, str] | None],
) -> list[str | dict[str, Any] | None]:
    """The transcript as the page shows it, from a recording's ``transcript_entries``.

    Each run of text pieces is cut by :func:`fish_notebook.cues.split_cues` as one text (a
    cue streamed in two pieces is still found), then at the pieces' own ends (a cue across
    an end stays whole): words stay ``str``, a cue becomes ``{"cue": text}``, a pause
    ``{"break": text}``, a speaker tag ``{"speaker": text, "n": number}``. ``None`` (a flush)
    and ``{"skipped": text}`` pass as they are. Text without cues comes out as it went in.
    """
    out: list[str | dict[str, Any] | None] = []
    run: list[str] = []
    for entry in [*entries, None]:
        if isinstance(entry, str):
            run.append(entry)
            continue
        out += _split_run(run)
        run = []
        out.append(dict(entry) if isinstance(entry, dict) else entry)
    return out[:-1]


def _split_run(pieces: list[str]) -> list[str | dict[str, Any]]:
    ends = list(itertools.accumulate(len(p) for p in pieces))
    out: list[str | dict[str, Any]] = []
    at = 0
    for part in split_cues("".join(pieces)):
        after = at + len(part.text)
        if part.kind != "words":
            extra = {"n": int(part.name)} if part.kind == "speaker" else {}
            out.append({part.kind: part.text, **extra})
        else:
            cuts = [at, *(e for e in ends if at < e < after), after]
            out += [part.text[a - at : b - at] for a, b in itertools.pairwise(cuts)]
        at = after
    return out


class _Throttle:
    """Calls ``action`` at most every ``interval`` seconds: a call that comes sooner is made
    by a timer when the interval is over (one pending call at most); ``now=True`` calls at
    once and drops the pending one. Thread-safe; ``action`` runs outside the lock."""

    def __init__(self, action: Callable[[], None], interval: float) -> None:
        self._action = action
        self._interval = interval
        self._lock = threading.Lock()
        self._last = 0.0
        self._timer: threading.Timer | None = None

    @property
    def pending(self) -> bool:
        return self._timer is not None

    def __call__(self, *, now: bool = False) -> None:
        with self._lock:
            wait = self._last + self._interval - time.monotonic()
            if not now and wait > 0:
                if self._timer is None:
                    self._timer = threading.Timer(wait, self.__call__, kwargs={"now": True})
                    self._timer.daemon = True
                    self._timer.start()
                return
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._last = time.monotonic()
        self._action()


def _replay_messages(
    recording: Recording, seqs: list[int]
) -> Iterator[tuple[dict[str, Any], list[bytes]]]:
    """The ``replay`` messages (content, buffers) carrying the chunks among ``seqs`` that
    ``recording`` has, in order, each with at most ``_REPLAY_BATCH_BYTES`` of PCM (or one
    bigger chunk)."""
    total = recording.chunk_count
    chunks = [recording.chunk(seq) for seq in seqs if 0 <= seq < total]
    start = 0
    while start < len(chunks):
        end, size = start + 1, len(chunks[start].pcm)
        while end < len(chunks) and size + len(chunks[end].pcm) <= _REPLAY_BATCH_BYTES:
            size += len(chunks[end].pcm)
            end += 1
        batch = chunks[start:end]
        seqs_and_chars = {"seqs": [c.seq for c in batch], "chars": [c.chars for c in batch]}
        yield {"kind": "replay", **seqs_and_chars}, [c.pcm for c in batch]
        start = end


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
        recording = player.recording
        chunks, rate = recording.chunks, recording.sample_rate
        if not chunks:
            return
        fmt, data = formats.get(self._format), b""
        if fmt.name != "wav":
            try:
                data = _encode_chunks(fmt, chunks, rate)
            except MissingDependencyError:
                logger.info("no %s encoder is installed: the saved audio is WAV", fmt.name)
        if not data:
            fmt, data = formats.get("wav"), wav_bytes(b"".join(chunks), rate)
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

    In a marimo notebook (``display_fn`` left alone) nothing is displayed here: marimo shows
    a cell's last expression, not what ``display()`` is given. End the cell with the session
    (it shows as this player: ``session.player``) or, without a session, with the player.
    No fallback either: marimo keeps no outputs in its notebook files.

    Raises:
        ValidationError: ``fallback`` is not one of the values above.
    """
    if fallback not in FALLBACK_FORMATS:
        raise ValidationError("fallback", fallback, "must be 'wav', 'mp3' or None")
    player = Player(**kwargs)
    if session is not None:
        session.player = player
    if display_fn is display and _running_in_marimo():
        if session is not None:
            player.attach(session)
        return player
    display_fn(player)
    if fallback is not None:
        handle = display_fn(HTML(_fallback_html(player.player_id, "")), display_id=True)
        if isinstance(handle, DisplayHandle):
            player._set_fallback(_Fallback(handle, player.player_id, fallback))
    if session is not None:
        player.attach(session)
    return player


def _running_in_marimo() -> bool:
    """Whether this runs in a marimo notebook's kernel (``marimo edit`` or ``marimo run``).

    marimo is looked up, never imported: a process that has not imported it runs no marimo
    notebook, and importing it would cost every other kernel time.
    """
    marimo = sys.modules.get("marimo")
    if marimo is None:
        return False
    try:
        return bool(marimo.running_in_notebook())
    except Exception:  # an old or half-imported marimo: not one this code knows
        return False
