"""Tests for fish_notebook.sources: every item kind, errors, threads and closing."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import fishaudio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fish_notebook import sources
from fish_notebook.errors import ValidationError
from fish_notebook.protocol import FlushEvent, TextEvent
from fish_notebook.sources import (
    SourceIterator,
    apaced,
    iter_source,
    llm_tokens,
    normalize_item,
    paced,
)

WAIT = 5.0  # bound on every wait in this file


async def collect(source: Any, **kwargs: Any) -> list[Any]:
    async def run() -> list[Any]:
        return [event async for event in iter_source(source, **kwargs)]

    return await asyncio.wait_for(run(), WAIT)


def texts(events: list[Any]) -> list[Any]:
    """Events as plain values: the text of a TextEvent, the string "FLUSH" for a flush."""
    return ["FLUSH" if isinstance(e, FlushEvent) else e.text for e in events]


def source_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fish-notebook-source-")]


async def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def no_source_threads() -> None:
    await wait_until(lambda: not source_threads(), "the source worker thread to end")


# --- shapes of other libraries' objects (duck-typed, as the real ones are) -------------------


@dataclass
class OAIDelta:
    content: str | None = None
    role: str | None = None
    tool_calls: list[Any] | None = None


@dataclass
class OAIChoice:
    delta: OAIDelta
    index: int = 0
    finish_reason: str | None = None


@dataclass
class OAIChunk:
    choices: list[OAIChoice]
    object: str = "chat.completion.chunk"


def oai(content: str | None, **delta: Any) -> OAIChunk:
    return OAIChunk([OAIChoice(OAIDelta(content, **delta))])


@dataclass
class AnthropicDelta:
    type: str
    text: str = ""
    partial_json: str = ""


@dataclass
class AnthropicEvent:
    type: str
    delta: AnthropicDelta | None = None
    index: int = 0


@dataclass
class AnthropicDerivedText:
    """What anthropic's MessageStream yields after each raw text delta."""

    text: str
    snapshot: str
    type: str = "text"


@dataclass
class LangChainChunk:
    content: Any
    type: str = "AIMessageChunk"
    additional_kwargs: dict[str, Any] = field(default_factory=dict)


# --- plain items -----------------------------------------------------------------------------


async def test_str_source_is_one_text_event() -> None:
    """A str becomes exactly one TextEvent with that text."""
    assert texts(await collect("Hello there.")) == ["Hello there."]


async def test_empty_str_source_yields_nothing() -> None:
    """An empty string gives no events at all."""
    assert await collect("") == []


async def test_single_event_source() -> None:
    """A lone FlushEvent or TextEvent is a one-item source."""
    assert texts(await collect(FlushEvent())) == ["FLUSH"]
    assert texts(await collect(TextEvent("x"))) == ["x"]


async def test_mixed_items_with_none_and_empties_skipped() -> None:
    """str, our events, None and empty text: empties and None vanish, order is kept."""
    items = ["a", None, "", TextEvent("b"), TextEvent(""), FlushEvent(), " c"]
    assert texts(await collect(items)) == ["a", "b", "FLUSH", " c"]


async def test_fish_sdk_events_become_ours() -> None:
    """The real fishaudio TextEvent/FlushEvent classes are taken as our events."""
    items = [fishaudio.TextEvent(text="Hi "), fishaudio.FlushEvent(), fishaudio.TextEvent(text="")]
    events = await collect(items)
    assert [type(e) for e in events] == [TextEvent, FlushEvent]
    assert events[0].text == "Hi "


async def test_wire_form_dicts() -> None:
    """Dicts shaped like protocol frames are events too."""
    items = [{"event": "text", "text": "a"}, {"event": "flush"}, {"event": "text", "text": ""}]
    assert texts(await collect(items)) == ["a", "FLUSH"]


# --- LLM stream chunks -----------------------------------------------------------------------


async def test_openai_chat_chunks_objects_and_dicts() -> None:
    """choices[0].delta.content is taken; role, tool-call and usage chunks are skipped."""
    items = [
        oai(None, role="assistant"),
        oai("Hel"),
        {"choices": [{"delta": {"content": "lo"}, "index": 0}]},
        oai(None, tool_calls=[{"id": "1"}]),
        oai(""),
        OAIChunk([]),  # the usage chunk at the end
        {"choices": [], "usage": {"total_tokens": 3}},
    ]
    assert texts(await collect(items)) == ["Hel", "lo"]


