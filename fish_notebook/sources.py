"""Turn whatever a user hands in into a stream of :class:`TextEvent` and :class:`FlushEvent`.

:func:`iter_source` accepts

- a ``str`` (one text event; an empty string gives nothing),
- a sync iterable (a list, a generator, an LLM client's stream), pulled in a daemon worker
  thread so a slow ``next()`` never blocks the event loop,
- an async iterable (an async generator, an async LLM stream), awaited directly,

and each item may be a ``str``, our :class:`~fish_notebook.protocol.TextEvent` or
:class:`~fish_notebook.protocol.FlushEvent`, the Fish SDK's own ``TextEvent``/``FlushEvent``,
an OpenAI chat-completion chunk or Responses text delta, an Anthropic stream event, or a
LangChain message chunk, as objects or as plain dicts. Everything is duck-typed: none of
those libraries is imported. ``None`` and empty deltas are skipped; events that carry no text
(an Anthropic ``message_start``, an OpenAI ``response.completed``) are skipped silently.
Anything else raises :class:`TypeError` naming the item and its 0-based position.

:func:`paced` and :func:`apaced` produce a local token stream paced like a real LLM, for
demos, notebooks and benchmarks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import re
import threading
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any, TypeAlias

from .errors import SessionStateError, ValidationError
from .protocol import FlushEvent, TextEvent
from .speakable import SpeakableFilter, SpeakableItem, merge_pieces
from .text import ends_sentence

__all__ = [
    "SkippedText",
    "Source",
    "SourceEvent",
    "SourceIterator",
    "apaced",
    "iter_audio",
    "iter_source",
    "llm_tokens",
    "normalize_item",
    "paced",
]


@dataclasses.dataclass(frozen=True)
class SkippedText:
    """Markup the speakable filter did not speak (``**``, a link's URL, a code block): the
    client does not send it; the transcript shows it greyed."""

    text: str


SourceEvent: TypeAlias = TextEvent | FlushEvent | SkippedText
Source: TypeAlias = str | TextEvent | FlushEvent | Iterable[Any] | AsyncIterable[Any]

_MISSING = object()

# Event types of typed LLM streams that carry no text of their own: skipped silently.
# Anthropic raw stream events, and the derived events its MessageStream helper yields in
# addition (their text is already in the raw content_block_delta: taking both would double it).
_ANTHROPIC_SKIPPED = frozenset(
    {
        "message_start",
        "message_delta",
        "message_stop",
        "content_block_start",
        "content_block_stop",
        "ping",
        "citation",
        "thinking",
        "signature",
        "input_json",
    }
)
# OpenAI's chat-completions stream helper yields a raw "chunk" event and a "content.delta"
# event for the same text: only the latter is taken.
_OPENAI_HELPER_PREFIXES = ("chunk", "content.", "refusal.", "tool_calls.", "logprobs.")


# --- one item -------------------------------------------------------------------------------


def _get(obj: Any, name: str) -> Any:
    """Attribute or mapping key ``name`` of ``obj``, or _MISSING."""
    if isinstance(obj, Mapping):
        return obj.get(name, _MISSING)
    try:
        return getattr(obj, name, _MISSING)
    except Exception:  # a property that raises is as good as missing
        return _MISSING


def _short_repr(item: Any, limit: int = 80) -> str:
    try:
        text = repr(item)
    except Exception:
        text = f"<{type(item).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _not_speakable(item: Any, position: int) -> TypeError:
    return TypeError(
        f"item {position} of the text source cannot be spoken: {_short_repr(item)} "
        f"(type {type(item).__qualname__}). Yield str, TextEvent, FlushEvent or None, or "
        "chunks of an OpenAI, Anthropic or LangChain stream"
    )


def _content_text(content: Any) -> Any:
    """Text of a LangChain ``content``: a str, or a list of str / ``{"type": "text"}`` blocks."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif _get(block, "type") == "text" and isinstance(_get(block, "text"), str):
                parts.append(_get(block, "text"))
            # other blocks (tool calls, reasoning, images) carry nothing to speak
        return "".join(parts)
    return _MISSING


def _from_typed_event(item: Any, kind: str) -> Any:
    """Text of an event with a ``type`` field; None to skip; _MISSING if not recognised."""
    if kind == "content_block_delta":  # Anthropic
        delta = _get(item, "delta")
        if _get(delta, "type") == "text_delta":
            return _get(delta, "text")
        return None  # thinking, tool input JSON, citations
    if kind == "text" and _get(item, "snapshot") is not _MISSING:
        return None  # Anthropic MessageStream's derived text event (see _ANTHROPIC_SKIPPED)
    if kind in _ANTHROPIC_SKIPPED:
        return None
    if kind == "response.output_text.delta":  # OpenAI Responses
        return _get(item, "delta")
    if kind.startswith("response."):
        return None
    if kind == "content.delta":  # OpenAI chat-completions stream helper
        return _get(item, "delta")
    if kind.startswith(_OPENAI_HELPER_PREFIXES):
        return None
    if kind == "text":  # a plain text block: {"type": "text", "text": "..."}
        return _get(item, "text")
    return _MISSING


def _from_choices(choices: Any) -> Any:
    """Text of an OpenAI chat-completion chunk's ``choices``."""
    if not isinstance(choices, (list, tuple)):
        return _MISSING
    if not choices:
        return None  # the usage chunk at the end of a stream
    first = choices[0]
    delta = _get(first, "delta")
    if delta is not _MISSING and delta is not None:
        content = _get(delta, "content")
        return None if content is _MISSING else content  # tool calls, refusals: nothing to say
    text = _get(first, "text")  # legacy completions
    return None if text is _MISSING else text


def normalize_item(item: Any, position: int = 0) -> SourceEvent | None:
    """Turn one item of a text source into a TextEvent or FlushEvent, or None to skip it.

    ``position`` (0-based) only goes into the error message. Raises TypeError for an item
    that is neither text, an event, nor a recognised LLM stream chunk.
    """
    if item is None:
        return None
    if isinstance(item, str):
        return TextEvent(item) if item else None
    if isinstance(item, TextEvent):
        return item if item.text else None
    if isinstance(item, FlushEvent):
        return item
    if isinstance(item, (bytes, bytearray, memoryview, int, float, complex)):
        raise _not_speakable(item, position)

    text: Any = _MISSING
    event = _get(item, "event")  # the Fish SDK's events, or their wire-form dicts
    if isinstance(event, str):
        if event == "flush":
            return FlushEvent()
        if event == "text":
            text = _get(item, "text")
    else:
        choices = _get(item, "choices")
        if choices is not _MISSING:
            text = _from_choices(choices)
        kind = _get(item, "type")
        if text is _MISSING and isinstance(kind, str):
            text = _from_typed_event(item, kind)
        if text is _MISSING and not isinstance(item, Mapping):
            content = _get(item, "content")  # LangChain message chunks
            if content is not _MISSING:
                text = _content_text(content)
    if text is None or text == "":
        return None  # an empty delta, or an event with nothing to say
    if isinstance(text, str):
        return TextEvent(text)
    raise _not_speakable(item, position)


# --- the stream -----------------------------------------------------------------------------


class _End:
    """Queue marker: the sync iterable is exhausted."""


class _Failure:
    """Queue marker: the sync iterable raised ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Stopped:
    """Queue marker: the consumer closed the source (wakes a pending ``__anext__``)."""


_END, _STOPPED = _End(), _Stopped()
_thread_numbers = itertools.count(1)


class _SyncPump:
    """Pulls a sync iterator in a daemon thread and hands items to the loop's queue.

    Holds no reference to the SourceIterator, so a forgotten iterator can be collected
    (its finalizer then stops the pump). At most ``max_buffered`` items are ever waiting:
    the thread takes a slot before each ``next()`` and the consumer gives it back.
    """

    def __init__(
        self,
        iterator: Iterator[Any],
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[Any],
        max_buffered: int,
    ) -> None:
        self.iterator = iterator
        self.loop = loop
        self.queue = queue
        self.stopping = threading.Event()
        self.slots = threading.Semaphore(max_buffered)
        self.thread = threading.Thread(
            target=self.run, name=f"fish-notebook-source-{next(_thread_numbers)}", daemon=True
        )

    def stop(self) -> None:
        """Ask the thread to stop after its current ``next()``; never blocks."""
        self.stopping.set()
        self.slots.release()  # wake it if it waits for a free slot

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                # Bounded waits, so a stop is seen even when the consumer stopped reading.
                if not self.slots.acquire(timeout=0.1) or self.stopping.is_set():
                    continue
                try:
                    item = next(self.iterator)
                except StopIteration:
                    self._deliver(_END)
                    return
                except BaseException as exc:  # the user's exception, unchanged, to the consumer
                    self._deliver(_Failure(exc))
                    return
                if not self._deliver(item):
                    return
        finally:
            if self.stopping.is_set():
                self._close_iterator()

    def _deliver(self, message: Any) -> bool:
        if self.stopping.is_set():
            return False
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, message)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.stopping.set()
            return False
        return True

    def _close_iterator(self) -> None:
        close = getattr(self.iterator, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):  # best effort: the consumer is gone
                close()


class SourceIterator:
    """An async iterator of :data:`SourceEvent` over any text source. See :func:`iter_source`.

    Guarantees:

    - Items come out in order; ``None``, empty strings and empty deltas are skipped.
    - An exception raised by the user's iterable reaches the consumer unchanged (the same
      object); the stream then ends.
    - :meth:`aclose` never blocks: a sync source's thread stops pulling after its current
      ``next()`` returns (a generator is then closed in that thread); an async source is
      ``aclose()``d. Cancelling a pending ``__anext__`` closes the source the same way.
      Safe to call twice. Also usable as ``async with iter_source(x) as events:``.
    - A sync source's worker thread is a daemon: a ``next()`` that never returns cannot
      block interpreter or loop shutdown.
    """

    def __init__(
        self,
        source: Source,
        *,
        max_buffered: int = 64,
        normalize: Callable[[Any, int], Any] | None = None,
        speakable: bool | None = False,
    ) -> None:
        if isinstance(max_buffered, bool) or not isinstance(max_buffered, int) or max_buffered < 1:
            raise ValidationError("max_buffered", max_buffered, "must be an int >= 1")
        if speakable not in (None, True, False):
            raise ValidationError("speakable", speakable, "must be True, False or None (auto)")
        self._normalize = normalize or normalize_item
        self._speakable = speakable  # None: decided by the first text (an LLM chunk: on)
        self._filter: SpeakableFilter | None = None
        self._ready: collections.deque[SourceEvent] = collections.deque()
        self._max_buffered = max_buffered
        self._position = 0
        self._closed = False
        self._items: Iterator[Any] | None = None  # in-loop iteration (str, list, tuple)
        self._sync: Iterator[Any] | None = None  # pulled in a thread
        self._async: AsyncIterator[Any] | None = None
        self._pump: _SyncPump | None = None
        self._queue: asyncio.Queue[Any] | None = None
        self._in_step = False
        self._close_pending = False

        if isinstance(source, (str, TextEvent, FlushEvent)) or (
            normalize is not None and isinstance(source, (bytes, bytearray, memoryview))
        ):
            self._items = iter((source,))
        elif isinstance(source, (list, tuple)):
            self._items = iter(source)  # already in memory: nothing can block
        elif isinstance(source, (bytes, bytearray, memoryview, Mapping)):
            raise _bad_source(source)
        elif hasattr(source, "__aiter__"):
            self._async = source.__aiter__()
        elif hasattr(source, "__iter__"):
            self._sync = iter(source)
        else:
            raise _bad_source(source)

    def __repr__(self) -> str:
        kind = "async" if self._async else "thread" if self._sync else "in-memory"
        state = "closed" if self._closed else "open"
        return f"<SourceIterator {kind} {state} at item {self._position}>"

    def __aiter__(self) -> SourceIterator:
        return self

    async def __aenter__(self) -> SourceIterator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def __anext__(self) -> SourceEvent:
        while not self._ready:
            try:
                item, event = await self._next_event()
            except StopAsyncIteration:
                if self._filter is None:
                    raise
                self._ready.extend(_speakable_events(self._filter.close()))
                self._filter = None
                continue
            self._ready.extend(self._speak(item, event))
        return self._ready.popleft()

    async def _next_event(self) -> tuple[Any, SourceEvent]:
        """The next raw item and its event (None, empty text and empty deltas skipped)."""
        while True:
            if self._closed:
                raise StopAsyncIteration
            item = await self._next_raw()
            position = self._position
            self._position += 1
            try:
                event = self._normalize(item, position)
            except TypeError:
                await self.aclose()
                raise
            if event is not None:
                return item, event

    def _speak(self, item: Any, event: SourceEvent) -> list[SourceEvent]:
        """``event`` through the speakable filter when it is on (see :func:`iter_source`)."""
        if self._speakable is None and isinstance(event, TextEvent):
            self._speakable = not isinstance(item, (str, TextEvent))  # an LLM's chunk object
        if not self._speakable:
            return [event]
        if self._filter is None:
            self._filter = SpeakableFilter()
        text = event.text if isinstance(event, TextEvent) else ""
        events = _speakable_events(self._filter.feed(text))
        return [*events, event] if isinstance(event, FlushEvent) else events

    async def _next_raw(self) -> Any:
        """The next raw item; StopAsyncIteration at the end; the source's own exceptions."""
        if self._items is not None:
            try:
                return next(self._items)
            except StopIteration:
                self._closed = True
                raise StopAsyncIteration from None
        if self._async is not None:
            return await self._next_async(self._async)
        return await self._next_from_thread()

    async def _next_async(self, source: AsyncIterator[Any]) -> Any:
        if self._in_step:
            raise SessionStateError("this source is already being read by another task")
        self._in_step = True
        try:
            item = await source.__anext__()
        except StopAsyncIteration:
            self._closed = True
            raise
        except asyncio.CancelledError:
            self._in_step = False
            self._closed = True
            await self._aclose_async(source)
            raise
        except BaseException:
            self._closed = True  # the source ended itself by raising
            raise
        finally:
            self._in_step = False
        if self._close_pending:  # another task closed us while this step ran
            await self._aclose_async(source)
            raise StopAsyncIteration
        return item

    async def _aclose_async(self, source: AsyncIterator[Any]) -> None:
        self._close_pending = False
        aclose = getattr(source, "aclose", None)
        if callable(aclose):
            await aclose()

    async def _next_from_thread(self) -> Any:
        if self._queue is None:
            assert self._sync is not None
            self._queue = asyncio.Queue(self._max_buffered + 2)
            self._pump = _SyncPump(
                self._sync, asyncio.get_running_loop(), self._queue, self._max_buffered
            )
            weakref.finalize(self, self._pump.stop)
            self._pump.thread.start()
        assert self._pump is not None
        try:
            message = await self._queue.get()
        except asyncio.CancelledError:
            await self.aclose()
            raise
        self._pump.slots.release()
        if isinstance(message, _Failure):
            self._closed = True
            raise message.error
        if message is _END or message is _STOPPED or self._closed:
            self._closed = True
            raise StopAsyncIteration
        return message

    async def aclose(self) -> None:
        """Stop reading the source and release it. Never blocks on a stuck ``next()``."""
        if self._closed:
            return
        self._closed = True
        if self._pump is not None:
            self._pump.stop()
            if self._queue is not None:
                # Wake a consumer waiting in get(); a full queue wakes it anyway.
                with contextlib.suppress(asyncio.QueueFull):
                    self._queue.put_nowait(_STOPPED)
        elif self._sync is not None:  # never started: close the generator here
            close = getattr(self._sync, "close", None)
            if callable(close):
                close()
        if self._async is not None:
            if self._in_step:
                # Another task is inside __anext__ (an async generator cannot be closed while
                # it runs): that task closes it as soon as its step returns.
                self._close_pending = True
                return
            await self._aclose_async(self._async)


