"""One socket, several sessions: the embedded server's side and the client's warm sockets.

Fish documents that "after a ``finish`` you may send another ``start`` to run a new session
on the same socket" (PROTOCOL.md). The server keeps the socket for that; the client keeps a
finished session's socket in a pool and runs its next session on it, and replaces, without
a word to the caller, a socket the server closed between sessions or that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from fish_notebook import _loop, warmup
from fish_notebook.client import AsyncRealtimeClient, RealtimeClient
from fish_notebook.errors import WebSocketError
from fish_notebook.local import LocalServer, ThreadedServer
from fish_notebook.local.websocket import SOCKETS_PER_SLOT
from fish_notebook.pool import PoolKey, SocketPool, socket_pool
from fish_notebook.speaking import SpeakDefaults, defaults, speak
from tests.cloud_double import CloudDouble, Script, samples_per_char
from tests.helpers import wait_until

LIVE = "/v1/tts/live"
FINISH = {"event": "finish", "reason": "stop"}


def frame(event: str, **fields: Any) -> bytes:
    return msgpack.packb({"event": event, **fields}, use_bin_type=True)


def start(**request: Any) -> bytes:
    return frame("start", request={"format": "pcm", **request})


def text(value: str) -> bytes:
    return frame("text", text=value)


STOP = frame("stop")


async def next_event(ws: ClientConnection, timeout: float = 60) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(message, bytes)
    event: dict[str, Any] = msgpack.unpackb(message, raw=False)
    return event


async def one_session(ws: ClientConnection, *frames: bytes) -> list[dict[str, Any]]:
    """Send the frames, read the session's events up to its finish (or error)."""
    for item in frames:
        await ws.send(item)
    events = []
    while not events or events[-1]["event"] not in ("finish", "error"):
        events.append(await next_event(ws))
    return events


def audio_of(events: list[dict[str, Any]]) -> bytes:
    return b"".join(e["audio"] for e in events if e["event"] == "audio")


async def closed_by_server(ws: ClientConnection, timeout: float = 30) -> tuple[int | None, str]:
    """Wait for the server to close ``ws``, receiving nothing meanwhile; its code and reason."""
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), timeout)
    return ws.close_code, ws.close_reason or ""


# --- the embedded server ------------------------------------------------------------------------


async def test_two_sessions_run_one_after_another_on_one_socket(
    local_server: ThreadedServer,
) -> None:
    """After finish the socket stays open; another start runs a second, whole session."""
    assert local_server.recorder is not None
    tag = uuid.uuid4().hex
    async with connect(local_server.url + LIVE, additional_headers={"X-Tag": tag}) as ws:
        first = await one_session(ws, start(), text("One sentence."), STOP)
        second = await one_session(ws, start(format="wav"), text("And another."), STOP)
        assert ws.close_code is None  # still open after both
    assert first[-1] == second[-1] == FINISH
    assert audio_of(first) and audio_of(second).startswith(b"RIFF")
    mine = lambda r: r.headers.get("x-tag") == tag  # noqa: E731
    local_server.recorder.wait_for(lambda r: mine(r) and r.spoken == ["And another."], 30)
    records = [r for r in local_server.recorder.sessions if mine(r)]
    assert [r.spoken for r in records] == [["One sentence."], ["And another."]]
    assert [r.close_code for r in records] == [1000, 1000]  # each ended normally
    assert [r.received[0].name for r in records] == ["start", "start"]


async def test_timestamps_start_again_for_each_session_on_a_socket(
    local_server: ThreadedServer,
) -> None:
    """On /with-timestamp, the second session's chunk_seq and offsets start again at 0."""
    async with connect(local_server.url + LIVE + "/with-timestamp") as ws:
        sessions = [await one_session(ws, start(), text("Hi there."), STOP) for _ in range(2)]
    for events in sessions:
        audio = [e for e in events if e["event"] == "audio"]
        assert audio[0]["chunk_seq"] == 0 and audio[0]["chunk_audio_offset_sec"] == 0
        assert events[-1] == FINISH


@pytest.fixture(scope="module")
def small_server() -> Iterator[ThreadedServer]:
    """One session at a time, short idle timeout, little text: the limits under test."""
    with LocalServer(max_sessions=1, idle_timeout=1.0, max_text=300).run_in_thread() as server:
        yield server


