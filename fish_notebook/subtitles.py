"""Subtitles from words in time: WebVTT (``.vtt``) and SubRip (``.srt``), in short phrases.

A recording with word timestamps saves them (:meth:`fish_notebook.recording.Recording.save`);
:func:`subtitles` is the text of such a file for any words in order.
"""

from __future__ import annotations

from typing import Literal

from .client import TimedWord
from .timeline import without_cues

__all__ = ["CUE_MAX_CHARS", "CUE_MAX_SECONDS", "CUE_MAX_WORDS", "CUE_PAUSE", "KINDS", "subtitles"]

SubtitleKind = Literal["vtt", "srt"]

#: The subtitle kinds, by file suffix.
KINDS: dict[str, SubtitleKind] = {".vtt": "vtt", ".srt": "srt"}

CUE_MAX_WORDS = 8  # a cue is a short phrase: at most this many words,
CUE_MAX_CHARS = 42  # this many characters (a common subtitle line length),
CUE_MAX_SECONDS = 5.0  # and this long; a sentence end or a pause also closes it
CUE_PAUSE = 0.6


def subtitles(words: list[TimedWord], kind: SubtitleKind) -> str:
    """WebVTT or SubRip text for ``words`` (in order, not overlapping), in short phrases.

    A cue closes after a sentence end (``. ! ? …``), before a pause of ``CUE_PAUSE``
    seconds, or when it would exceed ``CUE_MAX_WORDS`` words, ``CUE_MAX_CHARS`` characters
    or ``CUE_MAX_SECONDS``. Every cue lasts at least a millisecond and none overlap.
    Delivery cues and speaker tags in a word's text are never shown (:func:`without_cues`).
    """
    cues: list[list[TimedWord]] = []
    for word in _spoken(words):
        if cues and not _closes(cues[-1], word):
            cues[-1].append(word)
        else:
            cues.append([word])
    out = ["WEBVTT", ""] if kind == "vtt" else []
    last_end = 0
    for number, cue in enumerate(cues, 1):
        start = max(round(cue[0].start * 1000), last_end)
        end = max(round(cue[-1].end * 1000), start + 1)
        last_end = end
        text = " ".join(" ".join(w.text.split()) for w in cue)
        if kind == "vtt":
            text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            out += [f"{_clock(start, '.')} --> {_clock(end, '.')}", text, ""]
        else:
            out += [str(number), f"{_clock(start, ',')} --> {_clock(end, ',')}", text, ""]
    return "\n".join(out)


def _spoken(words: list[TimedWord]) -> list[TimedWord]:
    cleaned = (word._replace(text=without_cues(word.text)) for word in words)
    return [word for word in cleaned if word.text]


def _closes(cue: list[TimedWord], word: TimedWord) -> bool:
    last = cue[-1]
    chars = sum(len(w.text) + 1 for w in cue) + len(word.text)
    return (
        last.text.rstrip("\"')”’»]").endswith((".", "!", "?", "…"))
        or word.start - last.end >= CUE_PAUSE
        or len(cue) >= CUE_MAX_WORDS
        or chars > CUE_MAX_CHARS
        or word.end - cue[0].start > CUE_MAX_SECONDS
    )


def _clock(ms: int, separator: str) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"
