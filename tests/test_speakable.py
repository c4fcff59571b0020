"""Speakable text: an LLM's markdown, fed token by token, comes out as what a voice says."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fish_notebook.errors import SessionStateError
from fish_notebook.protocol import FlushEvent, TextEvent
from fish_notebook.speakable import (
    HOLD_LIMIT,
    Piece,
    SpeakableFilter,
    SpeakableItem,
    aspeakable,
    code_block_note,
    merge_pieces,
    speakable,
    speakable_text,
    url_host,
)

FLUSH = "<flush>"


def run(tokens: list[str]) -> list[SpeakableItem]:
    """Feed the tokens one by one, then close."""
    sub = SpeakableFilter()
    items: list[SpeakableItem] = []
    for token in tokens:
        items += sub.feed(token)
    return items + sub.close()


def speech(items: list[SpeakableItem]) -> list[str]:
    """The spoken text with flush points, neighbouring text joined: comparable across cuts."""
    out: list[str] = []
    for item in items:
        if isinstance(item, FlushEvent):
            out.append(FLUSH)
        elif item.spoken:
            if out and out[-1] != FLUSH:
                out[-1] += item.spoken
            else:
                out.append(item.spoken)
    return out


def said(markdown: str) -> str:
    return speakable_text(markdown)


# --- each rule, by example ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "spoken"),
    [
        (
            "Some *soft* and **strong** and ***both*** words.",
            "Some soft and strong and both words.",
        ),
        ("An _em_ and a __strong__ word, ~~struck~~ out.", "An em and a strong word, struck out."),
        ("snake_case_name stays, ~5 too.", "snake_case_name stays, ~5 too."),
        ("Read [the docs](https://example.com/a_(b)) now.", "Read the docs now."),
        ("See https://docs.python.org/3/x for more.", "See docs.python.org for more."),
        ("Go to https://www.example.org/a.", "Go to example.org."),
        ("(see https://en.wikipedia.org/wiki/A_(b))", "(see en.wikipedia.org)"),
        ("Mail <https://x.org/path> here.", "Mail x.org here."),
        ("Call `print()` now.", "Call print() now."),
        ("Use ``a ` b`` here.", "Use a ` b here."),
        ("Look: ![a diagram](d.png) here.", "Look: a diagram here."),
        ("Party 🎉 time! 👍🏽", "Party time! "),
        ("Line<br>next and <b>bold</b> <!-- note -->x", "Line next and bold x"),
        ("[happy] Hello (whispering) there [long-break] ok.", None),
        ("<|speaker:0|>Hi!<|speaker:1|>Hello.", None),
        ("a < b and c > d, 5 <= 6", None),
        ("Escaped \\*star\\* and \\[x\\]", "Escaped star and [x]"),
        ("A | pipe.", "A  pipe."),
    ],
)
def test_inline_markup(markdown: str, spoken: str | None) -> None:
    """Inline markup is read as its words; cues, tags and comparisons stay as written."""
    assert said(markdown) == (markdown if spoken is None else spoken)


@pytest.mark.parametrize(
    ("markdown", "spoken"),
    [
        ("# Title\nText.", "Title.\nText."),
        ("## Done! ##\n", "Done! \n"),
        ("### A *big* header", "A big header."),
        ("#hashtag stays", "#hashtag stays"),
        ("- one\n* two:\n+ three.\n", "one.\ntwo:\nthree.\n"),
        ("1. first\n2) second\n10. tenth\n", "first.\nsecond.\ntenth.\n"),
        ("- [ ] todo\n- [x] done\n", "todo.\ndone.\n"),
        ("  - nested item\n", "nested item.\n"),
        ("2024 was a year.\n3.5 is a number.", "2024 was a year.\n3.5 is a number."),
        ("-5 degrees.\n--flag off", "-5 degrees.\n--flag off"),
        ("> quoted *words*\n> - and an item\n", "quoted words\nand an item.\n"),
        ("Above\n\n---\n***\n___\nBelow", "Above\n\n\n\n\nBelow"),
        ("| Name | Age |\n|---|:--:|\n| Ada | 36 |\n", "Name, Age.\n\nAda, 36.\n"),
        ("| a | | **b** |\n", "a, b.\n"),
    ],
)
def test_line_markup(markdown: str, spoken: str) -> None:
    """Headers, list items and table rows become sentences; markers, rules and quotes go."""
    assert said(markdown) == spoken


def test_header_is_followed_by_a_flush() -> None:
    """A header ends a sentence: a '.' when it has none, then a flush point."""
    assert speech(run(["# Intro\n", "Body text."])) == ["Intro.\n", FLUSH, "Body text."]


def test_code_block_becomes_a_note_and_a_flush() -> None:
    """A fenced block is not read: a short note is said, then the speech is flushed."""
    markdown = "Try this:\n```python\nx = [1, 2] ** 2  # *not* | spoken\n```\nDone.\n"
    assert speech(run([markdown])) == [
        "Try this:\nHere is a code block in Python.\n",
        FLUSH,
        "Done.\n",
    ]
    assert said("~~~\nplain\n~~~\nok") == "Here is a code block.\nok"
    assert (
        said("````md\n```\ninner\n```\n````\nafter") == "Here is a code block in Markdown.\nafter"
    )
    assert said("```\nnever closed") == "Here is a code block.\n"


@pytest.mark.parametrize(
    ("info", "note"),
    [
        ("python", "Here is a code block in Python."),
        ("c#", "Here is a code block in C sharp."),
        ("{r} echo=FALSE", "Here is a code block in R."),
        ("weird#lang", "Here is a code block in weirdlang."),
        ("", "Here is a code block."),
    ],
)
def test_code_block_note(info: str, note: str) -> None:
    """The note names the language, never with markup characters."""
    assert code_block_note(info) == note


def test_url_host() -> None:
    """A URL is spoken as its host."""
    assert url_host("https://docs.python.org/3/x") == "docs.python.org"
    assert url_host("http://user@www.Example.com:8080/a?b#c") == "example.com"
    assert url_host("https://") == ""


def test_pieces_cover_the_original_and_mark_what_was_skipped() -> None:
    """Originals join to the input; each piece says whether it is text, skipped or replaced."""
    markdown = "## **Bold** [link](https://a.org) 🎉\n"
    items = run(list(markdown))
    pieces = [item for item in items if isinstance(item, Piece)]
    assert "".join(p.original for p in pieces) == markdown
    merged = [(p.original, p.spoken, p.kind) for p in merge_pieces(pieces) if isinstance(p, Piece)]
    assert merged == [
        ("## **", "", "skipped"),
        ("Bold", "Bold", "text"),
        ("**", "", "skipped"),
        (" ", " ", "text"),
        ("[", "", "skipped"),
        ("link", "link", "text"),
        ("](https://a.org)", "", "skipped"),
        (" ", " ", "text"),
        ("🎉", "", "skipped"),
        ("\n", ".\n", "replaced"),
    ]


def test_holds_only_what_may_be_markup() -> None:
    """Plain text and emphasis go out at once; a link waits for its end, within a bound."""
    sub = SpeakableFilter()
    assert speech(sub.feed("Plain **bold")) == ["Plain bold"]
    assert sub.pending == ""
    assert speech(sub.feed(" and [a li")) == [" and "]
    assert sub.pending == "[a li"
    assert speech(sub.feed("nk](https://x.org) ok")) == ["a link ok"]
    assert sub.pending == ""
    sub.feed(" [" + "x" * (HOLD_LIMIT + 5))
    assert sub.pending == ""  # no "]" within the bound: the "[" was text after all
    sub.close()
    assert sub.close() == []  # safe twice
    with pytest.raises(SessionStateError):
        sub.feed("more")


def test_stream_helpers_pass_flushes_and_collect_pieces() -> None:
    """speakable() yields str and FlushEvents; a source's own FlushEvent goes through."""
    pieces: list[Piece] = []
    tokens: list[str | TextEvent | FlushEvent] = [
        "# He", "llo\n", "**Wor", TextEvent("ld**"), FlushEvent(), "!"
    ]  # fmt: skip
    out = list(speakable(tokens, pieces=pieces))
    assert out[0] == "He"  # plain text goes out at once
    joined = speech([Piece(x, x) if isinstance(x, str) else x for x in out])
    assert joined == ["Hello.\n", FLUSH, "World", FLUSH, "!"]
    assert "".join(p.original for p in pieces) == "# Hello\n**World**!"

    async def source() -> AsyncIterator[str]:
        for token in ["- it", "em\n", "`x`"]:
            yield token

    async def collect() -> list[str | FlushEvent]:
        return [item async for item in aspeakable(source())]

    assert "".join(x for x in asyncio.run(collect()) if isinstance(x, str)) == "item.\nx"