async def test_real_openai_chat_chunks() -> None:
    """Real openai ChatCompletionChunk objects, when the llm extra is installed."""
    chat = pytest.importorskip("openai.types.chat")

    def chunk(delta: dict[str, Any]) -> Any:
        return chat.ChatCompletionChunk.model_validate(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
        )

    items = [chunk({"role": "assistant"}), chunk({"content": "Hi"}), chunk({"content": "!"})]
    assert texts(await collect(items)) == ["Hi", "!"]


async def test_openai_responses_events() -> None:
    """Responses text deltas are taken; every other response.* event is skipped."""
    responses = pytest.importorskip("openai.types.responses")
    real = responses.ResponseTextDeltaEvent(
        content_index=0,
        delta=" world",
        item_id="i",
        logprobs=[],
        output_index=0,
        sequence_number=2,
        type="response.output_text.delta",
    )
    items = [
        {"type": "response.created", "response": {}},
        {"type": "response.output_text.delta", "delta": "Hello"},
        real,
        {"type": "response.output_text.done", "text": "Hello world"},
        {"type": "response.completed"},
    ]
    assert texts(await collect(items)) == ["Hello", " world"]


async def test_openai_chat_stream_helper_events_not_doubled() -> None:
    """The chat stream helper's content.delta is taken and its raw chunk event skipped."""
    items = [
        {"type": "chunk", "chunk": oai("Hi"), "snapshot": None},
        {"type": "content.delta", "delta": "Hi", "snapshot": "Hi"},
        {"type": "content.done", "content": "Hi"},
    ]
    assert texts(await collect(items)) == ["Hi"]


async def test_anthropic_stream_events() -> None:
    """Only text deltas are spoken; other Anthropic events and delta kinds are skipped."""
    items = [
        AnthropicEvent("message_start"),
        AnthropicEvent("content_block_start"),
        AnthropicEvent("content_block_delta", AnthropicDelta("text_delta", "Hello")),
        AnthropicDerivedText("Hello", snapshot="Hello"),  # MessageStream's copy: not doubled
        AnthropicEvent("ping"),
        {"type": "content_block_delta", "delta": {"type": "text_delta", "text": " there"}},
        AnthropicEvent("content_block_delta", AnthropicDelta("input_json_delta", partial_json="{")),
        AnthropicEvent("content_block_delta", AnthropicDelta("thinking_delta")),
        AnthropicEvent("content_block_stop"),
        AnthropicEvent("message_delta"),
        AnthropicEvent("message_stop"),
    ]
    assert texts(await collect(items)) == ["Hello", " there"]


async def test_langchain_chunks() -> None:
    """LangChain chunks: str content, or lists of text blocks with other blocks skipped."""
    items = [
        LangChainChunk("One"),
        LangChainChunk(""),
        LangChainChunk([{"type": "text", "text": " two"}, {"type": "tool_use", "id": "t"}, "!"]),
        LangChainChunk([{"type": "thinking", "thinking": "hmm"}]),
    ]
    assert texts(await collect(items)) == ["One", " two!"]


def test_normalize_item_directly() -> None:
    """normalize_item maps one item: text, flush, or None to skip."""
    assert normalize_item("x") == TextEvent("x")
    assert normalize_item({"type": "text", "text": "y"}) == TextEvent("y")
    assert normalize_item(fishaudio.FlushEvent()) == FlushEvent()
    assert normalize_item(oai(None)) is None


# --- what cannot be spoken -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "shown"),
    [
        (b"audio", "b'audio'"),
        (42, "42"),
        (3.5, "3.5"),
        (True, "True"),
        ({"role": "user", "content": "hi"}, "'role'"),
        ({"event": "stop"}, "'stop'"),
        (object(), "object object"),
    ],
)
async def test_unspeakable_items_name_item_and_position(item: Any, shown: str) -> None:
    """Bytes, numbers, foreign dicts and objects raise TypeError with repr and 0-based index."""
    with pytest.raises(TypeError, match="item 2 of the text source") as info:
        await collect([None, "ok", item, "never"])
    assert shown in str(info.value)


async def test_unspeakable_item_repr_is_truncated() -> None:
    """A huge item is shown truncated in the message."""
    with pytest.raises(TypeError) as info:
        await collect([b"x" * 10_000])
    assert "..." in str(info.value)
    assert len(str(info.value)) < 400


