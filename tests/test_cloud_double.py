"""The cloud double (tests/cloud_double.py), checked with Fish's official SDK as the reference
client, then our own client against it.

The SDK is Fish's reading of its protocol in code form: where the double and the SDK agree,
the double is a fair stand-in for the cloud, and our client can be tested against it without
sharing our own reading of the documents.
"""

from __future__ import annotations

import re
import struct
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import httpx_ws
import miniaudio
import msgpack
import numpy as np
import pytest
from fishaudio import (
    AsyncFishAudio,
    FishAudio,
    FlushEvent,
    TTSConfig,
    WebSocketOptions,
)
from fishaudio import AuthenticationError as SdkAuthenticationError
from fishaudio import NotFoundError as SdkNotFoundError
from fishaudio import WebSocketError as SdkWebSocketError
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from fish_notebook import (
    AsyncRealtimeClient,
    AuthenticationError,
    RealtimeClient,
    ServerBusyError,
    WebSocketError,
)
from tests.cloud_double import (
    ERROR_CLOSE_CODE,
    SELF_AUTHOR,
    CloudDouble,
    samples_per_char,
    speech_pcm,
)

TEXT = "Hello there world. Bye now."
PIECES: list[Any] = ["Hello there ", "world.", FlushEvent(), " Bye now."]
MP3_DELAY = 1105  # LAME's encoder delay plus the decoder's, in samples at 44100 Hz


@pytest.fixture
def cloud() -> Iterator[CloudDouble]:
    """A fresh double per test: its Script can be changed freely."""
    with CloudDouble() as double:
        yield double


def sdk(cloud: CloudDouble, key: str | None = None) -> FishAudio:
    return FishAudio(api_key=key or cloud.script.api_key, base_url=cloud.base_url)


def pack(event: dict[str, Any]) -> bytes:
    return msgpack.packb(event, use_bin_type=True)


def expected(text: str) -> np.ndarray:
    return np.frombuffer(speech_pcm(text), "<i2")


def assert_sounds_like(fmt: str, audio: bytes, text: str) -> None:
    """Decode ``audio`` and compare it with the double's voice for ``text``, sample by sample
    (pcm, wav) or by shape after the codec's delay (mp3)."""
    want = expected(text)
    if fmt == "wav":
        riff, riff_size, wave, fmt_id, fmt_size, tag, channels, rate, byte_rate, align, bits = (
            struct.unpack("<4sI4s4sIHHIIHH", audio[:36])
        )
        assert (riff, wave, fmt_id, fmt_size, tag, channels) == (
            b"RIFF",
            b"WAVE",
            b"fmt ",
            16,
            1,
            1,
        )
        assert (rate, byte_rate, align, bits) == (44100, 88200, 2, 16)
        assert audio[36:40] == b"data"
        assert riff_size == struct.unpack("<I", audio[40:44])[0] == 0xFFFFFFFF  # unknown sizes
        audio = audio[44:]
    if fmt in ("pcm", "wav"):
        got = np.frombuffer(audio, "<i2")
        assert len(got) == len(want)
        assert np.array_equal(got, want)
        return
    decoded = miniaudio.decode(audio, nchannels=1, sample_rate=44100)
    got = np.array(decoded.samples, dtype=np.int16)
    assert len(want) + MP3_DELAY <= len(got) <= len(want) + MP3_DELAY + 2 * 1152
    aligned = got[MP3_DELAY : MP3_DELAY + len(want)].astype(float)
    assert np.corrcoef(aligned, want.astype(float))[0, 1] > 0.99


# ---- the official SDK against the double -------------------------------------------------


