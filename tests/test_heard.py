"""What was heard of an answer cut short: by word timings, else in proportion to the audio."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fish_notebook.client import TimedWord
from fish_notebook.errors import ValidationError
from fish_notebook.heard import Heard, heard

WORDS = [
    TimedWord("Paris", 0.0, 0.4),
    TimedWord("is", 0.45, 0.6),
    TimedWord("the", 0.65, 0.8),
    TimedWord("capital.", 0.85, 1.3),
]
TEXT: list[str | None] = ["Paris is", " the capital.", None]


def test_word_timings_give_the_words_that_ended_before_the_playhead() -> None:
    result = heard(WORDS, TEXT, received=1.5, playhead=0.7)
    assert result == Heard("Paris is", tuple(WORDS[:2]), 0.7, "words")


def test_a_word_ending_exactly_at_the_playhead_was_heard() -> None:
    assert heard(WORDS, TEXT, received=1.5, playhead=0.8).text == "Paris is the"


def test_the_playhead_is_clamped_to_the_audio_received() -> None:
    result = heard(WORDS, TEXT, received=1.0, playhead=9.0)
    assert result.playhead == 1.0 and result.text == "Paris is the"


def test_a_whole_answer_played_is_all_of_it() -> None:
    result = heard(WORDS, TEXT, received=1.5, playhead=None, complete=True)
    assert result.method == "all" and result.text == "Paris is the capital."
    assert result.words == tuple(WORDS)


def test_nothing_played_is_nothing_heard() -> None:
    assert heard(WORDS, TEXT, received=1.5, playhead=0.0) == Heard("", (), 0.0, "none")
    assert heard([], [], received=0.0, playhead=None).method == "none"
    assert heard([], ["", None], received=2.0, playhead=1.0).method == "none"


def test_without_timings_the_text_is_cut_in_proportion_at_a_word_end() -> None:
    pieces: list[str | None] = ["Hello there ", "world.", None, " Bye now."]
    # Not complete: the text after the last flush was not spoken yet ("Hello there world."
    # is 18 characters); half the audio is 9 characters: "Hello" ends at 5, "there" at 11.
    result = heard([], pieces, received=2.0, playhead=1.0)
    assert result == Heard("Hello", (), 1.0, "proportion")
    # Complete: all 27 characters were spoken; half is 13.5: "Hello there" ends at 11.
    assert heard([], pieces, received=2.0, playhead=1.0, complete=True).text == "Hello there"


def test_without_any_flush_all_the_text_counts() -> None:
    result = heard([], ["one two three four"], received=4.0, playhead=2.0)
    assert result.text == "one two" and result.method == "proportion"


def test_cjk_words_join_without_spaces() -> None:
    words = [TimedWord("巴", 0.0, 0.2), TimedWord("黎", 0.2, 0.4), TimedWord("好", 0.4, 0.6)]
    assert heard(words, ["巴黎好"], received=0.6, playhead=0.45).text == "巴黎"


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "1", True])
def test_a_bad_playhead_is_refused(bad: object) -> None:
    with pytest.raises(ValidationError, match="playhead"):
        heard(WORDS, TEXT, received=1.5, playhead=bad)  # type: ignore[arg-type]


def _words(text: str) -> list[str]:
    return re.findall(r"\S+", text)


@given(
    st.lists(st.from_regex(r"[A-Za-z]{1,8}[.,]?", fullmatch=True), min_size=1, max_size=30),
    st.lists(st.booleans(), min_size=30, max_size=30),
    st.floats(0.01, 10.0),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
)
def test_heard_is_always_a_prefix_of_whole_words_and_grows_with_the_playhead(
    words: list[str], flushes: list[bool], received: float, first: float, second: float
) -> None:
    pieces: list[str | None] = []
    for word, flush in zip(words, flushes, strict=False):
        pieces.append(word + " ")
        if flush:
            pieces.append(None)
    spoken = _words("".join(p for p in pieces if p))
    low, high = sorted((first * received, second * received))
    earlier = heard([], pieces, received, low)
    later = heard([], pieces, received, high)
    for result in (earlier, later):
        got = _words(result.text)
        assert got == spoken[: len(got)]
    assert len(_words(earlier.text)) <= len(_words(later.text))
