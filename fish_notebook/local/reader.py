"""Reading a session's client frames: decoded, checked, noted, bounded in time and in text.

:meth:`FrameReader.start` reads the first frame, which must be a ``start`` asking for a
format the server can make; :meth:`FrameReader.converse` then reads ``text`` / ``flush``
/ ``stop`` until ``stop``, handing the chunker's pieces to the speaker. Every problem
raises :class:`~.output.SessionFailed` with a message that says what to do:

- a frame that is not a client event of PROTOCOL.md, or a second ``start``;
- nothing from the client for ``idle_timeout`` while nothing is being spoken (a client
  that listens to long speech is not idle);
- more than ``max_text`` characters waiting to be spoken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..errors import ProtocolError, ValidationError
from ..protocol import (
    ClientEvent,
    FlushEvent,
    StartEvent,
    StopEvent,
    TextEvent,
    TTSRequest,
    unpack_client_event,
)
from .chunker import TextChunker
from .connection import Connection
from .encoding import SUPPORTED_FORMATS
from .output import SessionFailed
from .recorder import SessionNotes
from .speaker import Speaker

__all__ = ["FrameReader", "check_format"]


def check_format(request: TTSRequest) -> None:
    """SessionFailed unless the server can make ``request.format``."""
    if request.format not in SUPPORTED_FORMATS:
        raise SessionFailed(
            f"format {request.format!r} is not available from the local server: "
            f"use one of {', '.join(SUPPORTED_FORMATS)}"
        )


class FrameReader:
    """The client frames of one session. ``idle()`` says whether nothing is being spoken."""

    def __init__(
        self,
        connection: Connection,
        *,
        idle_timeout: float,
        max_text: int,
        notes: SessionNotes,
        idle: Callable[[], bool] = lambda: True,
    ) -> None:
        self.connection = connection
        self.idle_timeout = idle_timeout
        self.max_text = max_text
        self.notes = notes
        self.idle = idle

    async def receive(self) -> ClientEvent:
        """The next client event. An idle client (nothing sent, nothing spoken) fails."""
        while True:
            try:
                frame = await asyncio.wait_for(self.connection.recv(), self.idle_timeout)
            except asyncio.TimeoutError:
                if not self.idle():
                    continue  # the client is listening, not idle
                raise SessionFailed(
                    f"no frame from the client for {self.idle_timeout:g}s: "
                    "session closed as idle; send text or stop sooner"
                ) from None
            try:
                event = unpack_client_event(frame)
            except (ProtocolError, ValidationError) as exc:
                self.notes.received(None, exc)
                raise SessionFailed(f"bad frame: {exc}") from exc
            self.notes.received(event, None)
            return event

    async def start(self) -> TTSRequest:
        """The session's request, from its first frame."""
        event = await self.receive()
        if not isinstance(event, StartEvent):
            raise SessionFailed(f"the first frame must be a 'start' event, got {event.event!r}")
        check_format(event.request)
        return event.request

    async def converse(self, chunker: TextChunker, speaker: Speaker) -> None:
        """Read until ``stop``: text to the chunker, its pieces to the speaker."""
        while True:
            event = await self.receive()
            if isinstance(event, StopEvent):
                speaker.queue(chunker.stop())
                speaker.end()
                return
            if isinstance(event, TextEvent):
                waiting = speaker.pending_chars + len(chunker.buffered) + len(event.text)
                if waiting > self.max_text:
                    raise SessionFailed(
                        f"more than {self.max_text} characters of text are waiting to "
                        "be spoken: send text at most as fast as it is spoken"
                    )
                speaker.queue(chunker.feed(event.text))
            elif isinstance(event, FlushEvent):
                speaker.queue(chunker.flush())
            else:
                raise SessionFailed("a second 'start' event in one session; open a new one")
