"""The early flush lands right after the first sentence, however the text is cut into tokens.

Pure tests feed fish_notebook.realtime.EarlyFlush; wire tests check the frames a recording
loopback server receives from the client.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fish_notebook import AsyncRealtimeClient, FlushEvent, RealtimeClient, TextEvent
from fish_notebook.realtime import EarlyFlush
from fish_notebook.text import first_sentence_end
from tests.wire_server import Recorded, WireServer, threaded_wire_server

# Pieces that meet every rule of fish_notebook.text: abbreviations, initials, acronyms,
# decimals, closers, CJK without spaces, newlines and blank lines, runs of terminators.
FRAGMENTS = [
    "The", "first", "move", "Mr.", "Dr.", "e.g.", "J.", "U.S.A.", "3.5", "3.", "5", "pm.",
    "done.", "Fine!", '"Stop!"', "(Yes.)", "Really?!", "Wait...", "Hmm…", "no end",
    "你好", "世界。", "好！", "「好。」", "。", "！", "？", ".", "!", "?",
    " ", " ", " ", "  ", "\n", "\n\n", " \n", "\t",
]  # fmt: skip
texts = st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=24).map("".join)
rough_texts = st.text(alphabet="ab .!?…。！？\n\"')」Mr3", min_size=1, max_size=40)


@st.composite
def split(draw: st.DrawFn, text_strategy: st.SearchStrategy[str] = texts) -> list[str]:
    """A text cut into tokens at random places (every token non-empty)."""
    text = draw(text_strategy)
    cuts = draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=len(text)))
    edges = [0, *sorted(c for c in cuts if 0 < c < len(text)), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(edges)]


def flushed_at(events: list[TextEvent | FlushEvent]) -> list[int]:
    """Where in the text (characters sent before it) each flush went out."""
    places, sent = [], 0
    for event in events:
        if isinstance(event, FlushEvent):
            places.append(sent)
        else:
            sent += len(event.text)
    return places


def fed(tokens: list[str]) -> list[TextEvent | FlushEvent]:
    early = EarlyFlush()
    return [piece for token in tokens for piece in early.feed(TextEvent(token))]


# --- pure --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "after"),
    [
        (["The ", "first ", "move. ", "Then ", "more."], "The first move."),  # trailing spaces
        (["The", " first", " move.", " Then", " more."], "The first move."),  # leading spaces
        (["你好", "。", "我们", "走吧。"], "你好。"),  # no spaces at all
        (["好。", "！", "走"], "好。！"),  # a run of CJK terminators is one end
        (["Done.\n", "Next"], "Done."),  # a newline after the terminator
        (["Title\n", "\n", "Body"], "Title\n\n"),  # a blank line
        (["It is done. Then", " more."], "It is done."),  # an end inside a token
        (['He said "stop!', '" Then'], 'He said "stop!"'),  # closers after the terminator
        (["Ask Mr.", " Smith", " at 3", ".", "5", " pm. Bye"], "Ask Mr. Smith at 3.5 pm."),
    ],
)
def test_the_flush_follows_the_first_sentence(tokens: list[str], after: str) -> None:
    """One flush, right after the first sentence's terminator and closers, the text unchanged."""
    events = fed(tokens)
    assert "".join(e.text for e in events if isinstance(e, TextEvent)) == "".join(tokens)
    assert flushed_at(events) == [len(after)]


def test_an_end_inside_a_token_splits_it() -> None:
    """ "done. Then" goes out as "done.", flush, " Then"."""
    assert fed(["It is ", "done. Then", " more."]) == [
        TextEvent("It is "),
        TextEvent("done."),
        FlushEvent(),
        TextEvent(" Then"),
        TextEvent(" more."),
    ]


def test_the_source_flushing_first_or_disabled_means_no_early_flush() -> None:
    """A flush from the source turns the early flush off; so does enabled=False."""
    early = EarlyFlush()
    assert early.feed(TextEvent("Hi")) == [TextEvent("Hi")]
    assert early.feed(FlushEvent()) == [FlushEvent()]
    assert early.feed(TextEvent(". Then")) == [TextEvent(". Then")]
    off = EarlyFlush(enabled=False)
    assert off.feed(TextEvent("Done. Then")) == [TextEvent("Done. Then")]
    assert not off.waiting and off.idle() == []