@pytest.mark.parametrize("with_flush", [True, False])
def test_sdk_sync_stream_websocket(cloud: CloudDouble, with_flush: bool) -> None:
    """The SDK's realtime stream: frames as the docs list them, audio exactly the text's."""
    pieces = PIECES if with_flush else [p for p in PIECES if isinstance(p, str)]
    audio = b"".join(sdk(cloud).tts.stream_websocket(pieces, format="pcm"))
    assert_sounds_like("pcm", audio, TEXT)
    (conn,) = cloud.connections
    assert conn.path == "/v1/tts/live" and conn.model == "s2-pro"
    assert conn.headers["Authorization"] == f"Bearer {cloud.script.api_key}"
    assert conn.headers["User-Agent"].startswith("fish-audio/python/")
    names = [e["event"] for e in conn.received]
    assert names == ["start", "text", "text", *(["flush"] if with_flush else []), "text", "stop"]
    assert (
        conn.received[0]["request"]["text"] == "" and conn.received[0]["request"]["format"] == "pcm"
    )
    audio_events = [e for e in conn.sent if e["event"] == "audio"]
    assert len(audio_events) == cloud.script.events_per_chunk * (2 if with_flush else 1)
    assert conn.sent[-1] == {"event": "finish", "reason": "stop"}


async def test_sdk_async_stream_websocket(cloud: CloudDouble) -> None:
    """AsyncFishAudio's stream_websocket is an async generator fed by an async generator."""

    async def tokens() -> AsyncIterator[Any]:
        for piece in PIECES:
            yield piece

    client = AsyncFishAudio(api_key=cloud.script.api_key, base_url=cloud.base_url)
    chunks = [c async for c in client.tts.stream_websocket(tokens(), format="pcm")]
    assert len(chunks) == 2 * cloud.script.events_per_chunk
    assert_sounds_like("pcm", b"".join(chunks), TEXT)


@pytest.mark.parametrize("fmt", ["pcm", "wav", "mp3"])
def test_sdk_stream_websocket_formats(cloud: CloudDouble, fmt: str) -> None:
    audio = b"".join(sdk(cloud).tts.stream_websocket(PIECES, format=fmt))
    assert_sounds_like(fmt, audio, TEXT)


def test_sdk_speed_and_sample_rate_shape_the_audio(cloud: CloudDouble) -> None:
    """prosody.speed shortens each character; sample_rate is honoured."""
    config = TTSConfig(format="pcm", sample_rate=16000)
    audio = b"".join(sdk(cloud).tts.stream_websocket(["Quick."], config=config, speed=2.0))
    assert len(audio) // 2 == len("Quick.") * samples_per_char(16000, 10, 2.0)
    assert audio == speech_pcm("Quick.", 16000, 10, 2.0)


def test_long_text_is_cut_by_chunk_length(cloud: CloudDouble) -> None:
    """Without a flush, the buffer is synthesized every chunk_length characters."""
    text = " ".join(f"word{i}" for i in range(40))  # 269 characters
    config = TTSConfig(format="pcm", chunk_length=100)
    audio = b"".join(sdk(cloud).tts.stream_websocket([text], config=config))
    assert_sounds_like("pcm", audio, text)
    spoken = cloud.connections[0].spoken
    assert len(spoken) == 3 and "".join(spoken) == text
    assert all(len(chunk) <= 100 for chunk in spoken)


@pytest.mark.parametrize("fmt", ["pcm", "wav", "mp3"])
def test_sdk_convert(cloud: CloudDouble, fmt: str) -> None:
    """POST /v1/tts with the SDK's MessagePack body answers the whole audio."""
    audio = sdk(cloud).tts.convert(text=TEXT, format=fmt)
    assert_sounds_like(fmt, audio, TEXT)
    (request,) = cloud.requests
    assert (request.method, request.path, request.status) == ("POST", "/v1/tts", 200)
    assert request.headers["Content-Type"] == "application/msgpack"
    assert request.headers["model"] == "s2-pro" and request.body["text"] == TEXT


def test_sdk_stream_and_the_chunked_answer(cloud: CloudDouble) -> None:
    """tts.stream gets the whole audio; the answer is chunked, written piece by piece."""
    assert_sounds_like("pcm", b"".join(sdk(cloud).tts.stream(text=TEXT, format="pcm")), TEXT)
    headers = {"Authorization": f"Bearer {cloud.script.api_key}"}
    body = {"text": TEXT, "format": "pcm"}
    with (
        httpx.Client(base_url=cloud.base_url, headers=headers) as http,
        http.stream("POST", "/v1/tts", json=body) as answer,
    ):
        assert answer.headers["Transfer-Encoding"] == "chunked"
        assert_sounds_like("pcm", answer.read(), TEXT)


