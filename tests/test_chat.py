"""A conversation across cells: user turns, and of each answer what was heard."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fish_notebook.chat import Conversation, Turn, heard_text


@dataclass
class FakeSession:
    """What Conversation reads of a session: its state, the text sent, maybe what was heard."""

    state: str = "streaming"
    text: list[str | None] = field(default_factory=list)


@dataclass
class HeardSession(FakeSession):
    heard: Any = None


def test_answers_contribute_what_was_heard() -> None:
    """heard when the session has it, else the text sent (flush marks left out)."""
    assert heard_text(FakeSession(text=["Hello ", None, "there."])) == "Hello there."
    assert heard_text(HeardSession(text=["Hello there."], heard="Hello")) == "Hello"
    assert heard_text(HeardSession(text=["a", "b"], heard=["a", None])) == "a"
    assert heard_text(HeardSession(text=["Sent."], heard=None)) == "Sent."


def test_messages_hold_the_turns_and_the_new_prompt() -> None:
    """The model sees earlier turns; a stopped answer is kept as far as it went, marked."""
    chat = Conversation()
    first = FakeSession(text=["The answer ", None, "is long"])
    chat.add_user("First?")
    chat.add_answer(first)
    assert chat.messages("Second?", "Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First?"},
        {"role": "assistant", "content": "The answer is long"},
        {"role": "user", "content": "Second?"},
    ]
    first.text.append(" and goes on")  # still streaming: read again next time
    first.state = "stopped"
    assert chat.turns[-1] == Turn("assistant", "The answer is long and goes on", True)
    first.text.append(" after the stop?")  # ended: frozen
    assert chat.turns[-1].text == "The answer is long and goes on"
    assert len(chat) == 2 and repr(chat) == "<Conversation: 2 turns>"


def test_an_answer_with_nothing_heard_is_left_out_and_reset_forgets() -> None:
    """A failed answer that said nothing adds no turn; reset() empties the conversation."""
    chat = Conversation()
    chat.add_user("Hello?")
    chat.add_answer(FakeSession(state="failed"))
    assert chat.messages() == [{"role": "user", "content": "Hello?"}]
    chat.reset()
    assert chat.messages("New.") == [{"role": "user", "content": "New."}]
    assert len(chat) == 0