async def test_a_socket_idle_between_sessions_is_closed(small_server: ThreadedServer) -> None:
    """A socket that sends nothing after a finish is closed after idle_timeout: code 1000,
    no event (there is no session to end), and no slot was held meanwhile."""
    async with connect(small_server.url + LIVE) as ws:
        events = await one_session(ws, start(), text("Hi."), STOP)
        assert small_server.server.active_sessions == 0  # open, idle, holding nothing
        await asyncio.sleep(0.3)  # well inside the idle timeout (1 s): still open
        assert ws.state is State.OPEN
        code, reason = await closed_by_server(ws)
    assert events[-1] == FINISH
    assert (code, reason) == (1000, "idle between sessions")


async def test_an_open_socket_holds_no_session_slot(small_server: ThreadedServer) -> None:
    """max_sessions counts sessions in progress: with one slot, a second socket is served
    while the first is open between sessions, and then the first runs another session."""
    async with connect(small_server.url + LIVE) as first:
        assert (await one_session(first, start(), text("One."), STOP))[-1] == FINISH
        async with connect(small_server.url + LIVE) as second:
            assert (await one_session(second, start(), text("Two."), STOP))[-1] == FINISH
        assert (await one_session(first, start(), text("Three."), STOP))[-1] == FINISH
    assert small_server.server.active_sessions == 0


async def test_a_start_past_the_limit_is_refused_on_a_reused_socket() -> None:
    """A second session's start while the only slot is taken: the error event, code 1013."""
    with LocalServer(max_sessions=1, idle_timeout=60).run_in_thread() as server:
        await refused_on_a_reused_socket(server)


async def refused_on_a_reused_socket(small_server: ThreadedServer) -> None:
    async with connect(small_server.url + LIVE) as busy, connect(small_server.url + LIVE) as ws:
        assert (await one_session(ws, start(), text("Before."), STOP))[-1] == FINISH
        await busy.send(start())
        await busy.send(text("Holding the slot while the other asks."))
        await busy.send(frame("flush"))
        assert (await next_event(busy))["event"] == "audio"  # the slot is taken
        refused = await one_session(ws, start())
        code, _ = await closed_by_server(ws)
        await busy.send(STOP)
    assert refused == [
        {"event": "error", "error": "Concurrency limit exceeded", "max_concurrency": 1}
    ]
    assert code == 1013


async def test_limits_hold_per_session_not_per_socket(small_server: ThreadedServer) -> None:
    """max_text bounds each session: two sessions of 250 characters on one socket are both
    served; one of 350 ends with an error, and an error closes the socket."""
    words = "word " * 50  # 250 characters
    async with connect(small_server.url + LIVE) as ws:
        for _ in range(2):
            events = await one_session(ws, start(), text(words), STOP)
            assert events[-1] == FINISH
        failed = await one_session(ws, start(), text("more " * 70), STOP)
        code, _ = await closed_by_server(ws)
    assert failed[-1]["reason"] == "error" and "300 characters" in failed[-1]["message"]
    assert code == 1000


async def test_a_second_session_must_begin_with_start(small_server: ThreadedServer) -> None:
    """After a finish, a frame other than start fails that session, and the socket closes."""
    async with connect(small_server.url + LIVE) as ws:
        assert (await one_session(ws, start(), text("Fine."), STOP))[-1] == FINISH
        failed = await one_session(ws, text("No start first."))
        code, _ = await closed_by_server(ws)
    assert failed[-1]["reason"] == "error" and "'start'" in failed[-1]["message"]
    assert code == 1000


async def test_open_sockets_are_bounded(small_server: ThreadedServer) -> None:
    """At most SOCKETS_PER_SLOT sockets per session slot may be open; one more gets the
    concurrency refusal (the error event, code 1013) as it opens."""
    wait_until(lambda: small_server.server.sessions.sockets == 0, "earlier sockets to close")
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(SOCKETS_PER_SLOT):
            await stack.enter_async_context(connect(small_server.url + LIVE))
        async with connect(small_server.url + LIVE) as extra:
            refusal = await next_event(extra)
            code, _ = await closed_by_server(extra)
    assert refusal == {
        "event": "error",
        "error": "Concurrency limit exceeded",
        "max_concurrency": 1,
    }
    assert code == 1013
    wait_until(lambda: small_server.server.sessions.sockets == 0, "the sockets to be counted out")


# --- the client: a warm socket for the next session ------------------------------------------


