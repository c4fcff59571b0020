"""Dialogue scripts: ``Name: line`` lines made into one multi-speaker text.

Fish's S2 models speak a dialogue from one text whose turns carry speaker tags
(``<|speaker:0|>Good morning!<|speaker:1|>Hi!``) and a ``reference_id`` list holding one voice
per speaker (PROTOCOL.md, "Voices, dialogue and delivery cues"). :func:`parse_dialogue` reads a
script the way people write one::

    Alice: Good morning!
    Bob: Hi! [laughing] You're early.
    --
    Alice: Always.

Speakers are numbered in order of appearance; a line without a name goes on with the last
speaker; a blank line or a line holding only ``--`` is a flush point. :meth:`Dialogue.voices`
builds the ``reference_id`` list from a name -> voice map (:func:`parse_voice_map` reads
``alice=ID,bob=ID``). Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .cues import speaker_tag
from .errors import ValidationError
from .protocol import FlushEvent

__all__ = ["FLUSH_LINE", "Dialogue", "parse_dialogue", "parse_voice_map"]

#: A line holding only this is a flush point (as in a ``%%speak`` text body).
FLUSH_LINE = "--"

# "Name: words": a name starts with a letter, is at most 40 characters, and its colon is
# followed by a space or the line's end ("https://x" is not a name).
_NAMED = re.compile(r"\s*(?P<name>[^\W\d_][\w .'-]{0,39}?)\s*:(?:\s+(?P<words>.*)|\s*)")


@dataclass(frozen=True)
class Dialogue:
    """A parsed script: ``speakers[N]`` is speaker N's name; ``parts`` are the tagged lines
    (each ends with a line break) and the flush points, in order."""

    speakers: tuple[str, ...]
    parts: tuple[str | FlushEvent, ...]

    @property
    def text(self) -> str:
        """The whole multi-speaker text, flush points left out."""
        return "".join(part for part in self.parts if isinstance(part, str))

    def voices(self, voices: Mapping[str, str], default: str | None = None) -> list[str] | None:
        """The ``reference_id`` list: one voice per speaker, from ``voices`` (names match
        without regard to case), else ``default``. ``None`` when no speaker has a voice
        (the server's default voice speaks every part).

        Raises ValidationError for a name in ``voices`` that never speaks, or when some
        speakers have a voice and others none.
        """
        chosen = {name.casefold(): voice for name, voice in voices.items()}
        known = {name.casefold() for name in self.speakers}
        strangers = [name for name in voices if name.casefold() not in known]
        if strangers:
            raise ValidationError(
                "voices", ", ".join(strangers), f"not a speaker here ({', '.join(self.speakers)})"
            )
        ids = [chosen.get(name.casefold(), default) for name in self.speakers]
        if all(voice is None for voice in ids):
            return None
        missing = [name for name, voice in zip(self.speakers, ids, strict=True) if voice is None]
        if missing:
            raise ValidationError(
                "voices",
                ", ".join(missing),
                "these speakers have no voice: map them too (alice=ID,bob=ID), or give a "
                "default voice",
            )
        return [voice for voice in ids if voice is not None]


def parse_dialogue(script: str) -> Dialogue:
    """Read ``Name: line`` lines into a :class:`Dialogue` (see the module docstring).

    Each named line starts with its speaker's tag, and so does the first line after a flush
    point (the server may start a new chunk there). Raises ValidationError when a line comes
    before any name, or when nobody says anything.
    """
    speakers: list[str] = []
    numbers: dict[str, int] = {}
    parts: list[str | FlushEvent] = []
    current: int | None = None
    tagged = False  # the current speaker's tag was sent since the last flush point
    for index, line in enumerate(script.splitlines(), 1):
        if not line.strip() or line.strip() == FLUSH_LINE:
            if parts and not isinstance(parts[-1], FlushEvent):
                parts.append(FlushEvent())
            tagged = False
            continue
        named = _NAMED.fullmatch(line)
        if named:
            name = " ".join(named.group("name").split())
            current = numbers.setdefault(name.casefold(), len(speakers))
            if current == len(speakers):
                speakers.append(name)
            words, tagged = (named.group("words") or "").strip(), False
        elif current is None:
            raise ValidationError(
                "dialogue", f"line {index}: {line.strip()!r}", "each turn starts with 'Name: '"
            )
        else:
            words = line.strip()  # goes on with the last speaker
        if words:
            parts.append(("" if tagged else speaker_tag(current)) + words + "\n")
            tagged = True
    while parts and isinstance(parts[-1], FlushEvent):
        parts.pop()
    if not parts:
        raise ValidationError("dialogue", script.strip()[:40], "nobody says anything")
    return Dialogue(tuple(speakers), tuple(parts))


def parse_voice_map(spec: str) -> dict[str, str]:
    """``"alice=ID,bob=ID"`` -> ``{"alice": "ID", "bob": "ID"}``.

    Raises ValidationError for an entry that is not ``name=voice``.
    """
    voices: dict[str, str] = {}
    for entry in spec.split(","):
        name, equals, voice = entry.partition("=")
        if not equals or not name.strip() or not voice.strip():
            raise ValidationError("voices", entry.strip(), "write name=ID, separated by commas")
        voices[" ".join(name.split())] = voice.strip()
    return voices
