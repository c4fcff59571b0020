"""A conversation with an LLM that goes on across cells: the turns the model has seen.

``%%speak --llm --chat`` keeps one :class:`Conversation`: each cell's prompt is a user turn,
and each spoken answer an assistant turn holding **what was heard**, not what the model wrote:
an answer stopped halfway contributes its first half, marked ``interrupted``, so the model's
next answer follows the conversation the listener had.

What was heard comes from the session: its ``heard`` text when it has one (the player reports
where playback stopped), else the text sent to the voice (``session.text``), which after a
stop is the text sent before it. An answer still playing is read when the next request is
built, and frozen once its session ended.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from .session import FINAL_STATES

__all__ = ["Conversation", "Turn", "heard_text"]

_CUT_SHORT = frozenset({"stopped", "failed"})


@dataclass(frozen=True)
class Turn:
    """One turn: who spoke, what (was heard), and whether it was cut short."""

    role: Literal["user", "assistant"]
    text: str
    interrupted: bool = False


def heard_text(session: Any) -> str:
    """What a session's listener heard: ``session.heard`` (a str, or pieces of str) when the
    session has it, else the text it sent (``session.text``, flush marks left out)."""
    heard = getattr(session, "heard", None)
    if isinstance(heard, str):
        return heard
    pieces: Iterable[Any] = heard if heard is not None else getattr(session, "text", ())
    return "".join(piece for piece in pieces if isinstance(piece, str))


class Conversation:
    """The turns of one conversation, oldest first. Thread-safe; ``len()`` counts turns.

    ``add_user(prompt)`` then ``add_answer(session)`` after each exchange;
    :meth:`messages` gives what the next request sends; :meth:`reset` forgets everything.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[Turn | Any] = []  # a Turn, or a session still being heard

    def add_user(self, text: str) -> None:
        """The user's turn (a prompt)."""
        with self._lock:
            self._entries.append(Turn("user", text))

    def add_answer(self, session: Any) -> None:
        """The assistant's turn: the answer ``session`` speaks (read when needed)."""
        with self._lock:
            self._entries.append(session)

    @property
    def turns(self) -> list[Turn]:
        """Every turn so far; an answer with nothing heard (yet) is left out."""
        with self._lock:
            for index, entry in enumerate(self._entries):
                if not isinstance(entry, Turn) and entry.state in FINAL_STATES:
                    self._entries[index] = self._answer(entry)  # it will not change again
            turns = [e if isinstance(e, Turn) else self._answer(e) for e in self._entries]
        return [turn for turn in turns if turn.text]

    @staticmethod
    def _answer(session: Any) -> Turn:
        return Turn("assistant", heard_text(session), session.state in _CUT_SHORT)

    def messages(
        self, prompt: str | None = None, system: str | None = None
    ) -> list[dict[str, str]]:
        """The chat messages for the next request: ``system`` first, the turns, then
        ``prompt`` as the new user turn (not added to the conversation)."""
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": turn.role, "content": turn.text} for turn in self.turns]
        if prompt is not None:
            messages.append({"role": "user", "content": prompt})
        return messages

    def reset(self) -> None:
        """Forget every turn."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self.turns)

    def __repr__(self) -> str:
        return f"<Conversation: {len(self)} turns>"
