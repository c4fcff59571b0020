"""The embedded server over real sockets, driven by a raw websockets + msgpack client."""

from __future__ import annotations

import asyncio
import json
import shutil
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from local_wire import (
    FLUSH,
    LIVE,
    SENTENCE,
    STOP,
    next_event,
    parse_mp3,
    parse_wav,
    read_all,
    rms,
    session,
    start,
    text,
)
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fish_notebook.audio import UNKNOWN_SIZE
from fish_notebook.errors import ValidationError
from fish_notebook.local import LocalServer, SessionRecord, ThreadedServer
from fish_notebook.local.engine import DEFAULT_VOICE, default_voice_files
from fish_notebook.protocol import DEFAULT_MODEL, MODELS

LONG_TEXT = " ".join(
    f"Sentence number {i} keeps the voice busy for a little while, as long texts do."
    for i in range(20)
)


def tagged() -> tuple[dict[str, str], Any]:
    """A unique request header and a matcher that finds the session that sent it."""
    tag = uuid.uuid4().hex

    def match(record: SessionRecord) -> bool:
        return record.headers.get("x-test") == tag

    return {"X-Test": tag}, match


async def record_of(server: ThreadedServer, match: Any) -> SessionRecord:
    assert server.recorder is not None
    return await server.recorder.await_for(match, timeout=30)


def pcm_seconds(pcm: bytes, rate: int) -> float:
    return len(pcm) / 2 / rate


# --- formats and sample rates -----------------------------------------------------------------


async def test_pcm_is_16_bit_mono_at_44100_by_default(local_server: ThreadedServer) -> None:
    """format=pcm sends whole 16-bit samples at 44.1 kHz: the sentence lasts about 2-4 s."""
    out = await session(local_server.url, [start(format="pcm"), text(SENTENCE), STOP])
    assert out.finish == {"event": "finish", "reason": "stop"}
    assert len(out.audio) % 2 == 0
    assert 1.5 < pcm_seconds(out.audio, 44100) < 5.0
    assert rms(out.audio) > 500


@pytest.mark.parametrize("rate", [None, 16000, 22050, 48000])
async def test_wav_has_a_streamed_header_and_the_requested_rate(
    local_server: ThreadedServer, rate: int | None
) -> None:
    """format=wav starts with one RIFF header (sizes unknown) at the requested rate, then PCM."""
    out = await session(
        local_server.url, [start(format="wav", sample_rate=rate), text(SENTENCE), STOP]
    )
    wav = parse_wav(out.audio)
    assert (wav.sample_rate, wav.channels, wav.bits) == (rate or 44100, 1, 16)
    assert wav.riff_size == wav.data_size == UNKNOWN_SIZE
    assert out.audio.count(b"RIFF") == 1
    assert len(wav.pcm) == len(out.audio) - 44
    assert 1.5 < pcm_seconds(wav.pcm, wav.sample_rate) < 5.0


@pytest.mark.parametrize(
    ("rate", "bitrate"), [(None, None), (44100, 64), (48000, 192), (22050, 128)]
)
async def test_mp3_is_the_default_with_the_requested_rate_and_bitrate(
    local_server: ThreadedServer, rate: int | None, bitrate: int | None
) -> None:
    """With no format, MP3 frames come at the requested sample rate and constant bitrate."""
    request: dict[str, Any] = {"sample_rate": rate, "mp3_bitrate": bitrate}
    out = await session(local_server.url, [start(**request), text(SENTENCE), STOP])
    mp3 = parse_mp3(out.audio)
    assert mp3.sample_rate == (rate or 44100)
    assert mp3.bitrates == {bitrate or 128}
    assert 1.5 < mp3.duration < 5.5


@pytest.mark.parametrize(("rate", "opus_rate"), [(None, 48000), (16000, 16000), (44100, 48000)])
async def test_opus_is_one_ogg_opus_stream(
    local_server: ThreadedServer, rate: int | None, opus_rate: int
) -> None:
    """format=opus sends Ogg pages that decode (libsndfile) to the sentence, at 48 kHz by
    default, at a requested Opus rate, or at the next Opus rate up from another."""
    import io

    import soundfile

    out = await session(
        local_server.url, [start(format="opus", sample_rate=rate), text(SENTENCE), STOP]
    )
    assert out.finish == {"event": "finish", "reason": "stop"}
    assert out.audio.startswith(b"OggS") and out.audio.count(b"OpusHead") == 1
    samples, decoded_rate = soundfile.read(io.BytesIO(out.audio), dtype="int16")
    assert decoded_rate == opus_rate
    assert 1.5 < len(samples) / decoded_rate < 5.0
    assert rms(samples.tobytes()) > 500