def speak_once(url: str, words: str = "Hello there.", **client: Any) -> bytes:
    """What ``speak()`` does: a new client per call, sessions on the background loop."""
    return b"".join(RealtimeClient(base_url=url, **client).stream_websocket(words, format="pcm"))


def pool_size() -> int:
    async def size() -> int:
        return len(socket_pool())

    return _loop.run_sync(size(), 5)


def expected_pcm(words: str) -> int:
    return 2 * len(words) * samples_per_char(44100, 10)


def test_sessions_of_separate_clients_share_one_socket_with_the_cloud() -> None:
    """Three speak()-like calls (a client each) run three sessions on one socket."""
    with CloudDouble() as cloud:
        key = {"api_key": cloud.script.api_key}
        audio = [speak_once(cloud.base_url, f"Turn {n}.", **key) for n in range(3)]
        assert [len(a) for a in audio] == [expected_pcm(f"Turn {n}.") for n in range(3)]
        (socket,) = cloud.connections
        starts = [e for e in socket.received if e.get("event") == "start"]
        assert len(starts) == 3 and not socket.closed


def test_a_server_that_closes_between_sessions_is_never_seen() -> None:
    """The double's mode that closes after each finish: every session succeeds on a new
    socket, and no error reaches the caller."""
    with CloudDouble(Script(close_between_sessions=True)) as cloud:
        key = {"api_key": cloud.script.api_key}
        audio = [speak_once(cloud.base_url, f"Turn {n}.", **key) for n in range(3)]
        assert [len(a) for a in audio] == [expected_pcm(f"Turn {n}.") for n in range(3)]
        assert len(cloud.connections) == 3
        assert all(len(c.spoken) == 1 for c in cloud.connections)


def pool_reused() -> int:
    async def reused() -> int:
        return socket_pool().reused

    return _loop.run_sync(reused(), 5)


def test_the_embedded_server_runs_a_speakers_sessions_on_one_socket(
    local_server: ThreadedServer,
) -> None:
    """Against the embedded server, sessions of separate clients run on one socket: the
    second and third take the socket the one before left, and all three are spoken."""
    assert local_server.recorder is not None
    model = f"s1-{uuid.uuid4().hex}"  # a key of its own (the server falls back to its voice)
    reused = pool_reused()

    def say(words: str) -> bytes:
        client = RealtimeClient(base_url=local_server.url, model=model)
        return b"".join(client.stream_websocket(words, format="pcm"))

    audio = [say(f"Number {n}.") for n in range(3)]
    assert all(audio)
    assert pool_reused() - reused == 2
    local_server.recorder.wait_for(lambda r: r.spoken == ["Number 2."], 30)
    records = [r for r in local_server.recorder.sessions if r.model_header == model]
    assert [r.spoken for r in records] == [[f"Number {n}."] for n in range(3)]
    assert [r.close_code for r in records] == [1000, 1000, 1000]


def test_a_socket_the_embedded_server_closed_as_idle_is_replaced(
    small_server: ThreadedServer,
) -> None:
    """The server closes the pooled socket between sessions (idle timeout); the next
    session opens a new one without any error."""
    first = speak_once(small_server.url, "Before the pause.")
    wait_until(lambda: small_server.server.sessions.sockets == 0, "the idle socket to close", 30)
    second = speak_once(small_server.url, "After the pause.")
    assert first and second
    wait_until(lambda: pool_size() >= 1, "the new socket to be kept")


