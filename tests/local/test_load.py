"""Load on the embedded server: 50 sessions at once against the default limits.

With ``max_sessions=8`` the first eight are served and every other one gets the cloud's
``error`` event (``max_concurrency``) and a close, at once, never a queue. Each client holds
its session open until all fifty have heard back, so the split is exact, not a race.
Afterwards nothing is left behind: no session object, no connection, no file descriptor,
no thread, and the Python heap (tracemalloc) is back to where it was.

Why the heap and not RSS: onnxruntime keeps the high-water mark of its memory arena and
glibc keeps freed pages per thread, so the RSS of a server that has run eight syntheses at
once stays near that peak (it levels off after a few waves; figures printed by the child
test below), while a leak of Python objects shows up exactly in tracemalloc.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from local_wire import FLUSH, LIVE, SENTENCE, STOP, Outcome, next_event, read_all, start, text
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from fish_notebook.local import LocalServer, ThreadedServer, engine
from fish_notebook.local.cli import READY_PREFIX
from fish_notebook.local.session import LiveSession
from fish_notebook.local.websocket import LiveSocketHandler, TornadoConnection
from tests.helpers import close_warm_sockets

CLIENTS = 50
DEFAULT_MAX_SESSIONS = 8
REFUSAL = {"event": "error", "error": "Concurrency limit exceeded", "max_concurrency": 8}
HEAP_SLACK = 512 * 1024  # bytes of Python heap a wave may leave behind (caches, interning)


@dataclass
class Client:
    """What one of the fifty clients saw."""

    first: dict[str, Any]
    seconds_to_first: float
    rest: Outcome


async def one_client(url: str, heard: list[float], everyone_heard: asyncio.Event) -> Client:
    """Ask for a sentence, wait until every client has heard back, then finish."""
    began = time.monotonic()
    async with connect(url + LIVE, open_timeout=30, close_timeout=10) as ws:
        try:
            for item in (start(format="pcm"), text(SENTENCE), FLUSH):
                await ws.send(item)
        except ConnectionClosed:
            pass  # refused: the error event is still there to read
        first = await next_event(ws, timeout=120)
        waited = time.monotonic() - began
        heard.append(waited)
        if len(heard) == CLIENTS:
            everyone_heard.set()
        await asyncio.wait_for(everyone_heard.wait(), 120)
        if first["event"] == "audio":
            await ws.send(STOP)
        rest = await read_all(ws, timeout=120)
    return Client(first, waited, rest)


async def wave(url: str) -> list[Client]:
    """Fifty clients at once; all bounded."""
    heard: list[float] = []
    everyone_heard = asyncio.Event()
    return await asyncio.wait_for(
        asyncio.gather(*(one_client(url, heard, everyone_heard) for _ in range(CLIENTS))), 300
    )


def check_wave(clients: list[Client]) -> list[float]:
    """Exactly max_sessions served to the end, every other one refused with the error.
    Returns how long each refused client waited for its refusal (seconds)."""
    served = [c for c in clients if c.first["event"] == "audio"]
    refused = [c for c in clients if c.first["event"] != "audio"]
    assert len(served) == DEFAULT_MAX_SESSIONS
    for client in served:
        assert client.rest.finish == {"event": "finish", "reason": "stop"}
    for client in refused:
        assert client.first == REFUSAL
        assert client.rest.events == [] and client.rest.close_code == 1013
    return [c.seconds_to_first for c in refused]


def live(kind: type) -> int:
    gc.collect()
    return sum(isinstance(o, kind) for o in gc.get_objects())


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid: int | str = "self") -> dict[str, str]:
    """What each open fd is (a file, a socket, a pipe), for the message of a failed count."""
    targets = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass  # closed while listed
    return targets


def background_voice_work_done(timeout: float = 120.0) -> None:
    """Wait until no voice of this process is loading, or building its one-thread session
    in the background (engine.VoiceSessions): that holds the model's files open for seconds,
    longer at its low priority on a busy machine, and an fd baseline taken meanwhile would
    count them (a full suite on a loaded machine read 30 fds before the waves, 28 after)."""
    with engine._loading_lock:  # a load under way ends first (and starts its build)
        pass
    for thread in threading.enumerate():
        if thread.name.startswith("fish-notebook-voice-"):  # VoiceSessions.build_shared's
            thread.join(timeout)


def steady_fds(still: float = 0.5, timeout: float = 10.0) -> int:
    """This process's open fds once the count has not changed for ``still`` seconds (sockets
    of earlier tests closing on their server's side), or after ``timeout``."""
    deadline = time.monotonic() + timeout
    count, since = open_fds(), time.monotonic()
    while time.monotonic() - since < still and time.monotonic() < deadline:
        time.sleep(0.05)
        if (now := open_fds()) != count:
            count, since = now, time.monotonic()
    return count


