"""The realtime client against a recording loopback server: every frame, every failure path."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from fish_notebook import (
    AsyncRealtimeClient,
    AuthenticationError,
    ConnectError,
    ConnectTimeout,
    FlushEvent,
    ProtocolError,
    RealtimeClient,
    ReceiveTimeout,
    ServerBusyError,
    TextEvent,
    Timeout,
    ValidationError,
    WebSocketError,
)
from fish_notebook.options import SocketOptions, build_request
from tests.helpers import REQUEST_FIELDS
from tests.wire_server import WireServer

SECRET = "sk-test-0123456789abcdef-SECRET"


def _leftover_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}


async def _collect(
    client: AsyncRealtimeClient, source: object, **options: object
) -> tuple[list[bytes], BaseException | None]:
    chunks: list[bytes] = []
    try:
        async for chunk in client.stream_websocket(source, **options):
            chunks.append(chunk)
    except BaseException as exc:
        return chunks, exc
    return chunks, None


async def test_frames_match_the_protocol_field_by_field() -> None:
    """Start first with every request field, then text, flush, stop; headers carry model and key."""
    async with WireServer() as server:
        client = AsyncRealtimeClient(api_key=SECRET, base_url=server.base_url, model="s1")
        source = ["Hello ", "world.", FlushEvent(), TextEvent(" Bye.")]
        chunks, error = await _collect(
            client, source, format="pcm", latency="low", speed=1.2, reference_id="joe"
        )
        assert error is None
        (conn,) = server.connections
        assert conn.path == "/v1/tts/live"
        assert conn.headers["model"] == "s1"
        assert conn.headers["Authorization"] == f"Bearer {SECRET}"
        assert conn.headers["User-Agent"].startswith("fish-notebook/")
        assert all(isinstance(f, bytes) for f in conn.frames), "every frame must be binary"
        names = [e["event"] for e in conn.events]
        assert names == ["start", "text", "text", "flush", "text", "stop"]
        request = conn.events[0]["request"]
        assert set(request) == REQUEST_FIELDS
        assert request["format"] == "pcm" and request["latency"] == "low" and request["text"] == ""
        assert request["reference_id"] == "joe" and request["prosody"] == {
            "speed": 1.2,
            "volume": 0.0,
        }
        assert request["sample_rate"] is None and request["references"] == []
        assert [e["text"] for e in conn.events if e["event"] == "text"] == [
            "Hello ",
            "world.",
            " Bye.",
        ]
        assert all(set(e) == {"event"} for e in conn.events if e["event"] in ("flush", "stop"))
        assert sum(map(len, chunks)) == len("Hello world. Bye.") * server.bytes_per_char


async def test_connection_opens_while_the_source_thinks() -> None:
    """The handshake and start go out before the source produced its first token."""
    yielded_at: list[float] = []

    async def slow_llm() -> AsyncIterator[str]:
        await asyncio.sleep(0.5)
        yielded_at.append(time.monotonic())
        yield "Hi."

    async with WireServer() as server:
        client = AsyncRealtimeClient(base_url=server.base_url)
        chunks, error = await _collect(client, slow_llm())
        assert error is None and chunks
        start_received = server.connections[0].times[0]
        assert server.connections[0].events[0]["event"] == "start"
        assert start_received < yielded_at[0]


async def test_sync_client_inside_a_running_loop() -> None:
    """The sync face works even when called from a thread that runs an event loop."""
    async with WireServer() as server:

        def run() -> list[bytes]:
            with RealtimeClient(base_url=server.base_url) as client:
                return list(client.tts.stream_websocket(iter(["One. ", "Two."]), format="pcm"))

        chunks = await asyncio.to_thread(run)
        assert sum(map(len, chunks)) == len("One. Two.") * server.bytes_per_char


def test_sync_client_from_plain_code() -> None:
    """RealtimeClient works from plain sync code with a sync generator."""
    ready = threading.Event()
    holder: dict[str, object] = {}

    def serve() -> None:
        async def main() -> None:
            async with WireServer() as server:
                holder["url"] = server.base_url
                ready.set()
                while "done" not in holder:
                    await asyncio.sleep(0.05)

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)

    def tokens() -> Iterator[str]:
        yield from ["A ", "sync ", "stream."]

    try:
        with RealtimeClient(base_url=str(holder["url"])) as client:
            audio = b"".join(client.stream_websocket(tokens(), format="pcm"))
        assert len(audio) == len("A sync stream.") * 200
    finally:
        holder["done"] = True
        thread.join(10)


async def test_source_exception_surfaces_after_stop_and_audio_is_kept() -> None:
    """A raising generator: stop is sent, audio owed for sent text arrives, the error surfaces."""
    boom = RuntimeError("the LLM broke")

    async def llm() -> AsyncIterator[object]:
        yield "First sentence."
        yield FlushEvent()
        await asyncio.sleep(0.2)
        yield " Half a "
        raise boom

    async with WireServer() as server:
        client = AsyncRealtimeClient(base_url=server.base_url)
        chunks, error = await _collect(client, llm())
        assert error is boom
        assert sum(map(len, chunks)) == len("First sentence. Half a ") * server.bytes_per_char
        assert server.connections[0].events[-1]["event"] == "stop"
        await server.wait_closed_connections()
        assert not _leftover_tasks()


@pytest.mark.parametrize(
    ("behaviour", "error_type", "words", "audio_kept"),
    [
        ("finish_error", WebSocketError, "model crashed", True),
        ("error_event", ServerBusyError, "Concurrency limit", False),
        ("close_midstream", WebSocketError, "code 1011", True),
        ("drop_midstream", WebSocketError, "closed before the stream finished", True),
        ("garbage", ProtocolError, "MessagePack", False),
        ("non_map", ProtocolError, "must be a MessagePack map", False),
    ],
)
async def test_failed_streams_raise_typed_errors_and_keep_audio(
    behaviour: str, error_type: type[Exception], words: str, audio_kept: bool
) -> None:
    """Each way a server can fail gives its typed error; audio already received is kept."""
    source = ["One sentence.", FlushEvent(), " Two sentences.", FlushEvent(), " Three."]
    async with WireServer(behaviour) as server:
        client = AsyncRealtimeClient(base_url=server.base_url, timeout=5)
        chunks, error = await _collect(client, source, format="pcm")
        assert isinstance(error, error_type), repr(error)
        assert words in str(error)
        assert (sum(map(len, chunks)) == len("One sentence.") * server.bytes_per_char) is audio_kept
        await server.wait_closed_connections()
        assert not _leftover_tasks()


async def test_unknown_events_are_ignored() -> None:
    """Unknown server events do not disturb the audio stream."""
    async with WireServer("unknown_event") as server:
        client = AsyncRealtimeClient(base_url=server.base_url)
        chunks, error = await _collect(client, ["Hello.", FlushEvent(), " Again."])
        assert (
            error is None and sum(map(len, chunks)) == len("Hello. Again.") * server.bytes_per_char
        )


@pytest.mark.parametrize(
    ("behaviour", "error_type"),
    [("stall_after_handshake", ReceiveTimeout), ("stall_midstream", ReceiveTimeout)],
)
async def test_a_silent_server_times_out(behaviour: str, error_type: type[Exception]) -> None:
    """A server that goes quiet while audio is owed ends in ReceiveTimeout, not a hang."""
    async with WireServer(behaviour) as server:
        client = AsyncRealtimeClient(base_url=server.base_url, timeout=Timeout(receive=0.5))
        chunks, error = await asyncio.wait_for(
            _collect(client, ["A.", FlushEvent(), " B.", FlushEvent()]), 20
        )
        assert isinstance(error, error_type) and "0.5 s" in str(error)
        assert (len(chunks) == 1) is (behaviour == "stall_midstream")


async def test_slow_handshake_is_a_connect_timeout() -> None:
    """A server slower than the connect timeout gives ConnectTimeout."""
    async with WireServer("slow_accept", delay=3.0) as server:
        client = AsyncRealtimeClient(base_url=server.base_url, timeout=Timeout(connect=0.3))
        _, error = await _collect(client, "Hi.")
        assert isinstance(error, ConnectTimeout) and "0.3" in str(error)


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (401, AuthenticationError),
        (403, AuthenticationError),
        (429, ServerBusyError),
        (500, ConnectError),
    ],
)
async def test_refused_handshakes(status: int, error_type: type[Exception]) -> None:
    """401/403 are AuthenticationError, 429 busy, 500 a connect error; the key is never shown."""
    async with WireServer(f"reject_{status}") as server:
        client = AsyncRealtimeClient(api_key=SECRET, base_url=server.base_url)
        _, error = await _collect(client, "Hi.")
        assert isinstance(error, error_type) and str(status) in str(error)
        assert SECRET not in str(error) and SECRET not in repr(error)


async def test_dead_server_says_what_to_do() -> None:
    """Nothing listening: ConnectError that names the URL and suggests the fix."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = AsyncRealtimeClient(base_url=f"http://127.0.0.1:{port}")
    _, error = await _collect(client, "Hi.")
    assert isinstance(error, ConnectError)
    assert f"127.0.0.1:{port}" in str(error) and "fish-notebook serve" in str(error)