async def test_audio_events_stay_under_the_sdk_message_limit(local_server: ThreadedServer) -> None:
    """No audio event exceeds 64 KiB (the Fish SDK's default receive limit)."""
    out = await session(
        local_server.url, [start(format="wav", sample_rate=48000), text(LONG_TEXT[:600]), STOP]
    )
    sizes = [len(msgpack.packb(e)) for e in out.named("audio")]
    assert sizes and max(sizes) < 64 * 1024


# --- prosody and latency ----------------------------------------------------------------------


async def test_speed_changes_duration(local_server: ThreadedServer) -> None:
    """prosody.speed 2.0 is much shorter and 0.5 much longer than 1.0."""

    async def seconds(speed: float) -> float:
        prosody = {"speed": speed, "volume": 0}
        out = await session(
            local_server.url, [start(format="pcm", prosody=prosody), text(SENTENCE), STOP]
        )
        return pcm_seconds(out.audio, 44100)

    normal, fast, slow = await seconds(1.0), await seconds(2.0), await seconds(0.5)
    assert fast < normal * 0.7
    assert slow > normal * 1.5


async def test_volume_changes_loudness(local_server: ThreadedServer) -> None:
    """prosody.volume -12 dB is much quieter than 0 dB, and +6 dB louder."""

    async def loudness(volume: float) -> float:
        prosody = {"speed": 1.0, "volume": volume}
        out = await session(
            local_server.url, [start(format="pcm", prosody=prosody), text(SENTENCE), STOP]
        )
        return rms(out.audio)

    quiet, normal, loud = await loudness(-12), await loudness(0), await loudness(6)
    assert quiet < normal / 3
    assert loud > normal * 1.3


async def test_latency_changes_chunking(local_server: ThreadedServer) -> None:
    """latency=low speaks clause by clause; balanced waits for the sentence end."""
    words = "Well, when the morning came, the fox, who was tired, went home to sleep. "
    spoken = {}
    for latency in ("low", "balanced"):
        headers, match = tagged()
        request = {"format": "pcm", "latency": latency, "min_chunk_length": 10}
        await session(local_server.url, [start(**request), text(words), STOP], headers=headers)
        spoken[latency] = (await record_of(local_server, match)).spoken
    assert len(spoken["low"]) > 1
    assert spoken["balanced"] == [words.strip()]
    assert " ".join(spoken["low"]) == words.strip()


# --- the session's life -----------------------------------------------------------------------


async def test_flush_speaks_before_stop(local_server: ThreadedServer) -> None:
    """Text without a sentence end is spoken on flush; finish waits for stop."""
    headers, match = tagged()
    async with connect(local_server.url + LIVE, additional_headers=headers) as ws:
        await ws.send(start(format="pcm"))
        await ws.send(text("Hello there my friend"))
        await ws.send(FLUSH)
        first = await next_event(ws)
        assert first["event"] == "audio"
        # Everything from that flush, then silence: no finish without stop.
        with pytest.raises(TimeoutError):
            while True:
                event = await next_event(ws, timeout=1.0)
                assert event["event"] == "audio"
        await ws.send(text("and then some more words"))
        await ws.send(STOP)
        rest = await read_all(ws)
    assert rest.finish == {"event": "finish", "reason": "stop"}
    assert rest.audio  # the text after the flush was spoken too
    record = await record_of(local_server, match)
    assert [f.name for f in record.received] == ["start", "text", "flush", "text", "stop"]
    assert record.spoken == ["Hello there my friend", "and then some more words"]
    flush_time = record.received_named("flush")[0].time
    assert any(s.time > flush_time for s in record.sent_named("audio"))


