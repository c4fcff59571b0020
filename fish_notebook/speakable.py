"""Speakable text: an LLM's markdown, streamed, turned into what a voice should say.

:class:`SpeakableFilter` is fed tokens split anywhere (a ``**``, a code fence or a URL may be
cut across tokens) and hands back :class:`Piece` objects as soon as the markup allows: each
holds a stretch of the ``original`` text and what is ``spoken`` for it, so a player can show
the original with the skipped parts greyed. Joining the originals gives the input back;
joining the spoken parts gives the speech. A :class:`~fish_notebook.protocol.FlushEvent`
among the pieces marks where the speech should be flushed. Pure: no I/O, no clocks.

What becomes of the markdown:

- emphasis (``*``, ``**``, ``_``, ``__``, ``~~``): the words, without the marks; an ``_``
  inside a word (``snake_case``) is kept;
- a header: its words, as a sentence (a ``.`` is added when it has no end), then a flush;
- a list item (``- ``, ``* ``, ``+ ``, ``1. ``, ``[ ]`` boxes): its words, as a sentence;
- ``> `` quotes, ``---`` rules and table separator rows: nothing;
- ``[text](url)`` and ``![alt](url)``: the text; a bare or ``<autolinked>`` URL: its host
  (``https://docs.python.org/3/x`` -> ``docs.python.org``);
- ``inline code``: its text; a fenced code block: a short note ("Here is a code block in
  Python.") and a flush, its lines not spoken;
- a table row (a line starting with ``|``): its cells' words, separated by commas, as a
  sentence;
- emoji and HTML tags: nothing (``<br>`` a space);
- delivery cues (``[happy]``, ``(whispering)``) and ``<|speaker:N|>`` tags: kept as they are
  (see :mod:`fish_notebook.cues`).

Holding: plain text goes out at once. Only text that may still turn out to be markup waits:
a line's first characters until its kind is known (``-``, ``12``, ``#``, a fence), a ``[``
until its ``]`` (and ``(url)``), a ``<`` until its ``>``, a URL until its end, an ``_`` or
``~`` until the next character, and a word that so far reads ``h``... ``https:/`` (a URL may
be starting). Every hold is bounded (:data:`HOLD_LIMIT` characters or the end of the line).
The speech does not depend on where the tokens were cut.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from .errors import SessionStateError
from .protocol import FlushEvent, TextEvent
from .text import ends_sentence

__all__ = [
    "HOLD_LIMIT",
    "Piece",
    "SpeakableFilter",
    "SpeakableItem",
    "aspeakable",
    "code_block_note",
    "merge_pieces",
    "speakable",
    "speakable_text",
    "url_host",
]

#: The longest stretch held back for a ``[link](url)``, a ``<tag>`` or a table row.
HOLD_LIMIT = 400


@dataclass(frozen=True)
class Piece:
    """A stretch of the original text and what is spoken for it.

    ``kind`` is ``"text"`` (spoken as written), ``"skipped"`` (markup: nothing is spoken) or
    ``"replaced"`` (a link's URL spoken as its host, a code block as a note, a ``.`` added
    after a header; ``original`` is ``""`` for something added).
    """

    original: str
    spoken: str

    @property
    def kind(self) -> Literal["text", "skipped", "replaced"]:
        if self.spoken == self.original:
            return "text"
        return "skipped" if not self.spoken else "replaced"


SpeakableItem: TypeAlias = Piece | FlushEvent


class _Need:
    """More text is needed before the markup at the start of the buffer can be decided."""


NEED: Final = _Need()
_Step: TypeAlias = "bool | _Need"  # True: consumed something; NEED: wait for more

_SLICE = 256  # feed() works through long texts this many characters at a time
_TAIL = 120  # how much of a line's speech is kept to decide whether it ends a sentence
_WORD = re.compile(r"[^\W_]")
_EMOJI = (
    "\U0001f000-\U0001faff"  # pictographs, emoticons, transport, flags' letters
    "\u2600-\u27bf"  # miscellaneous symbols, dingbats
    "\u2b00-\u2bff"  # arrows and stars
    "\u2300-\u23ff"  # technical (watch, alarm clock)
    "\ufe0e\ufe0f\u200d\u20e3"  # variation selectors, zero-width joiner, keycap
    "\U000e0020-\U000e007f"  # tag characters (subdivision flags)
)
_EMOJI_RUN = re.compile(f"[{_EMOJI}]+")
# Characters that may start markup inline; "h" and "!" only at a word's start.
_PLAIN = re.compile(rf"(?:[^\n`*_~\\\[!<|#h{_EMOJI}]|(?<=[^\W_])[h!])+")
_URL = re.compile(r"https?://[^\s<>\[\]\"'`*|{}]+")
_URL_TRAILING = ".,;:!?'\""
_AUTOLINK = re.compile(r"https?://[^\s<>]+")
_HTML_TAG = re.compile(r"/?([A-Za-z][A-Za-z0-9-]*)(?:\s[^<>]*)?/?|!--.*--", re.DOTALL)
_SPACED_TAGS = frozenset({"br", "p", "div", "li", "tr", "td", "th", "hr"})
_CONTROL_TAG = re.compile(r"<\|[A-Za-z0-9_:]{1,40}\|>")
_CONTROL_PREFIX = re.compile(r"<\|[A-Za-z0-9_:]{0,40}\|?")
_LANGUAGES = {
    "py": "Python", "python": "Python", "python3": "Python", "ipython": "Python",
    "js": "JavaScript", "javascript": "JavaScript", "ts": "TypeScript",
    "typescript": "TypeScript", "sh": "shell", "bash": "shell", "shell": "shell",
    "zsh": "shell", "console": "shell", "c#": "C sharp", "cs": "C sharp",
    "csharp": "C sharp", "c++": "C plus plus", "cpp": "C plus plus", "rs": "Rust",
    "rust": "Rust", "go": "Go", "sql": "SQL", "json": "JSON", "yaml": "YAML",
    "yml": "YAML", "html": "HTML", "css": "CSS", "md": "Markdown", "markdown": "Markdown",
    "r": "R", "java": "Java", "c": "C", "toml": "TOML", "text": "", "txt": "", "plain": "",
}  # fmt: skip


def url_host(url: str) -> str:
    """How a URL is spoken: its host, without ``www.`` (``""`` when it has none)."""
    try:
        host = urllib.parse.urlsplit(url).hostname or ""
    except ValueError:
        return ""
    return host[4:] if host.startswith("www.") else host


def code_block_note(info: str) -> str:
    """What is said instead of a fenced code block whose info string is ``info``."""
    word = info.split()[0].strip("{}.").lower() if info.split() else ""
    language = _LANGUAGES.get(word, re.sub(r"[^\w+.-]", "", word))
    return f"Here is a code block in {language}." if language else "Here is a code block."


def merge_pieces(items: Iterable[SpeakableItem]) -> list[SpeakableItem]:
    """The same items with neighbouring pieces of one kind (text, skipped) made one piece,
    as a transcript shows them. Replaced pieces and FlushEvents stay apart."""
    merged: list[SpeakableItem] = []
    for item in items:
        last = merged[-1] if merged else None
        if (
            isinstance(item, Piece)
            and isinstance(last, Piece)
            and item.original
            and last.original
            and item.kind == last.kind != "replaced"
        ):
            merged[-1] = Piece(last.original + item.original, last.spoken + item.spoken)
        else:
            merged.append(item)
    return merged


def _needs_period(spoken_line: str) -> bool:
    """A header, list item or table row whose speech does not end a sentence yet."""
    text = spoken_line.rstrip()
    return bool(text) and text[-1] not in ":;," and not ends_sentence(text)


def _trim_url(url: str) -> str:
    """A URL without the sentence's punctuation after it (and an unbalanced ``)``)."""
    while url and (
        url[-1] in _URL_TRAILING or (url[-1] == ")" and url.count("(") < url.count(")"))
    ):
        url = url[:-1]
    return url


