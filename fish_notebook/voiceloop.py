"""The kernel side of the voice loop: microphone audio in, a spoken answer out.

::

    loop = VoiceLoop()                     # the default agent; speech where speak() sends it
    turn = loop.hear("question.wav")       # drive it from a file (no microphone needed)
    turn.user, turn.answer, turn.heard, turn.metrics.latencies()

    loop.feed(pcm)                         # or: 16 kHz 16-bit mono PCM frames as they come

The path of one turn (DESIGN.md, "Listening"): the frames go through the voice activity
detector (:mod:`fish_notebook.vad`) and the turn-taking machine (:mod:`fish_notebook.turns`);
at the end of the user's turn the utterance, as WAV, goes to ``POST /v1/asr``
(:mod:`fish_notebook.transcribe`), the transcript to the agent (:mod:`fish_notebook.agents`),
and the agent's stream to a speech :class:`~fish_notebook.session.Session` (word timestamps
on, a flush at every sentence end). ``on_answer(session)`` lets a page show its player.

Latency: the end of a turn is decided after the detector's end-of-turn silence (``silence``
of :class:`~fish_notebook.vad.VoiceActivityDetector`, 0.6 s by default), but the utterance is
sent to speech recognition once the user has been silent ``early_transcript_s`` (0.2 s): its
transcript is used if the turn ends on that same audio, and dropped if the user spoke on
(:mod:`fish_notebook.turns`, "Early transcripts"). Speech recognition is asked for the text
alone (no segment timestamps: the loop does not use them). When the user starts speaking,
a socket to the answer's speech server is opened ahead (:mod:`fish_notebook.pool`), so the
answer's session skips the handshakes.

Barge-in: speech confirmed for ``min_barge_in_s`` over an answer calls ``on_barge_in(turn)``
(the page silences the answer and reports its playhead with :meth:`VoiceLoop.interrupt`);
with no such callback the loop interrupts at once. :meth:`VoiceLoop.interrupt` stops the
session and the agent's stream, and keeps in the turn only what was heard
(:mod:`fish_notebook.heard`). The conversation the agent sees is made of what was heard.

Threads: :meth:`feed` runs the detector in the caller's thread (about 0.15 ms per 32 ms of
audio); transcription, the agent and the speech run on fish-notebook's background loop, so
the kernel stays free. Every public method is thread-safe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _loop, endpoints
from ._checks import check_number
from .agents import Agent, AgentAnswer, Messages, agent_name, default_agent
from .audio import WavStreamParser, wav_bytes
from .client import build_request
from .errors import MissingDependencyError, SessionStateError, StreamTimeout, ValidationError
from .heard import Heard
from .session import FINAL_STATES, Session
from .speaking import defaults, make_client, request_options_with_defaults
from .transcribe import DEFAULT_TIMEOUT, Transcript, atranscribe
from .turns import (
    DEFAULT_EARLY_TRANSCRIPT,
    DEFAULT_MIN_BARGE_IN,
    BargeIn,
    CancelReply,
    EndOfTurn,
    TranscribeEarly,
    TurnMetrics,
    TurnTaker,
)
from .vad import SAMPLE_RATE, SpeechEnded, SpeechStarted, VoiceActivityDetector

__all__ = ["SAMPLE_RATE", "VoiceLoop", "VoiceTurn", "microphone_pcm"]

logger = logging.getLogger("fish_notebook.voiceloop")

PRE_ROLL = 0.25  # seconds sent before the detected start of speech (soft onsets)
TAIL = 0.2  # seconds sent after its end
IDLE_KEEP = 1.0  # seconds of audio kept while nobody speaks
MAX_TURN = 60.0  # seconds of one turn's audio kept at most (the oldest is dropped)
PAGE_REPLY = 1.0  # seconds the page has to report its playhead after a barge-in
PLAYBACK_GRACE = 5.0  # seconds past the audio's length a page may take to report its end
FRAME_BYTES = 640  # 20 ms at 16 kHz: how hear() feeds a file
_WARM_UP = "warm-up"  # work for _act: open the answer's socket ahead


@dataclass(eq=False)
class VoiceTurn:
    """One exchange: what the user said, what the agent answered, what the user heard.

    ``answer`` is every word the agent wrote; ``heard`` what the user heard of it (all of
    it unless ``interrupted``). ``error`` holds what went wrong (speech recognition, the
    agent, the speech), if anything. ``done`` once the answer is over. ``early_transcript``:
    the transcript was asked for during the pause that ended the turn (the same audio).
    """

    user: str
    agent: str
    metrics: TurnMetrics
    transcript: Transcript | None = None
    answer: str = ""
    heard: str = ""
    interrupted: bool = False
    heard_detail: Heard | None = None
    error: BaseException | None = None
    done: bool = False
    early_transcript: bool = False
    session: Session | None = field(default=None, repr=False)
    reply: AgentAnswer | None = field(default=None, repr=False)

    def messages(self) -> Messages:
        """This turn as chat messages (none for a turn that failed before any transcript)."""
        out = [{"role": "user", "content": self.user}] if self.user else []
        if self.heard:
            out.append({"role": "assistant", "content": self.heard})
        return out


def microphone_pcm(audio: str | os.PathLike[str] | bytes) -> bytes:
    """A WAV file (path or bytes; 16-bit PCM, any rate, any channels) as 16 kHz 16-bit mono
    PCM, what the page's microphone sends. Resampling needs ``soxr`` (extra ``listen``)."""
    data = Path(audio).read_bytes() if isinstance(audio, str | os.PathLike) else bytes(audio)
    parser = WavStreamParser()
    pcm = parser.feed(data) + parser.finish()
    rate, channels, bits = parser.sample_rate, parser.channels, parser.bits_per_sample
    if bits != 16 or rate is None or channels is None:
        raise ValidationError("audio", f"<{len(data)} bytes>", "must be a 16-bit PCM WAV file")
    if channels == 1 and rate == SAMPLE_RATE:
        return pcm
    try:
        import numpy as np
        import soxr
    except ImportError as exc:
        raise MissingDependencyError("soxr", "listen", "Resampling a WAV file") from exc

    samples = np.frombuffer(pcm, "<i2").reshape(-1, channels).mean(axis=1) / 32768.0
    if rate != SAMPLE_RATE:
        samples = soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ")
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def _heard_of(session: Session, playhead: float | None) -> Heard:
    if playhead is not None:
        session.playhead = playhead
    return session.heard