async def test_key_never_in_repr_or_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    """With DEBUG logging on for everything, the key appears in no log line and no repr."""
    caplog.set_level(logging.DEBUG)
    async with WireServer() as server:
        client = AsyncRealtimeClient(api_key=SECRET, base_url=server.base_url)
        assert SECRET not in repr(client) and SECRET not in repr(RealtimeClient(api_key=SECRET))
        chunks, error = await _collect(client, "Hello there.")
        assert error is None and chunks
    # The fake cloud's own server-side log is not ours to police; everything client-side is.
    ours = [r for r in caplog.records if not r.name.startswith("websockets.server")]
    assert any("Authorization" in r.getMessage() for r in ours), (
        "websockets should log headers at DEBUG"
    )
    assert all(SECRET not in r.getMessage() for r in ours)


def test_options_are_validated_before_any_io() -> None:
    """Bad options raise ValidationError at call time, naming the field."""
    client = AsyncRealtimeClient(base_url="http://127.0.0.1:9")
    with pytest.raises(ValidationError, match="latency"):
        client.stream_websocket("x", latency="instant")
    with pytest.raises(ValidationError, match="prosody.speed"):
        client.stream_websocket("x", speed=9)
    with pytest.raises(ValidationError, match="base_url"):
        AsyncRealtimeClient(base_url="ftp://example")
    with pytest.raises(ValidationError, match="bogus"):
        build_request(bogus=1)


