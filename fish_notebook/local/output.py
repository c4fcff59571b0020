"""Everything a realtime session sends, and how it ends when something goes wrong.

:class:`SessionOutput` owns the session's side of the connection:

- every event is noted for the recorder and bounded: a client that reads nothing while an
  event waits for ``idle_timeout`` is dropped (its slot is not held forever);
- audio goes out in events of at most :data:`MAX_AUDIO_PAYLOAD` bytes (the Fish SDK refuses
  messages over 64 KiB); on ``/with-timestamp`` each event carries its words, ``chunk_seq``,
  ``chunk_audio_offset_sec`` and ``time`` (see :mod:`.server`);
- :meth:`~SessionOutput.fail` ends the session with a ``log`` and ``finish`` reason
  ``error`` carrying the same message, clipped to :data:`MAX_MESSAGE` characters.

A part of the session that cannot go on raises :class:`SessionFailed`; the session turns
it into :meth:`~SessionOutput.fail`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ..protocol import Alignment, AudioEvent, FinishEvent, LogEvent, ServerEvent, pack
from .connection import Connection, Disconnected
from .recorder import SessionNotes

__all__ = [
    "MAX_AUDIO_PAYLOAD",
    "MAX_MESSAGE",
    "MAX_TIMED_PAYLOAD",
    "SessionFailed",
    "SessionOutput",
    "TimedPart",
    "clipped",
]

logger = logging.getLogger("fish_notebook.local")

#: Largest audio payload in one ``audio`` event. The Fish SDK's WebSocket client refuses
#: messages over 64 KiB by default, so a long sentence goes out as several events.
MAX_AUDIO_PAYLOAD = 32 * 1024
#: Largest audio payload of one ``/with-timestamp`` event, where events hold whole words:
#: a word longer than ``MAX_AUDIO_PAYLOAD`` goes out whole, up to this (websockets' default
#: ``max_size``); only a longer one is cut.
MAX_TIMED_PAYLOAD = 1024 * 1024
#: Longest ``log`` / ``finish`` message. Messages quote what the client sent (an unknown
#: event name, a bad value): clipped, they cannot outgrow the SDK's 64 KiB or flood the log.
MAX_MESSAGE = 1000


class SessionFailed(Exception):
    """Ends one session with finish reason=error; the message goes to the client."""


@dataclass(frozen=True)
class TimedPart:
    """Encoded audio of whole words, on its way from a synthesis thread to the socket."""

    data: bytes
    samples: int  # at the requested rate; 0 for an encoder's tail
    content: str
    alignment: Alignment


def clipped(message: str, limit: int = MAX_MESSAGE) -> str:
    """``message`` cut in the middle to at most ``limit`` characters (its end says what to do)."""
    if len(message) <= limit:
        return message
    tail = limit // 3
    marker = f" ...[{len(message) - limit} characters cut]... "
    return message[: limit - tail - len(marker)] + marker + message[-tail:]


class SessionOutput:
    """The events of one session, in order, to one connection.

    ``release`` frees the session's slot; it is called once the last event (``finish``) is
    sent, before the closing handshake, so a client that opens its next session as soon as
    this one closes is not refused for it.
    """

    def __init__(
        self,
        connection: Connection,
        *,
        idle_timeout: float,
        notes: SessionNotes,
        timestamps: bool,
        release: Callable[[], None],
    ) -> None:
        self.connection = connection
        self.idle_timeout = idle_timeout
        self.notes = notes
        self.timestamps = timestamps
        self.release = release
        self.loop = asyncio.get_running_loop()
        self.began = self.loop.time()
        self.sample_rate = 0  # of the audio on the timeline; set when the session starts
        self.chunk_seq = 0  # audio events sent (timestamp sessions)
        self.samples_sent = 0  # audio samples sent, at the requested rate (timestamp sessions)

    async def send(self, event: ServerEvent) -> None:
        """Send one event. Past ``idle_timeout`` with the client reading nothing, the
        connection is dropped and this raises Disconnected."""
        # A client that stops reading fills the socket buffers and the send waits forever,
        # holding a session slot (keepalive pings wait behind it too).
        watchdog = self.loop.call_later(self.idle_timeout, self._drop_stuck_client)
        try:
            await self.connection.send(pack(event))
        finally:
            watchdog.cancel()
        self.notes.sent(event)

    def _drop_stuck_client(self) -> None:
        logger.warning(
            "the client read nothing for %gs while audio waited: connection dropped",
            self.idle_timeout,
        )
        self.connection.abort()

    async def audio(self, data: bytes) -> None:
        """Send encoded audio: in events of at most MAX_AUDIO_PAYLOAD bytes, or on
        ``/with-timestamp`` as one event with no words (an encoder's tail adds no time)."""
        if self.timestamps and data:
            await self.timed(TimedPart(data, 0, "", Alignment((), 0.0)))
            return
        for start in range(0, len(data), MAX_AUDIO_PAYLOAD):
            await self.send(AudioEvent(data[start : start + MAX_AUDIO_PAYLOAD]))

    async def timed(self, part: TimedPart) -> None:
        """Send one part of whole words with its place on the session's audio timeline."""
        event = AudioEvent(
            part.data,
            content=part.content,
            alignment=part.alignment,
            chunk_seq=self.chunk_seq,
            chunk_audio_offset_sec=round(self.samples_sent / self.sample_rate, 6),
            time=round((self.loop.time() - self.began) * 1000, 1),
        )
        self.chunk_seq += 1
        self.samples_sent += part.samples
        await self.send(event)

    async def log(self, message: str) -> None:
        """A ``log`` event for the client (and the server's log)."""
        message = clipped(message)
        logger.info("session: %s", message)
        await self.send(LogEvent(message))

    async def finish(self) -> None:
        """The normal end: ``finish`` reason ``stop``, the slot freed, the socket closed."""
        await self.send(FinishEvent("stop"))
        self.release()
        await self.connection.close()

    async def fail(self, message: str) -> None:
        """End with an error: the message as a ``log`` and in ``finish`` reason ``error``,
        the slot freed, the socket closed. Quiet when the client is already gone."""
        message = clipped(message)
        logger.warning("session ended with an error: %s", message)
        try:
            await self.send(LogEvent(message))
            await self.send(FinishEvent("error", message))
            self.release()
            await self.connection.close()
        except Disconnected:
            pass