class _Microphone:
    """The microphone audio the turn machine may still ask for, in absolute samples."""

    def __init__(self) -> None:
        self.audio = bytearray()
        self.start = 0  # the absolute sample of audio[0]

    def append(self, pcm: bytes | bytearray | memoryview) -> None:
        self.audio += pcm

    def keep_from(self, sample: int) -> None:
        drop = min(max(0, sample - self.start), len(self.audio) // 2)
        if drop * 2 >= 16_000:  # trim in batches: fewer copies of the buffer
            del self.audio[: drop * 2]
            self.start += drop

    def wav(self, start: int, end: int) -> bytes:
        first = max(start, self.start) - self.start
        last = max(first, end - self.start)
        return wav_bytes(bytes(self.audio[2 * first : 2 * last]), SAMPLE_RATE)


Recognition = concurrent.futures.Future[tuple[Transcript, float]]


class _EarlyTranscript:
    """The transcription asked for during a pause that may end the turn (one at a time).

    Its answer serves the turn's end only for the very same utterance: the same turn, the
    same bytes of audio (no speech came in between). A newer pause's request replaces it;
    the answer of one replaced or not used is dropped (a server finishes a run it began).
    """

    def __init__(self, asr: dict[str, Any], clock: Callable[[], float]) -> None:
        self.asr, self.clock = asr, clock
        self._lock = threading.Lock()
        self._pending: tuple[TurnMetrics, bytes, Recognition] | None = None

    async def _recognize(self, wav: bytes) -> tuple[Transcript, float]:
        transcript = await atranscribe(wav, **self.asr)
        return transcript, self.clock()

    def start(self, metrics: TurnMetrics, wav: bytes) -> None:
        future = asyncio.run_coroutine_threadsafe(self._recognize(wav), _loop.background_loop())
        with self._lock:
            replaced, self._pending = self._pending, (metrics, wav, future)
        if replaced is not None:
            replaced[2].cancel()  # the user spoke on after that pause

    def take(self, metrics: TurnMetrics, wav: bytes) -> Recognition | None:
        """The early transcription of exactly ``wav`` for ``metrics``' turn, if one was asked
        for; any other is dropped."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None and pending[0] is metrics and pending[1] == wav:
            return pending[2]
        if pending is not None:
            pending[2].cancel()
        return None

    def cancel(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            pending[2].cancel()


class _AnswerWatcher:
    """A session listener: the answer's first audio and its end, told to the answerer."""

    def __init__(self, answerer: _Answerer, turn: VoiceTurn) -> None:
        self.answerer, self.turn = answerer, turn

    def on_text(self, text: str) -> None: ...
    def on_flush(self) -> None: ...
    def on_metrics(self, metrics: dict[str, Any]) -> None: ...

    def on_audio(self, pcm: bytes, seq: int) -> None:
        if seq == 0:
            with self.answerer.changed:
                self.answerer.machine.first_audio(self.turn.metrics)

    def on_state(self, state: str, error: str | None) -> None:
        if state in FINAL_STATES:  # called under the session's lock: act after it
            _loop.background_loop().call_soon(self.answerer.answer_over, self.turn)


def _asr_options(
    speech: tuple[str | None, str | None, str | None],
    asr: tuple[str | None, str | None, str | None],
    language: str | None,
    timeout: float,
) -> dict[str, Any]:
    """Where speech recognition goes (by default where the speech goes), and what it asks:
    the text alone (the loop does not use segment timestamps, which cost decoding)."""
    (base_url, api_key, backend), (asr_base_url, asr_api_key, asr_backend) = speech, asr
    same = asr_base_url is None and asr_backend is None
    return {
        "language": language,
        "base_url": (base_url or defaults.url) if same else asr_base_url,
        "api_key": asr_api_key if asr_api_key is not None else api_key,
        "backend": (backend or defaults.backend) if same else (asr_backend or "auto"),
        "timeout": timeout,
        "timestamps": False,
    }


def _log_warm_failure(future: concurrent.futures.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:  # the answer will say
        logger.debug("no socket opened ahead: %s", future.exception())


def _call(hook: Callable[..., Any] | None, *args: Any) -> bool:
    """Run a user's hook; a broken one is logged and never breaks the loop."""
    if hook is None:
        return False
    try:
        hook(*args)
    except Exception:
        logger.exception("voice loop hook %r failed", hook)
        return False
    return True


@dataclass
class _Speech:
    """How answers are made: the agent, the speech request and client, speech recognition."""

    agent: Agent
    system: str | None
    client: Any
    model: str | None
    request: dict[str, Any]
    asr: dict[str, Any]
    answer_timeout: float
    wait_for_page: bool


class _Answerer:
    """Answers each finished user turn: transcript, agent, speech, and what was heard.

    Shares the loop's lock (``changed``, a Condition), turn machine and list of turns; it
    never calls into a session while holding the lock (a session calls its listeners under
    its own lock, and the watcher takes this one).
    """

    def __init__(
        self,
        speech: _Speech,
        machine: TurnTaker,
        changed: threading.Condition,
        clock: Callable[[], float],
        hooks: VoiceLoop,
    ) -> None:
        self.speech, self.machine, self.changed, self.clock = speech, machine, changed, clock
        self.hooks = hooks  # on_answer and on_state are read at each use
        self.early = _EarlyTranscript(speech.asr, clock)
        self.warming: concurrent.futures.Future[Any] | None = None
        self.turns: list[VoiceTurn] = []
        self.asked: VoiceTurn | None = None  # the page was asked for this turn's playhead
        self.replies: dict[int, Any] = {}  # id(metrics) -> the future of a reply in the works

    def start_reply(self, metrics: TurnMetrics, wav: bytes) -> None:
        """Answer the turn of ``metrics`` (its utterance: ``wav``) on the background loop."""
        future = asyncio.run_coroutine_threadsafe(self.reply(metrics, wav), _loop.background_loop())
        with self.changed:
            self.replies[id(metrics)] = future
        future.add_done_callback(functools.partial(self._reply_done, metrics))

    def _reply_done(self, metrics: TurnMetrics, _future: Any) -> None:
        with self.changed:
            self.replies.pop(id(metrics), None)
            self.changed.notify_all()
        self.hooks._emit_state()

    def cancel_replies(self, metrics: TurnMetrics | None = None) -> None:
        """Drop the reply in the works for ``metrics``' turn (None: every one)."""
        with self.changed:
            keys = list(self.replies) if metrics is None else [id(metrics)]
            futures = [self.replies[k] for k in keys if k in self.replies]
        for future in futures:
            future.cancel()

    def messages(self) -> Messages:
        with self.changed:
            system = self.speech.system
            out = [{"role": "system", "content": system}] if system else []
            for turn in self.turns:
                out += turn.messages()
            return out

    def warm(self) -> None:
        """Open a socket to the answer's speech server ahead (none when the pool has one)."""
        if self.warming is not None and not self.warming.done():
            return
        warming = self.speech.client.warm(model=self.speech.model, timestamps=True)
        self.warming = asyncio.run_coroutine_threadsafe(warming, _loop.background_loop())
        self.warming.add_done_callback(_log_warm_failure)

    async def transcript(self, metrics: TurnMetrics, wav: bytes) -> tuple[Transcript, float, bool]:
        """The turn's transcript, when speech recognition answered, and whether it was the
        early one."""
        early = self.early.take(metrics, wav)
        if early is not None:
            try:
                transcript, recognized = await asyncio.wrap_future(early)
                return transcript, recognized, True
            except Exception as exc:  # asked again below: the failure may have passed
                logger.debug("the early transcription failed: %s", exc)
        transcript = await atranscribe(wav, **self.speech.asr)
        return transcript, self.clock(), False

    async def reply(self, metrics: TurnMetrics, wav: bytes) -> None:
        agent = agent_name(self.speech.agent)
        try:
            transcript, recognized, early = await self.transcript(metrics, wav)
        except Exception as exc:
            logger.warning("speech recognition failed: %s", exc)
            with self.changed:
                self.machine.transcribed(metrics, "")
                self.turns.append(VoiceTurn("", agent, metrics, error=exc, done=True))
            return
        with self.changed:
            if not self.machine.transcribed(metrics, transcript.text, recognized):
                return  # nothing was said (noise), or the user went on speaking
            turn = VoiceTurn(transcript.text.strip(), agent, metrics, transcript)
            turn.early_transcript = early
            self.turns.append(turn)
        self.hooks._emit_state()
        try:
            self.start_answer(turn, self.messages())
        except Exception as exc:
            turn.error = exc
            self.settle(turn, None)

    def start_answer(self, turn: VoiceTurn, messages: Messages) -> None:
        speech, metrics = self.speech, turn.metrics

        def first_token() -> None:
            with self.changed:
                self.machine.first_token(metrics)

        reply = AgentAnswer(speech.agent, messages, on_first_token=first_token)
        session = Session(
            reply.stream(),
            client=speech.client,
            model=speech.model,
            timestamps=True,
            start=False,
            **speech.request,
        )
        with self.changed:
            if turn.interrupted:
                return
            turn.session, turn.reply = session, reply
        session.add_listener(_AnswerWatcher(self, turn), replay=False)
        _call(self.hooks.on_answer, session)
        session.start()
        if turn.interrupted:  # a barge-in while it was being set up
            session.stop()
        _loop.background_loop().call_later(speech.answer_timeout, self.overdue, turn)

    def overdue(self, turn: VoiceTurn) -> None:
        if turn.session is not None and not turn.session.done:
            limit = self.speech.answer_timeout
            turn.error = StreamTimeout(f"the answer took longer than {limit:g} s: stopped")
            turn.session.stop()

    def answer_over(self, turn: VoiceTurn) -> None:
        """The answer's session ended (on the IO thread, outside the session's lock)."""
        session = turn.session
        if turn.done or turn.interrupted or session is None:
            return
        if self.speech.wait_for_page and session.duration > 0:
            start = turn.metrics.first_audio or self.clock()
            left = start + session.duration + PLAYBACK_GRACE - self.clock()
            _loop.background_loop().call_later(max(0.0, left), self.settle, turn, None)
            return
        self.settle(turn, None)

    def settle(self, turn: VoiceTurn, playhead: float | None) -> None:
        """The answer is over (played out, or silenced at ``playhead``): keep what was heard."""
        session, reply = turn.session, turn.reply
        detail = _heard_of(session, playhead) if session is not None else None
        with self.changed:
            if turn.done:
                return
            turn.done, turn.heard_detail = True, detail
            turn.heard = detail.text if detail is not None else ""
            turn.answer = reply.text if reply is not None else ""
            if session is not None and session.error is not None and turn.error is None:
                turn.error = session.error
            self.machine.answer_ended(turn.metrics)
            self.changed.notify_all()
        self.hooks._emit_state()

    def interrupt(self, turn: VoiceTurn, playhead: float | None) -> VoiceTurn:
        """Silence ``turn``'s answer: stop the session and the agent, keep what was heard."""
        with self.changed:
            if turn.done or turn.interrupted:
                return turn
            turn.interrupted = True
            first_audio = turn.metrics.first_audio
            if playhead is None:  # no page said: as if played since it reached the kernel
                playhead = 0.0 if first_audio is None else max(0.0, self.clock() - first_audio)
            self.machine.interrupted(turn.metrics)
            session, reply = turn.session, turn.reply
        if session is not None:
            session.stop()
        if reply is not None:
            asyncio.run_coroutine_threadsafe(reply.aclose(), _loop.background_loop())
        self.settle(turn, playhead)
        return turn

    def act(self, action: Any, wav: bytes) -> None:
        """Carry out one action of the turn machine (``wav``: its utterance, if any)."""
        if isinstance(action, EndOfTurn):
            self.start_reply(action.metrics, wav)
        elif isinstance(action, TranscribeEarly):
            self.early.start(action.metrics, wav)
        elif action == _WARM_UP:
            self.warm()
        elif isinstance(action, CancelReply):
            self.cancel_replies(action.cancelled)
        elif isinstance(action, BargeIn):
            self.barge_in(action.interrupted)

    def barge_in(self, metrics: TurnMetrics) -> None:
        """The user talks over ``metrics``' answer: ask the page, or silence it now."""
        with self.changed:
            turn = next((t for t in self.turns if t.metrics is metrics and not t.done), None)
        if turn is None:
            return
        with self.changed:
            self.asked = turn
        if not _call(self.hooks.on_barge_in, turn):
            self.interrupt(turn, None)  # no page to ask where its playhead was
            return
        io = _loop.background_loop()  # the page has PAGE_REPLY seconds to report its playhead
        io.call_soon_threadsafe(io.call_later, PAGE_REPLY, self.interrupt, turn, None)

    def speaking(self) -> VoiceTurn | None:
        """The turn whose answer the page is asked about, else the latest not over."""
        with self.changed:
            if self.asked is not None and not self.asked.done:
                return self.asked
            return next((t for t in reversed(self.turns) if not t.done), None)

    def first_sample(self, at: float | None, turn: VoiceTurn | None = None) -> None:
        with self.changed:
            if turn is None:
                turn = next((t for t in reversed(self.turns) if t.session is not None), None)
            if turn is not None:
                self.machine.first_sample(turn.metrics, at)


class VoiceLoop:
    """Listen, transcribe, answer, speak; see the module docstring.

    Args:
        agent: who answers (see :mod:`fish_notebook.agents`); default :func:`default_agent`.
        system: a system message put first in the conversation the agent sees.
        language: the user's language for speech recognition (None: the server decides).
        voice, model, latency, speed, volume, backend, base_url, api_key, request_options:
            the answer's speech, as for ``speak()`` (kernel defaults fill the gaps).
        asr_base_url, asr_api_key, asr_backend, asr_timeout: where speech recognition goes;
            by default where the speech goes.
        min_barge_in_s: seconds of speech over an answer that interrupt it.
        early_transcript_s: seconds of silence (at least ``TAIL``) after which the utterance
            goes to speech recognition ahead of the end of the turn; None: at the end only.
        vad: a configured :class:`~fish_notebook.vad.VoiceActivityDetector` (its
            ``silence``, 0.6 s by default, is the end-of-turn silence).
        wait_for_page: an answer lasts until the page reports the end of its playback
            (:meth:`playback_ended`), not just until its audio arrived.
        answer_timeout: seconds an answer may last before it is stopped.
        on_answer(session), on_barge_in(turn), on_state(state): hooks (see the module
            docstring); called outside the loop's lock, from the thread that got the news.
    """

    def __init__(
        self,
        agent: Agent | None = None,
        *,
        system: str | None = None,
        language: str | None = None,
        voice: str | None = None,
        model: str | None = None,
        latency: str | None = None,
        speed: float | None = None,
        volume: float | None = None,
        backend: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        asr_base_url: str | None = None,
        asr_api_key: str | None = None,
        asr_backend: str | None = None,
        asr_timeout: float = DEFAULT_TIMEOUT,
        min_barge_in_s: float = DEFAULT_MIN_BARGE_IN,
        early_transcript_s: float | None = DEFAULT_EARLY_TRANSCRIPT,
        vad: VoiceActivityDetector | None = None,
        wait_for_page: bool = False,
        answer_timeout: float = 300.0,
        on_answer: Callable[[Session], None] | None = None,
        on_barge_in: Callable[[VoiceTurn], None] | None = None,
        on_state: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        **request_options: Any,
    ) -> None:
        request = request_options_with_defaults(voice, latency, speed, volume, request_options)
        build_request(**request)  # a bad option fails here, not at the first answer
        speech_at, asr_at = (base_url, api_key, backend), (asr_base_url, asr_api_key, asr_backend)
        asr = _asr_options(speech_at, asr_at, language, asr_timeout)
        endpoints.plan(asr["base_url"], asr["api_key"], asr["backend"])  # fail early
        if early_transcript_s is not None:  # no shorter than the tail the utterance keeps
            check_number("early_transcript_s", early_transcript_s, TAIL, 10)
        speech = _Speech(
            agent=agent if agent is not None else default_agent(),
            system=system,
            client=make_client(backend, base_url=base_url, api_key=api_key, model=model),
            model=model or defaults.model,
            request=request,
            asr=asr,
            answer_timeout=answer_timeout,
            wait_for_page=wait_for_page,
        )
        self.on_answer, self.on_barge_in, self.on_state = on_answer, on_barge_in, on_state
        self._vad = vad or VoiceActivityDetector()
        self._machine = TurnTaker(
            min_barge_in_s=min_barge_in_s, early_transcript_s=early_transcript_s, clock=clock
        )
        self._changed = threading.Condition(threading.RLock())
        self._answerer = _Answerer(speech, self._machine, self._changed, clock, self)
        self._mic = _Microphone()
        self._base = 0  # absolute samples before the detector's offsets (it restarts at finish)
        self._last_state = "listening"
        self._closed = False

    def __repr__(self) -> str:
        return f"<VoiceLoop {self.state} agent={agent_name(self.agent)!r} turns={len(self.turns)}>"

    @property
    def agent(self) -> Agent:
        return self._answerer.speech.agent

    @property
    def turns(self) -> list[VoiceTurn]:
        """Every turn so far, oldest first (the last may still be answering)."""
        with self._changed:
            return list(self._answerer.turns)

    @property
    def wait_for_page(self) -> bool:
        """An answer lasts until the page reports its end (:meth:`playback_ended`); settable."""
        return self._answerer.speech.wait_for_page

    @wait_for_page.setter
    def wait_for_page(self, value: bool) -> None:
        self._answerer.speech.wait_for_page = bool(value)

    @property
    def state(self) -> str:
        """``listening``, ``user_speaking``, ``thinking`` or ``answering``."""
        return self._machine.state

    def messages(self) -> Messages:
        """The conversation the agent sees: the system message, then each turn as heard."""
        return self._answerer.messages()

    # --- microphone in ---------------------------------------------------------------------

    def feed(self, pcm: bytes | bytearray | memoryview) -> None:
        """Take the next microphone frame: 16 kHz 16-bit little-endian mono PCM, any length."""
        with self._changed:
            if self._closed:
                raise SessionStateError("this voice loop is closed; create a new one")
            events = self._vad.feed(pcm)
            self._mic.append(pcm)
            work = self._step(events, self._base + self._vad.samples)
        self._act(work)

    def finish(self) -> None:
        """The microphone stopped: end the user's turn if they were speaking."""
        with self._changed:
            samples = self._base + self._vad.samples
            work = self._step(self._vad.finish(), samples)
            self._base = samples
            del self._mic.audio[len(self._mic.audio) - len(self._mic.audio) % 2 :]
        self._act(work)

    def _step(self, events: list[Any], samples: int) -> list[tuple[Any, bytes]]:
        """Detector events through the turn machine (lock held): the actions to take."""
        now, base = samples / SAMPLE_RATE, self._base
        actions: list[Any] = []
        for event in events:
            if isinstance(event, SpeechStarted):
                self._machine.speech_started((base + event.sample) / SAMPLE_RATE, now)
                actions.append(_WARM_UP)
            elif isinstance(event, SpeechEnded):
                start, end = (base + event.start) / SAMPLE_RATE, (base + event.end) / SAMPLE_RATE
                actions.append(self._machine.speech_ended(start, end, now))
        if self._vad.speaking:
            voiced = (base + self._vad.voiced_until) / SAMPLE_RATE
            actions.append(self._machine.speech_continues(voiced, now))
            paused = self._vad.silent_from
            if paused is not None:
                actions.append(self._machine.speech_paused((base + paused) / SAMPLE_RATE, now))
        work = []
        for action in filter(None, actions):
            wav = b""
            if isinstance(action, EndOfTurn | TranscribeEarly):  # the same rule: the same bytes
                first, last = action.start - PRE_ROLL, action.end + TAIL
                wav = self._mic.wav(round(first * SAMPLE_RATE), round(last * SAMPLE_RATE))
            work.append((action, wav))
        pending = self._machine.speech_from
        keep = now - IDLE_KEEP if pending is None else min(pending, now - IDLE_KEEP)
        self._mic.keep_from(round(max(keep - PRE_ROLL, now - MAX_TURN) * SAMPLE_RATE))
        return work

    def _act(self, work: list[tuple[Any, bytes]]) -> None:
        for action, wav in work:
            self._answerer.act(action, wav)
        self._emit_state()

    # --- barge-in and the page's news ------------------------------------------------------

    def interrupt(
        self, playhead_s: float | None = None, *, turn: VoiceTurn | None = None
    ) -> VoiceTurn | None:
        """Cut the answer being spoken: stop its session and the agent's stream, and keep in
        its turn what was heard up to ``playhead_s`` (seconds of the answer's audio the page
        played; None: estimated as the time since its first audio reached the kernel).
        ``turn``: the answer the page silenced (a page's late report then never cuts a newer
        answer); default the one being spoken. Returns the interrupted turn, or None when no
        answer was being spoken (or ``turn``'s was already over)."""
        turn = turn or self._answerer.speaking()
        return None if turn is None or turn.done else self._answerer.interrupt(turn, playhead_s)

    def first_sample_scheduled(
        self, at: float | None = None, *, turn: VoiceTurn | None = None
    ) -> None:
        """The page scheduled the first sample of the latest answer, or of ``turn``'s (``at``:
        a reading of the loop's clock; default now)."""
        self._answerer.first_sample(at, turn)

    def playback_ended(self, *, turn: VoiceTurn | None = None) -> None:
        """The page played the latest answer (or ``turn``'s) to its end (``wait_for_page``)."""
        turn = turn or self._answerer.speaking()
        if turn is not None and turn.session is not None and turn.session.done:
            self._answerer.settle(turn, None)

    # --- waiting, files, the end -----------------------------------------------------------

    def _idle(self) -> bool:
        return (
            self._machine.state == "listening"
            and not self._answerer.replies
            and all(turn.done for turn in self._answerer.turns)
        )

    def wait(self, timeout: float | None = 120.0) -> VoiceLoop:
        """Block until the loop is idle (listening, every answer over). Returns self; raises
        StreamTimeout when ``timeout`` seconds pass first (the loop goes on)."""
        with self._changed:
            if not self._changed.wait_for(self._idle, timeout):
                raise StreamTimeout(f"the voice loop is still {self.state} after {timeout} s")
        return self

    def hear(
        self, audio: str | os.PathLike[str] | bytes, *, timeout: float = 120.0
    ) -> VoiceTurn | None:
        """Play a WAV file (path or bytes) into the loop as if it came from the microphone,
        then wait for the answer (at most ``timeout`` seconds for each wait). Returns the
        last turn it started, or None when nothing was said (silence, noise)."""
        if _loop.in_background_loop():
            raise SessionStateError("hear() blocks: call it from a cell or a thread")
        pcm = microphone_pcm(audio)
        self.wait(timeout)
        count = len(self.turns)
        for start in range(0, len(pcm), FRAME_BYTES):
            self.feed(pcm[start : start + FRAME_BYTES])
        self.finish()
        self.wait(timeout)
        turns = self.turns
        return turns[-1] if len(turns) > count else None

    def close(self) -> None:
        """Stop listening: drop a reply in the works and cut an answer being spoken."""
        with self._changed:
            self._closed = True
        self._answerer.early.cancel()
        self._answerer.cancel_replies()
        self.interrupt()

    def _emit_state(self) -> None:
        with self._changed:
            state = self._machine.state
            if state == self._last_state:
                return
            self._last_state = state
        _call(self.on_state, state)

    def __enter__(self) -> VoiceLoop:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
