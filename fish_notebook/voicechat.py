"""The voice chat widget: talk to an agent from the notebook, and hear it answer.

::

    from fish_notebook.voicechat import VoiceChat

    chat = VoiceChat(agent=my_agent, system="You are a terse assistant.")
    chat                                  # the widget: press "Start microphone" and talk
    chat.hear("question.wav")             # or a file instead of the microphone
    chat.turns[-1].user, chat.turns[-1].heard, chat.turns[-1].metrics.voice_to_voice_s

:class:`VoiceChat` is an ``ipywidgets.VBox`` holding a :class:`MicrophonePanel` (the
microphone, its controls, the conversation as turns) and the current answer's
:class:`~fish_notebook.widget.Player`, where the agent's words light up as they are heard.
The kernel side is a :class:`~fish_notebook.voiceloop.VoiceLoop` (``chat.loop``).

In the page: ``getUserMedia`` with the browser's echo cancellation, noise suppression and
gain control; an AudioWorklet (shipped in the widget as a Blob URL) resamples to 16 kHz
16-bit mono and sends 20 ms frames as binary comm buffers (``{"kind": "mic", "seq": n,
"frames": k}`` + the bytes of ``k`` frames) to :meth:`VoiceLoop.feed`: one frame a message
while the kernel keeps up, several at once while it does not (each message costs the kernel
two status messages back to the page, which a loaded frontend cannot take 50 times a
second). Hands-free, the kernel's voice activity detector decides when a turn ends;
push-to-talk, frames go only while the button is held and its release ends the turn. A
refused or missing microphone shows in the widget and sets :attr:`VoiceChat.error` (a
:class:`~fish_notebook.errors.MicrophoneError`), calling ``on_error``.

Barge-in: when the loop confirms the user's speech over an answer (or push-to-talk is
pressed during one), the kernel asks that answer's player to fade out (``{"kind":
"fade"}``); the page silences it within :data:`FADE_MS` and reports its playhead
(``{"kind": "stopped", "playhead": s}``), and :meth:`VoiceLoop.interrupt` stops the session
and the agent's stream, keeping in the turn what was heard. The page also reports the
answer's first scheduled sample (the voice-to-voice time of the turn) and its end.

Echo: the answer played by the page reaches the microphone only through the room, and the
browser's echo canceller removes what the page itself plays; what leaks through must then
last ``min_barge_in_s`` (0.4 s by default) as speech before it can cut the answer.

Messages from the page are handled on the kernel's main thread: while a cell runs, the
microphone's frames wait, and are heard when the cell ends.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import uuid
from collections.abc import Callable
from typing import Any

import anywidget
import ipywidgets
import traitlets

from .agents import Agent
from .errors import MicrophoneError, SessionStateError, ValidationError
from .session import Session
from .turns import TURN_STATES, TurnState
from .voiceloop import SAMPLE_RATE, VoiceLoop, VoiceTurn
from .widget import Player, joined_css, joined_esm

__all__ = [
    "FADE_MS",
    "FRAME_MS",
    "MODES",
    "MicrophonePanel",
    "VoiceChat",
    "microphone_error",
    "turn_summary",
]

logger = logging.getLogger("fish_notebook.voicechat")

#: The page's code, one file per job in static/voicechat/, joined in this order.
_VOICECHAT_JS = (
    "common.js",
    "worklet.js",
    "capture.js",
    "sending.js",
    "mic.js",
    "turns.js",
    "view.js",
    "main.js",
)

HANDS_FREE = "hands-free"
PUSH_TO_TALK = "push-to-talk"
#: The ways a turn is taken, with what the page calls them.
MODES = {HANDS_FREE: "Hands-free", PUSH_TO_TALK: "Push to talk"}
#: How the page names the loop's states.
STATE_LABELS: dict[TurnState, str] = {
    "listening": "listening",
    "user_speaking": "hearing you",
    "thinking": "thinking",
    "answering": "answering",
}
#: Milliseconds of microphone audio per frame sent to the kernel.
FRAME_MS = 20
#: Milliseconds over which the page fades out an answer the user talks over (voice.js).
FADE_MS = 12

# The browser's error names (DOMException), by what the user can do about them.
_MIC_ADVICE = {
    "denied": (
        "The browser refused the microphone ({detail}). Allow microphone access for this "
        "page (the icon in the address bar, or the browser's site settings), then press "
        "the microphone button again."
    ),
    "no-device": (
        "No microphone was found ({detail}). Connect one, or choose one in the system's "
        "sound settings, then press the microphone button again."
    ),
    "busy": (
        "The microphone could not be started ({detail}): another program may be using "
        "it. Close that program, then press the microphone button again."
    ),
    "insecure": (
        "This page may not use a microphone ({detail}): browsers allow it only on https:// "
        "pages and on http://localhost or 127.0.0.1. Open Jupyter at such an address."
    ),
    "unsupported": (
        "This browser cannot capture audio for the page ({detail}). Use a recent Chrome, "
        "Edge, Firefox or Safari."
    ),
    "ended": (
        "The microphone stopped ({detail}): it was unplugged or taken by the system. "
        "Press the microphone button to start again."
    ),
    "failed": "The microphone failed ({detail}). Press the microphone button to try again.",
}
_MIC_REASONS = {
    "NotAllowedError": "denied",
    "PermissionDeniedError": "denied",
    "SecurityError": "denied",
    "NotFoundError": "no-device",
    "DevicesNotFoundError": "no-device",
    "OverconstrainedError": "no-device",
    "NotReadableError": "busy",
    "TrackStartError": "busy",
    "AbortError": "busy",
    "InsecureContext": "insecure",
    "NotSupportedError": "unsupported",
    "Ended": "ended",
}


def _seconds(value: Any) -> float | None:
    """A page's number (seconds, milliseconds) >= 0, or None when it is not one."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if number and math.isfinite(value) and value >= 0 else None


