"""Sessions: background streaming, listeners, flush/stop/wait, failures, saving."""

from __future__ import annotations

import _thread
import asyncio
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fish_notebook import FlushEvent, Session, StreamTimeout, WebSocketError, _loop
from fish_notebook.local import ThreadedServer
from tests.helpers import RecordingListener, close_warm_sockets
from tests.wire_server import threaded_wire_server

BYTES_PER_CHAR = 200


def _background_tasks() -> list[asyncio.Task[Any]]:
    async def tasks() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]

    return _loop.run_sync(tasks(), 5)


def _slow_tokens(words: int, delay: float = 0.05) -> Iterator[str]:
    for i in range(words):
        time.sleep(delay)
        yield f" word{i}."


def test_session_streams_in_the_background_and_records() -> None:
    """The constructor returns at once; wait() ends finished with audio, text and flush points."""
    with threaded_wire_server() as server:
        session = Session(["Hello ", "there.", FlushEvent(), " Bye."], base_url=server.base_url)
        assert session.state in ("connecting", "streaming")
        session.wait(20)
        assert session.state == "finished" and session.done and session.error is None
        assert session.text == ["Hello ", "there.", None, " Bye."]
        assert session.transcript == "Hello there. |  Bye."
        assert len(session.audio) == len("Hello there. Bye.") * BYTES_PER_CHAR
        assert b"".join(session.chunks) == session.audio
        request = server.connections[0].events[0]["request"]
        assert request["format"] == "pcm", "a session always asks for pcm"
        m = session.metrics
        assert m["chunks"] == 2 and m["bytes"] == len(session.audio) and m["state"] == "finished"
        assert m["ttfa_s"] is not None and m["ttfa_s"] >= 0
        assert len(m["ttfa_flush_s"]) == 1
        assert m["audio_s"] == pytest.approx(len(session.audio) / 2 / 44100)


def test_listeners_get_replay_then_live_events_without_gaps() -> None:
    """A listener added mid-stream sees every chunk exactly once, seq 0..n-1, in order."""
    with threaded_wire_server() as server:
        source = [x for i in range(8) for x in (f"Sentence {i}.", FlushEvent())]
        early, late = RecordingListener(), RecordingListener()
        session = Session(iter(source), base_url=server.base_url, start=False)
        session.add_listener(early)
        session.start()
        while session.metrics["chunks"] < 2 and not session.done:
            time.sleep(0.01)
        session.add_listener(late)
        session.wait(20)
        for rec in (early, late):
            assert [seq for seq, _ in rec.of("audio")] == list(range(len(session.chunks)))
            assert rec.of("state")[-1] == "finished"
            assert len(rec.of("text")) == 8 and len(rec.of("flush")) == 8
        after = RecordingListener()
        session.add_listener(after)
        assert [c for c in after.calls if c[0] != "metrics"] == [
            c for c in late.calls if c[0] not in ("metrics", "state")
        ] + [("state", "finished")]


def test_stop_ends_promptly_and_keeps_audio() -> None:
    """stop() on an endless source: state stopped, socket closed, audio kept, no task left."""

    def endless() -> Iterator[Any]:
        while True:
            time.sleep(0.02)
            yield "More words."
            yield FlushEvent()

    close_warm_sockets()  # their keepalive tasks are not this session's
    with threaded_wire_server() as server:
        session = Session(endless(), base_url=server.base_url)
        while session.metrics["chunks"] < 3:
            time.sleep(0.02)
        session.stop()
        session.wait(10)
        assert session.state == "stopped" and session.error is None
        kept = len(session.audio)
        assert kept >= 3 * len("More words.") * BYTES_PER_CHAR
        _loop.run_sync(server.wait_closed_connections(), 10)
        assert not _background_tasks()
        session.stop()  # idempotent
        assert len(session.audio) == kept


