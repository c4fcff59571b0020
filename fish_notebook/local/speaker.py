"""A session's synthesis queue: pieces of text spoken one at a time, in order, sent as they come.

The session's reader :meth:`~Speaker.queue`\\ s the pieces its chunker hands out and
:meth:`~Speaker.end`\\ s the queue at ``stop``; :meth:`~Speaker.run` speaks them. Whenever
the queue runs empty after a piece, the encoder's held-back bytes go out at once (an MP3
run ends), so a flushed piece is heard in full without waiting for more text. The queue
itself is unbounded: the reader bounds it in characters (``max_text``), counting
:attr:`~Speaker.pending_chars`.
"""

from __future__ import annotations

import asyncio
import contextlib

from .chunker import voice_parts
from .output import SessionOutput, TimedPart
from .synthesis import Synthesis

__all__ = ["Speaker"]

_END = object()


class Speaker:
    """Speaks a session's queued pieces with ``synthesis`` and sends them through ``output``."""

    def __init__(self, synthesis: Synthesis, output: SessionOutput) -> None:
        self.synthesis = synthesis
        self.output = output
        self.pending_chars = 0  # text queued, not yet synthesized
        self.busy = False  # synthesizing or sending
        self._work: asyncio.Queue[object] = asyncio.Queue()

    def __repr__(self) -> str:
        return f"Speaker(pending_chars={self.pending_chars}, busy={self.busy})"

    @property
    def idle(self) -> bool:
        """Nothing being spoken and nothing queued."""
        return not self.busy and self._work.empty()

    def queue(self, pieces: list[str]) -> None:
        """Queue pieces to speak, each cut into what the voice is handed at once."""
        for piece in pieces:
            for text in voice_parts(piece):
                self.pending_chars += len(text)
                self._work.put_nowait(text)

    def end(self) -> None:
        """Nothing more will be queued: :meth:`run` returns once the queue is spoken."""
        self._work.put_nowait(_END)

    async def run(self) -> None:
        """Speak every queued piece until :meth:`end`; then send the encoder's last bytes."""
        encoder = self.synthesis.encoder
        while (item := await self._work.get()) is not _END:
            assert isinstance(item, str)
            self.busy = True
            try:
                async with contextlib.aclosing(self.synthesis.speak(item)) as sentences:
                    async for audio in sentences:
                        if isinstance(audio, TimedPart):
                            await self.output.timed(audio)
                        else:
                            await self.output.audio(audio)
                self.pending_chars -= len(item)
                if self._work.empty():  # nothing queued: let the encoder's tail go out now
                    await self.output.audio(encoder.drain())
            finally:
                self.busy = False
        await self.output.audio(encoder.finish())
