"""What answers the user in the voice loop: an agent, and its answer as a stream to speak.

An **agent** is any callable taking the conversation (a list of ``{"role", "content"}``
messages, oldest first, the user's last turn at the end) and returning a text stream: a str,
a generator or async generator of text, an LLM client's stream object, whatever
:func:`fish_notebook.sources.iter_source` takes, or a coroutine giving one of those.

- :func:`llm_agent`: an OpenAI-compatible chat endpoint (extra ``llm``), through
  :func:`fish_notebook.speaking.chat_stream` with the whole conversation.
- :class:`EchoAgent`: no language model at all. It says "You said: ..." and calls itself
  an echo agent, in what it says and in its :attr:`~EchoAgent.name`, so nobody takes it for
  an assistant.
- :func:`default_agent`: the LLM when one is configured (``OPENAI_API_KEY``,
  ``OPENAI_BASE_URL``, ``%speak_config --llm-url``), else the echo agent.

:class:`AgentAnswer` runs one answer: it calls the agent off the event loop, reads its
stream, adds a flush after every finished sentence (so each sentence is spoken as soon as
it is written), keeps the text, reports the first token, and closes the agent's stream
(closing its generator, ``aclose()``-ing its async generator) when the answer is cut short.

The answer's first clause of two words or more (``"You said:"``, ``"In short,"``)
gets a flush of its own when it ends before the first sentence does: the voice speaks a
sentence in one model run, so the first audio waits for the whole first piece (50-120 ms
of Piper per second of speech on two cores, docs/LISTENING.md), and a short first piece
starts the answer sooner; the next sentence is ready before it has played.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from .protocol import FlushEvent
from .sources import SourceIterator, iter_source
from .speaking import chat_stream, defaults
from .text import CLAUSE_END, WORD, completes_sentence, first_sentence_end

__all__ = [
    "VOICE_SYSTEM_PROMPT",
    "Agent",
    "AgentAnswer",
    "EchoAgent",
    "Messages",
    "agent_name",
    "default_agent",
    "llm_agent",
]

Messages = list[dict[str, str]]
Agent = Callable[[Messages], Any]

#: What an LLM agent is told when the conversation has no system message of its own.
VOICE_SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Your answers are spoken aloud: answer in one to "
    "three short sentences of plain speech, with no lists, markdown, code or emoji."
)


class EchoAgent:
    """An agent without a language model: it repeats what the user said, and says so."""

    name = "echo agent (no language model)"
    introduction = "This is an echo agent; no language model is connected."

    def __repr__(self) -> str:
        return f"<{self.name}>"

    def __call__(self, messages: Messages) -> str:
        said = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        reply = f"You said: {said.strip()}" if said.strip() else "I did not catch that."
        if not any(m["role"] == "assistant" for m in messages):
            reply = f"{self.introduction} {reply}"
        return reply


class _LLMAgent:
    """An OpenAI-compatible chat model, given the whole conversation each turn."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        self.name = f"LLM {options.get('model') or defaults.llm_model or 'default model'}"

    def __repr__(self) -> str:
        return f"<{self.name}>"  # never the key

    def __call__(self, messages: Messages) -> Any:
        if not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": VOICE_SYSTEM_PROMPT}, *messages]
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        turns = [m for m in messages if m["role"] != "system"]
        last = turns[-1]["content"] if turns else ""
        return chat_stream(last, system=system, history=turns[:-1], **self._options)


def llm_agent(
    *,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    **create_options: Any,
) -> Agent:
    """An agent answering with an OpenAI-compatible chat model, streamed.

    Arguments as :func:`fish_notebook.speaking.chat_stream` takes them (defaults from
    ``OPENAI_*`` and ``%speak_config``). Raises MissingDependencyError (no ``openai``) and
    ValidationError (neither a key nor a URL) here, not at the first turn.
    """
    options: dict[str, Any] = {
        "model": model,
        "base_url": base_url,
        "api_key": api_key,
        "timeout": timeout,
        **create_options,
    }
    probe: Any = chat_stream("", **options)  # checks the configuration; no request is made
    probe.close()
    return _LLMAgent(options)


