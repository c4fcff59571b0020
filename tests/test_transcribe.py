"""The speech recognition client: ``POST /v1/asr`` against the cloud double, and its errors.

The cloud double (tests/cloud_double.py) serves ``/v1/asr`` as Fish documents it: the body
and answer checks run against it. Statuses the double has no script for (422, 404, 429,
500, a redirect, a slow or oversized answer) come from a small scripted HTTP server here.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import threading
import time
import wave
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fish_notebook.endpoints import Endpoint
from fish_notebook.errors import (
    AuthenticationError,
    ConnectError,
    ProtocolError,
    ReceiveTimeout,
    ServerBusyError,
    ValidationError,
)
from fish_notebook.transcribe import (
    MAX_ANSWER_BYTES,
    Segment,
    Transcript,
    atranscribe,
    transcribe,
)
from tests.cloud_double import CloudDouble

KEY = "double-test-key"


def wav_file(pcm: bytes, rate: int = 16_000) -> bytes:
    """A WAV written by the standard library, not by the code under test."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


AUDIO = wav_file(bytes(range(256)) * 50)


@pytest.fixture
def cloud() -> Iterator[CloudDouble]:
    with CloudDouble() as double:
        yield double


def test_the_body_is_as_documented_and_the_answer_parsed(cloud: CloudDouble) -> None:
    result = transcribe(AUDIO, language="en", base_url=cloud.base_url, api_key=KEY)
    assert result == Transcript(
        "Hello from the cloud double.",
        1.5,
        (Segment("Hello from", 0.0, 0.7), Segment("the cloud double.", 0.7, 1.5)),
    )
    (request,) = cloud.requests
    assert (request.method, request.path, request.status) == ("POST", "/v1/asr", 200)
    assert request.body == {"audio": AUDIO, "language": "en", "ignore_timestamps": False}
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/msgpack"


def test_no_language_and_no_timestamps_as_the_sdk_sends_them(cloud: CloudDouble) -> None:
    result = transcribe(AUDIO, timestamps=False, base_url=cloud.base_url, api_key=KEY)
    assert result.segments == () and result.text == "Hello from the cloud double."
    assert cloud.requests[0].body == {"audio": AUDIO, "ignore_timestamps": True}


def test_raw_microphone_pcm_is_sent_as_a_16_khz_wav(cloud: CloudDouble) -> None:
    pcm = bytes(range(200)) * 32
    transcribe(pcm, base_url=cloud.base_url, api_key=KEY)
    sent = cloud.requests[0].body["audio"]
    with wave.open(io.BytesIO(sent)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16_000, 1, 2)
        assert w.readframes(w.getnframes()) == pcm


async def test_the_async_face_leaves_the_loop_free(cloud: CloudDouble) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    ticker = asyncio.get_running_loop().create_task(tick())
    try:
        result = await atranscribe(AUDIO, base_url=cloud.base_url, api_key=KEY)
    finally:
        ticker.cancel()
    assert result.text == "Hello from the cloud double." and ticks > 0


def test_a_refused_key_is_an_authentication_error(cloud: CloudDouble) -> None:
    with pytest.raises(AuthenticationError) as info:
        transcribe(AUDIO, base_url=cloud.base_url, api_key="wrong-key-123")
    assert info.value.status == 401
    assert "Invalid API key" in str(info.value) and "wrong-key-123" not in str(info.value)


def test_a_dead_port_is_a_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectError, match=f"127.0.0.1:{port}/v1/asr") as info:
        transcribe(AUDIO, base_url=f"http://127.0.0.1:{port}", api_key="secret-key-456")
    assert "secret-key-456" not in str(info.value)


def test_a_loopback_server_is_reached_without_the_environments_proxy(
    cloud: CloudDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{dead}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert transcribe(AUDIO, base_url=cloud.base_url, api_key=KEY).duration == 1.5


def test_bad_arguments_fail_before_any_request(cloud: CloudDouble) -> None:
    with pytest.raises(ValidationError, match="audio"):
        transcribe(b"", base_url=cloud.base_url)
    with pytest.raises(ValidationError, match="audio"):
        transcribe("speech.wav", base_url=cloud.base_url)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="pcm"):
        transcribe(b"\x01\x02\x03", base_url=cloud.base_url)  # half a sample
    with pytest.raises(ValidationError, match="language"):
        transcribe(AUDIO, language="", base_url=cloud.base_url)
    with pytest.raises(ValidationError, match="timeout"):
        transcribe(AUDIO, timeout=0, base_url=cloud.base_url)
    assert cloud.requests == []


