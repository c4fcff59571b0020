"""Text rules: where sentences end, what is an abbreviation, what a word is.

The one home of these rules. The client's early flush, :func:`fish_notebook.sources.paced`,
the embedded server's chunker (``local/chunker.py``) and its word timings (``local/timing.py``)
all ask this module, so a rule changed here changes for all of them at once. Pure: no I/O.

A sentence ends at ``. ! ? …`` (with any closing quotes or brackets) followed by whitespace, at
``。！？`` followed by anything but a closer (scripts written without spaces), and at a blank
line. A ``.`` after a known abbreviation (``Mr.``, ``e.g.``; ``etc.`` is not one: it ends
sentences too often), after a single capital initial (``J. R. R.``), inside a dotted acronym
(``U.S.A.``) or inside a number (``3.5``: no whitespace follows) does not end a sentence.
A terminator at the very end of a text is not an end yet: the next character decides
(``3.`` may become ``3.5``), unless the caller knows the text is complete.

Where a confirmed end lies never depends on how the text was cut into pieces: the first end
found in the start of a text is the first end of the whole text (:func:`first_sentence_end`),
which lets a stream find its first sentence whatever its token boundaries.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

__all__ = [
    "ABBREVIATIONS",
    "CJK_CHARS",
    "CJK_PUNCT",
    "CLAUSE_END",
    "CLOSERS",
    "SENTENCE_END",
    "WORD",
    "WORD_GAP",
    "completes_sentence",
    "ends_sentence",
    "first_sentence_end",
    "is_abbreviation",
    "sentence_ends",
]

#: Closing quotes and brackets that may follow a sentence's terminator.
CLOSERS = "\"'”’)\\]}»」』）》】"
#: Characters of scripts written without spaces (kana, CJK ideographs).
CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
#: CJK punctuation (full-width).
CJK_PUNCT = "。！？，、；：「」『』（）《》【】"

#: A sentence end confirmed by what follows it. The match ends right after the terminator
#: and its closers (or after a blank line).
SENTENCE_END = re.compile(
    rf"[.!?…]+[{CLOSERS}]*(?=\s)"  # latin terminators need whitespace after them
    # CJK ones need one more char, neither a closer nor another terminator (so that "。！"
    # is one end, whether or not the "！" has arrived yet)
    rf"|[。！？]+[{CLOSERS}]*(?=[^{CLOSERS}。！？])"
    r"|\n[^\S\n]*\n",  # a blank line ends a paragraph
    re.DOTALL,
)
#: A clause end (``, ; :``, their CJK twins, a line break): where ``latency="low"`` may cut.
CLAUSE_END = re.compile(
    rf"[,;:]+[{CLOSERS}]*(?=\s)|[，、；：]+[{CLOSERS}]*(?=[^{CLOSERS}])|\n",
    re.DOTALL,
)
#: Places between words: after a whitespace run, or between CJK characters / punctuation.
WORD_GAP = re.compile(rf"\s+(?=\S)|(?<=[{CJK_CHARS}{CJK_PUNCT}])(?=[{CJK_CHARS}])")
#: One word: a CJK character alone, or a run of anything but whitespace and CJK.
WORD = re.compile(rf"[{CJK_CHARS}]|[^\s{CJK_CHARS}]+")

#: Lowercase, without the final dot: a ``.`` after these does not end a sentence.
ABBREVIATIONS = frozenset(
    "mr mrs ms mx dr prof sr jr st mt vs cf approx fig figs eq gen gov lt col sgt capt cmdr "  # noqa: SIM905
    "rev hon e.g i.e a.m p.m u.s u.k ca".split()
)

_LAST_WORD = re.compile(r"(\S+)\Z")
_ACRONYM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")
_OPENERS = CLOSERS + "(\"'[{«“‘"
_TERMINATOR_AT_END = re.compile(rf"(?:[.!?…]+|[。！？]+)[{CLOSERS}]*\s*\Z")


def is_abbreviation(text: str, end: int) -> bool:
    """True when the single ``.`` ending at ``end`` in ``text`` closes an abbreviation, an
    initial or a dotted acronym rather than a sentence."""
    if end < 2 or text[end - 1] != "." or text[end - 2] in ".!?…":
        return False
    word = _LAST_WORD.search(text, 0, end - 1)
    if word is None:
        return False
    token = word.group(1).lstrip(_OPENERS)
    if token.lower() in ABBREVIATIONS:
        return True
    if len(token) == 1 and token.isalpha() and token.isupper() and token != "I":
        return True  # an initial: "J. R. R. Tolkien"
    return _ACRONYM.fullmatch(token) is not None  # "U.S.A."


def sentence_ends(text: str, start: int = 0, limit: int | None = None) -> Iterator[int]:
    """Where confirmed sentences end in ``text``: the index right after each terminator and
    its closers, in order, from ``start``, up to ``limit`` (the end of the match at most)."""
    for match in SENTENCE_END.finditer(text, start):
        end = match.end()
        if limit is not None and end > limit:
            return
        if not is_abbreviation(text, end):
            yield end


def first_sentence_end(text: str) -> int | None:
    """Where the first confirmed sentence of ``text`` ends (the index right after its
    terminator and closers), or None when no sentence end is confirmed yet.

    The answer for the start of a text is the answer for the whole text, once it is not
    None: ``first_sentence_end("Hi. Th")`` and ``first_sentence_end("Hi. There.")`` are both
    3, ``first_sentence_end("Hi.")`` is None (``"Hi.5"`` is no end) and so is
    ``first_sentence_end("Ask Mr. Smith")``.
    """
    return next(sentence_ends(text), None)


def ends_sentence(text: str) -> bool:
    """True when ``text`` (known to be complete so far) ends a sentence, trailing whitespace
    aside: ``"Hello there. "`` yes, ``"Dr."`` and ``"e.g."`` no."""
    match = _TERMINATOR_AT_END.search(text)
    if match is None:
        return False
    end = match.start() + len(match.group().rstrip())
    return not is_abbreviation(text, end)


def completes_sentence(text_so_far: str, next_text: str) -> bool:
    """True when ``text_so_far`` ends a sentence, as the first character of ``next_text``
    confirms; whitespace at the end of ``text_so_far`` may already have confirmed it.

    ``"Hi."`` + ``" There"`` and ``"Hi. "`` + ``"There"`` yes; ``"Mr."`` + ``" Smith"``,
    ``"3."`` + ``"5"``, ``"e.g."`` + ``" this"`` no.
    """
    if not next_text:
        return False
    body_end = len(text_so_far.rstrip())
    window_start = max(0, body_end - 64)
    combined = text_so_far + next_text[:1]
    return any(body_end <= end for end in sentence_ends(combined, window_start))
