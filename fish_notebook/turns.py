"""Turn-taking for the voice loop: who has the floor, and when an answer must yield.

:class:`TurnTaker` is a pure state machine (the clock is injected; no thread, no I/O)::

    listening ──speech──> user_speaking ──end of turn──> thinking ──transcript──> answering
        ^                                                   │ empty transcript       │
        └───────────────────────────────────────────────────┴──── answer over ───────┘

Its inputs are the voice activity detector's events, in seconds of microphone audio
(``onset``, ``start``, ``end``, ``voiced_until``) with ``now``, the seconds of audio heard so
far; and the loop's own news (transcript, agent's first token, first audio, answer over,
answer silenced), which name the turn they concern by its :class:`TurnMetrics`. News about a
turn that is no longer the current one (a reply overtaken by new speech) changes no state.

Speech over an answer is a **barge-in** only once it has lasted ``min_barge_in_s`` from its
onset (a cough, a "mm-hm", or the answer's own voice leaking into the microphone for a
moment does not cut the answer). Then :meth:`TurnTaker.speech_continues` returns
:class:`BargeIn`: the loop silences the answer and calls :meth:`TurnTaker.interrupted`; the
new speech is already the next user turn. Speech confirmed the same way while ``thinking``
returns :class:`CancelReply`: the reply in preparation is dropped and the user's turn goes
on from where it began (the next :class:`EndOfTurn` covers both stretches of speech).

**Early transcripts.** The end of a turn is decided only after the detector's whole
end-of-turn silence (0.6 s by default), yet the utterance it will cover is known as soon as
that silence begins. Once the user has been silent for ``early_transcript_s``,
:meth:`TurnTaker.speech_paused` returns :class:`TranscribeEarly` (once per pause): the loop
sends that utterance to speech recognition while the silence runs out, and uses the answer
only if the :class:`EndOfTurn` covers exactly the same audio (no speech came in between);
otherwise it is dropped.

Times in :class:`TurnMetrics` are readings of the clock; an instant of microphone audio is
placed on the clock as ``clock() - (now - t)``, exact when audio arrives in real time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .errors import ValidationError

__all__ = [
    "DEFAULT_EARLY_TRANSCRIPT",
    "DEFAULT_MIN_BARGE_IN",
    "TURN_STATES",
    "Action",
    "BargeIn",
    "CancelReply",
    "EndOfTurn",
    "TranscribeEarly",
    "TurnMetrics",
    "TurnState",
    "TurnTaker",
]

TurnState = Literal["listening", "user_speaking", "thinking", "answering"]
TURN_STATES: tuple[TurnState, ...] = ("listening", "user_speaking", "thinking", "answering")
#: Seconds speech over an answer must last before it interrupts: longer than a cough or a
#: short acknowledgement, short enough that the user is not talked over for long.
DEFAULT_MIN_BARGE_IN = 0.4
#: Seconds of silence after which the utterance is transcribed ahead of the end of the turn:
#: the voice loop's tail of audio after the speech (0.2 s) must be there, and the sooner
#: the better (a pause that does not end the turn costs one transcription, thrown away).
DEFAULT_EARLY_TRANSCRIPT = 0.2


@dataclass
class TurnMetrics:
    """When each step of one turn happened, in clock seconds (``None``: not (yet) reached).

    ``speech_end``: the user stopped speaking; ``turn_end``: the end of the turn was decided;
    ``recognized``: speech recognition answered (before ``turn_end`` for an early
    transcript); ``transcript``: the turn had its transcript (the later of the two);
    ``first_token``: the agent's first text;
    ``first_audio``: the answer's first audio reached the kernel; ``first_sample``: the page
    scheduled the answer's first sample (the page reports it); ``answer_end``: the answer
    was over (finished, failed or stopped). For a barge-in on this turn's answer:
    ``barge_in_onset`` (the user's speech began), ``barge_in`` (confirmed) and ``silenced``
    (the answer went quiet).
    """

    speech_end: float | None = None
    turn_end: float | None = None
    recognized: float | None = None
    transcript: float | None = None
    first_token: float | None = None
    first_audio: float | None = None
    first_sample: float | None = None
    answer_end: float | None = None
    barge_in_onset: float | None = None
    barge_in: float | None = None
    silenced: float | None = None

    def latencies(self) -> dict[str, float | None]:
        """Seconds from the end of the user's speech to each step (``*_s``), and from the
        onset of a barge-in to the answer going quiet (``barge_in_to_silence_s``)."""

        def since(origin: float | None, at: float | None) -> float | None:
            return None if origin is None or at is None else at - origin

        steps = (
            "turn_end",
            "recognized",
            "transcript",
            "first_token",
            "first_audio",
            "first_sample",
        )
        out = {f"{name}_s": since(self.speech_end, getattr(self, name)) for name in steps}
        out["barge_in_to_silence_s"] = since(self.barge_in_onset, self.silenced)
        return out

    @property
    def voice_to_voice_s(self) -> float | None:
        """Seconds from the end of the user's speech to the answer's first sample scheduled
        in the page (None until the page reported it)."""
        return self.latencies()["first_sample_s"]

    @property
    def barge_in_s(self) -> float | None:
        """Seconds from the onset of the user's speech over this answer to its silence
        (None unless the answer was cut by a barge-in)."""
        return self.latencies()["barge_in_to_silence_s"]


@dataclass(frozen=True)
class EndOfTurn:
    """The user's turn is over: transcribe the microphone audio from ``start`` to ``end``
    (seconds) and answer; ``metrics`` is the turn's."""

    start: float
    end: float
    metrics: TurnMetrics


@dataclass(frozen=True)
class TranscribeEarly:
    """The user has paused since ``end``: transcribe the audio from ``start`` to ``end``
    now; the :class:`EndOfTurn` of ``metrics``' turn may cover the same audio."""

    start: float
    end: float
    metrics: TurnMetrics


@dataclass(frozen=True)
class BargeIn:
    """The user talks over the answer of ``interrupted``: silence it now. The speech began
    at ``onset`` (seconds of microphone audio) and is the next user turn."""

    onset: float
    interrupted: TurnMetrics


@dataclass(frozen=True)
class CancelReply:
    """The user went on speaking while ``cancelled``'s reply was being prepared: drop it."""

    cancelled: TurnMetrics


Action = EndOfTurn | TranscribeEarly | BargeIn | CancelReply


def _check_seconds(name: str, value: float) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or math.isnan(value) or not 0 <= value <= 10:
        raise ValidationError(name, value, "must be a number of seconds in 0..10")
    return float(value)


class TurnTaker:
    """The turn-taking state machine; see the module docstring. Not thread-safe: the caller
    serialises calls (the voice loop holds its lock). ``early_transcript_s`` None: no
    early transcripts."""

    def __init__(
        self,
        *,
        min_barge_in_s: float = DEFAULT_MIN_BARGE_IN,
        early_transcript_s: float | None = DEFAULT_EARLY_TRANSCRIPT,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.min_barge_in_s = _check_seconds("min_barge_in_s", min_barge_in_s)
        self.early_transcript_s = (
            None
            if early_transcript_s is None
            else _check_seconds("early_transcript_s", early_transcript_s)
        )
        self.clock = clock
        self._early: tuple[TurnMetrics, float] | None = None  # the pause transcribed early
        self.state: TurnState = "listening"
        #: The metrics of the turn that holds the floor (None before the first turn).
        self.current: TurnMetrics | None = None
        self._turn_start = 0.0  # audio seconds where the current user speech began
        self._onset: float | None = None  # speech over thinking/answering, not yet confirmed

    def __repr__(self) -> str:
        return f"<TurnTaker {self.state}>"

    @property
    def speech_from(self) -> float | None:
        """The earliest microphone instant (seconds) a coming :class:`EndOfTurn` may start
        at: the loop must keep its audio from there. None when no speech is pending."""
        if self.state in ("user_speaking", "thinking"):
            return self._turn_start if self._onset is None else min(self._turn_start, self._onset)
        return self._onset

    def _wall(self, t: float, now: float) -> float:
        return self.clock() - max(0.0, now - t)

    def _new_turn(self, start: float) -> None:
        self.state, self.current, self._turn_start = "user_speaking", TurnMetrics(), start

    # --- the voice activity detector -----------------------------------------------------

    def speech_started(self, onset: float, now: float) -> None:
        """Speech began at ``onset``: a new user turn, or a candidate barge-in."""
        if self.state == "listening":
            self._new_turn(onset)
        elif self.state in ("thinking", "answering") and self._onset is None:
            self._onset = onset

    def speech_continues(self, voiced_until: float, now: float) -> Action | None:
        """Speech is heard up to ``voiced_until``: confirms a barge-in once it is long enough."""
        onset = self._onset
        if onset is None or voiced_until - onset < self.min_barge_in_s - 1e-9:
            return None
        self._onset = None
        previous = self.current
        assert previous is not None  # thinking and answering always have a turn
        if self.state == "thinking":
            start = self._turn_start
            self._new_turn(start)  # the same stretch of user speech goes on
            return CancelReply(previous)
        previous.barge_in_onset = self._wall(onset, now)
        previous.barge_in = self.clock()
        self._new_turn(onset)
        return BargeIn(onset, previous)

    def speech_paused(self, end: float, now: float) -> TranscribeEarly | None:
        """The user's speech has stopped at ``end`` (the detector hears silence since; it
        ends the turn there unless speech resumes): transcribe early once it has lasted
        ``early_transcript_s``, once for each pause."""
        wait = self.early_transcript_s
        metrics = self.current
        if wait is None or self.state != "user_speaking" or now - end < wait - 1e-9:
            return None
        assert metrics is not None  # user_speaking always has a turn
        if self._early is not None and self._early[0] is metrics and self._early[1] == end:
            return None
        self._early = (metrics, end)
        return TranscribeEarly(self._turn_start, end, metrics)

    def speech_ended(self, start: float, end: float, now: float) -> EndOfTurn | None:
        """The speech from ``start`` to ``end`` is over (the detector heard the silence)."""
        if self.state == "user_speaking":
            metrics = self.current
            assert metrics is not None
            metrics.speech_end = self._wall(end, now)
            metrics.turn_end = self.clock()
            self.state = "thinking"
            return EndOfTurn(self._turn_start, end, metrics)
        self._onset = None  # too short to be a barge-in: a cough, an echo
        return None

    # --- the loop's news about a turn ----------------------------------------------------

    def transcribed(self, metrics: TurnMetrics, text: str, recognized: float | None = None) -> bool:
        """``metrics``' turn has its transcript (``recognized``: when speech recognition
        answered, a clock reading; default now). True when the loop should now answer it;
        False when the text is empty or the turn was overtaken."""
        metrics.transcript = self.clock()
        metrics.recognized = metrics.transcript if recognized is None else recognized
        if metrics is not self.current or self.state != "thinking":
            return False
        if text.strip():
            self.state = "answering"
            return True
        self._yield_floor()
        return False

    def first_token(self, metrics: TurnMetrics) -> None:
        if metrics.first_token is None:
            metrics.first_token = self.clock()

    def first_audio(self, metrics: TurnMetrics) -> None:
        if metrics.first_audio is None:
            metrics.first_audio = self.clock()

    def first_sample(self, metrics: TurnMetrics, at: float | None = None) -> None:
        """The page scheduled the answer's first sample (``at``: a clock reading; now)."""
        if metrics.first_sample is None:
            metrics.first_sample = self.clock() if at is None else at

    def answer_ended(self, metrics: TurnMetrics) -> None:
        """The answer is over and played out; the floor goes back to the user."""
        if metrics.answer_end is None:
            metrics.answer_end = self.clock()
        if metrics is self.current and self.state in ("thinking", "answering"):
            self._yield_floor()

    def interrupted(self, metrics: TurnMetrics) -> None:
        """The answer of ``metrics``' turn went silent (a barge-in, or a stop)."""
        if metrics.silenced is None:
            metrics.silenced = self.clock()
        self.answer_ended(metrics)

    def _yield_floor(self) -> None:
        """Back to listening, unless the user is already speaking: then that is their turn."""
        if self._onset is not None:
            onset, self._onset = self._onset, None
            self._new_turn(onset)
        else:
            self.state = "listening"

    def reset(self) -> None:
        """Forget everything (a new conversation)."""
        self.state, self.current, self._onset, self._turn_start = "listening", None, None, 0.0
        self._early = None