def test_the_embedded_server_gets_its_token_others_the_key() -> None:
    local = Endpoint.from_url("http://127.0.0.1:1", "local", token="server-token")
    assert local.credential("users-fish-key") == "server-token"
    other = Endpoint.from_url("http://127.0.0.1:1", "argument")
    assert other.credential("users-fish-key") == "users-fish-key"


# --- statuses the double has no script for --------------------------------------------------


class Scripted:
    """Answers ``POST /<case>/v1/asr`` as the case says; records every request."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                owner.requests.append({"path": self.path, "headers": dict(self.headers)})
                owner.answer(self, self.path.split("/")[1], body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, case: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{case}"

    def answer(self, handler: BaseHTTPRequestHandler, case: str, body: bytes) -> None:
        auth = handler.headers.get("Authorization", "")
        status, headers, payload = {
            "invalid": (422, {}, [{"loc": ["body", "audio"], "msg": "not a valid audio file"}]),
            "missing": (404, {}, {"status": 404, "message": "Not Found"}),
            "busy": (429, {}, {"status": 429, "message": "Too many requests"}),
            "broken": (500, {}, "Internal Server Error"),
            "moved": (302, {"Location": self.url("elsewhere")}, ""),
            "echo": (403, {}, {"message": f"bad header {auth}"}),
            "garbage": (200, {}, "<html>not json</html>"),
            "huge": (200, {}, "x" * (MAX_ANSWER_BYTES + 10)),
            "slow": (200, {}, {"text": "late", "duration": 1.0}),
        }[case]
        if case == "slow":
            time.sleep(2.0)
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        with contextlib.suppress(ConnectionError):  # the client may give up first: it should
            handler.wfile.write(data)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    yield server
    server.close()


def test_a_4xx_carries_the_servers_message(scripted: Scripted) -> None:
    with pytest.raises(ValidationError) as info:
        transcribe(AUDIO, base_url=scripted.url("invalid"), api_key=KEY)
    assert "HTTP 422" in str(info.value) and "body.audio: not a valid audio file" in str(info.value)
    no_asr = "no speech recognition .HTTP 404: Not Found.: send it"
    with pytest.raises(ValidationError, match=no_asr):
        transcribe(AUDIO, base_url=scripted.url("missing"), api_key=KEY)


def test_busy_broken_and_redirecting_servers(scripted: Scripted) -> None:
    with pytest.raises(ServerBusyError, match="Too many requests"):
        transcribe(AUDIO, base_url=scripted.url("busy"), api_key=KEY)
    with pytest.raises(ConnectError, match="HTTP 500"):
        transcribe(AUDIO, base_url=scripted.url("broken"), api_key=KEY)
    with pytest.raises(ConnectError, match="redirects"):
        transcribe(AUDIO, base_url=scripted.url("moved"), api_key=KEY)
    # The redirect was not followed: the key went nowhere else.
    assert [r["path"] for r in scripted.requests] == [
        "/busy/v1/asr",
        "/broken/v1/asr",
        "/moved/v1/asr",
    ]


def test_a_key_the_server_echoes_is_not_repeated(scripted: Scripted) -> None:
    with pytest.raises(AuthenticationError) as info:
        transcribe(AUDIO, base_url=scripted.url("echo"), api_key="sk-very-secret")
    assert info.value.status == 403 and "sk-very-secret" not in str(info.value)
    assert "<redacted>" in str(info.value)


def test_answers_that_break_the_documented_shape(scripted: Scripted) -> None:
    with pytest.raises(ProtocolError, match="not JSON"):
        transcribe(AUDIO, base_url=scripted.url("garbage"), api_key=KEY)
    with pytest.raises(ProtocolError, match="larger than"):
        transcribe(AUDIO, base_url=scripted.url("huge"), api_key=KEY)


def test_a_slow_answer_is_bounded(scripted: Scripted) -> None:
    with pytest.raises(ReceiveTimeout, match="did not answer within 0.5 s"):
        transcribe(AUDIO, base_url=scripted.url("slow"), api_key=KEY, timeout=0.5)