# --- properties ---------------------------------------------------------------------------------

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
words = st.text(LETTERS, min_size=1, max_size=7)
hosts = st.builds(lambda a, b: f"{a}.{b}".lower(), words, st.sampled_from(["org", "com", "io"]))
urls = st.builds(lambda h, p: f"https://{h}/{p}", hosts, words)
inline_element = st.one_of(
    words,
    words.map(lambda w: f"*{w}*"),
    words.map(lambda w: f"**{w} {w}**"),
    words.map(lambda w: f"_{w}_"),
    words.map(lambda w: f"__{w}__"),
    words.map(lambda w: f"~~{w}~~"),
    words.map(lambda w: f"`{w}`"),
    st.builds(lambda w, u: f"[{w}]({u})", words, urls),
    st.builds(lambda w, u: f"![{w}]({u})", words, urls),
    urls,
    urls.map(lambda u: f"<{u}>"),
    st.sampled_from(["🎉", "👍🏽", "❤️", "<br>", "<b>", "</b>", "<br/>", "[happy]", "(sad)"]),
    st.sampled_from(["<|speaker:0|>", "<|speaker:12|>", "[long-break]", "!", ".", ","]),
)
inline = st.lists(inline_element, min_size=1, max_size=8).map(" ".join)
code_line = st.text(LETTERS + "*#|`_[]()<> =", max_size=20).map(lambda s: "x" + s)
block = st.one_of(
    inline,
    st.builds(lambda n, t: "#" * n + " " + t, st.integers(1, 6), inline),
    st.builds(lambda m, t: m + t, st.sampled_from(["- ", "* ", "+ ", "1. ", "  - ", "> "]), inline),
    st.sampled_from(["---", "***", "___"]),
    st.builds(
        lambda lang, lines: f"```{lang}\n" + "\n".join(lines) + "\n```",
        st.sampled_from(["", "python", "js", "c#", "bash"]),
        st.lists(code_line, max_size=3),
    ),
    st.builds(
        lambda head, rows: "\n".join(
            ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            + ["| " + " | ".join(row) + " |" for row in rows]
        ),
        st.lists(inline_element.filter(lambda e: "|" not in e), min_size=1, max_size=3),
        st.lists(st.lists(words, min_size=1, max_size=3), max_size=3),
    ),
)
markdown_docs = st.lists(
    st.tuples(block, st.sampled_from(["\n", "\n\n"])), min_size=1, max_size=6
).map(lambda parts: "".join(b + sep for b, sep in parts))


