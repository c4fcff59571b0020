"""The official Fish SDK (fish-audio-sdk), unchanged, against the embedded server."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import soundfile
from fishaudio import AsyncFishAudio, FishAudio
from fishaudio.exceptions import WebSocketError
from fishaudio.types import FlushEvent, Prosody, TextEvent, TTSConfig
from local_wire import SENTENCE, parse_mp3, parse_wav

from fish_notebook.local import SessionRecord, ThreadedServer
from fish_notebook.local.engine import DEFAULT_VOICE

TOKENS = ["The quick ", "brown fox ", "jumps over ", "the lazy dog. ", "Then it ", "rests"]


def tagged_client(server: ThreadedServer) -> tuple[FishAudio, Any]:
    """A sync SDK client whose sessions the recorder can pick out by a header."""
    tag = uuid.uuid4().hex
    http = httpx.Client(base_url=server.http_url, headers={"X-Test": tag}, timeout=60)
    client = FishAudio(api_key="x", base_url=server.http_url, httpx_client=http)
    return client, lambda record: record.headers.get("x-test") == tag


def records(server: ThreadedServer, match: Any, count: int) -> list[SessionRecord]:
    assert server.recorder is not None
    server.recorder.wait_for(match, timeout=30)
    found = [r for r in server.recorder.sessions if match(r)]
    assert len(found) == count
    return found


def tokens_with_flush() -> Iterator[Any]:
    yield from TOKENS[:4]
    yield FlushEvent()
    yield TextEvent(text=TOKENS[4])
    yield TOKENS[5]


@pytest.mark.parametrize("audio_format", ["mp3", "wav", "pcm"])
def test_sync_stream_every_format(local_server: ThreadedServer, audio_format: str) -> None:
    """Sync stream_websocket with str, TextEvent and FlushEvent gives a valid stream per format."""
    client = FishAudio(api_key="x", base_url=local_server.http_url)
    audio = b"".join(client.tts.stream_websocket(tokens_with_flush(), format=audio_format))
    if audio_format == "mp3":
        assert parse_mp3(audio).duration > 2.0
    elif audio_format == "wav":
        wav = parse_wav(audio)
        assert wav.sample_rate == 44100 and len(wav.pcm) / 2 / 44100 > 2.0
    else:
        assert len(audio) % 2 == 0 and len(audio) / 2 / 44100 > 2.0


def test_sync_flush_event_reaches_the_server(local_server: ThreadedServer) -> None:
    """The SDK's FlushEvent arrives as a flush, and both halves of the text are spoken."""
    client, match = tagged_client(local_server)
    audio = b"".join(client.tts.stream_websocket(tokens_with_flush(), format="pcm"))
    (record,) = records(local_server, match, 1)
    names = [frame.name for frame in record.received]
    assert names == ["start", *["text"] * 4, "flush", "text", "text", "stop"]
    assert record.spoken == ["The quick brown fox jumps over the lazy dog.", "Then it rests"]
    assert record.audio == audio


def test_sync_speed_reference_id_and_latency(local_server: ThreadedServer) -> None:
    """speed, reference_id and latency reach the server and take effect."""
    client, match = tagged_client(local_server)
    normal = b"".join(client.tts.stream_websocket(iter([SENTENCE]), format="pcm"))
    fast = b"".join(
        client.tts.stream_websocket(
            iter([SENTENCE]), format="pcm", speed=1.8, reference_id="someone", latency="normal"
        )
    )
    assert len(fast) < len(normal) * 0.75
    plain, tuned = records(local_server, match, 2)
    assert plain.voice == tuned.voice == DEFAULT_VOICE
    start = tuned.received[0].event
    assert start is not None and start.event == "start"
    request = start.request  # type: ignore[union-attr]
    assert request.reference_id == "someone" and request.latency == "normal"
    assert request.prosody is not None and request.prosody.speed == 1.8


def test_sync_config_prosody_volume(local_server: ThreadedServer) -> None:
    """A TTSConfig with prosody volume and a sample rate is honoured."""
    client = FishAudio(api_key="x", base_url=local_server.http_url)
    config = TTSConfig(format="wav", sample_rate=16000, prosody=Prosody(speed=1.0, volume=-10))
    audio = b"".join(client.tts.stream_websocket(iter(["Hello there."]), config=config))
    assert parse_wav(audio).sample_rate == 16000


def test_sync_several_calls_in_a_row_and_an_empty_stream(local_server: ThreadedServer) -> None:
    """One client streams three times in a row, the last time with no text at all."""
    client = FishAudio(api_key="x", base_url=local_server.http_url)
    first = b"".join(client.tts.stream_websocket(iter(["One."]), format="pcm"))
    second = b"".join(client.tts.stream_websocket(iter(["Two."]), format="pcm"))
    empty = b"".join(client.tts.stream_websocket(iter([]), format="pcm"))
    assert first and second and empty == b""


def test_sync_opus_stream_decodes(local_server: ThreadedServer) -> None:
    """stream_websocket(format="opus") gives one Ogg Opus stream at 48 kHz with the words."""
    client = FishAudio(api_key="x", base_url=local_server.http_url)
    audio = b"".join(client.tts.stream_websocket(tokens_with_flush(), format="opus"))
    samples, rate = soundfile.read(io.BytesIO(audio), dtype="int16")
    assert rate == 48000 and len(samples) / rate > 2.0


def test_sync_failure_raises_websocket_error(local_server: ThreadedServer) -> None:
    """The SDK sees a session the server ends with an error (too much text waiting) as its
    WebSocketError."""
    client = FishAudio(api_key="x", base_url=local_server.http_url)
    flood = iter(["a " * 100_001])  # over the default max_text of 200,000 characters
    with pytest.raises(WebSocketError):
        b"".join(client.tts.stream_websocket(flood, format="pcm"))


async def async_tokens() -> AsyncIterator[Any]:
    for item in tokens_with_flush():
        yield item


@pytest.mark.parametrize("audio_format", ["mp3", "wav", "pcm"])
async def test_async_stream_every_format(local_server: ThreadedServer, audio_format: str) -> None:
    """AsyncFishAudio's stream_websocket works for every format, with flush."""
    client = AsyncFishAudio(api_key="x", base_url=local_server.http_url)
    audio = b"".join(
        [chunk async for chunk in client.tts.stream_websocket(async_tokens(), format=audio_format)]
    )
    if audio_format == "mp3":
        assert parse_mp3(audio).duration > 2.0
    elif audio_format == "wav":
        assert parse_wav(audio).sample_rate == 44100
    else:
        assert len(audio) / 2 / 44100 > 2.0


async def test_async_options_several_calls_and_empty(local_server: ThreadedServer) -> None:
    """Async: speed, reference_id and latency, calls in a row, and an empty stream."""
    client = AsyncFishAudio(api_key="x", base_url=local_server.http_url)

    async def words(*items: str) -> AsyncIterator[str]:
        for item in items:
            yield item

    async def collect(stream: AsyncIterator[bytes]) -> bytes:
        return b"".join([chunk async for chunk in stream])

    normal = await collect(client.tts.stream_websocket(words(SENTENCE), format="pcm"))
    slow = await collect(
        client.tts.stream_websocket(
            words(SENTENCE), format="pcm", speed=0.6, reference_id="nobody", latency="balanced"
        )
    )
    empty = await collect(client.tts.stream_websocket(words(), format="mp3"))
    assert len(slow) > len(normal) * 1.3
    assert empty == b""