async def test_events_before_a_bad_item_are_delivered() -> None:
    """Items before the bad one come out; the TypeError ends the stream."""
    it = iter_source(iter(["a", 7, "b"]))
    assert texts([await it.__anext__()]) == ["a"]
    with pytest.raises(TypeError, match="item 1"):
        await it.__anext__()
    with pytest.raises(StopAsyncIteration):
        await it.__anext__()
    await no_source_threads()


@pytest.mark.parametrize("source", [b"bytes", {"text": "hi"}, 42, None])
def test_unusable_sources_fail_at_once(source: Any) -> None:
    """A source that is not text or iterable of text is a TypeError before any iteration."""
    with pytest.raises(TypeError, match="Pass a str, an iterable"):
        iter_source(source)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_max_buffered_is_validated(bad: Any) -> None:
    """max_buffered must be a positive int."""
    with pytest.raises(ValidationError, match="max_buffered"):
        iter_source(["a"], max_buffered=bad)


# --- errors from the user's iterable ---------------------------------------------------------


class Boom(Exception):
    """The user's own error."""


async def test_sync_iterable_exception_is_the_same_object() -> None:
    """An exception raised by a sync generator reaches the consumer unchanged."""
    error = Boom("llm failed")

    def gen() -> Iterator[str]:
        yield "a"
        raise error

    got: list[Any] = []
    with pytest.raises(Boom) as info:
        async for event in iter_source(gen()):
            got.append(event)
    assert info.value is error
    assert texts(got) == ["a"]
    await no_source_threads()


async def test_async_iterable_exception_is_the_same_object() -> None:
    """An exception raised by an async generator reaches the consumer unchanged."""
    error = Boom("llm failed")

    async def agen() -> AsyncIterator[str]:
        yield "a"
        raise error

    with pytest.raises(Boom) as info:
        await collect(agen())
    assert info.value is error


# --- threads and the event loop --------------------------------------------------------------


async def test_slow_sync_next_does_not_block_the_loop() -> None:
    """While next() blocks in its thread, loop tasks run (here: the task that unblocks it)."""
    entered, release = threading.Event(), threading.Event()

    def slow() -> Iterator[str]:
        entered.set()
        # Only a task on the loop can set `release`: if next() blocked the loop, this times out.
        yield "released" if release.wait(WAIT) else "loop was blocked"

    async def unblock() -> None:
        await wait_until(entered.is_set, "next() to start")
        release.set()

    helper = asyncio.create_task(unblock())
    assert texts(await collect(slow())) == ["released"]
    await helper
    await no_source_threads()


async def test_sync_source_runs_in_a_daemon_worker_thread() -> None:
    """next() runs in a daemon thread named after the package, not on the loop's thread."""
    seen: list[threading.Thread] = []

    def gen() -> Iterator[str]:
        seen.append(threading.current_thread())
        yield "x"

    await collect(gen())
    assert seen[0] is not threading.current_thread()
    assert seen[0].daemon
    assert seen[0].name.startswith("fish-notebook-source-")


async def test_lists_are_read_without_a_thread() -> None:
    """In-memory lists need no worker thread."""
    it = iter_source(["a", "b"])
    assert texts([await it.__anext__()]) == ["a"]
    assert source_threads() == []
    await it.aclose()


async def test_early_close_stops_the_thread_and_closes_the_generator() -> None:
    """aclose() after a few items: the worker ends and the generator's finally runs."""
    closed = threading.Event()

    def endless() -> Iterator[str]:
        try:
            n = 0
            while True:
                n += 1
                yield f"t{n} "
        finally:
            closed.set()

    async with iter_source(endless(), max_buffered=4) as events:
        got = [await events.__anext__() for _ in range(3)]
    assert texts(got) == ["t1 ", "t2 ", "t3 "]
    await no_source_threads()
    assert closed.is_set()


async def test_close_never_waits_for_a_stuck_next() -> None:
    """aclose() returns while next() is blocked; the thread ends once next() returns."""
    entered, release, closed = threading.Event(), threading.Event(), threading.Event()
    pulls: list[int] = []

    def stuck() -> Iterator[str]:
        try:
            yield "first"
            pulls.append(1)
            entered.set()
            release.wait(WAIT)
            yield "second"
            pulls.append(2)  # must never run: the thread stops pulling after aclose
            yield "third"
        finally:
            closed.set()

    events = iter_source(stuck())
    assert texts([await events.__anext__()]) == ["first"]
    pending = asyncio.create_task(events.__anext__())
    await wait_until(entered.is_set, "next() to block")
    await asyncio.wait_for(events.aclose(), WAIT)  # returns although next() is still blocked
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, WAIT)  # the waiting consumer is woken, not left hanging
    assert source_threads()  # still inside next()
    release.set()
    await no_source_threads()
    assert closed.is_set()
    assert pulls == [1]


