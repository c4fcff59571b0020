"""Text buffering for the embedded server: when a run of streamed text is ready to speak.

Pure: no I/O, no clocks. A :class:`TextChunker` takes text as it arrives (LLM tokens, a
whole book, anything in between) and hands back the pieces a voice should speak, in order.

Guarantees, for any input and any split of it into :meth:`~TextChunker.feed` calls:

- Nothing is lost, reordered or duplicated: the concatenation of every piece returned equals
  the concatenation of every text fed, except a whitespace-only remainder dropped by
  :meth:`stop`.
- No word is split: a piece ends only at whitespace, or after CJK punctuation, or between
  two CJK characters (scripts written without spaces).
- A piece's text (without surrounding whitespace) is at most ``chunk_length`` characters,
  unless it is one single word longer than that.
- :meth:`feed` returns pieces of at least ``min_chunk_length`` characters whenever the text
  offers a break point that allows it; only :meth:`flush` and :meth:`stop` hand out tiny
  pieces.

Where a piece ends depends on ``latency``:

- ``"balanced"`` (the default): at the first sentence end that makes the piece at least
  ``min_chunk_length`` long. Each sentence is spoken as soon as it is complete.
- ``"low"``: as balanced, but clause punctuation (``, ; :`` and CJK equivalents, or a line
  break) also ends a piece, so speech starts sooner with slightly choppier prosody.
- ``"normal"``: sentences are merged until adding more would exceed ``chunk_length``,
  which gives the voice the most context and the longest wait.

Where sentences and clauses end, and what an abbreviation is, are the text rules of
:mod:`fish_notebook.text`. A terminator at the very end of the buffer is not taken as an end
until the next character arrives (it may be ``3.`` of ``3.5``) or the client flushes.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

from .._checks import check_number
from ..errors import SessionStateError, ValidationError
from ..text import CLAUSE_END, SENTENCE_END, WORD_GAP, is_abbreviation

__all__ = ["MAX_PIECE", "TextChunker", "voice_parts"]

Latency = Literal["normal", "balanced", "low"]

_NON_SPACE = re.compile(r"\S")
_SPACE_RUN = re.compile(r"\s*")

#: Most characters handed to the voice at once. The chunker keeps one "word" whole however
#: long it is, but Piper's time and memory grow faster than its length (10,000 characters
#: without a space: 17 s, 30,000: 2 min, in one go) and a synthesis stops only between
#: pieces, even when its client has gone.
MAX_PIECE = 600

# How far past chunk_length to look for the whitespace that confirms a sentence end.
_LOOKAHEAD = 64


class TextChunker:
    """Buffers streamed text and cuts it into pieces ready to synthesize.

    Call :meth:`feed` with each text as it arrives and speak what it returns; call
    :meth:`flush` to get everything buffered now; call :meth:`stop` at the end of the
    stream. ``chunk_length`` (>= 1) bounds a piece; ``min_chunk_length`` (0..chunk_length)
    keeps pieces from being tiny.
    """

    def __init__(
        self,
        *,
        chunk_length: int = 200,
        min_chunk_length: int = 50,
        latency: Latency = "balanced",
    ) -> None:
        check_number("chunk_length", chunk_length, 1, integer=True)
        check_number("min_chunk_length", min_chunk_length, 0, chunk_length, integer=True)
        if latency not in ("normal", "balanced", "low"):
            raise ValidationError("latency", latency, "must be 'normal', 'balanced' or 'low'")
        self.chunk_length = chunk_length
        self.min_chunk_length = min_chunk_length
        self.latency: Latency = latency
        self._buffer = ""
        self._stopped = False

    def __repr__(self) -> str:
        return (
            f"TextChunker(chunk_length={self.chunk_length}, "
            f"min_chunk_length={self.min_chunk_length}, latency={self.latency!r}, "
            f"buffered={len(self._buffer)})"
        )

    @property
    def buffered(self) -> str:
        """The text received but not handed out yet."""
        return self._buffer

    def feed(self, text: str) -> list[str]:
        """Add text; return the pieces that are now complete (often none)."""
        if self._stopped:
            raise SessionStateError("this TextChunker is stopped; create a new one")
        if not isinstance(text, str):
            raise ValidationError("text", type(text).__name__, "must be a str")
        self._buffer += text
        return self._drain()

    def flush(self) -> list[str]:
        """Return everything buffered now, as pieces that respect ``chunk_length``.

        A buffer holding only whitespace stays buffered (it leads the next text).
        """
        pieces = self._drain()
        if _NON_SPACE.search(self._buffer):
            pieces.append(self._buffer)
            self._buffer = ""
        return pieces

    def stop(self) -> list[str]:
        """End of the stream: return what is left (a remainder of only whitespace is dropped).

        After this, :meth:`feed` raises SessionStateError; ``stop`` and ``flush`` return ``[]``.
        """
        pieces = self.flush()
        self._buffer = ""
        self._stopped = True
        return pieces

    # --- cutting ---------------------------------------------------------------------------

    def _drain(self) -> list[str]:
        pieces: list[str] = []
        while True:
            cut = self._find_cut()
            if cut is None:
                return pieces
            pieces.append(self._buffer[:cut])
            self._buffer = self._buffer[cut:]

    def _find_cut(self) -> int | None:
        """Where the next complete piece ends in the buffer, or None to wait for more text."""
        buf = self._buffer
        first = _NON_SPACE.search(buf)
        if first is None:
            return None
        lead = first.start()
        limit = lead + self.chunk_length  # a piece's text must end at or before this index
        over = _NON_SPACE.search(buf, limit) is not None
        window = buf[: limit + _LOOKAHEAD]
        minimum = self.min_chunk_length

        sentences = [
            end for end in _ends(SENTENCE_END, window, limit) if not is_abbreviation(buf, end)
        ]
        clauses = _ends(CLAUSE_END, window, limit) if self.latency == "low" or over else []

        def big(ends: list[int]) -> list[int]:
            return [end for end in ends if _text_end(buf, end) - lead >= minimum]

        if self.latency == "balanced" and big(sentences):
            return self._after_space(big(sentences)[0])
        if self.latency == "low":
            early = sorted(big(sentences) + big(clauses))
            if early:
                return self._after_space(early[0])
        if not over:
            return None
        # The buffer holds more than one piece may: cut at the best place within the limit.
        gap_ends = [
            end
            for end in (_text_end(buf, m.end()) for m in WORD_GAP.finditer(window))
            if lead < end <= limit
        ]
        for ends in (big(sentences), big(clauses), big(gap_ends), sentences, clauses, gap_ends):
            if ends:
                return self._after_space(ends[-1])
        # One word longer than chunk_length: it becomes a piece of its own, once it ends.
        gap = WORD_GAP.search(buf, limit)
        return gap.end() if gap else None

    def _after_space(self, end: int) -> int:
        """A piece ending at ``end`` takes the whitespace after it along."""
        match = _SPACE_RUN.match(self._buffer, end)
        return match.end() if match else end


def _ends(pattern: re.Pattern[str], window: str, limit: int) -> list[int]:
    """End indices of the pattern's matches whose text ends within ``limit``."""
    return [m.end() for m in pattern.finditer(window) if m.end() <= limit]


def _text_end(buf: str, gap: int) -> int:
    """The index right after the last non-space character before ``gap``."""
    end = gap
    while end > 0 and buf[end - 1].isspace():
        end -= 1
    return end


def voice_parts(piece: str, limit: int = MAX_PIECE) -> list[str]:
    """What the voice is handed for one piece: control characters (other than whitespace)
    removed, stripped, in parts of at most ``limit`` characters cut at a space where there
    is one. Nothing for a piece with nothing left to say."""
    text = "".join(
        ch for ch in piece if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cs")
    ).strip()
    parts = []
    while len(text) > limit:
        cut = text.rfind(" ", 1, limit + 1)
        cut = cut if cut > 0 else limit
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    return [*parts, text] if text else parts
