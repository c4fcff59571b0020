"""Delivery cues and speaker tags: directions, recognised, and taken out for plain voices."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fish_notebook.cues import (
    BREAK_SECONDS,
    LONG_BREAK_SECONDS,
    S1_CUES,
    Part,
    Pause,
    speaker_tag,
    split_cues,
    strip_cues,
    unfinished_cue,
)


def test_split_finds_every_kind() -> None:
    """S2 brackets (free-form), S1 parentheses (fixed set), breaks, speaker tags."""
    text = "<|speaker:0|>[slightly sad] Hi (happy) there [break] you(long-break)!<|speaker:12|>Yo"
    assert split_cues(text) == [
        Part("speaker", "<|speaker:0|>"),
        Part("cue", "[slightly sad]"),
        Part("words", " Hi "),
        Part("cue", "(happy)"),
        Part("words", " there "),
        Part("break", "[break]"),
        Part("words", " you"),
        Part("break", "(long-break)"),
        Part("words", "!"),
        Part("speaker", "<|speaker:12|>"),
        Part("words", "Yo"),
    ]
    names = [part.name for part in split_cues(text) if part.kind != "words"]
    assert names == ["0", "slightly sad", "happy", "break", "long-break", "12"]


@pytest.mark.parametrize(
    "text",
    [
        "Plain words (and an aside) stay words.",
        "(see above) and (this one)",
        "Empty [ ] brackets and [\nacross lines]",
        "A lone [ or ( or <|speaker:x|>",
        "[" + "x" * 81 + "]",
    ],
)
def test_ordinary_parentheses_and_brackets_are_words(text: str) -> None:
    """Only S1's own words in parentheses are cues; long or empty brackets are not cues."""
    assert split_cues(text) == [Part("words", text)]


def test_s1_set_is_fishs_documented_list() -> None:
    """The S1 set holds Fish's documented tags, multi-word ones too, and nothing made up."""
    assert len(S1_CUES) == 69
    for cue in ("happy", "sarcastic", "resigned", "in a hurry tone", "soft tone"):
        assert cue in S1_CUES
    for cue in ("crying loudly", "audience laughing", "break", "long-break"):
        assert cue in S1_CUES
    assert "narrator" not in S1_CUES and "friendly" not in S1_CUES  # S2 free-form only
    assert split_cues("(In a hurry tone)go")[0] == Part("cue", "(In a hurry tone)")


def test_strip_keeps_the_words_and_turns_breaks_into_pauses() -> None:
    """A voice that cannot act gets the words; a break is a pause of a documented length."""
    assert strip_cues("[happy] What a [warm] day! [break] Yes (long-break)(sad) no.") == [
        "What a day! ",
        Pause(BREAK_SECONDS),
        "Yes ",
        Pause(LONG_BREAK_SECONDS),
        "no.",
    ]
    assert strip_cues("<|speaker:0|>Good morning!<|speaker:1|>Hi!") == ["Good morning! Hi!"]
    assert strip_cues("No cues (at all).") == ["No cues (at all)."]
    assert strip_cues("[happy]") == []
    assert strip_cues("[a[x]] b") == ["b"]
    assert (BREAK_SECONDS, LONG_BREAK_SECONDS) == (0.3, 0.8)


pieces = st.sampled_from([*"ab ()[]<>|", "(happy)", "[x]", "<|speaker:1|>", "(break)", "(sad"])


@given(st.lists(pieces).map("".join))
def test_split_gives_the_text_back(text: str) -> None:
    """Joining the parts gives the text back; stripping leaves no cue behind."""
    parts = split_cues(text)
    assert "".join(part.text for part in parts) == text
    said = [p for p in strip_cues(text) if isinstance(p, str)]  # each said apart, pauses between
    assert all(part.kind == "words" for words in said for part in split_cues(words))


@pytest.mark.parametrize(
    ("text", "start"),
    [
        ("So [whisp", 3),
        ("Hi <|speak", 3),
        ("Hi <|speaker:1", 3),
        ("(hap", 0),
        ("(in a hurry t", 0),
        ("a (note", 7),
        ("done [ok] now", 13),
        ("5 < 6", 5),
        ("", 0),
    ],
)
def test_unfinished_cue(text: str, start: int) -> None:
    """A stream holds an unfinished cue's start; an aside or a comparison is not held."""
    assert unfinished_cue(text) == start


def test_speaker_tag() -> None:
    """Tags are numbered from 0."""
    assert speaker_tag(2) == "<|speaker:2|>"
    with pytest.raises(ValueError):
        speaker_tag(-1)