async def test_cancelling_the_consumer_stops_the_thread() -> None:
    """A consumer task cancelled while waiting stops the worker after its next() returns."""
    entered, release, closed = threading.Event(), threading.Event(), threading.Event()

    def stuck() -> Iterator[str]:
        try:
            entered.set()
            release.wait(WAIT)
            yield "late"
            yield "later"
        finally:
            closed.set()

    async def consume() -> list[Any]:
        return [e async for e in iter_source(stuck())]

    task = asyncio.create_task(consume())
    await wait_until(entered.is_set, "next() to block")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    await no_source_threads()
    assert closed.is_set()


async def test_forgotten_iterator_stops_its_thread() -> None:
    """An iterator dropped without aclose() stops its worker when collected."""

    def endless() -> Iterator[str]:
        while True:
            yield "x"

    events: SourceIterator | None = iter_source(endless(), max_buffered=2)
    assert events is not None
    await events.__anext__()
    events = None
    gc.collect()
    await no_source_threads()


async def test_read_ahead_is_bounded() -> None:
    """A sync source is never read more than max_buffered items ahead of the consumer."""
    pulled: list[int] = []

    def counting() -> Iterator[str]:
        for n in range(1000):
            pulled.append(n)
            yield "x"

    events = iter_source(counting(), max_buffered=3)
    for _ in range(2):
        await events.__anext__()
    await wait_until(lambda: len(pulled) >= 5, "the worker to fill its buffer")
    await asyncio.sleep(0.2)  # give an unbounded reader time to run away
    assert len(pulled) <= 2 + 3 + 1  # consumed + buffered + the slot the last read freed
    await events.aclose()
    await no_source_threads()


# --- async iterables -------------------------------------------------------------------------


async def test_async_generator_closed_early() -> None:
    """aclose() after two items runs the async generator's finally."""
    finalized = asyncio.Event()

    async def agen() -> AsyncIterator[str]:
        try:
            while True:
                yield "w "
                await asyncio.sleep(0)
        finally:
            finalized.set()

    events = iter_source(agen())
    await events.__anext__()
    await events.__anext__()
    await events.aclose()
    assert finalized.is_set()
    with pytest.raises(StopAsyncIteration):
        await events.__anext__()


async def test_async_source_closed_by_cancelling_the_consumer() -> None:
    """Cancelling a consumer waiting on an async source finalizes that source."""
    finalized = asyncio.Event()
    waiting = asyncio.Event()

    async def agen() -> AsyncIterator[str]:
        try:
            yield "a"
            waiting.set()
            await asyncio.sleep(WAIT * 10)
            yield "never"
        finally:
            finalized.set()

    async def consume() -> list[Any]:
        return [e async for e in iter_source(agen())]

    task = asyncio.create_task(consume())
    await asyncio.wait_for(waiting.wait(), WAIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finalized.is_set()


async def test_async_source_closed_from_another_task_mid_step() -> None:
    """aclose() from another task while a step is pending closes the source after that step."""
    finalized = asyncio.Event()
    release = asyncio.Event()

    async def agen() -> AsyncIterator[str]:
        try:
            yield "a"
            await asyncio.wait_for(release.wait(), WAIT)
            yield "b"
            yield "c"
        finally:
            finalized.set()

    events = iter_source(agen())
    await events.__anext__()
    pending = asyncio.create_task(events.__anext__())
    await asyncio.sleep(0.01)
    await events.aclose()  # cannot close a running async generator: deferred
    release.set()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, WAIT)
    assert finalized.is_set()


async def test_async_iterator_class_is_aclosed() -> None:
    """A hand-written async iterator with aclose() (like an SDK's AsyncStream) is closed."""

    class Stream:
        def __init__(self) -> None:
            self.closed = False

        def __aiter__(self) -> Stream:
            return self

        async def __anext__(self) -> str:
            return "tok "

        async def aclose(self) -> None:
            self.closed = True

    stream = Stream()
    async with iter_source(stream) as events:
        assert texts([await events.__anext__()]) == ["tok "]
    assert stream.closed


# --- paced token streams ---------------------------------------------------------------------


@given(st.text(max_size=200))
def test_llm_tokens_join_back_to_the_text(text: str) -> None:
    """Tokens always join back to exactly the input."""
    assert "".join(llm_tokens(text)) == text