def default_agent() -> Agent:
    """The LLM agent when an OpenAI-compatible endpoint is configured, else :class:`EchoAgent`."""
    configured = os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")
    if configured or defaults.llm_url:
        try:
            return llm_agent()
        except ImportError:  # MissingDependencyError: no openai package
            pass
    return EchoAgent()


def agent_name(agent: Any) -> str:
    """How an agent is called in a conversation: its ``name``, else its function's name."""
    name = getattr(agent, "name", None)
    if isinstance(name, str) and name:
        return name
    return getattr(agent, "__qualname__", None) or type(agent).__qualname__


#: Words the first clause needs to get a flush of its own (a lone "Sure," waits for more).
FIRST_CLAUSE_WORDS = 2
_FIRST_CLAUSE_WITHIN = 400  # characters: past this with no clause end, stop looking


class _FirstClause:
    """Cuts the text of an answer after its first clause (module docstring): feed it each
    piece of text, send what it returns. Passes everything on as it is once it has cut, once
    the first sentence ended first, or after a flush of the agent's own (:meth:`off`)."""

    def __init__(self) -> None:
        self.text = ""  # the answer so far, until the decision
        self.done = False

    def off(self) -> None:
        self.done = True

    def feed(self, text: str) -> list[str | FlushEvent]:
        if self.done:
            return [text]
        seen = len(self.text)
        self.text += text
        clause = CLAUSE_END.search(self.text)
        sentence = first_sentence_end(self.text)
        if clause is None or (sentence is not None and sentence <= clause.start()):
            self.done = sentence is not None or len(self.text) > _FIRST_CLAUSE_WITHIN
            return [text]
        self.done = True
        if len(WORD.findall(self.text, 0, clause.end())) < FIRST_CLAUSE_WORDS:
            return [text]
        cut = max(0, clause.end() - seen)  # confirmed by what follows: never before `seen`
        head, tail = text[:cut], text[cut:]
        return [piece for piece in (head, FlushEvent(), tail) if piece]


class AgentAnswer:
    """One answer of ``agent`` to ``messages``; see the module docstring.

    :meth:`stream` is the source to speak (an async generator of text and flushes); read
    it once. ``on_first_token`` is called (on the event loop) with the first text.
    """

    def __init__(
        self,
        agent: Agent,
        messages: Messages,
        *,
        on_first_token: Callable[[], None] | None = None,
    ) -> None:
        self.agent = agent
        self.messages = messages
        self.pieces: list[str] = []
        self._on_first_token = on_first_token
        self._events: SourceIterator | None = None
        self._closing = False

    def __repr__(self) -> str:
        return f"<AgentAnswer {agent_name(self.agent)!r} {len(self.text)} chars>"

    @property
    def text(self) -> str:
        """Every piece of text the agent wrote so far."""
        return "".join(self.pieces)

    async def stream(self) -> AsyncIterator[str | FlushEvent]:
        try:
            source = await asyncio.to_thread(self.agent, self.messages)  # it may block
            if inspect.isawaitable(source):
                source = await source
            if self._closing:
                await iter_source(source).aclose()
                return
            self._events = events = iter_source(source)
            recent = ""  # the tail of the text so far, to see where sentences end
            first = _FirstClause()
            async for event in events:
                if isinstance(event, FlushEvent):
                    first.off()
                    yield event
                    continue
                if not self.pieces and self._on_first_token is not None:
                    self._on_first_token()
                if completes_sentence(recent, event.text):
                    yield FlushEvent()  # speak the finished sentence now
                recent = (recent + event.text)[-64:]
                self.pieces.append(event.text)
                for piece in first.feed(event.text):
                    yield piece
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop reading the agent and release its stream. Safe to call twice."""
        self._closing = True
        if self._events is not None:
            await self._events.aclose()
