"""SpeakPanel and TextFeed in this process: typing, Flush, Speak, Stop, voices, two panels.

Widgets work without a frontend here (their comms go nowhere); the sessions are real and talk
to the suite's embedded server, whose recorder shows what the panel sent and when.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import ipywidgets
import pytest

from fish_notebook import FlushEvent
from fish_notebook.audio import pcm_rms
from fish_notebook.local.recorder import SessionRecord
from fish_notebook.local.server import ThreadedServer
from fish_notebook.panel import SpeakPanel, TextFeed, voices_url
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(90)


def received(record: SessionRecord) -> list[str | None]:
    """Text events as strings, flush events as None (start and stop left out)."""
    out: list[str | None] = []
    for frame in record.received:
        if frame.name == "text":
            out.append(frame.event.text)  # type: ignore[union-attr]
        elif frame.name == "flush":
            out.append(None)
    return out


def type_into(panel: SpeakPanel, text: str) -> None:
    """Type ``text`` one character at a time, as the browser reports keystrokes."""
    for ch in text:
        panel.text_input.value += ch


def record_of(server: ThreadedServer, panel: SpeakPanel, index: int = -1) -> SessionRecord:
    """The server's record of one of the panel's sessions, once it closed."""
    assert server.recorder is not None
    sent = panel.sessions[index].text
    return server.recorder.wait_for(lambda r: received(r)[: len(sent)] == sent, timeout=20)


@pytest.fixture
def panels(local_server: ThreadedServer) -> Iterator[Callable[..., SpeakPanel]]:
    """Make panels bound to the suite's server; all are closed afterwards."""
    made: list[SpeakPanel] = []

    def make(**kwargs: Any) -> SpeakPanel:
        panel = SpeakPanel(base_url=local_server.url, **kwargs)
        made.append(panel)
        return panel

    yield make
    for panel in made:
        panel.close()


def test_typing_sends_complete_words_and_flush_sends_the_rest_with_a_flush_point(
    panels: Callable[..., SpeakPanel], local_server: ThreadedServer
) -> None:
    """Each finished word goes out as it is typed; Flush sends the partial word, then a flush."""
    assert local_server.recorder is not None
    local_server.recorder.clear()
    panel = panels()
    type_into(panel, "Typing speaks wor")
    session = wait_until(lambda: panel.session, "the first session")
    wait_until(lambda: len(session.text) == 2, "two words sent")
    assert session.text == ["Typing ", "speaks "]  # "wor" is still being typed
    panel.flush()
    type_into(panel, "ds. Then more text.")
    panel.speak()
    session.wait(30)
    assert session.state == "finished"
    assert session.text == ["Typing ", "speaks ", "wor", None, "ds. ", "Then ", "more ", "text."]
    record = local_server.recorder.wait_for(timeout=20)
    assert received(record) == session.text
    assert [f.name for f in record.received][-1] == "stop"
    assert pcm_rms(session.audio) > 300 and 1.0 < session.duration < 10
    assert panel.player is not None and panel.player.audio == session.audio
    assert "finished" in panel.status_html.value


def test_stop_ends_the_session_and_typing_starts_a_new_one(
    panels: Callable[..., SpeakPanel], local_server: ThreadedServer
) -> None:
    """Stop closes the socket at once; what is typed next is a new session with only new words."""
    assert local_server.recorder is not None
    panel = panels()
    long_text = " ".join(f"Sentence {i} goes on and on." for i in range(30)) + " "
    panel.text_input.value = long_text
    first = wait_until(lambda: panel.session, "the first session")
    wait_until(lambda: first.chunks, "the first audio")
    panel.stop()
    first.wait(15)
    assert first.state == "stopped"
    assert first.duration > 0
    record = record_of(local_server, panel, 0)
    assert "stop" not in [f.name for f in record.received]  # cut, not drained

    type_into(panel, "Fresh words. ")
    second = wait_until(lambda: len(panel.sessions) == 2 and panel.sessions[1], "a new session")
    panel.speak()
    second.wait(30)
    # The client's early flush follows the first sentence's end, wherever the tokens split.
    assert second.text == ["Fresh ", "words.", None, " "]
    assert panel.player is not None and panel.player.audio == second.audio


def test_speak_with_no_session_speaks_the_whole_text_anew(
    panels: Callable[..., SpeakPanel],
) -> None:
    """Speak on finished text starts a session with all of it (and ends its input)."""
    panel = panels(text="Already written text.")
    panel.speak()
    first = panel.sessions[0]
    first.wait(30)
    assert "".join(t for t in first.text if t) == "Already written text."
    panel.speak()
    second = wait_until(lambda: len(panel.sessions) == 2 and panel.sessions[1], "a second run")
    second.wait(30)
    assert second.text == first.text
    assert second.state == "finished"