def test_http_tts_takes_json_and_reports_bad_fields(cloud: CloudDouble) -> None:
    headers = {"Authorization": f"Bearer {cloud.script.api_key}", "model": "s1"}
    with httpx.Client(base_url=cloud.base_url, headers=headers) as http:
        good = http.post("/v1/tts", json={"text": TEXT, "format": "pcm"})
        bad = http.post("/v1/tts", json={"text": TEXT, "format": "flac"})
    assert good.status_code == 200 and good.headers["Content-Type"] == "audio/pcm"
    assert_sounds_like("pcm", good.content, TEXT)
    assert bad.status_code == 422
    assert bad.json()[0]["loc"] == ["body"] and "format" in bad.json()[0]["msg"]


def test_sdk_voices_list_pages_and_filters(cloud: CloudDouble) -> None:
    client = sdk(cloud)
    pages = [client.voices.list(page_size=10, page_number=n) for n in (1, 2, 3)]
    assert [p.total for p in pages] == [23, 23, 23]
    assert [len(p.items) for p in pages] == [10, 10, 3]
    ids = [v.id for p in pages for v in p.items]
    assert len(set(ids)) == 23
    counts = [v.task_count for p in pages for v in p.items]
    assert counts == sorted(counts, reverse=True)  # the SDK asks for sort_by=task_count
    anchors = client.voices.list(title="anchor", page_size=100)
    assert anchors.total == 6 and all("News Anchor" in v.title for v in anchors.items)
    mine = client.voices.list(self_only=True, page_size=100)
    assert mine.total == 5 and {v.author.id for v in mine.items} == {SELF_AUTHOR}
    assert client.voices.list(language="zh", page_size=100).total == 7
    assert [v.id for v in client.voices.list(tags=["teacher"], language="zh").items] == ["voice11"]
    query = cloud.requests[3].query
    assert query["title"] == ["anchor"] and query["self"] == ["false"]
    with httpx.Client(base_url=cloud.base_url) as http:
        auth = {"Authorization": f"Bearer {cloud.script.api_key}"}
        first = http.get("/model", params={"page_size": 10}, headers=auth).json()
        last = http.get("/model", params={"page_size": 10, "page_number": 3}, headers=auth).json()
        assert first["has_more"] is True and last["has_more"] is False
        assert http.get("/model", params={"page_size": 0}, headers=auth).status_code == 422


def test_sdk_voices_get(cloud: CloudDouble) -> None:
    client = sdk(cloud)
    voice = client.voices.get("voice07")
    assert voice.id == "voice07" and voice.title == "Teacher 7" and voice.state == "trained"
    with pytest.raises(SdkNotFoundError) as info:
        client.voices.get("no-such-voice")
    assert info.value.status == 404 and info.value.message == "Model not found"


def test_sdk_asr_transcribe(cloud: CloudDouble) -> None:
    client = sdk(cloud)
    audio = speech_pcm("Hello.")
    result = client.asr.transcribe(audio=audio, language="en")
    assert result.text == "Hello from the cloud double." and len(result.segments) == 2
    assert cloud.requests[0].body == {"audio": audio, "language": "en", "ignore_timestamps": False}
    bare = client.asr.transcribe(audio=audio, include_timestamps=False)
    assert bare.segments == [] and bare.duration == 1.5
    assert cloud.requests[1].body == {"audio": audio, "ignore_timestamps": True}
    with httpx.Client(base_url=cloud.base_url) as http:
        multipart = http.post(
            "/v1/asr",
            files={"audio": ("a.pcm", audio)},
            data={"ignore_timestamps": "false"},
            headers={"Authorization": f"Bearer {cloud.script.api_key}"},
        )
    assert multipart.status_code == 200 and len(multipart.json()["segments"]) == 2
    assert cloud.requests[2].body == {"audio": audio, "ignore_timestamps": False}


