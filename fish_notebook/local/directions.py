"""A piece of text as the local voices perform it: who says which words, and the pauses.

The text may carry Fish's directions (:mod:`fish_notebook.cues` holds their rules): speaker
tags ``<|speaker:N|>``, delivery cues (``[happy]``, ``[whispering]``, any bracketed phrase,
``(happy)`` from the S1 set) and breaks (``[break]``, ``[long-break]``, ``(break)``,
``(long-break)``). A Piper voice can act none of them, so :func:`split_turns` turns a piece
into what it can do:

- a :class:`Turn` per run of words one speaker says without a pause: its text is the
  piece's text with every direction blanked to spaces, so a word's place in the turn plus
  :attr:`Turn.start` is its place in the piece (word timings point at the text as sent);
- a :class:`~fish_notebook.cues.Pause` (:data:`~fish_notebook.cues.BREAK_SECONDS` or
  :data:`~fish_notebook.cues.LONG_BREAK_SECONDS`) per break, rendered as silence;
- the delivery cues it skipped, for the one message that says so.

Directions are never spoken and never words. As in :func:`~fish_notebook.cues.strip_cues`,
a cue that closes around another once that one is out (``[a[x]]``) goes too, within the
stretch between two breaks or speaker tags. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..cues import Part, Pause, split_cues, strip_cues

__all__ = ["Turn", "Turns", "split_turns"]


@dataclass(frozen=True)
class Turn:
    """Words speaker ``speaker`` says in one breath: ``text`` is ``piece[start:start +
    len(text)]`` with its directions blanked to spaces."""

    speaker: int
    text: str
    start: int


@dataclass(frozen=True)
class Turns:
    """A piece, performed: turns and pauses in order, the cues skipped (as written, each
    once) and the speaker at its end (the next piece goes on with that speaker)."""

    items: tuple[Turn | Pause, ...]
    cues: tuple[str, ...]
    speaker: int


def split_turns(piece: str, speaker: int = 0) -> Turns:
    """``piece`` as turns and pauses, starting with ``speaker`` (module docstring)."""
    directions = _directions(piece)
    blanked = _blanked(piece, directions)
    items: list[Turn | Pause] = []
    cues: list[str] = []
    start = 0
    for at, part in directions:
        if part.kind == "cue":
            written = piece[at : at + len(part.text)]
            if written not in cues:
                cues.append(written)
            continue
        if part.kind == "speaker" and int(part.name) == speaker:
            continue  # the same speaker goes on in the same breath
        _add_turn(items, speaker, blanked, start, at)
        if part.kind == "break":
            items.extend(p for p in strip_cues(part.text) if isinstance(p, Pause))
        else:
            speaker = int(part.name)
        start = at + len(part.text)
    _add_turn(items, speaker, blanked, start, len(piece))
    return Turns(tuple(items), tuple(cues), speaker)


def _add_turn(items: list[Turn | Pause], speaker: int, blanked: str, start: int, end: int) -> None:
    text = blanked[start:end]
    if text.strip():
        items.append(Turn(speaker, text, start))


def _found(text: str) -> list[tuple[int, Part]]:
    """Every direction in ``text`` with where it starts."""
    found, at = [], 0
    for part in split_cues(text):
        if part.kind != "words":
            found.append((at, part))
        at += len(part.text)
    return found


def _directions(piece: str) -> list[tuple[int, Part]]:
    """The piece's directions, in order, including cues that only close once the cues
    inside them are out (they never reach over a break or a speaker tag)."""
    directions = _found(piece)
    fences = [at for at, part in directions if part.kind in ("break", "speaker")]
    while True:
        blanked = _blanked(piece, directions)
        new = [
            (at, part)
            for at, part in _found(blanked)
            if part.kind == "cue"
            and (at, part) not in directions
            and not any(at <= fence < at + len(part.text) for fence in fences)
        ]
        if not new:
            return sorted(directions, key=lambda found: found[0])
        directions += new


def _blanked(piece: str, directions: list[tuple[int, Part]]) -> str:
    chars = list(piece)
    for at, part in directions:
        chars[at : at + len(part.text)] = " " * len(part.text)
    return "".join(chars)