def _bad_source(source: Any) -> TypeError:
    return TypeError(
        f"cannot speak a {type(source).__qualname__} source: {_short_repr(source)}. "
        "Pass a str, an iterable or an async iterable of text (for example an LLM stream)"
    )


def _speakable_events(items: list[SpeakableItem]) -> list[SourceEvent]:
    """The filter's pieces as events: spoken text, skipped markup, flushes; a replaced piece
    (a URL spoken as its host, a code block as a note) as its original then its speech."""
    events: list[SourceEvent] = []
    for item in merge_pieces(items):
        if isinstance(item, FlushEvent):
            events.append(item)
            continue
        if item.kind != "text" and item.original:
            events.append(SkippedText(item.original))
        if item.spoken:
            events.append(TextEvent(item.spoken))
    return events


def iter_source(
    source: Source, *, max_buffered: int = 64, speakable: bool | None = False
) -> SourceIterator:
    """Iterate any text source as TextEvent/FlushEvent, without blocking the event loop.

    Args:
        source: a ``str``, a sync or async iterable of items (see the module docstring),
            or a single TextEvent/FlushEvent.
        max_buffered: how many items a sync source's worker thread may read ahead.
        speakable: pass the text through the speakable filter
            (:mod:`fish_notebook.speakable`): markdown read as plain words, a code block
            as a short note and a flush, URLs as their host; what is not spoken comes out
            as :class:`SkippedText`. ``None``: on when the source yields an LLM's chunk
            objects (OpenAI, Anthropic, LangChain), off for plain strings.

    Returns:
        A :class:`SourceIterator`: ``async for event in iter_source(tokens): ...``.
        Call ``await it.aclose()`` (or use ``async with``) when stopping early.

    Raises:
        TypeError: at once for a source that is not iterable (or is bytes or a dict);
            while iterating, for an item that cannot be spoken (naming it and its position).
    """
    return SourceIterator(source, max_buffered=max_buffered, speakable=speakable)