async def test_burst_of_start_text_and_stop_gets_all_audio(local_server: ThreadedServer) -> None:
    """start, many texts and stop sent at once: every word is spoken, then finish."""
    headers, match = tagged()
    pieces = [w + " " for w in LONG_TEXT[:700].split(" ")]
    out = await session(
        local_server.url, [start(format="pcm"), *map(text, pieces), STOP], headers=headers
    )
    assert out.finish == {"event": "finish", "reason": "stop"}
    assert out.events[-1]["event"] == "finish"
    record = await record_of(local_server, match)
    assert " ".join(record.spoken).split() == "".join(pieces).split()
    assert record.audio == out.audio
    assert pcm_seconds(out.audio, 44100) > 20


async def test_empty_session_finishes(local_server: ThreadedServer) -> None:
    """start then stop with no text: finish reason=stop, no audio, socket closed normally."""
    out = await session(local_server.url, [start(), STOP])
    assert out.events == [{"event": "finish", "reason": "stop"}]
    assert out.close_code == 1000


async def test_sdk_style_request_with_nulls_is_accepted(local_server: ThreadedServer) -> None:
    """A request with every field, nulls and empty references (as the SDK sends) works."""
    request = {
        "text": "", "chunk_length": 200, "format": "wav", "sample_rate": None, "mp3_bitrate": 128,
        "opus_bitrate": 32, "references": [], "reference_id": None, "normalize": True,
        "latency": "balanced", "prosody": None, "top_p": 0.7, "temperature": 0.7,
        "max_new_tokens": 1024, "repetition_penalty": 1.2, "min_chunk_length": 50,
        "condition_on_previous_chunks": True, "early_stop_threshold": 1.0,
    }  # fmt: skip
    out = await session(local_server.url, [start(**request), text("Hi."), STOP])
    assert out.finish == {"event": "finish", "reason": "stop"}
    assert parse_wav(out.audio).sample_rate == 44100


@pytest.mark.parametrize("model", [*MODELS, "no-such-model", None])
async def test_model_header_known_or_default(
    local_server: ThreadedServer, model: str | None
) -> None:
    """Every known model name is taken as is; a missing or unknown one falls back to the default."""
    headers, match = tagged()
    if model is not None:
        headers["model"] = model
    out = await session(
        local_server.url, [start(format="pcm"), text("Yes."), STOP], headers=headers
    )
    assert out.finish == {"event": "finish", "reason": "stop"}
    record = await record_of(local_server, match)
    assert record.model == (model if model in MODELS else DEFAULT_MODEL)


async def test_unknown_reference_id_speaks_default_voice_and_logs(
    local_server: ThreadedServer,
) -> None:
    """An unknown reference_id gets a log event naming it, and audio in the default voice."""
    headers, match = tagged()
    request = {"format": "pcm", "reference_id": "0123abcd"}
    out = await session(local_server.url, [start(**request), text(SENTENCE), STOP], headers=headers)
    assert any("0123abcd" in message and DEFAULT_VOICE in message for message in out.logs)
    assert out.audio and out.finish == {"event": "finish", "reason": "stop"}
    assert (await record_of(local_server, match)).voice == DEFAULT_VOICE


async def test_references_are_ignored_with_a_log(local_server: ThreadedServer) -> None:
    """Zero-shot references are accepted, not used, and a log event says so."""
    request = {"format": "pcm", "references": [{"audio": b"\x00" * 100, "text": "hi"}]}
    out = await session(local_server.url, [start(**request), text("Hello."), STOP])
    assert any("references" in message for message in out.logs)
    assert out.audio


async def test_pings_are_answered_during_long_synthesis(local_server: ThreadedServer) -> None:
    """While a long text is synthesized, the server answers pings and serves another session."""
    async with connect(local_server.url + LIVE, ping_interval=None) as ws:
        await ws.send(start(format="pcm"))
        await ws.send(text(LONG_TEXT))
        await ws.send(STOP)
        await next_event(ws)  # synthesis is under way
        reader = asyncio.create_task(read_all(ws))  # keep reading, as a real client does
        for _ in range(5):
            pong = await ws.ping()
            await asyncio.wait_for(pong, 5.0)
            await asyncio.sleep(0.2)
        answered_while_speaking = not reader.done()
        short = await session(local_server.url, [start(format="pcm"), text("Hi."), STOP])
        short_done_first = not reader.done()
        long = await reader
    assert answered_while_speaking and short_done_first
    assert short.finish == {"event": "finish", "reason": "stop"}
    assert long.finish == {"event": "finish", "reason": "stop"}
    assert long.audio