def test_llm_tokens_look_like_llm_tokens() -> None:
    """Words carry their leading space, punctuation stands alone, long words are split."""
    tokens = llm_tokens("Hello, world! Extraordinary.")
    assert tokens[:4] == ["Hello", ",", " world", "!"]
    assert tokens[4].startswith(" Ex") and tokens[-1] == "."
    assert len(tokens) > 6


def test_paced_yields_tokens_and_sentence_flushes() -> None:
    """paced() yields the text's tokens and, when asked, a flush after each sentence."""
    text = "Hi there. How are you? Fine"
    fast: dict[str, Any] = {"tokens_per_second": 1000, "first_token_delay": 0}
    items = list(paced(text, **fast))
    assert all(isinstance(i, str) for i in items)
    assert "".join(str(i) for i in items) == text
    flushed = list(paced(text, **fast, flush_at_sentence_end=True))
    marks = ["FLUSH" if isinstance(i, FlushEvent) else i for i in flushed]
    assert marks == ["Hi", " there", ".", "FLUSH", " How", " are", " you", "?", "FLUSH", " Fine"]


async def test_apaced_matches_paced() -> None:
    """The async twin yields the same items as paced()."""
    text = "One. Two three! Four"
    kwargs: dict[str, Any] = {
        "tokens_per_second": 1000,
        "first_token_delay": 0,
        "flush_at_sentence_end": True,
    }
    got = [i async for i in apaced(text, **kwargs)]
    assert got == list(paced(text, **kwargs))


async def test_paced_through_iter_source() -> None:
    """A paced generator is a valid source; its flushes come through as FlushEvents."""
    source = paced("A b. C", tokens_per_second=500, first_token_delay=0, flush_at_sentence_end=True)
    assert texts(await collect(source)) == ["A", " b", ".", "FLUSH", " C"]
    await no_source_threads()


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"tokens_per_second": 0}, "tokens_per_second"),
        ({"tokens_per_second": float("inf")}, "tokens_per_second"),
        ({"first_token_delay": -1}, "first_token_delay"),
    ],
)
def test_paced_validates_its_pace(kwargs: dict[str, Any], field_name: str) -> None:
    """A pace that cannot be kept is a ValidationError naming the argument."""
    with pytest.raises(ValidationError, match=field_name):
        next(paced("hi", **kwargs))


def test_all_exports_exist() -> None:
    """Every name in __all__ is defined."""
    for name in sources.__all__:
        assert hasattr(sources, name), name


# --- the speakable filter in the source --------------------------------------------------------


MARKDOWN_TOKENS = [
    "## Setup\n",
    "Run **pip",
    "** first:\n",
    "```sh\n",
    "pip install x\n",
    "```\n",
    "Done.",
]


async def _events_of(source: object, speakable: bool | None) -> list[object]:
    from fish_notebook.sources import iter_source

    return [event async for event in iter_source(source, speakable=speakable)]


async def test_speakable_source_reads_markdown_as_speech_and_reports_what_it_skipped() -> None:
    """speakable=True: no markup reaches the text events; skipped markup comes out as
    SkippedText in order; the code block is a spoken note and a flush."""
    from fish_notebook.sources import SkippedText

    events = await _events_of(MARKDOWN_TOKENS, True)
    spoken = "".join(e.text for e in events if isinstance(e, TextEvent))
    skipped = "".join(e.text for e in events if isinstance(e, SkippedText))
    assert not set("*#`") & set(spoken)
    assert "Setup" in spoken and "Run pip first" in spoken and "code block" in spoken
    assert "pip install x" in skipped and "**" in skipped
    assert any(isinstance(e, FlushEvent) for e in events)


async def test_speakable_auto_is_on_for_llm_chunks_and_off_for_plain_text() -> None:
    """None (auto): an LLM's chunk objects are filtered; plain strings pass as written."""
    chunks = [{"choices": [{"delta": {"content": token}}]} for token in MARKDOWN_TOKENS]
    filtered = await _events_of(chunks, None)
    assert not set("*#`") & set("".join(e.text for e in filtered if isinstance(e, TextEvent)))
    plain = await _events_of(MARKDOWN_TOKENS, None)
    assert [e.text for e in plain if isinstance(e, TextEvent)] == MARKDOWN_TOKENS
    off = await _events_of(chunks, False)
    assert [e.text for e in off if isinstance(e, TextEvent)] == MARKDOWN_TOKENS
