"""``POST /v1/asr`` on the embedded server: the official SDK against ``fish-notebook serve``,
every documented limit as a 4xx JSON message, and speech synthesis beside it unharmed.

Two voices are transcribed: the embedded Piper voice, and a man reading a Harvard sentence
("The Navy attacked the big task force.", 8 kHz), ``hts1a.wav`` from Debian's
``codec2-examples`` (recordings of human speech for a speech codec's tests;
``scripts/install-system.sh`` installs it). No Python package installed here ships a
recording of human speech.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from fishaudio import FishAudio
from fishaudio.exceptions import AuthenticationError as SdkAuthenticationError
from local_wire import LIVE, STOP, start, text
from websockets.asyncio.client import connect

from fish_notebook.audio import wav_bytes
from fish_notebook.local import LocalServer, ThreadedServer
from fish_notebook.local.cli import READY_PREFIX
from fish_notebook.local.engine import VoiceLibrary, default_voice_files
from fish_notebook.local.transcription import ASR_SOLO_THREADS, MAX_BODY
from tests.helpers import word_errors

HUMAN_WAV = Path("/usr/share/codec2/wav/hts1a.wav")
HUMAN_TEXT = "The Navy attacked the big task force."
MU_LAW_WAV = Path("/usr/share/codec2/wav/cross.wav")  # the same package: a mu-law WAV
PIPER_TEXT = "The quick brown fox jumps over the lazy dog."
TOKEN = "asr-test-token"
MSGPACK = {"Content-Type": "application/msgpack"}
STEADY = "steady"


def wav_header(rate: int, channels: int, bits: int, data: int, riff: int | None = None) -> bytes:
    block = channels * bits // 8
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data if riff is None else riff, b"WAVE", b"fmt ",
        16, 1, channels, rate, rate * block, block, bits, b"data", data,
    )  # fmt: skip


@pytest.fixture(scope="module")
def piper_wav() -> bytes:
    voice = VoiceLibrary().default()
    pcm = b"".join(chunk.pcm for chunk in voice.synthesize(PIPER_TEXT))
    return wav_bytes(pcm, voice.sample_rate)


# --- the official SDK against `fish-notebook serve` -----------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    """``fish-notebook serve --token ...`` as a process; its http URL."""
    env = {k: v for k, v in os.environ.items() if k not in ("FISH_API_KEY", "FISH_BASE_URL")}
    process = subprocess.Popen(
        [sys.executable, "-m", "fish_notebook.cli", "serve", "--port", "0", "--token", TOKEN,
         "--exit-with-parent"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert line.startswith(READY_PREFIX), line
        yield "http" + line[len(READY_PREFIX) :].strip()[2:]
    finally:
        process.kill()
        process.wait(30)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def test_sdk_transcribes_the_embedded_voice(served: str, piper_wav: bytes) -> None:
    """client.asr.transcribe on a WAV the Piper voice spoke: its words, seconds, segments."""
    client = FishAudio(api_key=TOKEN, base_url=served)
    result = client.asr.transcribe(audio=piper_wav, language="en")
    assert word_errors(PIPER_TEXT, result.text) <= 1, result.text
    seconds = (len(piper_wav) - 44) / 2 / 22050
    assert abs(result.duration - seconds) < 0.01
    assert result.segments and result.segments[0].start >= 0
    assert all(s.start < s.end <= result.duration for s in result.segments)
    assert word_errors(PIPER_TEXT, " ".join(s.text for s in result.segments)) <= 1


def test_sdk_transcribes_a_human_voice(served: str) -> None:
    """A man's recorded voice (8 kHz) is heard; without timestamps, no segments."""
    client = FishAudio(api_key=TOKEN, base_url=served)
    audio = HUMAN_WAV.read_bytes()
    result = client.asr.transcribe(audio=audio, include_timestamps=False)
    assert word_errors(HUMAN_TEXT, result.text) <= 1, result.text
    assert result.duration == 3.0 and result.segments == []


def test_sdk_without_the_token_is_refused(served: str, piper_wav: bytes) -> None:
    """The bearer token guards /v1/asr as every other endpoint."""
    client = FishAudio(api_key="wrong", base_url=served)
    with pytest.raises(SdkAuthenticationError):
        client.asr.transcribe(audio=piper_wav)


# --- limits: a clear 4xx JSON message for each ----------------------------------------------------


