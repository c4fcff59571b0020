"""The realtime stream's logic with no I/O: what to send, and what the server's events mean.

The client's driver (:class:`fish_notebook.client.AsyncRealtimeStream`) only moves events
between ``websockets`` and the objects here, as websockets' own drivers do around its
``Protocol``:

- :class:`RealtimeProtocol`, one session's state. Ask it for each event to send; feed it each
  frame received; it says what happened (an event to hand on, the end, the typed error) and
  keeps the owed-audio clock that bounds how long the server may stay silent.
- :class:`EarlyFlush`, the one flush after the first sentence of a text stream, put at the
  same place in the text however the text is cut into tokens.

Times are plain seconds from the caller's clock (``time.monotonic()``), so tests pass their own.
"""

from __future__ import annotations

from enum import Enum

from .errors import ReceiveTimeout, ServerBusyError, SessionStateError, WebSocketError
from .protocol import (
    AudioEvent,
    ErrorEvent,
    FinishEvent,
    FlushEvent,
    ServerEvent,
    StartEvent,
    StopEvent,
    TextEvent,
    TTSRequest,
    unpack_server_event,
)
from .text import ends_sentence, first_sentence_end

__all__ = ["EARLY_FLUSH_IDLE", "EarlyFlush", "RealtimeProtocol", "StreamState"]