def _inline_pieces(text: str, before: str) -> list[Piece]:
    """The pieces of a complete inline text (a link's label, a table cell)."""
    sub = SpeakableFilter(blocks=False, before=before)
    return [item for item in sub.feed(text) + sub.close() if isinstance(item, Piece)]


def _row_pieces(row: str) -> list[Piece]:
    """A table row's pieces: the cells' words, a comma between cells that say something."""
    cells: list[list[Piece]] = []
    for part in row.split("|"):
        content = part.strip()
        start = part.find(content) if content else len(part)
        pieces = [Piece(part[:start], "")] if start else []
        pieces += _inline_pieces(content, " ") if content else []
        if start + len(content) < len(part):
            pieces.append(Piece(part[start + len(content) :], ""))
        cells.append(pieces)
    spoken = ["".join(p.spoken for p in cell).strip() for cell in cells]
    out: list[Piece] = []
    for index, cell in enumerate(cells):
        if index:
            between = any(spoken[:index]) and bool(spoken[index])
            out.append(Piece("|", ", " if between else ""))
        out.extend(cell)
    return out


def _match_link(buf: str, start: int, final: bool) -> tuple[str, int, int] | _Need | None:
    """``[label](url)`` at ``buf[start]``: ``("link", label_end, end)``, ``("cue", end, end)``
    for a bracketed text without a URL (kept as written), NEED, or None (a lone ``[``)."""
    window = buf[start : start + HOLD_LIMIT]
    close = -1
    for index, ch in enumerate(window[1:], 1):
        if ch == "]":
            close = start + index
            break
        if ch in "[\n":
            return None
    if close < 0:
        return None if final or len(window) >= HOLD_LIMIT else NEED
    after = close + 1
    if after == len(buf):
        return ("cue", after, after) if final else NEED
    if buf[after] != "(":
        return ("cue", after, after)
    depth = 0
    target = buf[after + 1 : after + 1 + HOLD_LIMIT]
    for index, ch in enumerate(target):
        if ch == "\n":
            return ("cue", after, after)
        if ch == "(":
            depth += 1
        elif ch == ")":
            if depth == 0:
                return ("link", close, after + 2 + index)
            depth -= 1
    return ("cue", after, after) if final or len(target) >= HOLD_LIMIT else NEED