def cut(text: str, data: st.DataObject) -> list[str]:
    """``text`` cut at random places (any place: inside a ``**``, a fence, a URL)."""
    points = data.draw(st.lists(st.integers(0, len(text)), max_size=len(text) // 2 + 2))
    bounds = sorted({0, len(text), *points})
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300, deadline=None)
@given(markdown_docs, st.data())
def test_speech_does_not_depend_on_where_tokens_are_cut(markdown: str, data: st.DataObject) -> None:
    """Any re-tokenization of the same markdown gives the same speech and flush points."""
    whole = run([markdown])
    pieces = run(cut(markdown, data))
    assert speech(pieces) == speech(whole)
    assert "".join(p.original for p in pieces if isinstance(p, Piece)) == markdown


@settings(max_examples=300, deadline=None)
@given(markdown_docs, st.data())
def test_no_markup_reaches_the_speech(markdown: str, data: st.DataObject) -> None:
    """No *, #, |, backtick or ]( is spoken (speaker tags aside, which keep their bars)."""
    spoken = "".join(speech(run(cut(markdown, data)))).replace(FLUSH, "")
    spoken = re.sub(r"<\|speaker:\d+\|>", "", spoken)
    for mark in ("*", "#", "|", "`", "]("):
        assert mark not in spoken, (mark, spoken)


plain_word = st.builds(
    lambda w, p: w + p, words, st.sampled_from(["", "", "", ",", ".", "?", "!", ";", ":", "'s"])
)
plain_line = st.lists(plain_word, min_size=1, max_size=10).map(" ".join)
plain_text = st.lists(
    st.tuples(plain_line, st.sampled_from(["\n", "\n\n", " "])), min_size=1, max_size=5
).map(lambda parts: "".join(line + sep for line, sep in parts))


def url_start(held: str, before: str) -> bool:
    """The one thing plain text may be held for: a word that so far reads like a URL's start."""
    scheme = "https://".startswith(held) or "http://".startswith(held)
    return scheme and not re.search(r"[^\W_]$", before)


@settings(max_examples=300, deadline=None)
@given(plain_text, st.data())
def test_plain_text_passes_through_unchanged_and_unheld(text: str, data: st.DataObject) -> None:
    """Text without markup comes out as it went in, each token as soon as it arrives."""
    sub = SpeakableFilter()
    fed = out = ""
    for token in cut(text, data):
        fed += token
        items = sub.feed(token)
        assert all(isinstance(i, Piece) and i.kind == "text" for i in items)
        out += "".join(i.spoken for i in items if isinstance(i, Piece))
        held = sub.pending
        assert out + held == fed
        assert held == "" or url_start(held, out), repr(held)
    out += "".join(i.spoken for i in sub.close() if isinstance(i, Piece))
    assert out == text


markup_soup = st.lists(
    st.sampled_from(
        [
            *"ab h1 2.*_~`[]()<>|#!-+=:/\\\n\t",
            *["http", "https://", "x.org", "🎉", "```", "<|", "|>", "speaker:", "```py\n"],
            *["| ", " |", "\n\n", "- ", "1. ", "# ", "~~~\n"],
        ]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=500, deadline=None)
@given(markup_soup, st.data())
def test_any_text_gives_the_same_speech_however_cut(text: str, data: st.DataObject) -> None:
    """Broken markdown too: the speech never depends on the cuts, and nothing is lost."""
    pieces = run(cut(text, data))
    assert speech(pieces) == speech(run([text]))
    assert "".join(p.original for p in pieces if isinstance(p, Piece)) == text