def test_refused_key_gives_the_sdks_own_errors(cloud: CloudDouble) -> None:
    client = sdk(cloud, key="wrong-key")
    with pytest.raises(SdkAuthenticationError) as info:
        client.tts.convert(text=TEXT)
    assert info.value.status == 401 and info.value.message == "Invalid API key"
    with pytest.raises(SdkAuthenticationError):
        client.voices.list()
    with pytest.raises(httpx_ws.WebSocketUpgradeError) as upgrade:
        list(client.tts.stream_websocket(["Hi."]))
    assert upgrade.value.response.status_code == 401
    assert [r.status for r in cloud.requests] == [401, 401, 401] and not cloud.connections


@pytest.mark.parametrize(
    ("failure", "error_type"),
    [
        ("finish_error", SdkWebSocketError),
        ("error_event", SdkWebSocketError),
        ("drop", httpx_ws.WebSocketNetworkError),  # no close frame: not a WebSocketDisconnect
    ],
)
def test_sdk_fails_after_the_audio_that_did_arrive(
    cloud: CloudDouble, failure: str, error_type: type[Exception]
) -> None:
    """finish reason=error, an error event then close, a drop without a close frame: the
    SDK raises after yielding the audio of the chunk that did succeed."""
    cloud.script.fail_at_chunk, cloud.script.failure = 1, failure
    chunks: list[bytes] = []
    with pytest.raises(error_type):
        for chunk in sdk(cloud).tts.stream_websocket(PIECES, format="pcm"):
            chunks.append(chunk)
    assert b"".join(chunks) == speech_pcm("Hello there world.")
    last = cloud.connections[0].sent[-1]
    assert {
        "finish_error": last == {"event": "finish", "reason": "error"},
        "error_event": last == {"event": "error", "error": "Internal server error"},
        "drop": last["event"] == "audio",
    }[failure]


async def test_concurrency_refusal(cloud: CloudDouble) -> None:
    """One session open, max_concurrency 1: the next start gets the documented error, then
    the socket closes, and the SDK raises WebSocketError."""
    cloud.script.max_concurrency = 1
    headers = {"Authorization": f"Bearer {cloud.script.api_key}"}
    async with connect(f"{cloud.ws_url}/v1/tts/live", additional_headers=headers) as holder:
        await holder.send(pack({"event": "start", "request": {"text": "", "format": "pcm"}}))
        await holder.send(pack({"event": "text", "text": "Busy."}))
        await holder.send(pack({"event": "flush"}))
        await holder.recv()  # the first session is running for sure
        client = AsyncFishAudio(api_key=cloud.script.api_key, base_url=cloud.base_url)
        # The async SDK's WebSocketError comes wrapped by httpx-ws's anyio task group.
        with pytest.RaisesGroup(SdkWebSocketError):
            async for _ in client.tts.stream_websocket(_aiter(["Hi."])):
                pass
    refused = cloud.connections[1].sent
    assert refused == [
        {"event": "error", "error": "Concurrency limit exceeded", "max_concurrency": 1}
    ]