def test_editing_sent_text_goes_on_from_the_edit_point(
    panels: Callable[..., SpeakPanel],
) -> None:
    """Changing text already sent speaks only the new words after the edit."""
    panel = panels()
    panel.text_input.value = "The quick fox "
    session = wait_until(lambda: panel.session, "the session")
    panel.text_input.value = "The slow "
    panel.text_input.value = "The slow turtle "
    panel.speak()
    session.wait(30)
    assert session.text == ["The ", "quick ", "fox ", "slow ", "turtle "]


def test_two_panels_keep_their_own_sessions_and_audio(
    panels: Callable[..., SpeakPanel], local_server: ThreadedServer
) -> None:
    """Typing into two panels at once: each session gets only its panel's words."""
    left, right = panels(), panels(latency="low")
    words = zip(
        ["Left", "side", "talks", "now."], ["Right", "hand", "answers", "back."], strict=True
    )
    for a, b in words:
        type_into(left, a + " ")
        type_into(right, b + " ")
    left.speak()
    right.speak()
    one, two = left.sessions[0], right.sessions[0]
    one.wait(30)
    two.wait(30)
    assert "".join(t for t in one.text if t).split() == ["Left", "side", "talks", "now."]
    assert "".join(t for t in two.text if t).split() == ["Right", "hand", "answers", "back."]
    assert two.request.latency == "low" and one.request.latency == "balanced"
    assert left.player is not None and right.player is not None
    assert left.player.audio == one.audio and right.player.audio == two.audio
    assert one.audio != two.audio and min(pcm_rms(one.audio), pcm_rms(two.audio)) > 300


def test_voice_selector_lists_the_servers_voices(
    panels: Callable[..., SpeakPanel], local_server: ThreadedServer
) -> None:
    """The dropdown is filled from GET /model (as for the cloud); the voice goes into the
    request; the embedded server's list needs its token."""
    panel = panels()
    assert panel.voices_ready.wait(15)
    assert isinstance(panel.voice_input, ipywidgets.Dropdown)
    assert ("en_US-joe-medium (default)", "en_US-joe-medium") in panel.voice_input.options
    assert panel.voice == "en_US-joe-medium"
    assert voices_url(base_url=local_server.url) == (
        local_server.http_url + "/model?page_size=100",
        None,
    )


def test_cloud_or_unlisted_servers_get_a_text_field() -> None:
    """No voice list (the cloud, or a server without one): the voice is a text field."""
    panel = SpeakPanel(backend="cloud", api_key="dummy", voice="my-voice-id")
    try:
        assert panel.voices_ready.wait(15)
        assert isinstance(panel.voice_input, ipywidgets.Text)
        assert panel.voice == "my-voice-id"
        url, key = voices_url(backend="cloud", api_key="dummy")
        assert url.endswith("/model?page_size=100&self=true") and key == "dummy"
    finally:
        panel.close()
    unlisted = SpeakPanel(base_url="http://127.0.0.1:9")  # nothing listens there
    try:
        assert unlisted.voices_ready.wait(15)
        assert isinstance(unlisted.voice_input, ipywidgets.Text)
        assert unlisted.voice is None
    finally:
        unlisted.close()


async def test_text_feed_keeps_order_across_threads_and_drains_after_close() -> None:
    """Items pushed from several threads all come out, each thread's in order; close drains."""
    feed = TextFeed()
    got: list[Any] = []

    async def consume() -> None:
        async for item in feed:
            got.append(item)

    reader = asyncio.create_task(consume())

    def pusher(tag: str) -> None:
        for i in range(200):
            feed.push(f"{tag}{i}")

    threads = [threading.Thread(target=pusher, args=(tag,)) for tag in "abc"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    feed.push(FlushEvent())
    feed.close()
    assert feed.push("late") is False
    await asyncio.wait_for(reader, 10)
    assert len(got) == 601 and isinstance(got[-1], FlushEvent)
    for tag in "abc":
        assert [g for g in got if isinstance(g, str) and g[0] == tag] == [
            f"{tag}{i}" for i in range(200)
        ]


def test_voice_list_of_a_fish_api_server_with_a_key() -> None:
    """A server that speaks Fish's API (here the cloud double) fills the dropdown from
    GET /model, with the key as a bearer token; the key is nowhere in the widgets' state."""
    from .cloud_double import CloudDouble

    with CloudDouble() as double:
        key = double.script.api_key
        panel = SpeakPanel(base_url=double.base_url, api_key=key)
        try:
            assert panel.voices_ready.wait(15)
            assert isinstance(panel.voice_input, ipywidgets.Dropdown)
            ids = [value for _, value in panel.voice_input.options]
            assert ids == [v["_id"] for v in double.script.voices]
            listing = [r for r in double.requests if r.path == "/model"]
            assert listing and listing[-1].headers.get("Authorization") == f"Bearer {key}"
            assert key not in json.dumps(panel.get_state(), default=str)
        finally:
            panel.close()