def microphone_error(name: str, message: str) -> MicrophoneError:
    """The :class:`MicrophoneError` for the browser's error ``name`` and ``message``: its
    ``reason`` and a message that says what to do."""
    reason = _MIC_REASONS.get(name, "failed")
    detail = f"{name}: {message}" if message else name
    return MicrophoneError(_MIC_ADVICE[reason].format(detail=detail), reason=reason, name=name)


def turn_summary(turn: VoiceTurn) -> dict[str, Any]:
    """A turn as the page draws it: who said what, what was heard, its metrics (seconds)."""
    metrics = turn.metrics
    figures = [
        ("voice-to-voice", metrics.voice_to_voice_s),
        ("transcript", metrics.latencies()["transcript_s"]),
        ("first audio", metrics.latencies()["first_audio_s"]),
        ("barge-in", metrics.barge_in_s),
    ]
    heard_words = len(turn.heard.split())
    unheard = " ".join(turn.answer.split()[heard_words:]) if turn.interrupted else ""
    return {
        "user": turn.user,
        "agent": turn.agent,
        "heard": turn.heard,
        "unheard": unheard,
        "interrupted": turn.interrupted,
        "done": turn.done,
        "error": str(turn.error) if turn.error is not None else "",
        "metrics": [[label, round(s, 3)] for label, s in figures if s is not None],
    }


class MicrophonePanel(anywidget.AnyWidget):
    """The page's half of the voice chat: microphone, controls, turns (see the module
    docstring). Made by :class:`VoiceChat`; its traits are what the page draws."""

    _esm = joined_esm("voicechat", _VOICECHAT_JS)
    _css = joined_css("voicechat.css")

    #: Identifies the panel's microphone in the page (one per model).
    panel_id = traitlets.Unicode("").tag(sync=True)
    #: Hz of the PCM frames the page sends, and milliseconds per frame.
    sample_rate = traitlets.Int(SAMPLE_RATE).tag(sync=True)
    frame_ms = traitlets.Int(FRAME_MS).tag(sync=True)
    #: ``hands-free`` or ``push-to-talk`` (the page's selector sets it too).
    mode = traitlets.Unicode(HANDS_FREE).tag(sync=True)
    #: Whether the microphone should be on (the page's button sets it too).
    listen = traitlets.Bool(False).tag(sync=True)
    #: Written by the page: ``off``, ``starting``, ``on`` or ``error``.
    mic = traitlets.Unicode("off").tag(sync=True)
    #: The voice loop's state, and the error to show (empty: none).
    state = traitlets.Unicode(TURN_STATES[0]).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    #: The conversation, one :func:`turn_summary` per turn.
    turns: traitlets.List[dict[str, Any]] = traitlets.List().tag(sync=True)
    #: Vocabularies declared here, read by the page: the loop's states and the modes.
    vocab = traitlets.Dict(
        {"states": STATE_LABELS, "modes": MODES, "push_to_talk": PUSH_TO_TALK}
    ).tag(sync=True)
    #: Written by the page: frames sent, capture rate, device, level, the browser's error.
    stats = traitlets.Dict().tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(panel_id=uuid.uuid4().hex, **kwargs)

    @traitlets.validate("mode")
    def _valid_mode(self, proposal: Any) -> str:
        if proposal["value"] not in MODES:
            raise ValidationError("mode", proposal["value"], f"must be one of {list(MODES)}")
        return str(proposal["value"])


