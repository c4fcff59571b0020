"""The text rules (fish_notebook.text) and the places that ask them agree."""

from __future__ import annotations

import pytest

from fish_notebook.local.chunker import TextChunker
from fish_notebook.protocol import FlushEvent
from fish_notebook.sources import paced
from fish_notebook.text import (
    ABBREVIATIONS,
    completes_sentence,
    ends_sentence,
    is_abbreviation,
    sentence_ends,
)


def test_sentence_ends_skip_abbreviations_initials_acronyms_and_numbers() -> None:
    """Only real sentence ends are found, at the index after the terminator and closers."""
    text = 'Dr. Who met J. R. R. Tolkien in the U.S.A. at 3.5 pm. "Fine!" he said. 好。好'
    ends = list(sentence_ends(text))
    assert ends == [text.index(mark) + len(mark) for mark in ("pm.", 'Fine!"', "said.", "好。")]


def test_ends_sentence_on_complete_text() -> None:
    """ends_sentence ignores trailing whitespace and knows abbreviations."""
    assert ends_sentence("Hello. ")
    assert ends_sentence("Really?!")
    assert ends_sentence("他来了。")
    assert not ends_sentence("Ask Dr.")
    assert not ends_sentence("for e.g. ")
    assert not ends_sentence("no end")


@pytest.mark.parametrize("word", sorted(ABBREVIATIONS))
def test_every_abbreviation_is_one_everywhere(word: str) -> None:
    """Each abbreviation keeps the chunker, the early flush and paced() from ending a
    sentence: the list has one home, so none of them can drift from the others."""
    text = f"We met {word.capitalize()}. Smith today. "
    end = text.index(". Smith") + 1
    assert is_abbreviation(text, end)
    assert not completes_sentence(text[:end], text[end:])
    assert not ends_sentence(text[:end])
    chunker = TextChunker(chunk_length=200, min_chunk_length=0)
    assert chunker.feed(text) == [text]  # one piece: the abbreviation did not cut it


def test_paced_flushes_after_each_sentence() -> None:
    """paced(flush_at_sentence_end=True) flushes after each sentence's last token and
    nowhere else (the rule was once shadowed by a second definition and never fired)."""
    items = list(
        paced(
            "Hello. Mr. Smith is here! Fine?",
            tokens_per_second=1e6,
            first_token_delay=0,
            flush_at_sentence_end=True,
        )
    )
    text_before_flush = []
    sent = ""
    for item in items:
        if isinstance(item, FlushEvent):
            text_before_flush.append(sent)
        else:
            sent += item
    assert text_before_flush == ["Hello.", "Hello. Mr. Smith is here!", sent]
    assert sent == "Hello. Mr. Smith is here! Fine?"


@pytest.mark.parametrize(
    ("so_far", "following", "expected"),
    [
        ("Hi there.", " Next", True),
        ("Hi there. ", "Next", True),  # the token style with the space after the word
        ("你好。", "我", True),
        ("Hi there.", "Next", False),
        ("Pi is 3.", "14", False),
    ],
)
def test_completes_sentence_either_token_style(so_far: str, following: str, expected: bool) -> None:
    """The boundary is found whether the space ends the token or starts the next one."""
    assert completes_sentence(so_far, following) is expected