async def _aiter(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


# ---- raw frames: what the SDK cannot show -------------------------------------------------


async def _session(ws: Any, request: dict[str, Any], items: list[Any]) -> list[dict[str, Any]]:
    """One start..finish on an open socket; the server's events, decoded."""
    await ws.send(pack({"event": "start", "request": {"text": "", **request}}))
    for item in items:
        event = (
            {"event": "flush"} if isinstance(item, FlushEvent) else {"event": "text", "text": item}
        )
        await ws.send(pack(event))
    await ws.send(pack({"event": "stop"}))
    events = []
    while True:
        events.append(msgpack.unpackb(await ws.recv(), raw=False))
        if events[-1]["event"] in ("finish", "error"):
            return events


def _headers(cloud: CloudDouble, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {cloud.script.api_key}", **more}


async def test_another_start_after_finish_on_the_same_socket(cloud: CloudDouble) -> None:
    async with connect(f"{cloud.ws_url}/v1/tts/live", additional_headers=_headers(cloud)) as ws:
        first = await _session(ws, {"format": "pcm"}, ["First turn."])
        second = await _session(ws, {"format": "wav"}, ["Second turn."])
    for events, fmt, text in ((first, "pcm", "First turn."), (second, "wav", "Second turn.")):
        assert events[-1] == {"event": "finish", "reason": "stop"}
        assert_sounds_like(fmt, b"".join(e["audio"] for e in events[:-1]), text)
    assert len(cloud.connections) == 1
    assert [e["event"] for e in cloud.connections[0].received].count("start") == 2


async def test_close_between_sessions_mode(cloud: CloudDouble) -> None:
    """The mode that closes after finish: a second start on that socket goes nowhere."""
    cloud.script.close_between_sessions = True
    async with connect(f"{cloud.ws_url}/v1/tts/live", additional_headers=_headers(cloud)) as ws:
        events = await _session(ws, {"format": "pcm"}, ["Only turn."])
        assert events[-1] == {"event": "finish", "reason": "stop"}
        with pytest.raises(ConnectionClosed) as info:
            await _session(ws, {"format": "pcm"}, ["Too late."])
    assert info.value.rcvd is not None and info.value.rcvd.code == 1000


@pytest.mark.parametrize(
    ("first", "words"),
    [
        ({"event": "text", "text": "No start."}, "The first event must be start"),
        ({"event": "start", "request": {"text": "", "format": "opus"}}, "format 'opus'"),
        ({"event": "start", "request": {"text": "", "chunk_length": 20}}, "chunk_length"),
    ],
)
async def test_invalid_start_is_an_error_then_close(
    cloud: CloudDouble, first: dict[str, Any], words: str
) -> None:
    async with connect(f"{cloud.ws_url}/v1/tts/live", additional_headers=_headers(cloud)) as ws:
        await ws.send(pack(first))
        event = msgpack.unpackb(await ws.recv(), raw=False)
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert event["event"] == "error" and words in event["error"]
    assert info.value.rcvd is not None and info.value.rcvd.code == ERROR_CLOSE_CODE


@pytest.mark.parametrize(
    ("header", "model"), [(None, "s2.1-pro"), ("s1", "s1"), ("x9", "s2.1-pro")]
)
async def test_model_header_and_its_fallback(
    cloud: CloudDouble, header: str | None, model: str
) -> None:
    more = {"model": header} if header else {}
    url = f"{cloud.ws_url}/v1/tts/live"
    async with connect(url, additional_headers=_headers(cloud, **more)) as ws:
        await _session(ws, {"format": "pcm"}, ["Hi."])
    assert cloud.connections[0].model == model


CHUNK_TEXTS = ["Hello there world.", " Second chunk here."]


async def _timestamp_session(cloud: CloudDouble) -> list[dict[str, Any]]:
    """Two text chunks (a flush between them) over /with-timestamp: the audio events."""
    url = f"{cloud.ws_url}/v1/tts/live/with-timestamp"
    async with connect(url, additional_headers=_headers(cloud)) as ws:
        items = [CHUNK_TEXTS[0], FlushEvent(), CHUNK_TEXTS[1]]
        events = await _session(ws, {"format": "pcm"}, items)
    assert events[-1] == {"event": "finish", "reason": "stop"}
    return events[:-1]


def _latest_snapshots(audio_events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The docs' rule: per chunk_seq, every non-null alignment replaces the one before."""
    latest: dict[int, dict[str, Any]] = {}
    for event in audio_events:
        if event["alignment"] is not None:
            latest[event["chunk_seq"]] = event
    return latest


async def test_with_timestamp_frames_have_the_documented_shape(cloud: CloudDouble) -> None:
    """Per chunk: null first, then cumulative snapshots, each growing the last; the next
    chunk's first bytes under the previous chunk_seq; content, time, never-decreasing
    chunk_seq and chunk_audio_offset_sec."""
    cloud.script.first_audio_delay = 0.2
    audio_events = await _timestamp_session(cloud)
    fields = {"event", "audio", "content", "alignment", "chunk_seq", "chunk_audio_offset_sec"}
    assert all(set(e) == fields | {"time"} for e in audio_events)
    assert audio_events[0]["time"] >= 200  # ms since start, after the first-audio delay
    seqs = [e["chunk_seq"] for e in audio_events]
    offsets = [e["chunk_audio_offset_sec"] for e in audio_events]
    assert seqs == sorted(seqs) and offsets == sorted(offsets) and set(seqs) == {0, 1}
    assert audio_events[0]["alignment"] is None and audio_events[0]["content"] == ""
    per_chunk = cloud.script.events_per_chunk
    assert len(audio_events) == 2 * per_chunk
    chunk0_bytes = sum(len(e["audio"]) for e in audio_events[:per_chunk])
    assert chunk0_bytes == len(speech_pcm(CHUNK_TEXTS[0]))
    quirk, after = audio_events[per_chunk], audio_events[per_chunk + 1]
    assert quirk["chunk_seq"] == 0  # chunk 1's first bytes, chunk 0's label
    assert quirk["alignment"] == audio_events[per_chunk - 1]["alignment"]
    assert after["chunk_seq"] == 1 and after["alignment"] is None
    seen: dict[int, list[Any]] = {}
    for event in audio_events:
        if event["alignment"] is not None:
            old = seen.get(event["chunk_seq"], [])
            assert event["alignment"]["segments"][: len(old)] == old  # cumulative
            seen[event["chunk_seq"]] = event["alignment"]["segments"]
    latest = _latest_snapshots(audio_events)
    for seq, text in enumerate(CHUNK_TEXTS):
        assert latest[seq]["content"] == text
        assert [s["text"] for s in latest[seq]["alignment"]["segments"]] == text.split()
    every = [s for e in audio_events if e["alignment"] for s in e["alignment"]["segments"]]
    assert len(every) > len(TEXT.split())  # appending every snapshot would repeat words


async def test_with_timestamp_recipe_lands_words_on_their_sound(cloud: CloudDouble) -> None:
    """The documented recipe (latest snapshot per chunk_seq, chunk_audio_offset_sec + start)
    puts every word exactly where its sound starts in the concatenated audio."""
    audio_events = await _timestamp_session(cloud)
    latest = _latest_snapshots(audio_events)
    pcm = np.frombuffer(b"".join(e["audio"] for e in audio_events), "<i2")
    per_char = samples_per_char(44100, cloud.script.ms_per_char)
    offset = latest[1]["chunk_audio_offset_sec"]
    assert offset == pytest.approx(len(CHUNK_TEXTS[0]) * per_char / 44100)
    text = "".join(CHUNK_TEXTS)
    word_starts = [m.start() * per_char for m in re.finditer(r"\S+", text)]
    timeline = [
        latest[seq]["chunk_audio_offset_sec"] + segment["start"]
        for seq in (0, 1)
        for segment in latest[seq]["alignment"]["segments"]
    ]
    assert [round(t * 44100) for t in timeline] == word_starts
    for at in word_starts:
        assert np.any(pcm[at : at + per_char] != 0)  # sound starts here...
        assert at == 0 or not np.any(pcm[at - per_char // 2 : at])  # ...after a silence


# ---- keepalive ---------------------------------------------------------------------------


def test_sdk_answers_the_servers_keepalive_pings(cloud: CloudDouble) -> None:
    """Server pings during a slow first audio get their pongs (a late pong is tolerated)."""
    cloud.script.ping_interval, cloud.script.ping_timeout = 0.3, 0
    cloud.script.first_audio_delay = 1.2
    audio = b"".join(sdk(cloud).tts.stream_websocket(["Slow."], format="pcm"))
    assert audio == speech_pcm("Slow.")
    assert cloud.connections[0].pongs >= 1


@pytest.mark.parametrize("ping_timeout", [0.3, 30.0])
def test_busy_server_and_the_clients_ws_options(cloud: CloudDouble, ping_timeout: float) -> None:
    """A server too busy to answer pings for 1.5 s: a short keepalive timeout breaks the
    stream, the generous one that ws_options allows survives it."""
    cloud.script.busy_seconds = 1.5
    options = WebSocketOptions(
        keepalive_ping_interval_seconds=0.1, keepalive_ping_timeout_seconds=ping_timeout
    )
    stream = sdk(cloud).tts.stream_websocket(["Thinking."], format="pcm", ws_options=options)
    if ping_timeout < 1:
        with pytest.raises(httpx_ws.WebSocketNetworkError):
            b"".join(stream)
    else:
        assert b"".join(stream) == speech_pcm("Thinking.")


# ---- our client against the double --------------------------------------------------------


async def _collect(
    client: AsyncRealtimeClient, source: Any, **options: Any
) -> tuple[bytes, BaseException | None]:
    chunks: list[bytes] = []
    try:
        async for chunk in client.stream_websocket(source, **options):
            chunks.append(chunk)
    except Exception as exc:
        return b"".join(chunks), exc
    return b"".join(chunks), None


@pytest.mark.parametrize("fmt", ["pcm", "mp3"])
async def test_our_client_streams(cloud: CloudDouble, fmt: str) -> None:
    client = AsyncRealtimeClient(api_key=cloud.script.api_key, base_url=cloud.base_url, timeout=10)
    audio, error = await _collect(client, PIECES, format=fmt)
    assert error is None
    assert_sounds_like(fmt, audio, TEXT)
    (conn,) = cloud.connections
    names = [e["event"] for e in conn.received]
    assert names[0] == "start" and names[-1] == "stop" and names.count("flush") == 1


@pytest.mark.parametrize("close_between_sessions", [False, True])
async def test_our_client_runs_one_session_after_another(
    cloud: CloudDouble, close_between_sessions: bool
) -> None:
    """Whether the double keeps the socket after finish or closes it, a second stream works."""
    cloud.script.close_between_sessions = close_between_sessions
    client = AsyncRealtimeClient(api_key=cloud.script.api_key, base_url=cloud.base_url, timeout=10)
    for text in ("First turn.", "Second turn."):
        audio, error = await _collect(client, [text], format="pcm")
        assert error is None and audio == speech_pcm(text)
    finishes = [e for c in cloud.connections for e in c.sent if e["event"] == "finish"]
    assert finishes == [{"event": "finish", "reason": "stop"}] * 2


def test_our_sync_client_streams(cloud: CloudDouble) -> None:
    client = RealtimeClient(api_key=cloud.script.api_key, base_url=cloud.base_url, timeout=10)
    assert_sounds_like("pcm", b"".join(client.stream_websocket(PIECES, format="pcm")), TEXT)


@pytest.mark.parametrize(
    ("failure", "words"),
    [
        ("error_event", "Internal server error"),
        ("finish_error", ""),
        ("drop", ""),
    ],
)
async def test_our_client_fails_typed_and_keeps_audio(
    cloud: CloudDouble, failure: str, words: str
) -> None:
    cloud.script.fail_at_chunk, cloud.script.failure = 1, failure
    client = AsyncRealtimeClient(api_key=cloud.script.api_key, base_url=cloud.base_url, timeout=10)
    audio, error = await _collect(client, PIECES, format="pcm")
    assert type(error) is WebSocketError, repr(error)
    assert words in str(error)
    assert audio == speech_pcm("Hello there world.")


async def test_our_client_sees_the_concurrency_refusal(cloud: CloudDouble) -> None:
    cloud.script.max_concurrency = 0  # every start is refused
    client = AsyncRealtimeClient(api_key=cloud.script.api_key, base_url=cloud.base_url, timeout=10)
    audio, error = await _collect(client, PIECES, format="pcm")
    assert isinstance(error, ServerBusyError), repr(error)
    assert error.max_concurrency == 0 and audio == b""


async def test_our_client_refused_key(cloud: CloudDouble) -> None:
    client = AsyncRealtimeClient(api_key="wrong-key-123", base_url=cloud.base_url, timeout=10)
    audio, error = await _collect(client, PIECES, format="pcm")
    assert isinstance(error, AuthenticationError), repr(error)
    assert error.status == 401 and "wrong-key-123" not in str(error) and audio == b""
