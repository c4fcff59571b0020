"""Our client and sessions against the embedded server with the real Piper voice."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fish_notebook import AsyncRealtimeClient, FlushEvent, RealtimeClient, Session, TextEvent
from fish_notebook.audio import WavStreamParser, pcm_duration, pcm_rms
from fish_notebook.local.server import ThreadedServer

SENTENCE = "The quick brown fox jumps over the lazy dog."


def _speechlike(pcm: bytes, rate: int, words: int) -> None:
    """Plausible speech: roughly 0.2-0.8 s per word, and clearly not silence."""
    seconds = pcm_duration(pcm, rate)
    assert 0.2 * words <= seconds <= 0.8 * words + 1.0, seconds
    assert pcm_rms(pcm) > 300


def _tokens(text: str, delay: float = 0.0) -> Iterator[str]:
    for i, word in enumerate(text.split(" ")):
        if delay:
            time.sleep(delay)
        yield word if i == 0 else " " + word


@pytest.mark.parametrize("audio_format", ["pcm", "wav", "mp3"])
async def test_async_client_every_format(local_server: ThreadedServer, audio_format: str) -> None:
    """Async stream_websocket gives a complete stream in pcm, wav and mp3."""
    async with AsyncRealtimeClient(base_url=local_server.url) as client:
        chunks = [
            c async for c in client.tts.stream_websocket(_tokens(SENTENCE), format=audio_format)
        ]
    data = b"".join(chunks)
    assert len(chunks) >= 1
    if audio_format == "pcm":
        _speechlike(data, 44100, 9)
    elif audio_format == "wav":
        parser = WavStreamParser()
        pcm = parser.feed(data)
        assert parser.sample_rate == 44100 and parser.channels == 1
        _speechlike(pcm, 44100, 9)
    else:
        assert data[:3] == b"ID3" or data[0] == 0xFF
        assert len(data) > 128_000 / 8 * 1.5  # 128 kbps for at least ~1.5 s


def test_sync_client_flush_and_sample_rate(local_server: ThreadedServer) -> None:
    """Sync client, 16 kHz pcm, a flush in the middle: audio covers both halves."""
    source = [*_tokens("First part, spoken early"), FlushEvent(), *_tokens(" and then the rest.")]
    with RealtimeClient(base_url=local_server.url) as client:
        pcm = b"".join(client.stream_websocket(source, format="pcm", sample_rate=16000))
    _speechlike(pcm, 16000, 9)
    record = local_server.recorder.sessions[-1]  # type: ignore[union-attr]
    assert [f.name for f in record.received][:1] == ["start"]
    assert len(record.received_named("flush")) == 1
    assert record.audio == pcm


async def test_speed_changes_duration(local_server: ThreadedServer) -> None:
    """Prosody speed 2.0 gives clearly shorter audio than 0.5 for the same text."""
    async with AsyncRealtimeClient(base_url=local_server.url) as client:
        fast = b"".join(
            [c async for c in client.stream_websocket(SENTENCE, format="pcm", speed=2.0)]
        )
        slow = b"".join(
            [c async for c in client.stream_websocket(SENTENCE, format="pcm", speed=0.5)]
        )
    assert len(slow) > 2.5 * len(fast)


async def test_volume_changes_loudness(local_server: ThreadedServer) -> None:
    """Prosody volume -12 dB is quieter than +0 dB."""
    async with AsyncRealtimeClient(base_url=local_server.url) as client:
        loud = b"".join([c async for c in client.stream_websocket(SENTENCE, format="pcm")])
        quiet = b"".join(
            [c async for c in client.stream_websocket(SENTENCE, format="pcm", volume=-12)]
        )
    assert pcm_rms(quiet) < 0.5 * pcm_rms(loud)


async def test_several_streams_at_once(local_server: ThreadedServer) -> None:
    """Four concurrent streams each get their own complete audio."""
    texts = [
        "One small step.",
        "Two roads diverged in a wood.",
        "Three blind mice.",
        "Four score and seven years ago.",
    ]

    async def speak(text: str) -> bytes:
        async def paced() -> AsyncIterator[object]:
            for token in _tokens(text):
                await asyncio.sleep(0.02)
                yield TextEvent(token)

        async with AsyncRealtimeClient(base_url=local_server.url) as client:
            return b"".join([c async for c in client.stream_websocket(paced(), format="pcm")])

    results = await asyncio.gather(*(speak(t) for t in texts))
    for text, pcm in zip(texts, results, strict=True):
        _speechlike(pcm, 44100, len(text.split()))
    lengths = [len(p) for p in results]
    assert lengths[1] > lengths[0] and lengths[3] > lengths[2]


def test_session_against_the_embedded_voice(local_server: ThreadedServer, tmp_path: Path) -> None:
    """A session with a paced token stream records speech and saves a matching WAV."""
    session = Session(
        _tokens("Hello from a notebook. Streaming speech arrives early.", 0.03),
        base_url=local_server.url,
    )
    session.wait(60)
    _speechlike(session.audio, session.sample_rate, 8)
    m = session.metrics
    assert (
        m["chunks"] >= 2 and m["ttfa_s"] is not None and m["rtf"] > 0
    )  # two sentences, two chunks at least
    saved = session.save(tmp_path / "hello.wav")
    assert saved.stat().st_size == 44 + len(session.audio)


README_EXAMPLE = textwrap.dedent(
    """
    import time
    from fish_notebook import FlushEvent, RealtimeClient

    def llm_tokens():
        # Stands in for a streaming LLM: tokens at LLM pace, a flush at the sentence end.
        for token in ["Hello", " from", " fish", " notebook", ".", FlushEvent(), " This",
                      " speech", " was", " streamed", " while", " it", " was", " written", "."]:
            time.sleep(0.03)
            yield token

    with RealtimeClient() as client, open("hello.wav", "wb") as f:
        for chunk in client.stream_websocket(llm_tokens(), format="wav"):
            f.write(chunk)
    """
)


def test_readme_first_example_runs_offline_with_zero_config(tmp_path: Path) -> None:
    """The README's first example with no env at all starts the embedded server, writes speech."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert README_EXAMPLE.strip() in readme, "README's first example drifted from this test"
    # No user configuration (the run's own FISH_NOTEBOOK_* plumbing stays: its state folder).
    env = {k: v for k, v in os.environ.items() if k not in ("FISH_API_KEY", "FISH_BASE_URL")}
    subprocess.run(
        [sys.executable, "-c", README_EXAMPLE], cwd=tmp_path, env=env, check=True, timeout=180
    )
    parser = WavStreamParser()
    pcm = parser.feed((tmp_path / "hello.wav").read_bytes())
    _speechlike(pcm, parser.sample_rate or 44100, 10)


@pytest.mark.parametrize("audio_format", ["wav", "pcm"])
def test_playback_of_the_official_sdk_stream(
    local_server: ThreadedServer, audio_format: str
) -> None:
    """Playback records the Fish SDK's own sync stream_websocket output, sample-exact."""
    from fishaudio import FishAudio

    from fish_notebook.session import Playback

    sdk = FishAudio(api_key="unused-locally", base_url=local_server.http_url)
    stream = sdk.tts.stream_websocket(iter(["Played as it ", "arrives."]), format=audio_format)
    playback = Playback(stream, format=audio_format).wait(60)
    assert playback.state == "finished" and playback.text == []
    sent = local_server.recorder.sessions[-1].audio  # type: ignore[union-attr]
    expected = WavStreamParser().feed(sent) if audio_format == "wav" else sent
    assert playback.audio == expected and playback.sample_rate == 44100
    _speechlike(playback.audio, playback.sample_rate, 4)