def test_sdk_config_is_accepted() -> None:
    """The Fish SDK's TTSConfig works as config=, with per-call options winning."""
    from fishaudio import TTSConfig

    request = build_request(TTSConfig(format="wav", latency="normal"), format="pcm", speed=1.5)
    assert (
        request.format == "pcm"
        and request.latency == "normal"
        and request.prosody
        and request.prosody.speed == 1.5
    )


async def test_leaving_early_closes_the_socket() -> None:
    """Breaking out of the audio loop closes the socket and leaves no task behind."""

    async def endless() -> AsyncIterator[object]:
        while True:
            yield "More text."
            yield FlushEvent()
            await asyncio.sleep(0.01)

    async with WireServer() as server:
        client = AsyncRealtimeClient(base_url=server.base_url)
        stream = client.stream_websocket(endless(), format="pcm")
        async for _chunk in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]
        await server.wait_closed_connections()
        assert not _leftover_tasks()


async def test_manual_stream_session() -> None:
    """connect() gives a stream driven by hand with send_text/flush/stop and typed events."""
    from fish_notebook.protocol import AudioEvent, FinishEvent

    async with WireServer() as server:
        client = AsyncRealtimeClient(base_url=server.base_url)
        async with client.connect(format="pcm") as stream:
            await stream.send_text("Manual.")
            await stream.flush()
            await stream.stop()
            await stream.stop()  # safe twice
            events = [e async for e in stream]
        assert isinstance(events[0], AudioEvent) and len(events[0].audio) == len("Manual.") * 200
        assert stream.finish == FinishEvent("stop")
        assert [e["event"] for e in server.connections[0].events] == [
            "start",
            "text",
            "flush",
            "stop",
        ]