class _Blocks:
    """Recognisers for what a line starts with. Each takes the line from its first non-blank
    character and returns NEED, None (not this kind of line), or what it found."""

    @staticmethod
    def fence(rest: str, final: bool) -> tuple[int, str, str] | _Need | None:
        match = re.match(r"(`{3,}|~{3,})([^\n]*)(\n|\Z)", rest)
        if match is None:
            short = re.fullmatch(r"`{1,2}|~{1,2}", rest)
            return NEED if short and not final else None
        fence, info, newline = match.groups()
        if not newline and not final:
            return NEED  # the info string may go on
        if fence[0] == "`" and "`" in info:
            return None
        return match.end(), fence, info.strip()

    @staticmethod
    def header(rest: str, final: bool) -> int | _Need | None:
        match = re.match(r"#{1,6}(?:[ \t]+|(?=\n)|\Z)", rest)
        if match is None:
            return None
        return NEED if match.end() == len(rest) and not final else match.end()

    @staticmethod
    def rule_or_item(rest: str, final: bool) -> tuple[str, int] | _Need | None:
        rule = re.match(r"([-*_=])\1+[ \t]*(?=\n|\Z)", rest)
        if rule and (rule.end() < len(rest) or final):
            return "rule", rule.end()
        if not final and re.fullmatch(r"([-*_=])\1*[ \t]*", rest):
            return NEED
        item = re.match(r"(?:[-*+]|\d{1,9}[.)])[ \t]+", rest)
        if item:
            return NEED if item.end() == len(rest) and not final else ("item", item.end())
        if not final and re.fullmatch(r"[-*+]|\d{1,9}[.)]?", rest):
            return NEED
        return None

    @staticmethod
    def table_row(rest: str, final: bool) -> str | _Need | None:
        end = rest.find("\n", 0, HOLD_LIMIT + 1)
        if end < 0:
            if len(rest) > HOLD_LIMIT:
                return None
            if not final:
                return NEED
            end = len(rest)
        return rest[:end]