def settled_fds(pid: int | str, expected: int, timeout: float = 10.0) -> int:
    """Open fds once they are back to ``expected`` or ``timeout`` passed: the server closes
    its end of a socket a moment after the client saw the close."""
    deadline = time.monotonic() + timeout
    while (count := open_fds(pid)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


@pytest.fixture
def default_server() -> Iterator[ThreadedServer]:
    """A server with every limit at its default (max_sessions=8)."""
    with LocalServer().run_in_thread() as server:
        assert server.server.max_sessions == DEFAULT_MAX_SESSIONS
        yield server


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts fds in /proc")
def test_fifty_sessions_at_once_against_the_default_limits(default_server: ThreadedServer) -> None:
    """Three waves of 50: 8 served, 42 refused each time; then no session, connection, fd or
    thread is left and the Python heap is back to its level after the first wave."""
    url = default_server.url
    check_wave(asyncio.run(wave(url)))  # the first wave starts the pool and warms caches
    close_warm_sockets()  # earlier tests' idle warm sockets would close during the count
    background_voice_work_done()
    fds, threads, were = steady_fds(), threading.active_count(), fd_targets()
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.take_snapshot()
        refusals: list[float] = []
        for _ in range(2):  # only the refusal times are kept from each wave
            refusals += check_wave(asyncio.run(wave(url)))
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    # pytest keeps every log record of the test (the server logs each refusal): not ours.
    not_logging = [tracemalloc.Filter(False, logging.__file__)]
    before, after = before.filter_traces(not_logging), after.filter_traces(not_logging)
    growth = sum(d.size_diff for d in after.compare_to(before, "filename"))
    top = after.compare_to(before, "lineno")[:3]
    print(
        f"refused {len(refusals)} in two waves: slowest refusal {max(refusals):.3f}s; "
        f"heap growth {growth / 1024:.0f} KiB over 100 sessions; top: {top}"
    )
    assert default_server.server.active_sessions == 0
    assert live(LiveSession) == 0
    assert live(TornadoConnection) == 0 and live(LiveSocketHandler) == 0
    count, now = settled_fds("self", fds), fd_targets()
    assert count == fds, {fd: (were.get(fd), now.get(fd)) for fd in were.keys() ^ now.keys()}
    assert threading.active_count() == threads
    assert growth < HEAP_SLACK


# --- the same through a child process, the way the client starts the server ---------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def drain_watching(child: subprocess.Popen[bytes], built: threading.Event) -> None:
    """Read the child's log to its end (a full pipe would stall it); set ``built`` when the
    voice's one-thread session is built, or failed to be."""
    assert child.stderr is not None
    for raw in child.stderr:
        if b"one-thread session" in raw:
            built.set()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc")
def test_child_server_under_load_keeps_its_fds_and_serves_on() -> None:
    """A child server (CLI defaults) takes two waves of 50, keeps its fd count, and serves
    a normal session afterwards. Its RSS is printed, not judged (see the module docstring)."""
    command = [sys.executable, "-m", "fish_notebook.local", "--port", "0", "--exit-with-parent"]
    child = subprocess.Popen(
        [*command, "--log-level", "INFO"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    drain: threading.Thread | None = None
    try:
        assert child.stdout is not None
        line = child.stdout.readline().decode()
        assert line.startswith(READY_PREFIX), line
        url = line[len(READY_PREFIX) :].strip()
        # The server serves before its voice's one-thread session is built (in the background,
        # files open meanwhile): count its fds once that is over.
        built = threading.Event()
        drain = threading.Thread(target=drain_watching, args=(child, built), daemon=True)
        drain.start()
        assert built.wait(120), "the voice's one-thread session was never built"
        fds, rss, refusals = open_fds(child.pid), [rss_mib(child.pid)], []
        for _ in range(2):
            refusals += check_wave(asyncio.run(wave(url)))
            rss.append(rss_mib(child.pid))
        after = asyncio.run(read_one(url))
        print(
            f"child: RSS (MiB) at start and after each wave of 50: {[round(r) for r in rss]}; "
            f"refusals: median {sorted(refusals)[len(refusals) // 2]:.3f}s, "
            f"slowest {max(refusals):.3f}s"
        )
        assert after.finish == {"event": "finish", "reason": "stop"} and after.audio
        assert settled_fds(child.pid, fds) == fds
        assert child.poll() is None
    finally:
        child.kill()
        child.wait(timeout=30)
        if drain is not None:
            drain.join(timeout=30)  # at the log's end: communicate() is its only reader now
        child.communicate(timeout=30)


async def read_one(url: str) -> Outcome:
    async with connect(url + LIVE, open_timeout=30) as ws:
        for item in (start(format="pcm"), text("Still here."), STOP):
            await ws.send(item)
        return await read_all(ws, timeout=60)


async def test_back_to_back_sessions_at_the_limit_are_never_refused() -> None:
    """With max_sessions=1 (server on its own thread, as in a notebook), each of 20 sessions
    opened the moment the previous one closed is served: a finished session frees its slot
    before its socket closes."""
    with LocalServer(max_sessions=1).run_in_thread() as server:
        finishes = []
        for _ in range(20):
            async with connect(server.url + LIVE, open_timeout=30) as ws:
                for item in (start(format="pcm"), text("Hi."), FLUSH):
                    await ws.send(item)
                await next_event(ws, timeout=30)
                await ws.send(STOP)
                finishes.append((await read_all(ws, timeout=30)).finish)
    assert finishes == [{"event": "finish", "reason": "stop"}] * 20
