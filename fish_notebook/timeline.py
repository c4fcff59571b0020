"""Words on one timeline: where each word of ``/with-timestamp`` audio is heard. Pure, no I/O.

How the server sends word timings (PROTOCOL.md, "Facts added in the second round"): each
``audio`` event's ``alignment`` is a *cumulative snapshot* of its text chunk (``chunk_seq``),
replacing the one before for that chunk (``null``: nothing new yet); segment times count from
the start of that chunk's audio, and ``chunk_audio_offset_sec`` places the chunk on the whole
stream. A frame may carry the next chunk's audio under the previous ``chunk_seq``: audio bytes
are never attributed by ``chunk_seq`` here, only alignments are.

A :class:`WordTimeline` keeps the latest snapshot per chunk and the words they make, as
:class:`TimedWord`; :meth:`WordTimeline.add` says what an event changed (a
:class:`WordChange`), so a listener replaces words instead of appending them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .cues import strip_cues
from .protocol import AlignmentSegment, AudioEvent

__all__ = ["TimedWord", "WordChange", "WordTimeline", "without_cues"]


class TimedWord(NamedTuple):
    """A word and when it is heard: seconds from the first sample of the session's audio."""

    text: str
    start: float
    end: float


class WordChange(NamedTuple):
    """What changed in a list of words: from index ``start`` on, the words are now ``words``
    (the whole tail: it replaces every word from ``start``, however many there were)."""

    start: int
    words: list[TimedWord]


def without_cues(text: str) -> str:
    """``text`` without its delivery cues and speaker tags (:mod:`fish_notebook.cues`), ``""``
    when it is nothing else: cues are directions, never words to show or to subtitle."""
    return "".join(part for part in strip_cues(text) if isinstance(part, str)).strip()


@dataclass
class _Chunk:
    """The latest snapshot of one text chunk, and where its words begin in the list."""

    offset: float  # seconds on the timeline where the chunk's audio starts
    segments: tuple[AlignmentSegment, ...]
    duration: float
    first_word: int = 0


class WordTimeline:
    """The words of a ``/with-timestamp`` stream on one timeline, from its audio events.

    Call :meth:`add` with every audio event, in order. Per ``chunk_seq`` the latest non-null
    alignment is kept (each replaces the one before; an event without ``chunk_seq`` is a
    chunk of its own). A word is heard at ``chunk_audio_offset_sec + start``. Only when the
    server gives no offset (older servers) is the chunk placed at the ``fallback_offset``
    passed with the first event of that chunk (say, the seconds of audio received before
    it), else right after the previous chunk (its offset plus its ``audio_duration``).

    Guarantees: :attr:`words` holds the chunks' words in chunk order, each chunk's in the
    order its snapshot gives; they never go back in time nor overlap (a start before the
    previous word's end is moved to that end; an end is never before its start). Segments
    that are only delivery cues or speaker tags are not words, and cue text inside a segment
    is taken out (:func:`without_cues`). Not thread-safe.
    """

    def __init__(self) -> None:
        self.words: list[TimedWord] = []
        self._chunks: list[_Chunk] = []  # in the order first seen (chunk_seq never decreases)
        self._by_seq: dict[int, int] = {}  # chunk_seq -> index in _chunks
        self._fallbacks: dict[int, float] = {}  # chunk_seq -> fallback offset at first sight
        self._end = 0.0

    def __repr__(self) -> str:
        return f"<WordTimeline {len(self.words)} words, {self._end:.3f} s>"

    @property
    def duration(self) -> float:
        """The end of the latest chunk with an alignment: its offset plus its duration."""
        return self._end

    def add(self, event: AudioEvent, fallback_offset: float | None = None) -> WordChange | None:
        """Take ``event``'s alignment snapshot; return what it changed in :attr:`words`, or
        None when nothing changed (no alignment, or the same words as before)."""
        seq = event.chunk_seq
        if seq is not None and fallback_offset is not None:
            self._fallbacks.setdefault(seq, fallback_offset)
        alignment = event.alignment
        if alignment is None:
            return None
        index = self._by_seq.get(seq) if seq is not None else None
        if index is None:
            index = len(self._chunks)
            if seq is not None:
                self._by_seq[seq] = index
            fallback = fallback_offset if seq is None else self._fallbacks.get(seq)
            offset = self._offset(event, fallback, index)
            chunk = _Chunk(offset, alignment.segments, alignment.audio_duration, len(self.words))
            self._chunks.append(chunk)
        else:
            chunk = self._chunks[index]
            if event.chunk_audio_offset_sec is not None:
                chunk.offset = event.chunk_audio_offset_sec
            chunk.segments, chunk.duration = alignment.segments, alignment.audio_duration
        self._end = max(self._end, self._chunks[index].offset + alignment.audio_duration)
        return self._replace_from(index)

    def _offset(self, event: AudioEvent, fallback: float | None, index: int) -> float:
        if event.chunk_audio_offset_sec is not None:
            return event.chunk_audio_offset_sec
        if fallback is not None:
            return fallback
        if index == 0:
            return 0.0
        before = self._chunks[index - 1]
        return before.offset + before.duration

    def _replace_from(self, index: int) -> WordChange | None:
        """Place the words of chunks ``index``.. again; return the change to :attr:`words`."""
        first = self._chunks[index].first_word
        floor = self.words[first - 1].end if first else 0.0
        tail: list[TimedWord] = []
        for chunk in self._chunks[index:]:
            chunk.first_word = first + len(tail)
            for segment in chunk.segments:
                text = without_cues(segment.text)
                if not text:
                    continue
                start = max(chunk.offset + segment.start, floor)
                end = max(chunk.offset + segment.end, start)
                tail.append(TimedWord(text, start, end))
                floor = end
        old = self.words[first:]
        same = 0
        while same < min(len(old), len(tail)) and old[same] == tail[same]:
            same += 1
        if same == len(old) == len(tail):
            return None
        self.words[first + same :] = tail[same:]
        return WordChange(first + same, tail[same:])
