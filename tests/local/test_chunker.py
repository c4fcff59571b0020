"""Tests for fish_notebook.local.chunker: when buffered text becomes a piece to speak."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fish_notebook.cues import split_cues
from fish_notebook.errors import SessionStateError, ValidationError
from fish_notebook.local.chunker import TextChunker, voice_parts

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]")
_CJK_PUNCT = "。！？，、；：「」"
_CLOSERS = "\"'”’)]}»」』）》】"


def run(chunker: TextChunker, parts: list[str]) -> tuple[list[str], list[str]]:
    """Feed every part; return (pieces from feed, pieces from stop)."""
    fed: list[str] = []
    for part in parts:
        fed.extend(chunker.feed(part))
    return fed, chunker.stop()


def cut_positions(pieces: list[str]) -> list[int]:
    positions, total = [], 0
    for piece in pieces[:-1]:
        total += len(piece)
        positions.append(total)
    return positions


def splits_a_word(text: str, cut: int) -> bool:
    before, after = text[cut - 1], text[cut]
    if before.isspace() or after.isspace():
        return False
    if text[:cut].rstrip(_CLOSERS)[-1:] in tuple(_CJK_PUNCT):
        return False  # after CJK punctuation (and any closing quotes)
    return not (_CJK.match(before) and _CJK.match(after))


# --- sentences ------------------------------------------------------------------------------


def test_sentence_is_ready_once_whitespace_follows() -> None:
    """A sentence is handed out when the whitespace after its full stop arrives."""
    chunker = TextChunker(min_chunk_length=0)
    assert chunker.feed("Hello world.") == []
    assert chunker.feed(" And") == ["Hello world. "]
    assert chunker.buffered == "And"


def test_decimal_number_is_not_a_sentence_end() -> None:
    """'3.' followed by '5' is a number, not the end of a sentence."""
    chunker = TextChunker(min_chunk_length=0)
    assert chunker.feed("It costs 3.") == []
    assert chunker.feed("5 dollars. Then") == ["It costs 3.5 dollars. "]


@pytest.mark.parametrize(
    "text", ["Mr. Smith", "e.g. this", "Dr. Who", "J. R. R. Tolkien", "U.S. Army"]
)
def test_abbreviations_do_not_end_sentences(text: str) -> None:
    """A dot after a known abbreviation or an initial does not end the sentence."""
    chunker = TextChunker(min_chunk_length=0)
    assert chunker.feed(f"Ask {text} now") == []


@pytest.mark.parametrize("end", ["!", "?", "…", "...", '."', "?)"])
def test_other_terminators_end_sentences(end: str) -> None:
    """!, ?, … and terminators followed by closing quotes or brackets end a sentence."""
    chunker = TextChunker(min_chunk_length=0)
    assert chunker.feed(f"It works{end} Next") == [f"It works{end} "]


def test_pronoun_i_ends_a_sentence() -> None:
    """'I.' is the pronoun at a sentence end, not an initial."""
    chunker = TextChunker(min_chunk_length=0)
    assert chunker.feed("So did I. Then") == ["So did I. "]


def test_cjk_sentence_ends_without_whitespace() -> None:
    """。 ends a sentence once the next character arrives, with no space needed."""
    chunker = TextChunker(min_chunk_length=0)
    assert chunker.feed("你好。") == []
    assert chunker.feed("我们") == ["你好。"]


def test_blank_line_ends_a_paragraph() -> None:
    """A heading without punctuation ends at the blank line after it."""
    chunker = TextChunker(min_chunk_length=0)
    assert chunker.feed("# A title\n\nText") == ["# A title\n\n"]


def test_min_chunk_length_merges_short_sentences() -> None:
    """Sentences shorter than min_chunk_length wait to be merged with the next ones."""
    chunker = TextChunker(min_chunk_length=20)
    assert chunker.feed("Hi. Yes. ") == []
    assert chunker.feed("This one is long enough. ") == ["Hi. Yes. This one is long enough. "]


def test_flush_hands_out_short_text() -> None:
    """flush returns whatever is buffered, even one short word."""
    chunker = TextChunker(min_chunk_length=50)
    assert chunker.feed("Hi") == []
    assert chunker.flush() == ["Hi"]
    assert chunker.buffered == ""


def test_flush_keeps_whitespace_only_buffer() -> None:
    """A buffer of only whitespace stays to lead the next text; flush returns nothing."""
    chunker = TextChunker(min_chunk_length=0)
    assert chunker.feed("  ") == []
    assert chunker.flush() == []
    assert chunker.feed("Go.") == []
    assert chunker.flush() == ["  Go."]


def test_stop_drains_and_refuses_more_text() -> None:
    """stop returns the rest; feeding afterwards is a state error."""
    chunker = TextChunker()
    chunker.feed("The end")
    assert chunker.stop() == ["The end"]
    assert chunker.stop() == []
    with pytest.raises(SessionStateError):
        chunker.feed("more")


# --- latency modes --------------------------------------------------------------------------


def test_low_latency_breaks_at_clauses() -> None:
    """latency=low also ends a piece at a comma once min_chunk_length is reached."""
    text = "Well, this is a long clause, and another one; and more "
    low = TextChunker(min_chunk_length=10, latency="low")
    balanced = TextChunker(min_chunk_length=10, latency="balanced")
    assert low.feed(text) == ["Well, this is a long clause, ", "and another one; "]
    assert balanced.feed(text) == []


def test_normal_latency_merges_sentences_up_to_chunk_length() -> None:
    """latency=normal merges whole sentences until the next would exceed chunk_length."""
    sentence = "This sentence has exactly forty chars. "  # 39 characters
    normal = TextChunker(chunk_length=100, min_chunk_length=0, latency="normal")
    pieces = normal.feed(sentence * 3)
    assert pieces == [sentence * 2]
    balanced = TextChunker(chunk_length=100, min_chunk_length=0, latency="balanced")
    assert balanced.feed(sentence * 3) == [sentence] * 3


# --- chunk_length ---------------------------------------------------------------------------


def test_long_sentence_splits_at_a_clause_before_chunk_length() -> None:
    """A run longer than chunk_length is cut at clause punctuation within the limit."""
    chunker = TextChunker(chunk_length=100, min_chunk_length=10)
    text = "word " * 12 + "and then, " + "more words " * 10
    pieces = chunker.feed(text)
    assert pieces[0].endswith("and then, ")
    assert all(len(p.strip()) <= 100 for p in pieces)


def test_long_run_without_punctuation_splits_at_spaces() -> None:
    """With no punctuation, pieces end at spaces and stay within chunk_length."""
    chunker = TextChunker(chunk_length=100, min_chunk_length=50)
    pieces = chunker.feed("abcdefg " * 40)
    assert pieces and all(50 <= len(p.strip()) <= 100 for p in pieces)
    assert all(p.endswith(" ") for p in pieces)


def test_word_longer_than_chunk_length_is_kept_whole() -> None:
    """A single word longer than chunk_length becomes one piece, never split."""
    chunker = TextChunker(chunk_length=100, min_chunk_length=0)
    word = "x" * 150
    assert chunker.feed("a " + word) == ["a "]
    assert chunker.feed("y") == []
    assert chunker.feed(" z") == [word + "y "]
    assert chunker.stop() == ["z"]


def test_cjk_run_splits_between_characters() -> None:
    """CJK text without spaces or punctuation is cut between characters at chunk_length."""
    chunker = TextChunker(chunk_length=100, min_chunk_length=0)
    pieces = chunker.feed("你" * 250) + chunker.stop()
    assert [len(p) for p in pieces] == [100, 100, 50]


def test_bad_options_are_validation_errors() -> None:
    """Out-of-range options raise ValidationError naming the field."""
    with pytest.raises(ValidationError, match="min_chunk_length"):
        TextChunker(chunk_length=100, min_chunk_length=101)
    with pytest.raises(ValidationError, match="latency"):
        TextChunker(latency="fast")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="chunk_length"):
        TextChunker(chunk_length=0)


# --- properties -----------------------------------------------------------------------------

_WORD = st.text(alphabet="abcdefghij'0123456789你好", min_size=1, max_size=12)
_SEP = st.sampled_from(
    [
        " ",
        "  ",
        "\n",
        "\n\n",
        ". ",
        ", ",
        "; ",
        "! ",
        "? ",
        "… ",
        ".",
        "。",
        "，",
        "3.5 ",
        " e.g. ",
        " Mr. ",
    ]
)
_TEXT = st.lists(st.tuples(_WORD, _SEP), max_size=80).map(lambda ws: "".join(w + s for w, s in ws))


@st.composite
def split_text(draw: st.DrawFn) -> tuple[str, list[str]]:
    text = draw(_TEXT)
    cuts = sorted(draw(st.sets(st.integers(0, len(text)), max_size=20)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in itertools.pairwise(bounds)]


_OPTIONS = st.tuples(
    st.integers(100, 300), st.integers(0, 60), st.sampled_from(["normal", "balanced", "low"])
)


@settings(max_examples=300, deadline=None)
@given(split_text(), _OPTIONS)
def test_text_is_never_lost_reordered_or_duplicated(
    case: tuple[str, list[str]], options: tuple[int, int, str]
) -> None:
    """Pieces joined give back the input exactly (bar trailing whitespace), whatever the split."""
    text, parts = case
    chunk_length, min_length, latency = options
    chunker = TextChunker(chunk_length=chunk_length, min_chunk_length=min_length, latency=latency)  # type: ignore[arg-type]
    fed, rest = run(chunker, parts)
    joined = "".join(fed + rest)
    assert text.startswith(joined)
    assert text[len(joined) :].strip() == ""


@settings(max_examples=300, deadline=None)
@given(split_text(), _OPTIONS)
def test_no_word_is_split_and_pieces_respect_lengths(
    case: tuple[str, list[str]], options: tuple[int, int, str]
) -> None:
    """Cuts fall between words; pieces fit chunk_length; feed's pieces reach min_chunk_length."""
    text, parts = case
    chunk_length, min_length, latency = options
    chunker = TextChunker(chunk_length=chunk_length, min_chunk_length=min_length, latency=latency)  # type: ignore[arg-type]
    fed, rest = run(chunker, parts)
    pieces = fed + rest
    for cut in cut_positions(pieces):
        assert not splits_a_word(text, cut), (cut, text[cut - 10 : cut + 10])
    for piece in pieces:
        assert len(piece.strip()) <= chunk_length
    for piece in fed:
        assert len(piece.strip()) >= min_length
        assert piece.strip()