async def test_early_flush_after_the_first_sentence() -> None:
    """One flush goes out as soon as the first sentence is complete, and only one."""
    tokens = [
        "Sure",
        ".",
        " Mr",
        ".",
        " Smith",
        " said",
        " 3",
        ".",
        "5",
        ".",
        " Then",
        " more",
        ".",
    ]
    async with WireServer() as server:
        client = AsyncRealtimeClient(base_url=server.base_url)
        await _collect(client, tokens)
        await _collect(client, tokens, early_flush=False)
        await _collect(client, ["Done.", FlushEvent(), " Next.", " Last."])
    early, off, user = ([e["event"] for e in c.events] for c in server.connections)
    assert early == ["start", "text", "text", "flush", *["text"] * 11, "stop"]
    assert "flush" not in off
    assert user.count("flush") == 1  # the source flushed first: nothing added


def test_completes_sentence() -> None:
    """Sentence ends need a following space and are not abbreviations or decimals."""
    from fish_notebook.text import completes_sentence

    assert completes_sentence("Hi there.", " Next")
    assert completes_sentence('He said "stop!"', " Then")
    assert not completes_sentence("Hi there.", "Next")
    assert not completes_sentence("Ask Mr.", " Smith")
    assert not completes_sentence("for e.g.", " this")
    assert not completes_sentence("Middle initial J.", " Doe")
    assert not completes_sentence("no end", " here")


def test_ws_options_map_to_the_socket() -> None:
    """The SDK's WebSocketOptions (or a dict of its fields) set websockets' keepalive and
    limits; fields left at None keep ours; bad values fail at call time, naming the field."""
    from fishaudio import WebSocketOptions

    options = WebSocketOptions(
        keepalive_ping_interval_seconds=5, max_message_size_bytes=2**20, queue_size=4
    )
    assert SocketOptions.from_ws_options(options) == SocketOptions(5, 20.0, 2**20, 4)
    assert SocketOptions.from_ws_options({"keepalive_ping_timeout_seconds": 60.0}) == (
        SocketOptions(ping_timeout=60.0)
    )
    assert SocketOptions.from_ws_options(None) == SocketOptions()
    client = AsyncRealtimeClient(base_url="http://127.0.0.1:9")
    bad = WebSocketOptions(keepalive_ping_timeout_seconds=-1)
    with pytest.raises(ValidationError, match="ws_options.keepalive_ping_timeout_seconds"):
        client.stream_websocket("x", ws_options=bad)
    with pytest.raises(ValidationError, match="ws_options.ping"):
        client.stream_websocket("x", ws_options={"ping": 1})
    with pytest.raises(ValidationError, match="WebSocketOptions"):
        client.stream_websocket("x", ws_options=30)


async def test_ws_options_max_message_size_is_applied() -> None:
    """max_message_size_bytes reaches the socket: audio frames larger than it end the stream."""
    from fishaudio import WebSocketOptions

    async with WireServer() as server:
        client = AsyncRealtimeClient(base_url=server.base_url)
        small = WebSocketOptions(max_message_size_bytes=1000)  # the audio frame is 2,400 bytes
        _, error = await _collect(client, "Hello there.", format="pcm", ws_options=small)
        assert isinstance(error, WebSocketError) and "1009" in str(error)
        roomy = {"max_message_size_bytes": 10_000}
        chunks, error = await _collect(client, "Hello there.", format="pcm", ws_options=roomy)
        assert error is None and sum(map(len, chunks)) == 2400


async def test_ws_options_keepalive_finds_a_deaf_server() -> None:
    """The ping interval and timeout reach the socket: a server that never answers pings is
    found out by keepalive (here within 15 s; websockets' default would take 40 s)."""
    from fishaudio import WebSocketOptions
    from websockets.asyncio.server import ServerConnection, serve

    released = asyncio.Event()

    async def deaf(ws: ServerConnection) -> None:
        ws.transport.pause_reading()  # reads nothing, so it never answers a ping
        await released.wait()
        ws.transport.abort()

    async with serve(deaf, "127.0.0.1", 0, close_timeout=1) as server:
        port = server.sockets[0].getsockname()[1]
        client = AsyncRealtimeClient(
            base_url=f"http://127.0.0.1:{port}", timeout=Timeout(receive=None, close=0.5)
        )
        keepalive = WebSocketOptions(
            keepalive_ping_interval_seconds=0.2, keepalive_ping_timeout_seconds=0.2
        )
        try:
            _, error = await asyncio.wait_for(_collect(client, "Hi.", ws_options=keepalive), 15)
        finally:
            released.set()
    assert isinstance(error, WebSocketError) and "keepalive ping timeout" in str(error)