class _LineReader:
    """The markup inside a line: the buffer, what was said, and one rule per character that
    may start markup. :class:`SpeakableFilter` adds what a line starts with."""

    def __init__(self, *, blocks: bool, before: str) -> None:
        self._blocks = blocks
        self._buf = ""
        self._prev = before or "\n"  # the last character consumed ("\n": a line start)
        self._line_start = blocks
        self._block = "para"  # the current line: "para", "header", "item" or "row"
        self._code = 0  # inside `inline code`: the length of its backtick run
        self._line_spoken = ""  # the end of the current line's speech
        self._emoji_gap = False  # dropped emoji after a space: drop the space after them
        self._out: list[SpeakableItem] = []
        self._inline_rules: dict[str, Callable[[bool], _Step | None]] = {
            "`": self._backticks, "*": self._stars, "_": self._underscores,
            "~": self._tildes, "\\": self._escape, "[": self._bracket, "!": self._bang,
            "<": self._angle, "|": self._pipe, "#": self._hashes, "h": self._url,
        }  # fmt: skip

    def _drain(self) -> list[SpeakableItem]:
        out, self._out = merge_pieces(self._out), []
        return out

    def _take(self, length: int, spoken: str) -> bool:
        original, self._buf = self._buf[:length], self._buf[length:]
        self._add(Piece(original, spoken))
        return True

    def _add(self, piece: Piece) -> None:
        self._out.append(piece)
        self._prev = piece.original[-1:] or self._prev
        self._line_spoken = (self._line_spoken + piece.spoken)[-_TAIL:]
        self._emoji_gap = False

    def _end_line(self) -> bool:
        header = self._block == "header"
        period = self._block != "para" and _needs_period(self._line_spoken)
        self._take(1, ".\n" if period else "\n")
        if header:
            self._out.append(FlushEvent())
        self._block = "para"
        self._code = 0
        self._line_spoken = ""
        self._line_start = self._blocks
        return True

    # --- inside a line -------------------------------------------------------------------

    def _inline(self, final: bool) -> _Step:
        first = self._buf[0]
        if first == "\n":
            return self._end_line()
        if self._code:
            return self._in_code(final)
        rule = self._inline_rules.get(first)
        if rule is not None:
            found = rule(final)
            if found is not None:
                return found
        elif _EMOJI_RUN.match(first):
            gap = self._emoji_gap or self._prev.isspace()
            self._take(_EMOJI_RUN.match(self._buf).end(), "")  # type: ignore[union-attr]
            self._emoji_gap = gap
            return True
        elif first == " " and self._emoji_gap:
            return self._take(1, "")
        return self._take_plain(_PLAIN.match(self._prev + self._buf, 1))

    def _take_plain(self, plain: re.Match[str] | None) -> bool:
        length = plain.end() - 1 if plain else 0
        length = max(length, 1)  # a markup character that turned out to be text
        return self._take(length, self._buf[:length])

    def _run_of(self, char: str, final: bool) -> int | _Need:
        length = len(self._buf) - len(self._buf.lstrip(char))
        return NEED if length == len(self._buf) and not final else length

    def _in_code(self, final: bool) -> _Step:
        if self._buf[0] == "`":
            length = self._run_of("`", final)
            if length is NEED:
                return NEED
            assert isinstance(length, int)
            if length == self._code:
                self._code = 0
                return self._take(length, "")
            return self._take(length, self._buf[:length])
        end = re.search(r"[`\n]|\Z", self._buf)
        return self._take(end.start(), self._buf[: end.start()])  # type: ignore[union-attr]

    def _backticks(self, final: bool) -> _Step:
        length = self._run_of("`", final)
        if isinstance(length, int):
            self._code = length
            return self._take(length, "")
        return length

    def _stars(self, final: bool) -> _Step:
        return self._take(len(self._buf) - len(self._buf.lstrip("*")), "")

    def _underscores(self, final: bool) -> _Step:
        length = self._run_of("_", final)
        if not isinstance(length, int):
            return length
        after = self._buf[length : length + 1]
        inside_word = bool(_WORD.match(self._prev) and after and _WORD.match(after))
        return self._take(length, self._buf[:length] if inside_word else "")

    def _tildes(self, final: bool) -> _Step:
        length = self._run_of("~", final)
        if not isinstance(length, int):
            return length
        return self._take(length, "" if length >= 2 else "~")

    def _escape(self, final: bool) -> _Step | None:
        if len(self._buf) == 1:
            return None if final else NEED
        escaped = self._buf[1]
        if not re.match(r"[!-/:-@\[-`{-~]", escaped):
            return None
        return self._take(2, "" if escaped in "*_`#|~" else escaped)

    def _pipe(self, final: bool) -> _Step:
        return self._take(1, "")

    def _hashes(self, final: bool) -> _Step | None:
        """The closing ``##`` of a header (``## Title ##``); elsewhere a ``#`` is text."""
        if self._block != "header" or not self._prev.isspace():
            return None
        run = re.match(r"#+[ \t]*", self._buf)
        assert run is not None
        if run.end() == len(self._buf):
            return self._take(run.end(), "") if final else NEED
        return self._take(run.end(), "") if self._buf[run.end()] == "\n" else None

    def _url(self, final: bool) -> _Step | None:
        if _WORD.match(self._prev):
            return None  # inside a word
        match = _URL.match(self._buf)
        if match is None:
            starts = "https://".startswith(self._buf) or "http://".startswith(self._buf)
            return NEED if starts and not final else None
        if match.end() == len(self._buf) and not final:
            return NEED
        url = _trim_url(match.group())
        return self._take(len(url), url_host(url))

    def _bang(self, final: bool) -> _Step | None:
        """``![alt](url)`` speaks its alt text; any other ``!`` is text."""
        if _WORD.match(self._prev):
            return None
        if len(self._buf) == 1:
            return None if final else NEED
        if self._buf[1] != "[":
            return None
        found = _match_link(self._buf, 1, final)
        if not isinstance(found, tuple):
            return found
        if found[0] != "link":
            return None
        self._take(1, "")
        return self._link(found[1] - 1, found[2] - 1)

    def _bracket(self, final: bool) -> _Step | None:
        if self._block == "item" and not self._line_spoken.strip():
            box = re.match(r"\[[ xX]\][ \t]+", self._buf)
            if box and (box.end() < len(self._buf) or final):
                return self._take(box.end(), "")  # a task list's check box
            if not final and re.fullmatch(r"\[[ xX]?\]?[ \t]*", self._buf):
                return NEED
        found = _match_link(self._buf, 0, final)
        if not isinstance(found, tuple):
            return found
        kind, label_end, end = found
        if kind == "cue":
            return self._take(end, self._buf[:end])  # [happy], [1]: kept as written
        return self._link(label_end, end)

    def _link(self, label_end: int, end: int) -> bool:
        label = self._buf[1:label_end]
        self._take(1, "")
        self._buf = self._buf[len(label) :]
        for piece in _inline_pieces(label, "["):
            self._add(piece)
        return self._take(end - label_end, "")

    def _angle(self, final: bool) -> _Step | None:
        """``<|speaker:0|>`` kept; ``<https://...>`` as its host; an HTML tag dropped."""
        buf = self._buf
        if len(buf) == 1:
            return None if final else NEED
        if buf[1] == "|":
            tag = _CONTROL_TAG.match(buf)
            if tag:
                return self._take(tag.end(), tag.group())
            return NEED if not final and _CONTROL_PREFIX.fullmatch(buf) else None
        if not (buf[1].isalpha() or buf[1] in "/!"):
            return None
        window = buf[:HOLD_LIMIT]
        close, newline = window.find(">"), window.find("\n")
        if close < 0 or 0 <= newline < close:
            waiting = close < 0 and newline < 0 and len(window) < HOLD_LIMIT and not final
            return NEED if waiting else None
        inner = buf[1:close]
        if _AUTOLINK.fullmatch(inner):
            return self._take(close + 1, url_host(inner))
        tag = _HTML_TAG.fullmatch(inner)
        if tag is None:
            return None
        spaced = (tag.group(1) or "").lower() in _SPACED_TAGS and not self._prev.isspace()
        return self._take(close + 1, " " if spaced else "")