async def test_client_leaving_mid_speech_does_not_hurt_the_server(
    local_server: ThreadedServer,
) -> None:
    """A client that disconnects during synthesis leaves the server serving others."""
    async with connect(local_server.url + LIVE, close_timeout=1) as ws:
        await ws.send(start(format="pcm"))
        await ws.send(text(LONG_TEXT))
        await ws.send(STOP)
        await next_event(ws)
    out = await session(local_server.url, [start(format="pcm"), text("Still here."), STOP])
    assert out.finish == {"event": "finish", "reason": "stop"}


# --- bad input --------------------------------------------------------------------------------

BAD_FRAMES: dict[str, list[bytes | str]] = {
    "text frame": ['{"event": "start"}'],
    "not msgpack": [b"\xc1\xc1\xc1"],
    "not a map": [msgpack.packb([1, 2, 3])],
    "unknown event": [start(), msgpack.packb({"event": "dance"})],
    "text before start": [text("Hello."), STOP],
    "second start": [start(), start(), STOP],
    "bad request field": [start(chunk_length=5), STOP],
    "text not a string": [start(), msgpack.packb({"event": "text", "text": 42}), STOP],
    "invalid utf-8": [start(), b"\x82\xa5event\xa4text\xa4text\xa2\xff\xfe", STOP],
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
async def test_bad_frames_end_the_session_with_an_error(
    local_server: ThreadedServer, case: str
) -> None:
    """Each kind of bad frame ends its session with finish reason=error, a message and a log."""
    out = await session(local_server.url, BAD_FRAMES[case])
    assert out.finish is not None
    assert out.finish["reason"] == "error"
    assert out.finish["message"]
    assert out.finish["message"] in out.logs
    assert out.events[-1]["event"] == "finish"


async def test_bad_session_beside_a_good_one(local_server: ThreadedServer) -> None:
    """A session sending garbage does not disturb one running at the same time."""
    good, bad = await asyncio.gather(
        session(local_server.url, [start(format="pcm"), text(SENTENCE), STOP]),
        session(local_server.url, [start(), b"garbage"]),
    )
    assert good.finish == {"event": "finish", "reason": "stop"} and good.audio
    assert bad.finish is not None and bad.finish["reason"] == "error"


# --- limits and security ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_server() -> Iterator[ThreadedServer]:
    """A server with a token, one session at most, short idle timeout and small limits."""
    server = LocalServer(
        token="s3cret", max_sessions=1, idle_timeout=2.0, max_text=300, max_frame_size=4096
    )
    with server.run_in_thread() as running:
        yield running


AUTH = {"Authorization": "Bearer s3cret"}


@pytest.mark.parametrize(
    "headers", [None, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}]
)
async def test_token_required_when_set(
    strict_server: ThreadedServer, headers: dict[str, str] | None
) -> None:
    """Without the right bearer token the handshake is refused with HTTP 401."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(strict_server.url + LIVE, additional_headers=headers):
            pass
    assert refused.value.response.status_code == 401


async def test_right_token_is_served(strict_server: ThreadedServer) -> None:
    """With the right bearer token the session works."""
    out = await session(strict_server.url, [start(format="pcm"), text("Hi."), STOP], headers=AUTH)
    assert out.finish == {"event": "finish", "reason": "stop"}


async def test_concurrency_limit_answers_an_error_event(strict_server: ThreadedServer) -> None:
    """One session too many gets the cloud's error event with max_concurrency, then a close."""
    async with connect(strict_server.url + LIVE, additional_headers=AUTH) as first:
        await first.send(start(format="pcm"))
        await first.send(text(SENTENCE))
        await first.send(FLUSH)
        await next_event(first)  # the first session is being served
        async with connect(strict_server.url + LIVE, additional_headers=AUTH) as second:
            refused = await read_all(second, timeout=10)
        await first.send(STOP)
        served = await read_all(first)
    assert refused.events == [
        {"event": "error", "error": "Concurrency limit exceeded", "max_concurrency": 1}
    ]
    assert refused.close_code == 1013
    assert served.finish == {"event": "finish", "reason": "stop"}
    again = await session(strict_server.url, [start(), STOP], headers=AUTH)
    assert again.finish == {"event": "finish", "reason": "stop"}