# --- a local stream paced like an LLM -------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:\w+(?:['’]\w+)*|[^\w\s]+)|\s+")
_LONG_WORD = 8  # LLM tokenizers split long words; so do we, into pieces of about 4 letters


def llm_tokens(text: str) -> list[str]:
    """Split text into LLM-like tokens: words with their leading space, punctuation runs on
    their own, long words in pieces. ``"".join(llm_tokens(text)) == text`` always."""
    tokens: list[str] = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        word = token.lstrip()
        if len(word) > _LONG_WORD and word.isalpha():
            lead = token[: len(token) - len(word)]
            pieces = [word[i : i + 4] for i in range(0, len(word), 4)]
            if len(pieces[-1]) < 3:  # no one-letter tails
                pieces[-2:] = [pieces[-2] + pieces[-1]]
            tokens.append(lead + pieces[0])
            tokens.extend(pieces[1:])
        else:
            tokens.append(token)
    return tokens


def _check_pace(tokens_per_second: float, first_token_delay: float) -> None:
    if (
        isinstance(tokens_per_second, bool)
        or not isinstance(tokens_per_second, (int, float))
        or not 0 < tokens_per_second < float("inf")
    ):
        raise ValidationError("tokens_per_second", tokens_per_second, "must be a number > 0")
    if (
        isinstance(first_token_delay, bool)
        or not isinstance(first_token_delay, (int, float))
        or not 0 <= first_token_delay < float("inf")
    ):
        raise ValidationError("first_token_delay", first_token_delay, "must be a number >= 0")


