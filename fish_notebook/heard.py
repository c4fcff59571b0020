"""What the listener heard of an answer that stopped early (a barge-in, a stop button).

The voice loop keeps, for the conversation, only the words the user heard (DESIGN.md,
"Listening"). :func:`heard` works that out from what a session recorded and from where the
page's playhead was when the answer went silent. Pure: no I/O, no clock.

Two ways, best first (``Heard.method`` says which):

- ``"words"``: the session has word timings (``timestamps=True``): the words whose end is at
  or before the playhead. Exact to the word, as far as the server's timings are.
- ``"proportion"``: no timings: the text spoken so far, cut in proportion to the audio
  played, back to the end of a word. An estimate: the speaking rate is taken as even.
  When the answer is not ``complete``, the text after the last flush mark is taken as not
  spoken yet (the server speaks what it has at a flush; what follows it was still buffered),
  unless there is no flush mark at all.

``"all"`` when the whole answer was played (the playhead at or past the end of the audio of a
complete answer), and ``"none"`` when nothing was (no audio, no text, a playhead at 0).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .errors import ValidationError
from .text import CJK_CHARS, WORD

__all__ = ["Heard", "HeardMethod", "heard"]

HeardMethod = Literal["words", "proportion", "all", "none"]
#: A word timing: ``(text, start, end)`` in seconds on the answer's audio (a ``TimedWord``).
WordTiming = tuple[str, float, float]

_CJK = re.compile(f"[{CJK_CHARS}]")


@dataclass(frozen=True)
class Heard:
    """What was heard: ``text`` (words joined by spaces), the timed ``words`` heard (empty
    unless ``method == "words"``), the ``playhead`` used (seconds, clamped to the audio) and
    the ``method`` (see the module docstring)."""

    text: str
    words: tuple[WordTiming, ...]
    playhead: float
    method: HeardMethod


def _seconds(name: str, value: float) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or math.isnan(value) or value < 0:
        raise ValidationError(name, value, "must be a number of seconds >= 0")
    return float(value)


def _join(words: Sequence[str]) -> str:
    """Words back into text: a space between them, none between two CJK characters."""
    out = ""
    for word in words:
        if out and not (_CJK.match(out[-1]) and _CJK.match(word)):
            out += " "
        out += word
    return out


def _spoken_text(pieces: Sequence[str | None], complete: bool) -> str:
    """The text the audio covers: all of it when ``complete``, else up to the last flush."""
    if not complete and None in pieces:
        last_flush = len(pieces) - 1 - list(reversed(pieces)).index(None)
        if any(piece for piece in pieces[:last_flush]):
            pieces = pieces[:last_flush]
    return "".join(piece for piece in pieces if piece)


def _cut(text: str, fraction: float) -> str:
    """The words of ``text`` that end within its first ``fraction`` of characters."""
    limit = fraction * len(text)
    return _join([m.group() for m in WORD.finditer(text) if m.end() <= limit + 1e-9])


def heard(
    words: Sequence[WordTiming],
    text: Sequence[str | None],
    received: float,
    playhead: float | None,
    *,
    complete: bool = False,
) -> Heard:
    """What was heard of an answer.

    Args:
        words: word timings, in order (``session.words``); may be empty.
        text: the text pieces sent, ``None`` marking each flush (``session.text``).
        received: seconds of audio received (``session.duration``).
        playhead: seconds of that audio played when it went silent; ``None`` means all of it.
        complete: the audio covers all of ``text`` (the session finished).

    Raises ValidationError for a negative or non-numeric ``received`` or ``playhead``.
    """
    received = _seconds("received", received)
    played = received if playhead is None else min(_seconds("playhead", playhead), received)
    spoken = _spoken_text(text, complete)
    if played <= 0 or not spoken.strip():
        return Heard("", (), played, "none")
    if complete and played >= received:
        return Heard(_join(WORD.findall(spoken)), tuple(words), played, "all")
    if words:
        done = tuple(w for w in words if w[2] <= played + 1e-9)
        return Heard(_join([w[0] for w in done]), done, played, "words")
    return Heard(_cut(spoken, played / received), (), played, "proportion")