class StreamState(Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    STOPPING = "stopping"  # stop sent, waiting for finish
    CLOSED = "closed"


class RealtimeProtocol:
    """One realtime TTS session, fed by a driver that does the I/O.

    - Opening: call :meth:`connecting` before connecting (it refuses a stream opened before),
      then :meth:`opened` after the handshake, and send the ``start`` it returns.
    - Sending: send what :meth:`send_text`, :meth:`send_flush` and :meth:`send_stop` return
      (nothing for None). They raise SessionStateError once the stream is stopping or closed;
      :meth:`send_stop` is safe to call twice.
    - Receiving: pass every frame to :meth:`receive_frame`. It returns the event to hand on
      (audio, log, unknown events, and last the ``finish`` of a clean end) or raises the
      typed error of a failed stream. Whenever :attr:`state` is CLOSED after a call, close
      the socket: the stream is over.
    - Waiting: before each wait for a frame, ask :meth:`time_left` how long it may last.

    Audio is owed after a ``flush`` that followed new text, and after ``stop``; the clock
    starts then and restarts with every audio event after ``stop`` (the rest keeps coming).
    """

    def __init__(self, request: TTSRequest) -> None:
        self.request = request
        self.state = StreamState.UNOPENED
        self.finish: FinishEvent | None = None
        self._owed_since: float | None = None
        self._text_since_flush = False

    def __repr__(self) -> str:
        return f"<RealtimeProtocol {self.state.value}>"

    # --- opening and closing -----------------------------------------------------------------

    def connecting(self) -> None:
        """Check that this stream may connect; SessionStateError when it was opened before."""
        if self.state is not StreamState.UNOPENED:
            raise SessionStateError(f"stream already {self.state.value}; open a new one")

    def opened(self) -> StartEvent:
        """The handshake is done: the ``start`` event to send first.

        SessionStateError when the stream was closed while it connected (close the socket).
        """
        if self.state is not StreamState.UNOPENED:
            raise SessionStateError(f"the stream was {self.state.value} while it connected")
        self.state = StreamState.OPEN
        return StartEvent(self.request)

    def close(self) -> None:
        """The driver closed the stream (safe to call twice). Nothing is owed any more."""
        self.state = StreamState.CLOSED
        self._owed_since = None

    # --- sending -----------------------------------------------------------------------------

    def send_text(self, text: str) -> TextEvent | None:
        """The event that appends ``text`` to the server's buffer; None for empty text."""
        if not isinstance(text, str):
            raise TypeError(f"send_text() takes a str, got {type(text).__name__}")
        self._check_sendable()
        if not text:
            return None
        self._text_since_flush = True
        return TextEvent(text)

    def send_flush(self, now: float) -> FlushEvent:
        """The event that makes the server speak its buffer; audio is owed if text came first."""
        self._check_sendable()
        if self._text_since_flush and self._owed_since is None:
            self._owed_since = now
        self._text_since_flush = False
        return FlushEvent()

    def send_stop(self, now: float) -> StopEvent | None:
        """The event that ends the text; None when stop was sent already or the stream closed."""
        if self.state in (StreamState.STOPPING, StreamState.CLOSED):
            return None
        self._check_sendable()
        self.state = StreamState.STOPPING
        self._owed_since = now
        return StopEvent()

    def _check_sendable(self) -> None:
        if self.state is StreamState.OPEN:
            return
        if self.state is StreamState.STOPPING:
            raise SessionStateError("stop() was sent; no more text can follow on this stream")
        if self.state is StreamState.UNOPENED:
            raise SessionStateError("the stream is not open yet; open it before sending")
        raise SessionStateError("the stream is closed; open a new one to send more")

    # --- receiving ---------------------------------------------------------------------------

    def receive_frame(self, frame: bytes | str, now: float) -> ServerEvent:
        """Decode one frame and take in its event: see :meth:`receive_event`.

        Raises ProtocolError (and the stream closes) for a frame that breaks the protocol.
        """
        try:
            event = unpack_server_event(frame)
        except Exception:
            self.close()
            raise
        return self.receive_event(event, now)

    def receive_event(self, event: ServerEvent, now: float) -> ServerEvent:
        """Take in one server event; return it to hand on, or raise why the stream failed.

        ``finish`` with reason ``stop`` ends the stream cleanly (it is returned; :attr:`finish`
        keeps it). These close the stream and raise: ``finish`` with another reason
        (WebSocketError), an ``error`` event (ServerBusyError when it is about concurrency,
        WebSocketError otherwise).
        """
        if isinstance(event, AudioEvent):
            # After stop every frame restarts the clock; otherwise the owed audio has come.
            self._owed_since = now if self.state is StreamState.STOPPING else None
        elif isinstance(event, FinishEvent):
            self.finish = event
            self.close()
            if event.reason != "stop":
                detail = f": {event.message}" if event.message else ""
                raise WebSocketError(
                    f"the server ended the stream with an error{detail}",
                    reason=event.message or event.reason,
                )
        elif isinstance(event, ErrorEvent):
            self.close()
            raise _error_event_error(event)
        return event

    # --- waiting -----------------------------------------------------------------------------

    def time_left(self, now: float, bound: float | None) -> float | None:
        """How long the next frame may take: None while nothing is owed (wait, but ask again
        soon: a send from another task may start the clock), else the seconds left of
        ``bound`` since audio became owed.

        Raises ReceiveTimeout (and the stream closes) when they have run out.
        """
        if self._owed_since is None or bound is None:
            return None
        left = self._owed_since + bound - now
        if left > 0:
            return left
        waiting = "finish after stop" if self.state is StreamState.STOPPING else "audio after flush"
        self.close()
        raise ReceiveTimeout(
            f"the server sent nothing for {bound} s while {waiting} was owed; "
            "it may be overloaded or stuck: retry with a new stream"
        )


def _error_event_error(event: ErrorEvent) -> WebSocketError:
    if event.max_concurrency is not None or "concurren" in event.error.lower():
        return ServerBusyError(
            f"{event.error} (max {event.max_concurrency} sessions): "
            "wait for another session to end, then retry",
            max_concurrency=event.max_concurrency,
            reason=event.error,
        )
    return WebSocketError(f"the server reported an error: {event.error}", reason=event.error)


# --- the early flush -----------------------------------------------------------------------

#: Seconds the source may stay quiet after a sentence's terminator before the quiet itself
#: confirms the end (``"move."`` with nothing after it yet). Too short and a stall inside
#: ``3.5`` speaks ``"3."`` on its own; too long and first audio waits. Measured against the
#: embedded server on 2 busy cores: a source that pauses 2 s after its first sentence got its
#: first audio after a median 1.08 s with 200 ms (1.10 s with 50 and 100 ms, the same within
#: noise; 1.42 s with 400 ms; 2.98 s without the rule), while a source paced at 30 tokens/s
#: and read in a thread reached the sender with gaps of up to 150 ms from scheduling alone
#: (5 of 620 over 100 ms, none over 200 ms). 200 ms clears those; on a quiet machine, where
#: the server answers a flush in about 125 ms, it is all the rule can cost, and only to a
#: source that stops right after its first sentence.
EARLY_FLUSH_IDLE = 0.2

#: With no sentence end in this much text the early flush gives up: the server's own buffer
#: (``chunk_length`` <= 300 characters) has started speaking long before.
_GIVE_UP_AFTER = 4096


class EarlyFlush:
    """One flush right after the first sentence of a text stream, wherever the tokens split.

    Feed each source event to :meth:`feed` and send what it returns, in order: the event
    itself, or, for the text that confirms the first sentence's end, its part up to that end,
    a flush, and the rest (``"done. Then"`` -> ``"done."``, flush, ``" Then"``). The flush
    lands at the same place in the text whatever the token boundaries: spaces before or after
    words, no spaces (``。！？``), newlines, an end in the middle of a token.

    An end nothing has confirmed yet (``"move."``, the next character may make it ``"move.5"``)
    is confirmed by a pause of the source: while :attr:`waiting` is true and the source has
    been quiet for :attr:`idle_after` seconds, call :meth:`idle` and send what it returns.

    A flush from the source itself turns the early flush off, as does ``enabled=False``; it
    also gives up after 4,096 characters with no sentence end. The rules of where a sentence
    ends are :mod:`fish_notebook.text`'s.
    """

    def __init__(self, enabled: bool = True, *, idle_after: float = EARLY_FLUSH_IDLE) -> None:
        self.enabled = enabled
        self.idle_after = idle_after
        self._text = ""  # all the text sent, until the flush

    def __repr__(self) -> str:
        state = "armed" if self.enabled else "off"
        return f"<EarlyFlush {state}, {len(self._text)} chars seen>"

    @property
    def waiting(self) -> bool:
        """True when a pause of the source would confirm that the text so far ends a sentence."""
        return self.enabled and ends_sentence(self._text)

    def feed(self, event: TextEvent | FlushEvent) -> list[TextEvent | FlushEvent]:
        """What to send for one source event, in order."""
        if not self.enabled:
            return [event]
        if isinstance(event, FlushEvent):
            self.enabled = False  # the source flushes itself
            return [event]
        seen = len(self._text)
        self._text += event.text
        end = first_sentence_end(self._text)
        if end is None:
            if len(self._text) > _GIVE_UP_AFTER:
                self.enabled = False
            return [event]
        self.enabled = False
        cut = max(0, end - seen)  # an end is confirmed by what follows it: never before `seen`
        head, tail = event.text[:cut], event.text[cut:]
        pieces: list[TextEvent | FlushEvent] = [TextEvent(head)] if head else []
        pieces.append(FlushEvent())
        if tail:
            pieces.append(TextEvent(tail))
        return pieces

    def idle(self) -> list[TextEvent | FlushEvent]:
        """What to send when the source has paused: a flush if the text so far ends a sentence."""
        if not self.waiting:
            return []
        self.enabled = False
        return [FlushEvent()]
