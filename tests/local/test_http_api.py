"""The embedded server's HTTP side of the Fish API, driven by the official SDK and raw httpx:
``POST /v1/tts`` in every format, ``GET /model`` and ``GET /model/{id}``, and their refusals."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import msgpack
import pytest
import soundfile
from fishaudio import FishAudio
from fishaudio.exceptions import APIError, AuthenticationError, NotFoundError, RateLimitError
from fishaudio.types import TTSConfig
from local_wire import (
    FLUSH,
    SENTENCE,
    STOP,
    next_event,
    parse_mp3,
    parse_wav,
    read_all,
    rms,
    start,
    text,
)
from local_wire import session as ws_session
from websockets.asyncio.client import connect

from fish_notebook import formats
from fish_notebook.local import LocalServer, ThreadedServer
from fish_notebook.local.engine import DEFAULT_VOICE, default_voice_files

TWO_SENTENCES = "The quick brown fox jumps over the lazy dog. Then it rests in the sun."


def sdk(server: ThreadedServer, **headers: str) -> FishAudio:
    client = httpx.Client(base_url=server.http_url, headers=headers, timeout=60)
    return FishAudio(api_key="x", base_url=server.http_url, httpx_client=client)


def decoded(audio_format: str, audio: bytes) -> tuple[bytes, int]:
    """16-bit mono PCM and its rate, decoded from a whole file of ``audio_format``."""
    if audio_format == "opus":
        samples, rate = soundfile.read(io.BytesIO(audio), dtype="int16")
        return bytes(samples.tobytes()), int(rate)
    if audio_format == "wav":
        wav = parse_wav(audio)
        return wav.pcm, wav.sample_rate
    if audio_format == "mp3":
        rate = parse_mp3(audio).sample_rate  # walks every frame: fails on anything else
        decoder = formats.get("mp3").decode_stream(rate)
        return decoder.feed(audio) + decoder.finish(), rate
    return audio, 44100


# --- POST /v1/tts with the SDK ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("audio_format", "rate"), [("mp3", 44100), ("wav", 44100), ("pcm", 44100), ("opus", 48000)]
)
def test_convert_every_format(local_server: ThreadedServer, audio_format: str, rate: int) -> None:
    """tts.convert gives a whole file in each format that decodes to speech of the sentence's
    length, at the format's default rate."""
    audio = sdk(local_server).tts.convert(text=SENTENCE, format=audio_format)
    pcm, decoded_rate = decoded(audio_format, audio)
    assert decoded_rate == rate
    assert 1.5 < len(pcm) / 2 / rate < 5.5
    assert rms(pcm) > 500