class ClosingOnNextStart:
    """A server that serves one session per socket and then, when the next start arrives,
    closes (code 1001) or drops the connection without a word: the race a pooled socket
    loses when the server lets go of it just as the client reuses it."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.sockets = 0
        self.sessions = 0
        self.received: list[list[str]] = []
        self.url = ""

    async def handler(self, ws: ServerConnection) -> None:
        self.sockets += 1
        names: list[str] = []
        self.received.append(names)
        served, chars = False, 0
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                event = msgpack.unpackb(message, raw=False)
                names.append(event["event"])
                if event["event"] == "start" and served:
                    if self.how == "close":
                        await ws.close(1001, "going away")
                    else:
                        assert ws.transport is not None
                        ws.transport.abort()
                    return
                if event["event"] == "text":
                    chars += len(event["text"])
                if event["event"] == "stop":
                    await ws.send(frame("audio", audio=b"\x01\x00" * chars))
                    await ws.send(frame("finish", reason="stop"))
                    served, chars = True, 0
                    self.sessions += 1

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ClosingOnNextStart]:
        async with serve(self.handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]  # type: ignore[index]
            self.url = f"ws://127.0.0.1:{port}"
            yield self


@pytest.mark.parametrize("how", ["close", "drop"])
async def test_a_socket_closed_as_the_next_start_arrives_is_replaced(how: str) -> None:
    """The reused socket closes (1001, or no close frame) right after the client's start:
    the stream connects again once and sends start, text and stop there; the caller gets
    the whole audio and no error."""
    async with ClosingOnNextStart(how).running() as server:
        audio = []
        for words in ("First turn.", "Second turn.", "Third turn."):
            client = AsyncRealtimeClient(base_url=server.url)
            chunks = [c async for c in client.stream_websocket(words, format="pcm")]
            audio.append(b"".join(chunks))
        await socket_pool().aclose()
    assert [len(a) for a in audio] == [
        2 * len(w) for w in ("First turn.", "Second turn.", "Third turn.")
    ]
    assert server.sessions == 3 and server.sockets == 3
    # Each later socket first got a start it never answered, then the replay on a new one.
    assert server.received[0][0] == "start" and server.received[0][-1] == "start"
    assert server.received[1][0] == "start" and "stop" in server.received[1]


async def test_no_reuse_when_turned_off() -> None:
    """reuse_sockets=False: every stream opens its own socket and closes it after finish."""
    async with ClosingOnNextStart("close").running() as server:
        for _ in range(2):
            client = AsyncRealtimeClient(base_url=server.url, reuse_sockets=False)
            assert b"".join([c async for c in client.stream_websocket("Hi.", format="pcm")])
        assert len(socket_pool()) == 0
    assert server.sockets == 2
    assert server.received == [["start", "text", "stop"]] * 2  # no start on a used socket


def test_a_failed_session_leaves_no_socket_in_the_pool() -> None:
    """A session that ends with finish reason=error closes its socket; the next session
    opens a fresh one and is served."""
    with CloudDouble(Script(fail_at_chunk=0)) as cloud:
        key = {"api_key": cloud.script.api_key}
        with pytest.raises(WebSocketError, match="error"):
            speak_once(cloud.base_url, "Fails.", **key)
        cloud.script.fail_at_chunk = None
        assert speak_once(cloud.base_url, "Works.", **key)
        assert len(cloud.connections) == 2 and cloud.connections[0].closed


async def test_idle_sockets_are_closed_after_the_pool_idle_time() -> None:
    """A pooled socket unused for idle_seconds is closed with a normal close (the server
    sees it go), and the pool is empty again."""
    with CloudDouble() as cloud:
        pool = socket_pool()
        pool.idle_seconds = 0.3
        client = AsyncRealtimeClient(api_key=cloud.script.api_key, base_url=cloud.base_url)
        assert b"".join([c async for c in client.stream_websocket("Hi.", format="pcm")])
        assert len(pool) == 1 and len(cloud.open_sockets) == 1
        for _ in range(100):
            if not pool and not cloud.open_sockets:
                break
            await asyncio.sleep(0.05)
        assert len(pool) == 0 and not cloud.open_sockets


async def test_the_pool_is_bounded_per_key() -> None:
    """Sessions finishing together keep at most per_key sockets for one key; more close."""
    with CloudDouble() as cloud:
        client = AsyncRealtimeClient(api_key=cloud.script.api_key, base_url=cloud.base_url)

        async def say() -> bytes:
            return b"".join([c async for c in client.stream_websocket("Hi.", format="pcm")])

        results = await asyncio.gather(*(say() for _ in range(5)))
        assert all(results) and len(cloud.connections) == 5
        pool = socket_pool()
        assert len(pool) == pool.per_key
        await pool.aclose()
        for _ in range(100):
            if not cloud.open_sockets:
                break
            await asyncio.sleep(0.05)
        assert not cloud.open_sockets


def test_a_pool_key_shows_no_credential() -> None:
    """The key keeps a digest of the headers: the API key is in no field and no repr."""
    secret = "sk-" + uuid.uuid4().hex
    key = PoolKey.of("wss://example/v1/tts/live", {"Authorization": f"Bearer {secret}"}, None)
    assert secret not in repr(key) and secret not in str(vars(key))
    assert key == PoolKey.of(
        "wss://example/v1/tts/live", {"authorization": f"Bearer {secret}"}, None
    )
    assert key != PoolKey.of("wss://example/v1/tts/live", {"Authorization": "Bearer other"}, None)
    assert repr(SocketPool()) == "<SocketPool idle=0 reused=0>"


def test_warm_opens_one_socket_the_next_session_uses() -> None:
    """client.warm() opens one socket and pools it; the next session (another client)
    runs on it: the double sees one connection, whose first frame is that session's start."""
    with CloudDouble() as cloud:
        key = {"api_key": cloud.script.api_key}
        assert RealtimeClient(base_url=cloud.base_url, **key).warm(timeout=10) is True
        assert RealtimeClient(base_url=cloud.base_url, **key).warm(timeout=10) is False
        wait_until(lambda: len(cloud.connections) == 1, "the warm socket")
        assert cloud.connections[0].received == []
        assert speak_once(cloud.base_url, "Warm.", **key)
        assert len(cloud.connections) == 1
        assert cloud.connections[0].received[0]["event"] == "start"