@pytest.fixture(scope="module")
def steady_voices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default voice with its sampling noise off: the same bytes for the same text."""
    folder = tmp_path_factory.mktemp("steady-voice")
    model, config = default_voice_files()
    shutil.copy(model, folder / f"{STEADY}.onnx")
    settings = json.loads(config.read_text(encoding="utf-8"))
    settings.setdefault("inference", {}).update(noise_scale=0.0, noise_w=0.0)
    (folder / f"{STEADY}.onnx.json").write_text(json.dumps(settings), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def asr_server(steady_voices: Path) -> Iterator[ThreadedServer]:
    """A token, two session slots, a short idle timeout (for the slow body)."""
    server = LocalServer(
        token=TOKEN, max_sessions=2, idle_timeout=2.0, voices_dir=str(steady_voices)
    )
    with server.run_in_thread() as running:
        yield running


def post(server: ThreadedServer, body: bytes, headers: dict[str, str] = MSGPACK) -> httpx.Response:
    headers = {"Authorization": f"Bearer {TOKEN}", **headers}
    return httpx.post(server.http_url + "/v1/asr", content=body, headers=headers, timeout=120)


def asr_body(**fields: Any) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


TONE_WAV = wav_header(16000, 1, 16, 3200) + b"\x10\x00" * 1600
BAD_REQUESTS = {
    # name: (body, content type, status, words in the message)
    "not msgpack": (b"\xc1 not msgpack", "application/msgpack", 400, "not valid MessagePack"),
    "json": (b'{"audio": "x"}', "application/json", 415, "application/msgpack"),
    "no content type": (asr_body(audio=TONE_WAV), "", 415, "multipart/form-data"),
    "not a map": (msgpack.packb([1, 2]), "application/msgpack", 400, "map of fields"),
    "no audio": (asr_body(language="en"), "application/msgpack", 400, "'audio' must be"),
    "audio as text": (asr_body(audio="RIFF"), "application/msgpack", 400, "not a str"),
    "language as int": (asr_body(audio=TONE_WAV, language=5), "application/msgpack", 400,
                        "'language'"),
    "timestamps as text": (asr_body(audio=TONE_WAV, ignore_timestamps="yes"),
                           "application/msgpack", 400, "'ignore_timestamps'"),
    "empty audio": (asr_body(audio=b""), "application/msgpack", 400, "is empty"),
    "mp3": (asr_body(audio=b"ID3\x04\x00" + b"\x00" * 100), "application/msgpack", 400,
            "looks like MP3"),
    "ogg": (asr_body(audio=b"OggS" + b"\x00" * 100), "application/msgpack", 400, "Ogg"),
    "truncated": (asr_body(audio=wav_header(16000, 1, 16, 32000) + b"\x00" * 1000),
                  "application/msgpack", 400, "truncated"),
    "half a sample": (asr_body(audio=wav_header(16000, 1, 16, 3, riff=0) + b"\x00" * 3),
                      "application/msgpack", 400, "inside a sample"),
    "no samples": (asr_body(audio=wav_header(16000, 1, 16, 0)), "application/msgpack", 400,
                   "no samples"),
    "odd rate": (asr_body(audio=wav_header(4000, 1, 16, 800) + b"\x00" * 800),
                 "application/msgpack", 400, "8000..192000"),
    "high rate": (asr_body(audio=wav_header(384000, 1, 16, 800) + b"\x00" * 800),
                  "application/msgpack", 400, "8000..192000"),
    "french on tiny.en": (asr_body(audio=TONE_WAV, language="fr"), "application/msgpack", 400,
                          "English-only"),
    "bad multipart": (b"--x\r\nnothing", "multipart/form-data; boundary=x", 400,
                      "not valid multipart/form-data"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_get_a_clear_4xx(asr_server: ThreadedServer, case: str) -> None:
    """Each way a request can be wrong: its 4xx, a JSON message that says what to do."""
    body, content_type, status, message = BAD_REQUESTS[case]
    answer = post(asr_server, body, {"Content-Type": content_type} if content_type else {})
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["status"] == status and message in answer.json()["message"]


def test_a_mu_law_wav_is_refused_by_name(asr_server: ThreadedServer) -> None:
    """A real mu-law WAV (codec2-examples' cross.wav): 400 naming the format."""
    answer = post(asr_server, asr_body(audio=MU_LAW_WAV.read_bytes()))
    assert answer.status_code == 400 and "mu-law" in answer.json()["message"]


def test_an_hour_of_audio_is_refused_before_any_model_work(asr_server: ThreadedServer) -> None:
    """An hour at 8 kHz, 8-bit (28.8 MB, under the body limit): 400, too long."""
    hour = 8000 * 3600
    audio = wav_header(8000, 1, 8, hour) + b"\x80" * hour
    answer = post(asr_server, asr_body(audio=audio))
    assert answer.status_code == 400
    assert "longer than 120 s" in answer.json()["message"]


def test_a_huge_body_is_refused_from_its_length(asr_server: ThreadedServer) -> None:
    """A body over the limit: 413 JSON from its Content-Length, the rest never read."""
    answer = post(asr_server, b"\x00" * (MAX_BODY + 1))
    assert answer.status_code == 413
    assert f"larger than {MAX_BODY} bytes" in answer.json()["message"]


def test_a_slow_body_gets_408(asr_server: ThreadedServer) -> None:
    """A body that does not arrive within idle_timeout: 408 JSON, the connection closed."""
    with socket.create_connection(("127.0.0.1", asr_server.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/asr HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 1000\r\n\r\n".encode()
            + b"\x81"
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"status": 408' in answer and b"did not arrive within 2s" in answer


def test_no_token_gets_401(asr_server: ThreadedServer) -> None:
    answer = httpx.post(asr_server.http_url + "/v1/asr", content=asr_body(audio=TONE_WAV))
    assert answer.status_code == 401


def test_multipart_with_timestamps(asr_server: ThreadedServer) -> None:
    """A multipart body (audio as a file, ignore_timestamps false): segments with times."""
    answer = httpx.post(
        asr_server.http_url + "/v1/asr",
        files={"audio": ("hts1a.wav", HUMAN_WAV.read_bytes(), "audio/wav")},
        data={"ignore_timestamps": "false", "language": "en"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert set(result) == {"text", "duration", "segments"}
    assert word_errors(HUMAN_TEXT, result["text"]) <= 1
    assert result["segments"] and all(
        set(s) == {"text", "start", "end"} and 0 <= s["start"] < s["end"] <= 3.0
        for s in result["segments"]
    )


def test_silence_is_an_empty_transcript(asr_server: ThreadedServer) -> None:
    answer = post(asr_server, asr_body(audio=TONE_WAV, ignore_timestamps=False))
    assert answer.status_code == 200
    assert answer.json() == {"text": "", "duration": 0.1, "segments": []}


def test_a_transcription_alone_on_the_server_runs_on_the_solo_threads(piper_wav: bytes) -> None:
    """Nothing else runs: the run takes ASR_SOLO_THREADS (two on two cores), and only that
    model instance is loaded (a run beside synthesis would load the one-thread one)."""
    with LocalServer().run_in_thread() as running:
        url, body = running.http_url + "/v1/asr", asr_body(audio=piper_wav)
        answer = httpx.post(url, content=body, headers=MSGPACK, timeout=120)
        assert answer.status_code == 200
        assert word_errors(PIPER_TEXT, answer.json()["text"]) <= 1
        assert running.server.transcriber().loaded_threads == (ASR_SOLO_THREADS,)


# --- beside speech synthesis ----------------------------------------------------------------------


async def tts_session(
    server: ThreadedServer, speaking: asyncio.Event | None = None
) -> tuple[dict[str, Any], bytes]:
    """One speech session with the steady voice; ``speaking`` is set at its first audio."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    events: list[dict[str, Any]] = []
    async with connect(server.url + LIVE, additional_headers=headers, max_size=None) as ws:
        for item in (start(format="pcm", reference_id=STEADY), text(PIPER_TEXT), STOP):
            await ws.send(item)
        while not events or events[-1]["event"] not in ("finish", "error"):
            events.append(msgpack.unpackb(await asyncio.wait_for(ws.recv(), 120), raw=False))
            if speaking is not None and events[-1]["event"] == "audio":
                speaking.set()
    audio = b"".join(e["audio"] for e in events if e["event"] == "audio")
    return events[-1], audio


async def test_a_tts_session_beside_transcriptions_is_unaffected(
    asr_server: ThreadedServer, piper_wav: bytes
) -> None:
    """A speech session running while two transcriptions run (and one is refused for the
    session limit) gets the very bytes it gets alone, and every transcription is right."""
    _, alone = await tts_session(asr_server)

    def transcribe() -> httpx.Response:
        return post(asr_server, asr_body(audio=piper_wav, language="en"))

    speaking = asyncio.Event()
    session = asyncio.ensure_future(tts_session(asr_server, speaking))
    await asyncio.wait_for(speaking.wait(), 120)  # it holds its slot: the rest compete
    answers = await asyncio.gather(*(asyncio.to_thread(transcribe) for _ in range(3)))
    finish, beside = await session
    assert finish == {"event": "finish", "reason": "stop"}
    assert beside == alone
    statuses = sorted(a.status_code for a in answers)
    assert statuses[0] == 200 and set(statuses) <= {200, 429}
    for answer in answers:
        if answer.status_code == 200:
            assert word_errors(PIPER_TEXT, answer.json()["text"]) <= 1
        else:
            assert answer.json()["max_concurrency"] == 2
    assert asr_server.server.active_sessions == 0
