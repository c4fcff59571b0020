"""What the embedded server saw and sent, session by session, for tests to check.

``LocalServer(record=True)`` fills a :class:`Recorder`: for every WebSocket session, each
client event received (with a :func:`time.monotonic` timestamp, so a test can tell *when*
a flush reached the server), each event sent, and the audio bytes sent. Safe to read from
any thread while the server runs; waiting is always bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..protocol import AudioEvent, ClientEvent, FinishEvent, ServerEvent

__all__ = ["ReceivedFrame", "Recorder", "SentEvent", "SessionNotes", "SessionRecord"]


@dataclass(frozen=True)
class ReceivedFrame:
    """A frame from the client: the decoded event, or the error that made it unreadable."""

    time: float
    event: ClientEvent | None
    error: str | None = None

    @property
    def name(self) -> str | None:
        """The event's name (``"text"``, ``"flush"``...), None for an unreadable frame."""
        return None if self.event is None else self.event.event


@dataclass(frozen=True)
class SentEvent:
    """An event the server sent."""

    time: float
    event: ServerEvent


@dataclass
class SessionRecord:
    """One WebSocket session as the server saw it. Read it; the server appends to it.

    ``headers`` are the handshake's request headers (``Authorization`` left out);
    ``model`` is the model the ``model`` header resolved to. ``spoken`` lists the pieces of
    text handed to the voice, in order (see the chunker). ``close_code`` is the WebSocket
    close code the server saw when the session ended: 1000 (or the code the client echoed)
    after a clean closing handshake, 1006 when the connection was dropped or aborted.
    """

    id: int
    headers: Mapping[str, str]
    model: str
    opened: float
    voice: str | None = None
    received: list[ReceivedFrame] = field(default_factory=list)
    sent: list[SentEvent] = field(default_factory=list)
    spoken: list[str] = field(default_factory=list)
    closed: float | None = None
    close_code: int | None = None

    @property
    def model_header(self) -> str | None:
        """The ``model`` header as the client sent it (None when missing)."""
        return self.headers.get("model")

    @property
    def audio(self) -> bytes:
        """Every audio byte sent, joined: the whole stream the client should have."""
        return b"".join(s.event.audio for s in self.sent if isinstance(s.event, AudioEvent))

    @property
    def finish(self) -> FinishEvent | None:
        """The finish event sent, if any."""
        for sent in self.sent:
            if isinstance(sent.event, FinishEvent):
                return sent.event
        return None

    def received_named(self, name: str) -> list[ReceivedFrame]:
        """The frames received whose event is called ``name`` (``"flush"``, ``"text"``...)."""
        return [frame for frame in self.received if frame.name == name]

    def sent_named(self, name: str) -> list[SentEvent]:
        """The events sent that are called ``name`` (``"audio"``, ``"log"``...)."""
        return [sent for sent in self.sent if sent.event.event == name]


class Recorder:
    """Every session of one server, in the order they opened."""

    def __init__(self) -> None:
        self._sessions: list[SessionRecord] = []
        self._changed = threading.Condition()

    def __repr__(self) -> str:
        return f"Recorder(sessions={len(self._sessions)})"

    @property
    def sessions(self) -> list[SessionRecord]:
        """A snapshot of the list of sessions (the records themselves keep growing)."""
        with self._changed:
            return list(self._sessions)

    def clear(self) -> None:
        """Forget every session recorded so far."""
        with self._changed:
            self._sessions.clear()

    def wait_for(
        self, match: Callable[[SessionRecord], bool] | None = None, timeout: float = 10.0
    ) -> SessionRecord:
        """Block until a closed session matches ``match`` (any, when None); return it.

        Raises TimeoutError after ``timeout`` seconds. Do not call this on the event loop
        that runs the server: use :meth:`await_for` there.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = self._closed_match(match)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching session closed within {timeout}s")
                self._changed.wait(left)

    async def await_for(
        self, match: Callable[[SessionRecord], bool] | None = None, timeout: float = 10.0
    ) -> SessionRecord:
        """:meth:`wait_for` for code running on an event loop (polls, never blocks it)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._changed:
                found = self._closed_match(match)
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching session closed within {timeout}s")
            await asyncio.sleep(0.01)

    def _closed_match(self, match: Callable[[SessionRecord], bool] | None) -> SessionRecord | None:
        for record in self._sessions:
            if record.closed is not None and (match is None or match(record)):
                return record
        return None

    # --- called by the server ------------------------------------------------------------

    def open(self, headers: Mapping[str, str], model: str) -> SessionRecord:
        kept = {k.lower(): v for k, v in headers.items() if k.lower() != "authorization"}
        with self._changed:
            record = SessionRecord(len(self._sessions), kept, model, time.monotonic())
            self._sessions.append(record)
            self._changed.notify_all()
            return record

    def received(self, record: SessionRecord, event: ClientEvent | None, error: Any = None) -> None:
        with self._changed:
            message = None if error is None else str(error)
            record.received.append(ReceivedFrame(time.monotonic(), event, message))

    def sent(self, record: SessionRecord, event: ServerEvent) -> None:
        with self._changed:
            record.sent.append(SentEvent(time.monotonic(), event))

    def spoke(self, record: SessionRecord, text: str) -> None:
        with self._changed:
            record.spoken.append(text)

    def close(self, record: SessionRecord, close_code: int | None = None) -> None:
        with self._changed:
            record.close_code = close_code
            record.closed = time.monotonic()
            self._changed.notify_all()


class SessionNotes:
    """What one session tells its server's recorder; nothing at all when there is none."""

    def __init__(self, recorder: Recorder | None, headers: Mapping[str, str], model: str) -> None:
        self._recorder = recorder
        self.record = recorder.open(headers, model) if recorder is not None else None

    def __repr__(self) -> str:
        return f"SessionNotes({'recording' if self.record is not None else 'off'})"

    def voice(self, name: str) -> None:
        if self.record is not None:
            self.record.voice = name

    def received(self, event: ClientEvent | None, error: Any = None) -> None:
        if self._recorder is not None and self.record is not None:
            self._recorder.received(self.record, event, error)

    def sent(self, event: ServerEvent) -> None:
        if self._recorder is not None and self.record is not None:
            self._recorder.sent(self.record, event)

    def spoke(self, text: str) -> None:
        if self._recorder is not None and self.record is not None:
            self._recorder.spoke(self.record, text)

    def closed(self, close_code: int | None) -> None:
        if self._recorder is not None and self.record is not None:
            self._recorder.close(self.record, close_code)