def test_the_loop_ending_closes_its_pooled_sockets() -> None:
    """asyncio.run ending cancels the pool's keeper, which closes the sockets it holds."""
    with CloudDouble() as cloud:

        async def main() -> int:
            client = AsyncRealtimeClient(api_key=cloud.script.api_key, base_url=cloud.base_url)
            assert b"".join([c async for c in client.stream_websocket("Hi.", format="pcm")])
            return len(socket_pool())

        assert asyncio.run(main()) == 1
        wait_until(lambda: not cloud.open_sockets, "the pooled socket to close")
        assert cloud.connections[0].closed


def test_sync_and_threaded_use_do_not_mix_loops() -> None:
    """A pool belongs to one loop: a socket pooled on the background loop is never handed
    to a stream on another loop (each loop has its own pool)."""
    with CloudDouble() as cloud:
        key = {"api_key": cloud.script.api_key}
        assert speak_once(cloud.base_url, "Background.", **key)
        result: list[bytes] = []

        def elsewhere() -> None:
            async def main() -> bytes:
                client = AsyncRealtimeClient(base_url=cloud.base_url, **key)
                audio = b"".join([c async for c in client.stream_websocket("Mine.", format="pcm")])
                await socket_pool().aclose()
                return audio

            result.append(asyncio.run(main()))

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join(30)
        assert result and result[0]
        assert len(cloud.connections) == 2


def test_load_ext_warm_up_opens_the_socket_the_first_speak_uses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The %load_ext warm-up opens one socket to where speech goes, sends nothing on it,
    and the first speak() runs its session on that socket."""
    with CloudDouble() as cloud:
        monkeypatch.setenv("FISH_API_KEY", cloud.script.api_key)
        monkeypatch.setattr(defaults, "url", cloud.base_url)
        warmup._warm()
        wait_until(lambda: len(cloud.connections) == 1, "the warm socket")
        assert cloud.connections[0].received == []
        session = speak("Warm start.", display=False, wait=30)
        assert session.state == "finished" and session.audio
        assert len(cloud.connections) == 1
        assert cloud.connections[0].received[0]["event"] == "start"


def test_one_warm_up_runs_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """%load_ext starts the warm-up before the magics import, and the magics ask again: while
    one runs, that one is returned; once it ended, a later %load_ext starts another."""
    release = threading.Event()
    monkeypatch.setattr(warmup, "_warm", lambda: release.wait(30))
    first = warmup.start_warmup()
    assert first is not None and first.is_alive()
    assert warmup.start_warmup() is first
    release.set()
    first.join(30)
    again = warmup.start_warmup()
    assert again is not None and again is not first
    again.join(30)


def test_load_ext_starts_the_warm_up_before_importing_the_magics() -> None:
    """The embedded server starts first thing (the magics take a while to import); until
    the speaking defaults are imported, the warm-up takes them as they start."""
    code = (
        "import sys, fish_notebook, fish_notebook.warmup as w\n"
        "seen = []\n"
        "w.start_warmup = lambda: seen.append('fish_notebook.magics' in sys.modules)\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "fish_notebook.load_ipython_extension(InteractiveShell.instance())\n"
        "print(seen, 'fish_notebook.speaking' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "[False, True] True", result.stderr
    fresh = SpeakDefaults()
    assert (fresh.url, fresh.backend) == warmup.UNTOUCHED_DEFAULTS