@settings(max_examples=200, deadline=None)
@given(split_text(), st.lists(st.integers(0, 50), max_size=5))
def test_flushes_never_lose_text(case: tuple[str, list[str]], flush_after: list[int]) -> None:
    """Flushing at arbitrary points still hands out every character exactly once, in order."""
    text, parts = case
    chunker = TextChunker(chunk_length=100, min_chunk_length=20)
    pieces: list[str] = []
    for index, part in enumerate(parts):
        pieces.extend(chunker.feed(part))
        if index in flush_after:
            pieces.extend(chunker.flush())
    pieces.extend(chunker.stop())
    joined = "".join(pieces)
    assert text.startswith(joined)
    assert text[len(joined) :].strip() == ""


# --- directions: cues, breaks, speaker tags ---------------------------------------------------


def test_flush_holds_an_unfinished_cue_until_it_is_whole() -> None:
    """A flush hands out the text before a cue cut in two, never the half cue."""
    chunker = TextChunker(min_chunk_length=0)
    assert chunker.feed("So [slightly") == []
    assert chunker.flush() == ["So "]
    assert chunker.buffered == "[slightly"
    assert chunker.feed(" sad] then.") == []
    assert chunker.flush() == ["[slightly sad] then."]
    assert chunker.feed("Hi <|speak") == [] and chunker.flush() == ["Hi "]
    assert chunker.stop() == ["<|speak"]  # at the end it is the text it is


