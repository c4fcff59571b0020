"""Dialogue scripts: 'Name: line' lines become one text with speaker tags and a voice list."""

from __future__ import annotations

import pytest

from fish_notebook.dialogue import Dialogue, parse_dialogue, parse_voice_map
from fish_notebook.errors import ValidationError
from fish_notebook.protocol import FlushEvent


def test_speakers_in_order_of_appearance_with_tags_and_flushes() -> None:
    """Names are numbered as they first speak; a blank line or -- is a flush point."""
    script = (
        "Alice: Good morning!\n"
        "Bob: Hi! [laughing] You're early.\n"
        "and so am I.\n"
        "\n"
        "alice: Always.\n"
        "--\n"
        "Dr. Who: Hello: there.\n"
    )
    dialogue = parse_dialogue(script)
    assert dialogue.speakers == ("Alice", "Bob", "Dr. Who")
    assert dialogue.parts == (
        "<|speaker:0|>Good morning!\n",
        "<|speaker:1|>Hi! [laughing] You're early.\n",
        "and so am I.\n",
        FlushEvent(),
        "<|speaker:0|>Always.\n",
        FlushEvent(),
        "<|speaker:2|>Hello: there.\n",
    )
    assert dialogue.text.startswith("<|speaker:0|>Good morning!\n<|speaker:1|>Hi!")


def test_a_line_after_a_flush_is_tagged_again() -> None:
    """The server may start a new chunk at a flush point: the speaker is named again."""
    dialogue = parse_dialogue("Ann: One.\n--\nTwo.\n\n\nThree.\n\n")
    assert dialogue.parts == (
        "<|speaker:0|>One.\n",
        FlushEvent(),
        "<|speaker:0|>Two.\n",
        FlushEvent(),
        "<|speaker:0|>Three.\n",
    )


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("No speaker yet.\nAnn: Hi.", "line 1"),
        ("See https://example.org\n", "line 1"),
        ("\n--\n", "nobody says anything"),
        ("Ann:\n", "nobody says anything"),
    ],
)
def test_bad_scripts(script: str, message: str) -> None:
    """A line before any name, or nothing said: ValidationError saying where."""
    with pytest.raises(ValidationError, match=message):
        parse_dialogue(script)


def test_voices_one_per_speaker() -> None:
    """Mapped names get their voice (any case), the others the default."""
    dialogue = Dialogue(("Alice", "Bob"), ("<|speaker:0|>Hi.\n",))
    assert dialogue.voices({"alice": "A", "BOB": "B"}) == ["A", "B"]
    assert dialogue.voices({"alice": "A"}, "D") == ["A", "D"]
    assert dialogue.voices({}, None) is None
    with pytest.raises(ValidationError, match="Bob"):
        dialogue.voices({"alice": "A"})
    with pytest.raises(ValidationError, match="carol"):
        dialogue.voices({"carol": "C"}, "D")


def test_parse_voice_map() -> None:
    """alice=ID,bob=ID; anything else is a ValidationError."""
    assert parse_voice_map("alice=ID1, bob = ID2") == {"alice": "ID1", "bob": "ID2"}
    for bad in ("alice", "alice=", "=ID", "a=1,,b=2"):
        with pytest.raises(ValidationError, match="name=ID"):
            parse_voice_map(bad)