def _ends_sentence_at(tokens: list[str], index: int) -> bool:
    """Does the text up to and including ``tokens[index]`` end a sentence? (The tail is
    enough to tell an abbreviation: ``Dr`` and ``.`` are separate tokens.)"""
    return ends_sentence("".join(tokens[max(0, index - 8) : index + 1]))


def paced(
    text: str,
    *,
    tokens_per_second: float = 30.0,
    first_token_delay: float = 0.3,
    flush_at_sentence_end: bool = False,
) -> Iterator[str | FlushEvent]:
    """Yield ``text`` as LLM-like tokens at an LLM's pace (a sync generator).

    Waits ``first_token_delay`` seconds (the model "thinking"), then yields one token
    (see :func:`llm_tokens`) every ``1 / tokens_per_second`` seconds, on a fixed schedule
    so sleeps do not drift. With ``flush_at_sentence_end`` a :class:`FlushEvent` follows
    every token that ends a sentence. Joining the yielded strings gives ``text`` back.

    For demos, notebooks and benchmarks: ``speak(paced("Hello there. How are you?"))``.
    It sleeps in the calling thread; :func:`iter_source` pulls it in a worker thread.
    Use :func:`apaced` inside async code.
    """
    _check_pace(tokens_per_second, first_token_delay)
    start = time.monotonic() + first_token_delay
    tokens = llm_tokens(text)
    for index, token in enumerate(tokens):
        delay = start + index / tokens_per_second - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        yield token
        if flush_at_sentence_end and _ends_sentence_at(tokens, index):
            yield FlushEvent()


