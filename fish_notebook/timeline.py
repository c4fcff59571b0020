"""Words on one timeline: where each word of ``/with-timestamp`` audio is heard. Pure, no I/O.

The server times each word from the start of its text chunk's audio (PROTOCOL.md); a
:class:`WordTimeline` places them on the whole session's timeline, as :class:`TimedWord`.
"""

from __future__ import annotations

from typing import NamedTuple

from .protocol import AudioEvent

__all__ = ["TimedWord", "WordTimeline"]


class TimedWord(NamedTuple):
    """A word and when it is heard: seconds from the first sample of the session's audio."""

    text: str
    start: float
    end: float


class WordTimeline:
    """Places the words of ``/with-timestamp`` audio events on one session timeline.

    Call :meth:`add` with every audio event, in order; it returns the words that event
    placed (absolute times) and keeps them all in :attr:`words`. An event's words sit at
    its start on the timeline: the ``offset`` you pass (say, the seconds of audio you had
    before this event), else the event's ``chunk_audio_offset_sec``, else the end of the
    previous event (the sum of the ``audio_duration`` before it).

    Guarantees: words come out in the order received and never go back in time nor
    overlap (a start before the previous word's end is moved to that end; an end is never
    before its start). Events without alignment place no words. Not thread-safe.
    """

    def __init__(self) -> None:
        self.words: list[TimedWord] = []
        self._next_offset = 0.0

    def __repr__(self) -> str:
        return f"<WordTimeline {len(self.words)} words, {self._next_offset:.3f} s>"

    @property
    def duration(self) -> float:
        """Where the next event would start: the end of the last event with alignment."""
        return self._next_offset

    def add(self, event: AudioEvent, offset: float | None = None) -> list[TimedWord]:
        """Place ``event``'s words; return the ones placed (possibly none)."""
        alignment = event.alignment
        if alignment is None:
            return []
        if offset is None:
            offset = event.chunk_audio_offset_sec
        if offset is None:
            offset = self._next_offset
        floor = self.words[-1].end if self.words else 0.0
        placed: list[TimedWord] = []
        for segment in alignment.segments:
            start = max(offset + segment.start, floor)
            end = max(offset + segment.end, start)
            placed.append(TimedWord(segment.text, start, end))
            floor = end
        self.words.extend(placed)
        self._next_offset = max(self._next_offset, offset + alignment.audio_duration)
        return placed