@pytest.mark.parametrize("audio_format", ["mp3", "wav", "pcm", "opus"])
def test_content_type_comes_from_the_registry(
    local_server: ThreadedServer, audio_format: str
) -> None:
    """The answer's Content-Type is the registry's MIME type for the format."""
    body = msgpack.packb({"text": "Hi.", "format": audio_format})
    answer = httpx.post(
        local_server.http_url + "/v1/tts",
        content=body,
        headers={"Content-Type": "application/msgpack"},
        timeout=60,
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"] == formats.get(audio_format).mime


def test_convert_honours_the_request(local_server: ThreadedServer) -> None:
    """sample_rate, speed, opus_bitrate, the model header and reference_id reach the voice."""
    assert local_server.recorder is not None
    tag = uuid.uuid4().hex
    client = sdk(local_server, **{"X-Test": tag})
    slow = client.tts.convert(text=SENTENCE, format="pcm", speed=0.6, model="s1")
    fast = client.tts.convert(text=SENTENCE, format="pcm", speed=1.8)
    wav = client.tts.convert(text=SENTENCE, config=TTSConfig(format="wav", sample_rate=16000))
    small = client.tts.convert(text=SENTENCE, config=TTSConfig(format="opus", opus_bitrate=24))
    large = client.tts.convert(text=SENTENCE, config=TTSConfig(format="opus", opus_bitrate=64))
    assert len(slow) > 2 * len(fast)
    assert parse_wav(wav).sample_rate == 16000
    assert len(small) < 0.6 * len(large)
    local_server.recorder.wait_for(lambda r: r.headers.get("x-test") == tag)
    records = [r for r in local_server.recorder.sessions if r.headers.get("x-test") == tag]
    assert records[0].model == "s1" and records[0].voice == DEFAULT_VOICE
    assert records[0].audio == slow and records[0].spoken == [SENTENCE]


def test_stream_yields_the_audio_as_it_is_spoken(local_server: ThreadedServer) -> None:
    """tts.stream joins into the same kind of file; over raw HTTP the answer comes in
    several chunks, the first long before the last."""
    audio = b"".join(sdk(local_server).tts.stream(text=TWO_SENTENCES, format="mp3"))
    assert parse_mp3(audio).duration > 3.0
    arrivals = []
    body = json.dumps({"text": TWO_SENTENCES * 3, "format": "pcm"}).encode()
    with httpx.stream(
        "POST", local_server.http_url + "/v1/tts", content=body, timeout=60,
        headers={"Content-Type": "application/json"},
    ) as answer:  # fmt: skip
        for chunk in answer.iter_raw():
            arrivals.append((time.monotonic(), len(chunk)))
    assert answer.headers["transfer-encoding"] == "chunked"
    assert len(arrivals) > 3
    assert sum(size for _, size in arrivals) / 2 / 44100 > 10.0


# --- refusals -------------------------------------------------------------------------------

BAD_BODIES: dict[str, tuple[str, bytes, int, str]] = {
    "bad json": ("application/json", b'{"text": ', 400, "not valid JSON"),
    "bad msgpack": ("application/msgpack", b"\xc1\xc1", 400, "not valid MessagePack"),
    "not a map": ("application/json", b"[1, 2]", 400, "must be a map"),
    "no text": ("application/json", b'{"format": "mp3"}', 400, "'text'"),
    "blank text": ("application/json", b'{"text": "   "}', 400, "'text'"),
    "text not a string": ("application/msgpack", msgpack.packb({"text": 5}), 400, "'text'"),
    "bad format": ("application/json", b'{"text": "Hi.", "format": "flac"}', 400, "format"),
    "bad chunk_length": (
        "application/json", b'{"text": "Hi.", "chunk_length": 5}', 400, "100..300"
    ),
    "speed as text": (
        "application/json", b'{"text": "Hi.", "prosody": {"speed": "fast"}}', 400, "prosody.speed"
    ),
    "text too long": (
        "application/json", json.dumps({"text": "a " * 100_001}).encode(), 413, "200000"
    ),
    "other type": ("text/plain", b"Hi.", 415, "application/msgpack"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
async def test_bad_bodies_get_clear_json_beside_a_healthy_session(
    local_server: ThreadedServer, case: str
) -> None:
    """Each bad body gets its 4xx with a JSON message saying what is wrong, while a
    WebSocket session on the same port runs to its normal end."""
    content_type, body, status, words = BAD_BODIES[case]

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.post(
                local_server.http_url + "/v1/tts", content=body,
                headers={"Content-Type": content_type},
            )  # fmt: skip

    healthy, answer = await asyncio.gather(
        ws_session(local_server.url, [start(format="pcm"), text(SENTENCE), STOP]), post()
    )
    assert answer.status_code == status
    assert answer.headers["content-type"] == "application/json"
    message = answer.json()["message"]
    assert words in message
    assert healthy.finish == {"event": "finish", "reason": "stop"} and rms(healthy.audio) > 500


def test_the_sdk_sees_a_refusal_as_its_api_error(local_server: ThreadedServer) -> None:
    """A request the server refuses raises the SDK's APIError carrying the message."""
    with pytest.raises(APIError, match="flac"):
        sdk(local_server).tts.convert(text="Hi.", format="flac")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def strict_server() -> Iterator[ThreadedServer]:
    """A token, one session at most, a short idle timeout and small bodies."""
    server = LocalServer(token="s3cret", max_sessions=1, idle_timeout=1.0, max_frame_size=64 * 1024)
    with server.run_in_thread() as running:
        yield running


AUTH = {"Authorization": "Bearer s3cret"}


def test_a_huge_body_is_refused_by_its_length(strict_server: ThreadedServer) -> None:
    """A body over max_frame_size: 413 JSON at once, before the body is read."""
    answer = httpx.post(
        strict_server.http_url + "/v1/tts", content=b"x" * (1 << 20),
        headers={**AUTH, "Content-Type": "application/json"}, timeout=30,
    )  # fmt: skip
    assert answer.status_code == 413 and "65536 bytes" in answer.json()["message"]


def test_a_slow_sender_gets_408(strict_server: ThreadedServer) -> None:
    """A body that does not arrive within idle_timeout: 408 JSON, the connection closed."""
    head = (
        "POST /v1/tts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
        'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"text": '
    )
    # The socket's own timeout bounds the wait: no answer within 10 s fails the test there.
    with socket.create_connection(("127.0.0.1", strict_server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    status, _, rest = received.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout"
    assert "did not arrive within 1s" in json.loads(rest.partition(b"\r\n\r\n")[2])["message"]


def test_the_token_guards_the_http_api(strict_server: ThreadedServer) -> None:
    """Without the token: the SDK's AuthenticationError for tts and voices; with it, served."""
    wrong = FishAudio(api_key="wrong", base_url=strict_server.http_url)
    with pytest.raises(AuthenticationError):
        wrong.tts.convert(text="Hi.")
    with pytest.raises(AuthenticationError):
        wrong.voices.list()
    right = FishAudio(api_key="s3cret", base_url=strict_server.http_url)
    assert rms(right.tts.convert(text="Hi.", format="pcm")) > 300
    assert right.voices.list().total == 1


async def test_past_max_sessions_is_429(strict_server: ThreadedServer) -> None:
    """With the one session taken by a WebSocket, a POST gets 429 with max_concurrency
    (the SDK's RateLimitError); once that session ends, the POST is served."""
    async with connect(strict_server.url + "/v1/tts/live", additional_headers=AUTH) as ws:
        for frame in (start(format="pcm"), text(SENTENCE), FLUSH):
            await ws.send(frame)
        await next_event(ws)

        async def stay_active() -> None:  # the session is not idle (1 s) while we ask
            while True:
                await asyncio.sleep(0.25)
                await ws.send(text(" "))

        active = asyncio.create_task(stay_active())
        answer = await asyncio.to_thread(
            httpx.post, strict_server.http_url + "/v1/tts", json={"text": "Hi."},
            headers=AUTH, timeout=30,
        )  # fmt: skip
        with pytest.raises(RateLimitError):
            await asyncio.to_thread(
                FishAudio(api_key="s3cret", base_url=strict_server.http_url).tts.convert,
                text="Hi.",
            )
        active.cancel()
        await ws.send(STOP)
        served = await read_all(ws)
    assert answer.status_code == 429 and answer.json()["max_concurrency"] == 1
    assert served.finish == {"event": "finish", "reason": "stop"}
    later = await asyncio.to_thread(
        httpx.post, strict_server.http_url + "/v1/tts", json={"text": "Hi."}, headers=AUTH,
        timeout=30,
    )  # fmt: skip
    assert later.status_code == 200 and later.content


# --- GET /model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def voices_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    """A server with three extra voices in its folder (the bundled model under other names)."""
    folder = tmp_path_factory.mktemp("voices")
    model, config = default_voice_files()
    settings = json.loads(config.read_text(encoding="utf-8"))
    for name, family in (("alpha-voice", "en"), ("beta-voice", "de"), ("gamma-voice", "en")):
        (folder / f"{name}.onnx").symlink_to(model)
        settings["language"] = {**settings.get("language", {}), "family": family}
        (folder / f"{name}.onnx.json").write_text(json.dumps(settings), encoding="utf-8")
    with LocalServer(voices_dir=str(folder)).run_in_thread() as running:
        yield running


REQUIRED = {
    "_id", "type", "title", "state", "tags", "created_at", "updated_at", "visibility",
    "like_count", "mark_count", "shared_count", "task_count", "author",
}  # fmt: skip


def test_model_items_have_every_required_field(voices_server: ThreadedServer) -> None:
    """Every item of GET /model has PROTOCOL.md's required fields; has_more is there."""
    page = httpx.get(voices_server.http_url + "/model?page_size=100", timeout=10).json()
    assert set(page) >= {"total", "items", "has_more"} and page["total"] == 4
    for item in page["items"]:
        assert set(item) >= REQUIRED, REQUIRED - set(item)
        assert item["type"] == "tts" and item["state"] == "trained"


def test_voices_list_pages_and_filters(voices_server: ThreadedServer) -> None:
    """voices.list pages through all four voices, and its filters narrow them."""
    client = FishAudio(api_key="x", base_url=voices_server.http_url)
    seen: list[str] = []
    for number in (1, 2, 3):
        page = client.voices.list(page_size=2, page_number=number)
        assert page.total == 4
        seen += [voice.id for voice in page.items]
    assert seen == [DEFAULT_VOICE, "alpha-voice", "beta-voice", "gamma-voice"]
    assert [v.id for v in client.voices.list(title="BETA").items] == ["beta-voice"]
    assert client.voices.list(title="nobody").total == 0
    assert [v.id for v in client.voices.list(tags="default").items] == [DEFAULT_VOICE]
    assert client.voices.list(tags=["piper", "local"]).total == 4
    assert [v.id for v in client.voices.list(language="de").items] == ["beta-voice"]
    assert {v.id for v in client.voices.list(self_only=True).items} == {
        "alpha-voice", "beta-voice", "gamma-voice"
    }  # fmt: skip
    newest = client.voices.list(sort_by="created_at", page_size=10).items
    assert [v.created_at for v in newest] == sorted((v.created_at for v in newest), reverse=True)


def test_voices_get_and_unknown_ids(voices_server: ThreadedServer) -> None:
    """voices.get finds a voice by id (usable as reference_id); an unknown id is the SDK's
    NotFoundError, with a JSON message naming the local voices."""
    client = FishAudio(api_key="x", base_url=voices_server.http_url)
    voice = client.voices.get("gamma-voice")
    assert (voice.id, voice.title, voice.languages) == ("gamma-voice", "gamma-voice", ["en"])
    audio = client.tts.convert(text="Hi.", reference_id=voice.id, format="pcm")
    assert rms(audio) > 300
    with pytest.raises(NotFoundError, match="alpha-voice"):
        client.voices.get("no-such-voice")
    answer = httpx.get(voices_server.http_url + "/model/no-such-voice", timeout=10)
    assert answer.status_code == 404 and "no-such-voice" in answer.json()["message"]


@pytest.mark.parametrize(
    "query", ["page_size=0", "page_size=abc", "page_size=101", "page_number=0", "self=maybe",
              "sort_by=likes"],
)  # fmt: skip
def test_bad_queries_are_400(voices_server: ThreadedServer, query: str) -> None:
    """A query value out of range: 400 with a JSON message naming it."""
    answer = httpx.get(voices_server.http_url + "/model?" + query, timeout=10)
    assert answer.status_code == 400
    assert query.split("=")[0] in answer.json()["message"]


def test_v1_voices_still_answers(voices_server: ThreadedServer) -> None:
    """The panel's /v1/voices list is still served beside /model."""
    voices = httpx.get(voices_server.http_url + "/v1/voices", timeout=10).json()["voices"]
    assert [v["id"] for v in voices] == [DEFAULT_VOICE, "alpha-voice", "beta-voice", "gamma-voice"]