@pytest.mark.parametrize("frames", [[], [start()]], ids=["before start", "after start"])
async def test_idle_session_is_closed(strict_server: ThreadedServer, frames: list[bytes]) -> None:
    """A client that sends nothing for idle_timeout gets finish reason=error and a close."""
    out = await session(strict_server.url, frames, headers=AUTH, timeout=10)
    assert out.finish is not None and out.finish["reason"] == "error"
    assert "idle" in out.finish["message"]


async def test_too_much_buffered_text_is_refused(strict_server: ThreadedServer) -> None:
    """More text waiting than max_text ends the session with an error saying why."""
    frames = [start(format="pcm"), *(text("word " * 20) for _ in range(5)), STOP]
    out = await session(strict_server.url, frames, headers=AUTH)
    assert out.finish is not None and out.finish["reason"] == "error"
    assert "300 characters" in out.finish["message"]


async def test_oversized_frame_closes_the_connection(strict_server: ThreadedServer) -> None:
    """A frame over max_frame_size closes the connection with code 1009."""
    out = await session(strict_server.url, [start(), text("x" * 10_000)], headers=AUTH)
    assert out.close_code == 1009
    assert out.finish is None


def test_non_loopback_host_needs_a_token() -> None:
    """Binding beyond loopback without a token is refused unless explicitly allowed."""
    with pytest.raises(ValidationError, match="loopback"):
        LocalServer(host="0.0.0.0")
    assert LocalServer(host="0.0.0.0", token="t").host == "0.0.0.0"
    assert LocalServer(host="0.0.0.0", allow_insecure=True).host == "0.0.0.0"


def test_repr_hides_the_token() -> None:
    """The token never appears in the server's repr."""
    assert "s3cret" not in repr(LocalServer(token="s3cret"))


# --- plain HTTP -------------------------------------------------------------------------------


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return (
                response.status,
                response.headers.get("Content-Type", ""),
                response.read().decode(),
            )
    except urllib.error.HTTPError as error:
        with error:
            return error.code, "", error.read().decode()


def test_healthz_and_voices(local_server: ThreadedServer) -> None:
    """GET /healthz answers ok; GET /v1/voices lists the default voice with its rate."""
    assert http_get(local_server.http_url + "/healthz")[::2] == (200, "ok\n")
    status, content_type, body = http_get(local_server.http_url + "/v1/voices")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == {
        "voices": [{"id": DEFAULT_VOICE, "default": True, "sample_rate": 22050}]
    }
    assert http_get(local_server.http_url + "/nowhere")[0] == 404


def test_voices_need_the_token_when_set(strict_server: ThreadedServer) -> None:
    """/v1/voices is refused without the token; /healthz is open."""
    assert http_get(strict_server.http_url + "/v1/voices")[0] == 401
    assert http_get(strict_server.http_url + "/v1/voices", AUTH)[0] == 200
    assert http_get(strict_server.http_url + "/healthz")[0] == 200


# --- voices from a folder ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding one extra voice (the bundled one under another name, linked)."""
    folder = tmp_path_factory.mktemp("voices")
    model, config = default_voice_files()
    (folder / "my-voice.onnx").symlink_to(model)
    shutil.copy(config, folder / "my-voice.onnx.json")
    (folder / "broken.onnx").write_bytes(b"no config next to me")
    return folder


async def test_reference_id_selects_a_folder_voice(voices_dir: Path) -> None:
    """reference_id naming a voice from the folder speaks with it, with no log event."""
    async with LocalServer(voices_dir=str(voices_dir), record=True) as server:
        out = await session(
            server.url, [start(format="pcm", reference_id="my-voice"), text("Hi."), STOP]
        )
        assert out.audio and out.logs == []
        assert server.recorder is not None
        record = await server.recorder.await_for()
        assert record.voice == "my-voice"
        _, _, body = await asyncio.to_thread(http_get, server.http_url + "/v1/voices")
    ids = [v["id"] for v in json.loads(body)["voices"]]
    assert ids == [DEFAULT_VOICE, "my-voice"]