class VoiceChat(ipywidgets.VBox):
    """Talk with ``agent`` through the microphone; see the module docstring.

    Args:
        agent: who answers (:mod:`fish_notebook.agents`); default: the LLM when one is
            configured, else the echo agent.
        system: a system message for the agent.
        mode: ``"hands-free"`` (default) or ``"push-to-talk"``.
        listen: turn the microphone on at once (the page asks for permission).
        on_error(error): called with a :class:`MicrophoneError` when the page cannot
            capture, and with a turn's error (speech recognition, the agent, the speech).
        **loop_options: for :class:`~fish_notebook.voiceloop.VoiceLoop` (voice, language,
            min_barge_in_s, base_url, asr_base_url, ...).
    """

    def __init__(
        self,
        agent: Agent | None = None,
        *,
        system: str | None = None,
        mode: str = HANDS_FREE,
        listen: bool = False,
        on_error: Callable[[BaseException], None] | None = None,
        **loop_options: Any,
    ) -> None:
        self.panel = MicrophonePanel(mode=mode)
        self.answer_box = ipywidgets.VBox()
        super().__init__(children=[self.panel, self.answer_box])
        self.on_error = on_error
        #: The microphone's last failure (None while it works, or before it was asked for).
        self.error: MicrophoneError | None = None
        #: What the page said about its microphone: device label, rate, the browser's settings.
        self.microphone: dict[str, Any] = {}
        #: Frames received from the page, and frames missing from their sequence numbers.
        self.frames = 0
        self.lost_frames = 0
        #: Per answer, how the page silenced it: {"fade_ms", "took_ms"} (barge-ins only).
        self.fades: dict[int, dict[str, float]] = {}
        self._next_seq = 0
        self._lock = threading.RLock()
        self._players: dict[int, Player] = {}  # id(session) -> the answer's player
        self._reported: set[int] = set()  # id(turn) of the turn errors given to on_error
        self._page = False
        self.loop = VoiceLoop(
            agent,
            system=system,
            on_answer=self._on_answer,
            on_barge_in=self._on_barge_in,
            on_state=self._on_state,
            **loop_options,
        )
        self.panel.on_msg(self._on_page_message)
        if listen:
            self.start()

    def __repr__(self) -> str:
        return f"<VoiceChat {self.loop.state} mic={self.panel.mic} turns={len(self.turns)}>"

    # --- what the user calls ----------------------------------------------------------------

    @property
    def turns(self) -> list[VoiceTurn]:
        """Every turn so far (``turn.metrics``: :class:`~fish_notebook.turns.TurnMetrics`)."""
        return self.loop.turns

    @property
    def state(self) -> str:
        """The loop's state: ``listening``, ``user_speaking``, ``thinking``, ``answering``."""
        return self.loop.state

    @property
    def mode(self) -> str:
        return self.panel.mode

    @mode.setter
    def mode(self, value: str) -> None:
        self.panel.mode = value

    def messages(self) -> list[dict[str, str]]:
        """The conversation the agent sees (what was heard of each answer)."""
        return self.loop.messages()

    def start(self) -> None:
        """Turn the microphone on (the page asks the browser for it)."""
        self.panel.listen = True

    def stop(self) -> None:
        """Turn the microphone off (the page releases it; a turn in progress ends)."""
        self.panel.listen = False

    def hear(self, audio: str | os.PathLike[str] | bytes, *, timeout: float = 120.0) -> Any:
        """Play a WAV file into the conversation as if it were the microphone, and wait for
        the answer (see :meth:`VoiceLoop.hear`). The answer plays in the widget; the cell
        does not wait for the page to play it (a blocked cell cannot hear the page)."""
        with self._lock:
            waited, self.loop.wait_for_page = self.loop.wait_for_page, False
        try:
            turn = self.loop.hear(audio, timeout=timeout)
        finally:
            self.loop.wait_for_page = waited
        self._publish()
        return turn

    def close(self) -> None:
        """End the conversation: the loop stops, the microphone goes off, the widgets close."""
        self.loop.close()
        with self._lock:
            players, self._players = list(self._players.values()), {}
        for player in players:
            player.close()
        self.panel.close()
        self.answer_box.close()
        super().close()

    # --- the page's news --------------------------------------------------------------------

    def _on_page_message(self, _widget: Any, content: Any, buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("kind")
        if kind == "mic" and buffers:
            self._frames(content.get("seq"), content.get("frames", 1), buffers[0])
        elif kind == "page":
            self._page = True
            self.loop.wait_for_page = True  # answers last until the page has played them
        elif kind == "mic-started":
            self.microphone = {k: content.get(k) for k in ("rate", "label", "settings")}
            self.error, self.panel.error = None, ""
        elif kind == "mic-error":
            self._microphone_failed(str(content.get("name", "")), str(content.get("message", "")))
        elif kind == "mic-stopped":
            self._finish_turn()
        elif kind == "talk":
            self._talk(bool(content.get("down")))

    def _frames(self, seq: Any, count: Any, pcm: Any) -> None:
        count = count if isinstance(count, int) and count > 0 else 1
        if isinstance(seq, int):
            if seq > self._next_seq:
                self.lost_frames += seq - self._next_seq
            self._next_seq = seq + count
        self.frames += count
        try:
            self.loop.feed(pcm)
        except SessionStateError:
            pass  # the conversation was closed: frames still in flight are dropped
        except ValidationError as exc:  # never raise in a comm handler
            logger.warning("a microphone frame was refused: %s", exc)

    def _finish_turn(self) -> None:
        try:
            self.loop.finish()
        except SessionStateError:
            pass

    def _microphone_failed(self, name: str, message: str) -> None:
        error = microphone_error(name, message)
        self.error = error
        self.panel.error = str(error)
        logger.warning("%s", error)
        self._report(error)

    def _talk(self, down: bool) -> None:
        """Push-to-talk: pressed during an answer cuts it at once; released ends the turn."""
        if not down:
            self._finish_turn()
            return
        turn = next((t for t in reversed(self.loop.turns) if not t.done), None)
        if turn is not None and turn.session is not None:
            self._silence(turn)

    # --- the loop's news --------------------------------------------------------------------

    def _on_answer(self, session: Session) -> None:
        """An answer starts (on the IO thread): its player goes in the widget."""
        # The user asked: the answer speaks now, over whatever else the page plays.
        player = Player(session, playback={"policy": "interrupt"})
        player.on_msg(functools.partial(self._on_player_message, session))
        with self._lock:
            old = list(self._players.values())
            self._players = {id(session): player}
        self.answer_box.children = (player,)
        for previous in old:
            previous.close()
        self._publish()

    def _on_barge_in(self, turn: VoiceTurn) -> None:
        self._silence(turn)

    def _on_state(self, state: str) -> None:
        self.panel.state = state
        self._publish()

    def _silence(self, turn: VoiceTurn) -> None:
        """Ask the page to fade ``turn``'s answer out now; without a page, cut it here."""
        with self._lock:
            player = self._players.get(id(turn.session))
        if player is not None and self._page:
            player.send({"kind": "fade"})
        else:
            self.loop.interrupt(turn=turn)

    def _on_player_message(self, session: Session, _widget: Any, content: Any, _buf: Any) -> None:
        if not isinstance(content, dict):
            return
        turn = next((t for t in self.loop.turns if t.session is session), None)
        if turn is None:
            return
        kind = content.get("kind")
        if kind == "first-sample":
            self.loop.first_sample_scheduled(turn=turn)
        elif kind == "ended":
            self.loop.playback_ended(turn=turn)
        elif kind == "stopped":
            figures = {k: _seconds(content.get(k)) for k in ("fade_ms", "took_ms")}
            self.fades[id(turn)] = {k: v for k, v in figures.items() if v is not None}
            self.loop.interrupt(_seconds(content.get("playhead")), turn=turn)
        self._publish()

    def _publish(self) -> None:
        """The turns to the page, and new turn errors to ``on_error``."""
        turns = self.loop.turns
        with self._lock:
            self.panel.turns = [turn_summary(turn) for turn in turns]
            failed = [t for t in turns if t.error is not None and id(t) not in self._reported]
            self._reported.update(id(t) for t in failed)
        for turn in failed:
            assert turn.error is not None
            self._report(turn.error)

    def _report(self, error: BaseException) -> None:
        if self.on_error is None:
            return
        try:
            self.on_error(error)
        except Exception:
            logger.exception("the voice chat's on_error hook failed")