def test_flush_from_another_thread_reaches_the_server() -> None:
    """session.flush() from any thread inserts a flush event that the server receives."""
    with threaded_wire_server() as server:
        session = Session(_slow_tokens(20), base_url=server.base_url)
        while len(session.text) < 3:
            time.sleep(0.01)
        threading.Thread(target=session.flush).start()
        session.wait(20)
        names = [e["event"] for e in server.connections[0].events]
        assert "flush" in names and names.index("flush") < names.index("stop")
        assert None in session.text
        assert len(session.audio) == sum(len(f" word{i}.") for i in range(20)) * BYTES_PER_CHAR


def test_failed_session_keeps_audio_and_wait_reraises(tmp_path: Path) -> None:
    """A server error: state failed, wait() re-raises, the audio so far is kept and saved."""
    with threaded_wire_server("finish_error") as server:
        target = tmp_path / "partial.wav"
        session = Session(
            ["First.", FlushEvent(), " Second."], base_url=server.base_url, save=target
        )
        with pytest.raises(WebSocketError, match="model crashed"):
            session.wait(20)
        assert session.state == "failed" and isinstance(session.error, WebSocketError)
        assert len(session.audio) == len("First.") * BYTES_PER_CHAR
        with wave.open(str(target)) as wav:
            assert wav.getnframes() * 2 == len(session.audio)


def test_save_wav_and_mp3(tmp_path: Path) -> None:
    """save() writes exact WAV samples and a non-empty MP3."""
    with threaded_wire_server() as server:
        session = Session("Save me please.", base_url=server.base_url).wait(20)
    wav_path = session.save(tmp_path / "out.wav")
    with wave.open(str(wav_path)) as wav:
        assert wav.getframerate() == 44100
        assert wav.readframes(wav.getnframes()) == session.audio
    mp3 = session.save(tmp_path / "out.mp3").read_bytes()
    assert mp3[:3] == b"ID3" or mp3[0] == 0xFF
    assert session.save(tmp_path / "plain").suffix == ".wav"


def test_wait_timeout_and_ctrl_c() -> None:
    """wait(timeout) raises StreamTimeout and leaves it running; Ctrl-C during wait() stops it."""
    with threaded_wire_server() as server:
        session = Session(_slow_tokens(200, 0.05), base_url=server.base_url)
        with pytest.raises(StreamTimeout, match="keeps running"):
            session.wait(0.3)
        assert not session.done
        threading.Timer(0.3, _thread.interrupt_main).start()
        with pytest.raises(KeyboardInterrupt):
            session.wait(20)
        assert session.state == "stopped" and session.done


async def test_session_is_awaitable() -> None:
    """`await session` works from async code (a notebook's top-level await)."""
    with threaded_wire_server() as server:
        session = Session("Awaited.", base_url=server.base_url)
        result = await asyncio.wait_for(session, 20)
        assert result is session and session.state == "finished"


def test_a_raising_listener_does_not_end_the_session() -> None:
    """A broken listener is logged, and the session goes on."""

    class Broken(RecordingListener):
        def on_audio(self, pcm: bytes, seq: int) -> None:
            raise ValueError("listener bug")

    with threaded_wire_server() as server:
        session = Session("One. Two.", base_url=server.base_url, start=False)
        session.add_listener(Broken())
        session.start().wait(20)
        assert session.state == "finished" and session.audio


def test_heard_is_what_played_before_the_playhead(local_server: ThreadedServer) -> None:
    """session.heard: all of a finished session; after a stop at a playhead (the page reports
    it with Stop), only the words that ended before it, and how it was computed."""
    text = "One two three four. Five six seven eight. Nine ten eleven twelve."
    done = Session(text, base_url=local_server.url, timestamps=True).wait(60)
    assert done.heard.method == "all" and done.heard.text == text
    done.playhead = done.words[5].end  # as if the listener had stopped there
    part = done.heard
    assert part.method == "words" and part.text == " ".join(w.text for w in done.words[:6])
    untimed = Session(text, base_url=local_server.url).wait(60)
    untimed.playhead = untimed.duration / 2
    half = untimed.heard
    assert half.method == "proportion" and text.startswith(half.text) and half.text != text
