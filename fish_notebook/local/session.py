"""One realtime session (``/v1/tts/live``, ``/with-timestamp``) over any connection.

:class:`LiveSession` puts the parts together: a :class:`~.reader.FrameReader` reads and
checks the client's frames, a :class:`~.speaker.Speaker` speaks the chunker's pieces
through a :class:`~.synthesis.Synthesis`, and a :class:`~.output.SessionOutput` sends the
events and ends the session. Reading and speaking run at the same time; the first failure
of either ends both, with ``finish`` reason ``error`` when the client is still there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..protocol import LIVE_TIMESTAMP_PATH, TTSRequest, resolve_model
from .chunker import TextChunker
from .connection import Connection, Disconnected
from .encoding import StreamEncoder
from .engine import VoiceLibrary
from .output import SessionFailed, SessionOutput
from .reader import FrameReader
from .recorder import Recorder, SessionNotes
from .speaker import Speaker
from .synthesis import Synthesis, choose_voice

__all__ = ["LiveSession", "SessionContext"]

logger = logging.getLogger("fish_notebook.local")


@dataclass(frozen=True)
class SessionContext:
    """What every session of one server shares: voices, threads, limits, the recorder."""

    voices: VoiceLibrary
    pool: ThreadPoolExecutor
    idle_timeout: float
    max_text: int
    recorder: Recorder | None = None


class LiveSession:
    """One WebSocket session, from its ``start`` to its ``finish`` and close.

    ``release`` frees the session's slot; it is called once, when ``finish`` has been sent
    (or, at the latest, when :meth:`run` returns).
    """

    def __init__(
        self,
        context: SessionContext,
        connection: Connection,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        self.context = context
        self.connection = connection
        self.timestamps = connection.path == LIVE_TIMESTAMP_PATH
        self.model = resolve_model(connection.headers.get("model"))
        self.notes = SessionNotes(context.recorder, connection.headers, self.model)
        self.cancelled = False  # tells a synthesis thread to stop after its sentence
        self.output = SessionOutput(
            connection,
            idle_timeout=context.idle_timeout,
            notes=self.notes,
            timestamps=self.timestamps,
            release=release,
        )
        self.reader = FrameReader(
            connection,
            idle_timeout=context.idle_timeout,
            max_text=context.max_text,
            notes=self.notes,
        )

    def __repr__(self) -> str:
        return f"LiveSession({self.connection.path!r}, model={self.model!r})"

    async def run(self) -> None:
        """Serve the session to its end: finish sent and socket closed, or client gone."""
        try:
            request = await self.reader.start()
            speaker, chunker = await self._prepare(request)
            self.reader.idle = lambda: speaker.idle
            await self._converse(chunker, speaker)
        except SessionFailed as failure:
            await self.output.fail(str(failure))
        except Disconnected:
            logger.debug("client went away")
        finally:
            self.cancelled = True
            self.notes.closed(self.connection.close_code)

    async def _prepare(self, request: TTSRequest) -> tuple[Speaker, TextChunker]:
        """The voice, encoder and chunker the request asks for."""
        context = self.context
        voice = await choose_voice(
            context.voices, request, context.pool, self.output.log, timestamps=self.timestamps
        )
        self.notes.voice(voice.name)
        encoder = StreamEncoder.for_request(request)
        self.output.sample_rate = encoder.sample_rate
        synthesis = Synthesis(
            voice,
            request,
            encoder,
            context.pool,
            timestamps=self.timestamps,
            cancelled=lambda: self.cancelled,
            notes=self.notes,
        )
        chunker = TextChunker(
            chunk_length=request.chunk_length,
            min_chunk_length=min(request.min_chunk_length, request.chunk_length),
            latency=request.latency,
        )
        return Speaker(synthesis, self.output), chunker

    async def _converse(self, chunker: TextChunker, speaker: Speaker) -> None:
        """Read frames and speak at the same time; the first failure of either ends both."""

        async def speak() -> None:
            await speaker.run()
            await self.output.finish()

        pending = {
            asyncio.create_task(self.reader.converse(chunker, speaker)),
            asyncio.create_task(speak()),
        }
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                # Read every finished task's outcome before raising the first, so a second
                # failure in the same step is not reported as "never retrieved".
                errors = [task.exception() for task in done if not task.cancelled()]
                for error in errors:
                    if error is not None:
                        raise error
        finally:
            self.cancelled = bool(pending)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