class SpeakableFilter(_LineReader):
    """Markdown in, speech out, token by token (see the module docstring).

    Call :meth:`feed` with each token and :meth:`close` at the end; each returns the
    :class:`Piece` objects (and FlushEvents) that became ready, in order. Text that may still
    be markup is held (:attr:`pending`) until the markup is known, within
    :data:`HOLD_LIMIT` characters or the end of its line. ``blocks=False`` reads the text as
    the inside of one line (no headers, lists, fences or tables).
    """

    def __init__(self, *, blocks: bool = True, before: str = "\n") -> None:
        super().__init__(blocks=blocks, before=before)
        self._fence: tuple[str, int] | None = None  # inside a code block: its fence
        self._closed = False

    @property
    def pending(self) -> str:
        """The original text held back, waiting to see whether it is markup."""
        return self._buf

    def feed(self, text: str) -> list[SpeakableItem]:
        """Add a token; return what is ready to speak. Raises SessionStateError after close."""
        if self._closed:
            raise SessionStateError("this SpeakableFilter is closed: make a new one")
        # In slices, so that a whole document fed at once never makes a long buffer to copy.
        for start in range(0, len(text), _SLICE):
            self._buf += text[start : start + _SLICE]
            self._run(final=False)
        return self._drain()

    def close(self) -> list[SpeakableItem]:
        """The text is complete: decide what was held and return the rest. Safe to call twice."""
        if not self._closed:
            self._run(final=True)
            if self._block != "para" and _needs_period(self._line_spoken):
                self._out.append(Piece("", "."))
            self._closed = True
        return self._drain()

    # --- the driver ---------------------------------------------------------------------

    def _run(self, final: bool) -> None:
        while self._buf:
            before = len(self._buf)
            if self._step(final) is NEED:
                return
            assert len(self._buf) < before, "a rule consumed nothing"

    def _step(self, final: bool) -> _Step:
        if self._fence is not None:
            return self._code_block_line(final)
        if self._line_start:
            found = self._line_kind(final)
            if found is not None:
                return found
            self._line_start = False
        return self._inline(final)

    # --- lines --------------------------------------------------------------------------

    def _line_kind(self, final: bool) -> _Step | None:
        """At a line's start: a fence, header, rule, item, quote or table row, or None."""
        buf = self._buf
        indent = len(buf) - len(buf.lstrip(" \t"))
        if indent == len(buf):
            return None if final else NEED
        rest, first = buf[indent:], buf[indent]
        found: object = None
        if first in "`~" and indent <= 3:
            found = _Blocks.fence(rest, final)
            if isinstance(found, tuple):
                return self._open_code_block(indent, *found)
        elif first == "#" and indent <= 3:
            found = _Blocks.header(rest, final)
            if isinstance(found, int):
                return self._start_line("header", indent + found)
        elif first in "-*_=+" or first.isdigit():
            found = _Blocks.rule_or_item(rest, final)
            if isinstance(found, tuple):
                return self._start_line("para" if found[0] == "rule" else "item", indent + found[1])
        elif first == ">" and indent <= 3:
            if len(rest) == 1 and not final:
                return NEED  # a space may follow, and belongs to the marker
            self._take(indent + (2 if rest[1:2] in (" ", "\t") else 1), "")
            return True  # still at the line's start: "> - item"
        elif first == "|" and indent <= 3:
            found = _Blocks.table_row(rest, final)
            if isinstance(found, str):
                return self._table_row(indent, found)
        return NEED if found is NEED else None

    def _start_line(self, block: str, marker: int) -> bool:
        self._take(marker, "")
        self._block = block
        self._line_start = False
        return True

    def _open_code_block(self, indent: int, length: int, fence: str, info: str) -> bool:
        self._take(indent + length, code_block_note(info) + "\n")
        self._out.append(FlushEvent())
        self._fence = (fence[0], len(fence))
        self._line_start = True
        return True

    def _code_block_line(self, final: bool) -> _Step:
        """Inside a fenced block: skip its lines until the closing fence."""
        assert self._fence is not None
        char, length = self._fence
        if self._line_start:
            fence = re.escape(char)
            closing = re.match(rf" {{0,3}}{fence}{{{length},}}[ \t]*(\n|\Z)", self._buf)
            if closing and (closing.group(1) or final):
                self._take(closing.end(), "")
                self._fence = None
                self._line_start = True
                return True
            if not final and re.fullmatch(rf" {{0,3}}{fence}*[ \t]*", self._buf):
                return NEED
        newline = self._buf.find("\n")
        self._take(newline + 1 if newline >= 0 else len(self._buf), "")
        self._line_start = newline >= 0
        return True

    def _table_row(self, indent: int, row: str) -> bool:
        if indent:
            self._take(indent, "")
        self._line_start = False
        if "-" in row and re.fullmatch(r"[\s:|-]*", row):
            return self._take(len(row), "")  # the separator under the header row
        self._buf = self._buf[len(row) :]
        for piece in _row_pieces(row):
            self._add(piece)
        self._block = "row"
        return True