def test_a_pause_confirms_an_end_nothing_follows_yet() -> None:
    """After "move." a pause flushes; after "Mr." or mid-sentence it does not."""
    early = EarlyFlush()
    early.feed(TextEvent("Ask Mr."))
    assert not early.waiting and early.idle() == []
    early.feed(TextEvent(" Smith"))
    assert not early.waiting
    early.feed(TextEvent(" moved."))
    assert early.waiting
    assert early.idle() == [FlushEvent()]
    assert not early.waiting and early.feed(TextEvent(" Then")) == [TextEvent(" Then")]


def test_a_pause_inside_a_number_flushes_too_early() -> None:
    """The trade-off of the pause rule: "3." then a pause, then "5", speaks "3." on its own."""
    early = EarlyFlush()
    early.feed(TextEvent("Pi is 3."))
    assert early.waiting  # "3." may end a sentence: only the next character can tell


@given(split())
@example(["The ", "first ", "move. ", "Then"])
@example(["好。", "！", "走"])
@example(["a\n", " " * 70, "\nb"])
def test_any_split_flushes_at_the_first_sentence_end(tokens: list[str]) -> None:
    """Whatever the token boundaries, at most one flush, at the text's first sentence end."""
    text = "".join(tokens)
    events = fed(tokens)
    assert "".join(e.text for e in events if isinstance(e, TextEvent)) == text
    end = first_sentence_end(text)
    assert flushed_at(events) == ([] if end is None else [end])


@given(split(rough_texts))
def test_any_split_of_rough_text_flushes_at_the_first_sentence_end(tokens: list[str]) -> None:
    """The same on text made of little but terminators, closers, spaces and newlines."""
    end = first_sentence_end("".join(tokens))
    assert flushed_at(fed(tokens)) == ([] if end is None else [end])


@given(st.one_of(texts, rough_texts), st.data())
def test_an_end_found_early_is_the_end_of_the_whole_text(text: str, data: st.DataObject) -> None:
    """first_sentence_end of the start of a text is None or that of the whole text."""
    cut = data.draw(st.integers(0, len(text)))
    assert first_sentence_end(text[:cut]) in (None, first_sentence_end(text))


# --- on the wire -------------------------------------------------------------------------------


def wire_flushes(conn: Recorded) -> tuple[str, list[int]]:
    """The text a server received and where in it each flush arrived."""
    events = [
        FlushEvent() if e["event"] == "flush" else TextEvent(e["text"])
        for e in conn.events
        if e["event"] in ("text", "flush")
    ]
    return "".join(e.text for e in events if isinstance(e, TextEvent)), flushed_at(events)


def test_the_server_sees_the_flush_at_the_same_place_whatever_the_split() -> None:
    """Random re-tokenizations of the same texts: the flush frame arrives after the same text."""
    with threaded_wire_server() as server, RealtimeClient(base_url=server.base_url) as client:

        @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(split())
        def check(tokens: list[str]) -> None:
            b"".join(client.stream_websocket(tokens, format="pcm"))
            text, flushes = wire_flushes(server.connections[-1])
            assert text == "".join(tokens)
            end = first_sentence_end(text)
            assert flushes == ([] if end is None else [end])
            assert server.connections[-1].events[-1]["event"] == "stop"

        check()


async def _until_flushed(server: WireServer) -> None:
    """Wait (bounded) until the server has received a flush."""
    for _ in range(2000):
        if any(e["event"] == "flush" for e in server.connections[0].events):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no flush reached the server within 20 s")


async def test_a_pause_after_the_first_sentence_flushes_it() -> None:
    """The source stops after "move." (no next token to confirm it): the pause confirms it."""
    async with WireServer() as server:

        async def llm() -> AsyncIterator[str]:
            yield "The first"
            yield " move."
            await _until_flushed(server)  # the source resumes only once the flush came
            yield " Then more."

        chunks = [
            c async for c in AsyncRealtimeClient(base_url=server.base_url).stream_websocket(llm())
        ]
        assert chunks
    names = [e["event"] for e in server.connections[0].events]
    assert names == ["start", "text", "text", "flush", "text", "stop"]


async def test_no_pause_flush_after_an_abbreviation() -> None:
    """A pause after "Mr." is no sentence end: the flush waits for the real one."""
    async with WireServer() as server:

        async def llm() -> AsyncIterator[str]:
            yield "Ask Mr."
            await asyncio.sleep(EarlyFlush().idle_after * 3)  # room for a wrong flush
            yield " Smith. Then"
            yield " more."

        client = AsyncRealtimeClient(base_url=server.base_url)
        assert [c async for c in client.stream_websocket(llm())]
    text, flushes = wire_flushes(server.connections[0])
    assert text == "Ask Mr. Smith. Then more." and flushes == [len("Ask Mr. Smith.")]