async def apaced(
    text: str,
    *,
    tokens_per_second: float = 30.0,
    first_token_delay: float = 0.3,
    flush_at_sentence_end: bool = False,
) -> AsyncIterator[str | FlushEvent]:
    """The async twin of :func:`paced`: same tokens and schedule, sleeping with asyncio."""
    _check_pace(tokens_per_second, first_token_delay)
    loop = asyncio.get_running_loop()
    start = loop.time() + first_token_delay
    tokens = llm_tokens(text)
    for index, token in enumerate(tokens):
        delay = start + index / tokens_per_second - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        yield token
        if flush_at_sentence_end and _ends_sentence_at(tokens, index):
            yield FlushEvent()


def _audio_item(item: Any, position: int) -> bytes | None:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item) or None
    raise TypeError(
        f"audio stream item {position} is a {type(item).__qualname__}, not bytes: "
        f"{_short_repr(item)}"
    )


def iter_audio(source: Any, *, max_buffered: int = 64) -> SourceIterator:
    """Iterate an audio byte stream (bytes, or a sync/async iterable of bytes) as bytes.

    The same guarantees as :func:`iter_source` (a sync iterable is pulled in a daemon
    thread, closing never blocks); empty chunks are skipped, anything but bytes raises
    TypeError naming the item and its position.
    """
    return SourceIterator(source, max_buffered=max_buffered, normalize=_audio_item)
