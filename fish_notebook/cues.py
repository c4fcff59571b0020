"""Delivery cues and speaker tags written in the text: what they are, and taking them out.

Fish's models read directions inline (PROTOCOL.md, "Voices, dialogue and delivery cues"):

- **S2 cues** (``s2-pro``, ``s2.1-pro``...): square brackets, free-form: ``[happy]``,
  ``[whispering]``, ``[slightly sad]``, ``[audience laughing]``. Any bracketed phrase on one
  line is a cue to these models, so any is one here.
- **S1 cues** (``s1``): parentheses, from a fixed set (:data:`S1_CUES`). Other parentheses
  ``(like these)`` are words.
- **Pauses**: ``[break]`` / ``(break)`` (short) and ``[long-break]`` / ``(long-break)`` (long).
- **Speaker tags** ``<|speaker:N|>`` (multi-speaker dialogue, one voice per N in the request's
  ``reference_id`` list).

Cues are directions, never words. :func:`split_cues` cuts a text into its parts (for a player
that shows cues as cues); :func:`strip_cues` keeps only what a voice that cannot act them
should say, a pause becoming a :class:`Pause` of :data:`BREAK_SECONDS` or
:data:`LONG_BREAK_SECONDS` (the embedded server renders it as silence). A stream that may cut
a cue in two asks :func:`unfinished_cue` how much of its tail to hold. Pure: no I/O.

The S1 set is Fish's documented one: the tables of the "S1 (legacy) syntax" section of
``developer-guide/core-features/emotions.mdx`` in Fish Audio's docs repository
(``fishaudio/docs``, files ``snippets/emotion-list-{basic,advanced,tones,effects,special}.mdx``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypeAlias

__all__ = [
    "BREAK_SECONDS",
    "LONG_BREAK_SECONDS",
    "S1_CUES",
    "Part",
    "PartKind",
    "Pause",
    "speaker_tag",
    "split_cues",
    "strip_cues",
    "unfinished_cue",
]

PartKind: TypeAlias = Literal["words", "cue", "break", "speaker"]

#: Length of a ``[break]`` / ``(break)`` for a voice that cannot act it, in seconds.
BREAK_SECONDS = 0.3
#: Length of a ``[long-break]`` / ``(long-break)``, in seconds.
LONG_BREAK_SECONDS = 0.8

_S1_BASIC = (
    "happy sad angry excited calm nervous confident surprised satisfied delighted scared "
    "worried upset frustrated depressed empathetic embarrassed disgusted moved proud relaxed "
    "grateful curious sarcastic"
)
_S1_ADVANCED = (
    "disdainful unhappy anxious hysterical indifferent uncertain doubtful confused "
    "disappointed regretful guilty ashamed jealous envious hopeful optimistic pessimistic "
    "nostalgic lonely bored contemptuous sympathetic compassionate determined resigned"
)
_S1_PHRASES = (
    # tone markers
    "in a hurry tone",
    "shouting",
    "screaming",
    "whispering",
    "soft tone",
    # audio effects
    "laughing",
    "chuckling",
    "sobbing",
    "crying loudly",
    "sighing",
    "groaning",
    "panting",
    "gasping",
    "yawning",
    "snoring",
    # special effects
    "audience laughing",
    "background laughter",
    "crowd laughing",
    "break",
    "long-break",
)
#: The S1 model's cues, written in parentheses: ``(happy)``, ``(in a hurry tone)``, ``(break)``.
S1_CUES: frozenset[str] = frozenset((_S1_BASIC + " " + _S1_ADVANCED).split() + list(_S1_PHRASES))

_BREAKS = {"break": BREAK_SECONDS, "long-break": LONG_BREAK_SECONDS}
_LONGEST_CUE = 80  # longer bracketed text is not a direction
_TAG = re.compile(
    r"<\|speaker:(?P<speaker>\d{1,3})\|>"
    rf"|\[(?P<square>[^\[\]\n]{{1,{_LONGEST_CUE}}})\]"
    r"|\((?P<round>[A-Za-z][A-Za-z -]{0,30})\)"
)


class Part(NamedTuple):
    """A piece of text: ``kind`` is ``"words"``, ``"cue"``, ``"break"`` or ``"speaker"``;
    ``text`` is the piece as written (``"[happy]"``, ``"<|speaker:1|>"``, ``"Hello "``)."""

    kind: PartKind
    text: str

    @property
    def name(self) -> str:
        """A cue's or break's direction (``"happy"``, ``"long-break"``), a speaker's number
        (``"1"``), or the words themselves."""
        if self.kind == "words":
            return self.text
        if self.kind == "speaker":
            return self.text[len("<|speaker:") : -2]
        return self.text[1:-1].strip().lower()


@dataclass(frozen=True)
class Pause:
    """Silence in place of a break cue, for a voice that cannot act it."""

    seconds: float


def speaker_tag(number: int) -> str:
    """The tag that hands the text to speaker ``number`` (``<|speaker:0|>``)."""
    if not isinstance(number, int) or number < 0:
        raise ValueError(f"a speaker number is an int >= 0, got {number!r}")
    return f"<|speaker:{number}|>"


def _kind(match: re.Match[str]) -> PartKind | None:
    if match.group("speaker") is not None:
        return "speaker"
    inner = (match.group("square") or match.group("round") or "").strip().lower()
    if match.group("round") is not None and inner not in S1_CUES:
        return None  # ordinary parentheses
    if not inner:
        return None  # "[ ]" directs nothing
    return "break" if inner in _BREAKS else "cue"


def split_cues(text: str) -> list[Part]:
    """Cut ``text`` into words, cues, breaks and speaker tags, in order.

    Joining the parts' ``text`` gives ``text`` back. Adjacent words are one part.
    """
    parts: list[Part] = []
    start = 0
    for match in _TAG.finditer(text):
        kind = _kind(match)
        if kind is None:
            continue
        if match.start() > start:
            parts.append(Part("words", text[start : match.start()]))
        parts.append(Part(kind, match.group()))
        start = match.end()
    if start < len(text):
        parts.append(Part("words", text[start:]))
    return parts


def strip_cues(text: str) -> list[str | Pause]:
    """What a voice that cannot act cues says: the words, and a :class:`Pause` per break.

    Cues and speaker tags go with the space they leave (``"a [happy] b"`` -> ``"a b"``,
    ``"Hi!<|speaker:1|>Hello"`` -> ``"Hi! Hello"``). A text without cues comes back as
    ``[text]`` (``[]`` when empty). Taking a cue out can close another around it
    (``"[a[x]]"``): that one goes too.
    """
    out = _strip_once(text)
    while any(isinstance(p, str) and _has_cue(p) for p in out):
        out = [new for old in out for new in (_strip_once(old) if isinstance(old, str) else [old])]
    return out


def _has_cue(text: str) -> bool:
    return any(part.kind != "words" for part in split_cues(text))


def _strip_once(text: str) -> list[str | Pause]:
    out: list[str | Pause] = []
    gap = False  # a cue or tag was taken out just before
    for part in split_cues(text):
        if part.kind == "break":
            out.append(Pause(_BREAKS[part.name]))
            gap = True
        elif part.kind in ("cue", "speaker"):
            gap = True
        else:
            words = part.text
            if gap:
                before = out[-1] if out else None
                if not isinstance(before, str) or before[-1:].isspace():
                    words = words.lstrip()
                elif not words[:1].isspace():
                    words = " " + words  # "Hi!<|speaker:1|>Hello": keep the words apart
            gap = False
            if words and out and isinstance(out[-1], str):
                out[-1] += words
            elif words:
                out.append(words)
    return out


def unfinished_cue(text: str) -> int:
    """Where a cue or tag that ``text`` ends in the middle of starts (``len(text)`` if none).

    A stream holds ``text[unfinished_cue(text):]`` until more text arrives, so it never
    speaks half a cue: ``"So [whisp"`` -> 3, ``"Hi <|speak"`` -> 3, ``"(hap"`` -> 0.
    """
    opener = max(text.rfind("["), text.rfind("("), text.rfind("<"))
    if opener < 0:
        return len(text)
    tail = text[opener:]
    unfinished: bool
    if tail[0] == "<":
        prefix = "<|speaker:".startswith(tail)
        unfinished = prefix or bool(re.fullmatch(r"<\|speaker:\d{0,3}\|?", tail))
    elif tail[0] == "[":
        unfinished = "]" not in tail and "\n" not in tail and len(tail) <= _LONGEST_CUE
    else:
        inner = tail[1:].lower()
        unfinished = ")" not in tail and any(cue.startswith(inner) for cue in S1_CUES)
    return opener if unfinished else len(text)