def test_no_cut_inside_a_cue_past_chunk_length() -> None:
    """A long text is cut before a cue that holds a sentence end, not inside it."""
    cue = "[audience laughing. Then quiet, mostly]"
    text = "word " * 17 + cue + " and the rest goes on here. "
    chunker = TextChunker(chunk_length=100, min_chunk_length=0, latency="low")
    pieces = chunker.feed(text) + chunker.stop()
    assert "".join(pieces) == text
    assert sum(cue in piece for piece in pieces) == 1


def test_voice_parts_never_cut_a_cue() -> None:
    """A piece longer than the voice takes at once is cut before a cue that reaches over."""
    text = "ab " * 195 + "x [slightly sad] yz " + "cd " * 20
    parts = voice_parts(text)
    assert len(parts) == 2 and parts[1].startswith("[slightly sad]")


_DIRECTION = st.sampled_from(
    [
        "[happy]",
        "[slightly sad]",
        "[audience laughing. Then quiet, mostly]",
        "(in a hurry tone)",
        "(happy)",
        "<|speaker:1|>",
        "[break]",
        "(long-break)",
    ]
)
_DIRECTED = st.lists(st.tuples(_WORD | _DIRECTION, _SEP), max_size=60).map(
    lambda ws: "".join(w + s for w, s in ws)
)


def direction_spans(text: str) -> list[tuple[int, int]]:
    spans, at = [], 0
    for part in split_cues(text):
        if part.kind != "words":
            spans.append((at, at + len(part.text)))
        at += len(part.text)
    return spans


@settings(max_examples=300, deadline=None)
@given(_DIRECTED, st.data(), _OPTIONS)
def test_pieces_never_end_inside_a_direction(
    text: str, data: st.DataObject, options: tuple[int, int, str]
) -> None:
    """Whatever the split and the flushes: nothing lost, no piece ends inside a cue, a
    break or a speaker tag of the whole text, and pieces fit chunk_length."""
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=20)))
    parts = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
    flushes = data.draw(st.sets(st.integers(0, len(parts)), max_size=5))
    chunk_length, min_length, latency = options
    chunker = TextChunker(chunk_length=chunk_length, min_chunk_length=min_length, latency=latency)  # type: ignore[arg-type]
    pieces: list[str] = []
    for index, part in enumerate(parts):
        pieces.extend(chunker.feed(part))
        if index in flushes:
            pieces.extend(chunker.flush())
    pieces.extend(chunker.stop())
    joined = "".join(pieces)
    assert text.startswith(joined) and text[len(joined) :].strip() == ""
    spans = direction_spans(text)
    for cut in cut_positions(pieces):
        assert not any(a < cut < b for a, b in spans), (cut, text[cut - 20 : cut + 20])
    for piece in pieces:
        assert len(piece.strip()) <= chunk_length