def speakable_text(markdown: str) -> str:
    """The speech for a whole markdown text (flush points dropped)."""
    sub = SpeakableFilter()
    items = sub.feed(markdown) + sub.close()
    return "".join(item.spoken for item in items if isinstance(item, Piece))


def _spoken(items: list[SpeakableItem], pieces: list[Piece] | None) -> Iterator[str | FlushEvent]:
    text = ""
    for item in items:
        if isinstance(item, FlushEvent):
            if text:
                yield text
            text = ""
            yield item
        else:
            text += item.spoken
            if pieces is not None:
                pieces.append(item)
    if text:
        yield text


def _token_text(token: str | TextEvent | FlushEvent) -> str | None:
    if isinstance(token, FlushEvent):
        return None
    return token.text if isinstance(token, TextEvent) else token


def speakable(
    tokens: Iterable[str | TextEvent | FlushEvent], *, pieces: list[Piece] | None = None
) -> Iterator[str | FlushEvent]:
    """Speech for a stream of markdown tokens: str pieces and FlushEvents, as they are ready.

    A FlushEvent in ``tokens`` goes through (after what was ready before it). ``pieces``,
    when given, receives every :class:`Piece` in order: the original text, marked.
    """
    sub = SpeakableFilter()
    for token in tokens:
        text = _token_text(token)
        if text is None:
            yield from _spoken(sub.feed(""), pieces)
            yield FlushEvent()
        else:
            yield from _spoken(sub.feed(text), pieces)
    yield from _spoken(sub.close(), pieces)


async def aspeakable(
    tokens: AsyncIterable[str | TextEvent | FlushEvent], *, pieces: list[Piece] | None = None
) -> AsyncIterator[str | FlushEvent]:
    """:func:`speakable` for an async stream of tokens."""
    sub = SpeakableFilter()
    async for token in tokens:
        text = _token_text(token)
        if text is None:
            for item in _spoken(sub.feed(""), pieces):
                yield item
            yield FlushEvent()
        else:
            for item in _spoken(sub.feed(text), pieces):
                yield item
    for item in _spoken(sub.close(), pieces):
        yield item
