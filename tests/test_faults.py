"""Faults: a misbehaving server, a stuck source, many sessions. Nothing hangs, nothing is lost."""

from __future__ import annotations

import gc
import os
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fish_notebook import (
    AuthenticationError,
    ConnectError,
    FlushEvent,
    ProtocolError,
    ReceiveTimeout,
    ServerBusyError,
    Session,
    Timeout,
    WebSocketError,
    _loop,
)
from fish_notebook.client import AsyncRealtimeClient
from tests.helpers import close_warm_sockets
from tests.wire_server import threaded_wire_server

SOURCE = ["One sentence.", FlushEvent(), " Two sentences.", FlushEvent(), " Three."]
FIRST = len("One sentence.") * 200


def _io_tasks() -> list[Any]:
    async def tasks() -> list[Any]:
        import asyncio

        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]

    return _loop.run_sync(tasks(), 5)


def _source_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fish-notebook-source")]


@pytest.fixture(autouse=True)
def _no_warm_sockets_from_other_tests() -> None:
    """Close the background loop's warm sockets first: their keepalive tasks belong to
    earlier tests, and a failed session here must leave none of its own."""
    close_warm_sockets()
    assert not _settle(_io_tasks)


def _settle(check: Any, timeout: float = 5.0) -> Any:
    """Poll ``check`` until it is falsy (threads and tasks unwind a moment after close)."""
    deadline = time.monotonic() + timeout
    while (value := check()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


CASES = [
    # behaviour, exception, words in the message, audio kept
    ("finish_error", WebSocketError, "model crashed", FIRST),
    ("error_event", ServerBusyError, "Concurrency limit", 0),
    ("close_midstream", WebSocketError, "code 1011", FIRST),
    ("drop_midstream", WebSocketError, "no close frame", FIRST),
    ("garbage", ProtocolError, "MessagePack", 0),
    ("non_map", ProtocolError, "map", 0),
    ("stall_after_handshake", ReceiveTimeout, "sent nothing", 0),
    ("stall_midstream", ReceiveTimeout, "sent nothing", FIRST),
    ("reject_401", AuthenticationError, "FISH_API_KEY", 0),
    ("reject_403", AuthenticationError, "403", 0),
    ("reject_429", ServerBusyError, "429", 0),
    ("reject_500", ConnectError, "500", 0),
]


@pytest.mark.parametrize(
    ("behaviour", "error_type", "words", "kept"), CASES, ids=[c[0] for c in CASES]
)
def test_session_fails_cleanly(
    behaviour: str, error_type: type[Exception], words: str, kept: int, tmp_path: Path
) -> None:
    """Each server fault: typed error in bounded time, audio kept and saved, nothing left over."""
    with threaded_wire_server(behaviour) as server:
        client = AsyncRealtimeClient(
            base_url=server.base_url, timeout=Timeout(connect=3, receive=1, close=1)
        )
        states: list[str] = []

        class Watch:
            def on_text(self, text: str) -> None: ...
            def on_flush(self) -> None: ...
            def on_audio(self, pcm: bytes, seq: int) -> None: ...
            def on_metrics(self, metrics: dict[str, Any]) -> None: ...
            def on_state(self, state: str, error: str | None) -> None:
                states.append(f"{state}:{error}")

        session = Session(iter(SOURCE), client=client, save=tmp_path / "kept.wav", start=False)
        session.add_listener(Watch())
        session.start()
        with pytest.raises(error_type) as info:
            session.wait(30)
        assert words in str(info.value)
        assert session.state == "failed" and session.error is info.value
        assert len(session.audio) == kept
        assert (tmp_path / "kept.wav").stat().st_size == 44 + kept
        assert states[-1].startswith("failed:") and type(info.value).__name__ in states[-1]
        assert not _settle(_io_tasks)
        assert not _settle(_source_threads)


def test_stop_while_the_source_is_stuck_in_next() -> None:
    """Stop works while a sync source is blocked inside next(): no wait for it to return."""
    release = threading.Event()

    def stuck() -> Iterator[str]:
        yield "Before the stall."
        yield FlushEvent()  # type: ignore[misc]
        release.wait(60)  # an LLM client stuck on the network
        yield "never spoken"

    with threaded_wire_server() as server:
        session = Session(stuck(), base_url=server.base_url)
        while not session.audio:
            time.sleep(0.01)
        session.stop()
        session.wait(10)  # raises StreamTimeout if stop waited for the stuck next()
        assert session.state == "stopped" and len(session.audio) == len("Before the stall.") * 200
        assert not _settle(_io_tasks)
    release.set()
    assert not _settle(_source_threads)


def test_user_generator_raising_midstream() -> None:
    """The user's exception ends the session as failed, after the audio owed for sent text."""

    def llm() -> Iterator[Any]:
        yield "Spoken before the crash."
        yield FlushEvent()
        time.sleep(0.1)
        raise KeyError("token stream broke")

    with threaded_wire_server() as server:
        session = Session(llm(), base_url=server.base_url)
        with pytest.raises(KeyError, match="token stream broke"):
            session.wait(20)
        assert (
            session.state == "failed"
            and len(session.audio) == len("Spoken before the crash.") * 200
        )
        assert server.connections[0].events[-1]["event"] == "stop"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_thousand_sessions_do_not_leak() -> None:
    """1,000 sessions opened and closed in a row: file descriptors and memory return to baseline."""
    with threaded_wire_server(record=False) as server:
        client = AsyncRealtimeClient(base_url=server.base_url)

        def run(n: int) -> None:
            for i in range(n):
                Session(["Hi.", FlushEvent()] if i % 2 else iter(["Hi."]), client=client).wait(20)

        run(50)  # warm up: imports, caches, the loop's own objects
        gc.collect()
        fds_before = _open_fds()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        run(1000)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        diffs = after.compare_to(before, "lineno")
        growth = sum(stat.size_diff for stat in diffs)
        top = "\n".join(str(stat) for stat in diffs[:5])
        assert _open_fds() <= fds_before + 2
        assert growth < 1_000_000, f"grew by {growth} bytes over 1000 sessions:\n{top}"
        assert server.connection_count == 1050
