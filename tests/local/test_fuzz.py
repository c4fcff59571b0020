"""Property-based fuzzing of the embedded server's frame handling, over real sockets.

Hypothesis writes client scripts (random MessagePack values, events in the wrong order,
text before ``start``, a second ``start``, frames over ``max_frame_size``, text over
``max_text``, invalid UTF-8, binary garbage, text frames, bursts, abrupt disconnects at any
step) and plays each against one running server. A small model of the protocol says how
each script must end; the server must end it that way, cleanly, and keep serving. A healthy
session runs beside the fuzzer the whole time and must get the very bytes it gets alone.

Piper samples noise (``noise_scale`` / ``noise_w`` in the voice's config) on every run, so
the default voice never says a sentence with the same bytes twice. The byte-identity check
uses a "steady" copy of the voice with that noise set to 0, which is deterministic even
across threads (checked first, below).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import string
import threading
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from local_wire import FLUSH, LIVE, SENTENCE, STOP, frame, handshake, start, text, ws_frame
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from fish_notebook import formats
from fish_notebook.errors import ProtocolError, ValidationError
from fish_notebook.local import LocalServer, SessionRecord, ThreadedServer
from fish_notebook.local.encoding import SUPPORTED_FORMATS
from fish_notebook.local.engine import default_voice_files
from fish_notebook.protocol import StartEvent, StopEvent, TextEvent, unpack_client_event

MAX_FRAME = 256 * 1024  # small enough to send "huge" frames quickly
MAX_TEXT = 500  # also bounds how much a script makes the voice say
SDK_MESSAGE_LIMIT = 64 * 1024  # the Fish SDK refuses bigger messages by default
SERVER_EVENTS = {"audio", "log", "finish", "error"}
STEADY = "steady"
SESSION_EXAMPLES = 200
RAW_EXAMPLES = 150

# Hypothesis warns when it prints a failing example holding a huge frame; that is the point.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")


# --- the server under test -------------------------------------------------------------------


@pytest.fixture(scope="module")
def steady_voices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A voices folder with the default voice as ``steady``, its sampling noise set to 0.

    The model is hard-linked (copied if it cannot be), not symlinked: a symlink to the
    same file would share the already loaded voice and its noisy config.
    """
    folder = tmp_path_factory.mktemp("steady-voice")
    model, config = default_voice_files()
    try:
        os.link(model, folder / f"{STEADY}.onnx")
    except OSError:
        shutil.copy(model, folder / f"{STEADY}.onnx")
    settings_ = json.loads(config.read_text(encoding="utf-8"))
    settings_.setdefault("inference", {}).update(noise_scale=0.0, noise_w=0.0)
    (folder / f"{STEADY}.onnx.json").write_text(json.dumps(settings_), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def fuzz_server(steady_voices: Path) -> Iterator[ThreadedServer]:
    """A recording server with small limits (so huge input is cheap to send)."""
    server = LocalServer(
        record=True,
        voices_dir=str(steady_voices),
        max_frame_size=MAX_FRAME,
        max_text=MAX_TEXT,
        idle_timeout=5.0,  # a safety net only: every script ends by itself
    )
    with server.run_in_thread() as running:
        yield running


def healthy(server: ThreadedServer) -> bool:
    with urllib.request.urlopen(server.http_url + "/healthz", timeout=10) as response:
        return bool(response.status == 200 and response.read() == b"ok\n")


# --- healthy sessions and their reference audio ----------------------------------------------

STEADY_SESSIONS: dict[str, list[bytes | str]] = {
    # Several pieces (a flush in the middle): wav and pcm bytes do not depend on timing.
    "wav, two pieces": [
        start(format="wav", reference_id=STEADY),
        text(SENTENCE + " "),
        FLUSH,
        text("And then, a second one."),
        STOP,
    ],
    # One piece: an MP3 run ends only once, whatever the timing.
    "mp3, one piece": [start(format="mp3", reference_id=STEADY), text("Hello there."), STOP],
}


async def steady_audio(url: str, name: str) -> bytes:
    """The audio of one healthy session; fails if it does not finish normally."""
    out = await raw_session(url, STEADY_SESSIONS[name], timeout=60)
    assert out.finish == {"event": "finish", "reason": "stop"}, (name, out.events[-3:])
    assert out.audio
    return out.audio


def test_steady_voice_is_deterministic(fuzz_server: ThreadedServer) -> None:
    """The steady voice gives the same bytes every time, alone and three sessions at once."""

    async def main() -> None:
        for name in STEADY_SESSIONS:
            alone = [await steady_audio(fuzz_server.url, name) for _ in range(2)]
            together = await asyncio.gather(
                *(steady_audio(fuzz_server.url, name) for _ in range(3))
            )
            assert len(set(alone + together)) == 1, name

    asyncio.run(main())


class Companion:
    """Healthy sessions in a loop on their own thread and loop, until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.results: list[tuple[str, bytes]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fuzz-companion", daemon=True)

    def __enter__(self) -> Companion:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(120)
        assert not self._thread.is_alive(), "the healthy companion session hangs"

    def _run(self) -> None:
        async def loop() -> None:
            while not self._stop.is_set():
                for name in STEADY_SESSIONS:
                    self.results.append((name, await steady_audio(self.url, name)))

        try:
            asyncio.run(loop())
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)


# --- a raw client that keeps everything ------------------------------------------------------


@dataclass
class Outcome:
    """What one fuzzed session got back."""

    events: list[dict[str, Any]] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    close_code: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def audio(self) -> bytes:
        return b"".join(e["audio"] for e in self.events if e.get("event") == "audio")

    @property
    def finish(self) -> dict[str, Any] | None:
        finishes = [e for e in self.events if e.get("event") == "finish"]
        return finishes[-1] if finishes else None

    @property
    def logs(self) -> list[str]:
        return [e.get("message", "") for e in self.events if e.get("event") == "log"]


async def collect(ws: ClientConnection, outcome: Outcome) -> None:
    """Read every frame until the connection closes, noting anything malformed."""
    try:
        async for message in ws:
            outcome.sizes.append(len(message))
            if not isinstance(message, bytes):
                outcome.problems.append(f"text frame {message[:80]!r}")
                continue
            event = msgpack.unpackb(message, raw=False)
            if not isinstance(event, dict) or event.get("event") not in SERVER_EVENTS:
                outcome.problems.append(f"not a server event: {event!r:.80}")
                continue
            outcome.events.append(event)
    except ConnectionClosed:
        pass


async def raw_session(
    url: str,
    frames: list[bytes | str],
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> Outcome:
    """Send every frame in a burst while reading; return all the server sent."""
    outcome = Outcome()
    async with connect(
        url + LIVE, additional_headers=headers, open_timeout=10, close_timeout=5, max_size=None
    ) as ws:
        reader = asyncio.create_task(collect(ws, outcome))
        for item in frames:
            try:
                await ws.send(item)
            except ConnectionClosed:
                break
        await asyncio.wait_for(reader, timeout)
    outcome.close_code = ws.close_code
    return outcome


# --- scripts: what a fuzzed client does ------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send one frame ``repeat`` times in a row."""

    data: bytes | str
    repeat: int = 1

    def __repr__(self) -> str:
        shown = self.data if len(self.data) < 60 else f"<{len(self.data)} long>"
        return f"Send({shown!r}{f' x{self.repeat}' if self.repeat > 1 else ''})"


@dataclass(frozen=True)
class Drop:
    """Leave: ``abort`` drops the TCP connection with no closing handshake, else close."""

    abort: bool


Step = Send | Drop

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), inner, max_size=4)
    ),
    max_leaves=12,
)
words = st.sampled_from(["Hi", "fox", "one", "two", "the", ".", ",", "!", "?", "\n", "3.5"])
speech = st.lists(words, max_size=8).map(" ".join) | st.text(max_size=20)
valid_request = st.fixed_dictionaries(
    {},
    optional={
        "format": st.sampled_from([*SUPPORTED_FORMATS, "opus"]),
        "sample_rate": st.sampled_from([None, 8000, 16000, 22050, 44100, 48000]),
        "mp3_bitrate": st.sampled_from([64, 128, 192]),
        "latency": st.sampled_from(["normal", "balanced", "low"]),
        "chunk_length": st.integers(100, 300),
        "min_chunk_length": st.integers(0, 100),
        "reference_id": st.sampled_from([None, STEADY, "nobody", [STEADY, "two"]]),
        "prosody": st.none()
        | st.fixed_dictionaries(
            {"speed": st.floats(0.5, 2.0), "volume": st.floats(-20.0, 20.0)},
            optional={"normalize_loudness": st.booleans()},
        ),
        "temperature": st.floats(0, 1),
    },
)
request_fields = st.sampled_from(
    ["format", "sample_rate", "mp3_bitrate", "latency", "chunk_length", "prosody",
     "reference_id", "references", "normalize", "text", "min_chunk_length"]
)  # fmt: skip
any_request = st.dictionaries(request_fields | st.text(max_size=6), msgpack_values, max_size=5)
big = st.integers(50_000, 200_000).map(lambda n: "x" * n)
INVALID_UTF8 = st.binary(max_size=12).map(lambda junk: b"\xff" + junk)


def str8(raw: bytes) -> bytes:
    """A MessagePack str header around bytes that need not be valid UTF-8."""
    return b"\xda" + len(raw).to_bytes(2, "big") + raw


def packed(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


frames = st.one_of(
    valid_request.map(lambda r: start(**r)),
    any_request.map(lambda r: start(**r)),
    msgpack_values.map(lambda v: frame("start", request=v)),
    speech.map(text),
    st.integers(MAX_TEXT + 1, MAX_TEXT + 50).map(lambda n: text("word " * (n // 5 + 1))),
    msgpack_values.map(lambda v: frame("text", text=v)),
    st.just(FLUSH),
    st.just(STOP),
    msgpack_values.map(packed),
    st.dictionaries(st.text(max_size=6), msgpack_values, max_size=3).flatmap(
        lambda extra: (st.text(max_size=10) | big).map(
            lambda name: packed({**extra, "event": name})
        )
    ),
    st.binary(max_size=64),
    INVALID_UTF8.map(lambda raw: b"\x82\xa5event\xa4text\xa4text" + str8(raw)),
    INVALID_UTF8.map(lambda raw: b"\x81\xa5event" + str8(raw)),
    st.integers(1, 4096).map(lambda n: b"\x00" * (MAX_FRAME + n)),
    st.integers(1, 4096).map(lambda n: text("y" * (MAX_FRAME + n))),
)
sends = st.builds(Send, frames, st.integers(1, 3) | st.just(40))
steps: st.SearchStrategy[Step] = (
    sends | st.builds(Send, st.text(max_size=30)) | st.builds(Drop, st.booleans())
)
valid_start = valid_request.map(lambda r: Send(start(**{**r, "format": "pcm"})))
scripts = st.lists(steps, max_size=6) | st.builds(
    lambda first, rest: [first, *rest], valid_start, st.lists(steps, max_size=5)
)


# --- the model: how a script must end ---------------------------------------------------------


def expected_ends(script: list[Step]) -> set[str] | None:
    """How the session must end: ``stop``, ``error``, ``too big`` (1009) or ``gone``.

    None while the frames so far do not end it. Text beyond ``max_text`` in total may or
    may not be refused (it depends on how fast the voice speaks), so it adds ``error``.
    """
    started, total = False, 0
    maybe: set[str] = set()
    for step in script:
        if isinstance(step, Drop):
            return {"gone"} | maybe
        data = step.data
        if frame_size(step) > MAX_FRAME:
            return {"too big"} | maybe
        try:
            event = unpack_client_event(data)
        except (ProtocolError, ValidationError):
            return {"error"}
        for _ in range(step.repeat):
            if not started:
                if not isinstance(event, StartEvent):
                    return {"error"}
                if event.request.format not in SUPPORTED_FORMATS:
                    return {"error"}
                started = True
            elif isinstance(event, StartEvent):
                return {"error"}
            elif isinstance(event, StopEvent):
                return {"stop"} | maybe
            elif isinstance(event, TextEvent):
                if len(event.text) > MAX_TEXT:
                    return {"error"}
                total += len(event.text)
                if total > MAX_TEXT:
                    maybe = {"error"}
    return None


def frame_size(step: Step) -> int:
    """Bytes on the wire of a step's frame (0 for leaving)."""
    if isinstance(step, Drop):
        return 0
    return len(step.data.encode()) if isinstance(step.data, str) else len(step.data)


def until_the_end(script: list[Step]) -> list[Step]:
    """The script as played: a ``stop`` appended, and no leaving once the session is over
    (that would race the server's last events)."""
    played: list[Step] = []
    for step in [*script, Send(STOP)]:
        if isinstance(step, Drop) and expected_ends(played) is not None:
            continue
        played.append(step)
    return played


async def play(server: ThreadedServer, script: list[Step]) -> tuple[Outcome, SessionRecord]:
    """Play a script (the server's reply is read all along); return it and the server's record."""
    tag = uuid.uuid4().hex
    outcome = Outcome()
    async with connect(
        server.url + LIVE,
        additional_headers={"X-Fuzz": tag},
        open_timeout=10,
        close_timeout=5,
        max_size=None,
    ) as ws:
        reader = asyncio.create_task(collect(ws, outcome))
        for step in script:
            if isinstance(step, Drop):
                if step.abort:
                    assert ws.transport is not None
                    ws.transport.abort()
                else:
                    await ws.close()
                break
            try:
                for _ in range(step.repeat):
                    await ws.send(step.data)
            except ConnectionClosed:
                break
        await asyncio.wait_for(reader, 120)  # generous: the machine may be busy
    outcome.close_code = ws.close_code
    assert server.recorder is not None
    record = await server.recorder.await_for(lambda r: r.headers.get("x-fuzz") == tag, 120)
    return outcome, record


def check(script: list[Step], outcome: Outcome, record: SessionRecord) -> str:
    """The session ended as the model says, cleanly, with well-formed events; how it ended."""
    ends = expected_ends(script)
    assert ends is not None, "every played script ends the session"
    sent = script[: next((i for i, s in enumerate(script) if isinstance(s, Drop)), len(script))]
    if any(frame_size(step) > MAX_FRAME for step in sent):
        # websockets checks the size as a frame arrives, before the session reads the
        # frames sent ahead of it: a huge frame in a burst may end the session first.
        ends = ends | {"too big"}
    assert not outcome.problems, outcome.problems
    assert max(outcome.sizes, default=0) <= SDK_MESSAGE_LIMIT, "a frame the SDK would refuse"
    finishes = [e for e in outcome.events if e["event"] == "finish"]
    assert len(finishes) <= 1
    if finishes:
        assert outcome.events[-1]["event"] == "finish", "events after finish"
    if "gone" in ends:
        return "gone"  # the client left: the server closed its side (play() waited for that)
    if outcome.finish is None:
        assert "too big" in ends, f"no finish; expected {ends}, close {outcome.close_code}"
        assert outcome.close_code == 1009
        return "too big"
    reason = outcome.finish["reason"]
    assert reason in ends, f"finish {outcome.finish} but expected {ends}"
    if reason == "stop":
        assert outcome.finish == {"event": "finish", "reason": "stop"}
    else:
        assert outcome.finish["message"] and outcome.finish["message"] in outcome.logs
    # A clean closing handshake on both sides, never an abort after a timeout (a frame over
    # the limit sent while the server closes makes it drop the connection: fair enough).
    assert outcome.close_code == 1000
    if not any(frame_size(step) > MAX_FRAME for step in script):
        assert record.close_code == 1000, f"server-side close code {record.close_code}"
    return str(reason)


# --- the properties ---------------------------------------------------------------------------


def test_fuzzed_sessions_end_cleanly_beside_a_healthy_one(
    fuzz_server: ThreadedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Random scripts end as the model says, the server keeps serving, and a healthy session
    running beside them gets byte-identical audio throughout."""
    reference = {name: asyncio.run(steady_audio(fuzz_server.url, name)) for name in STEADY_SESSIONS}
    endings: Counter[str] = Counter()

    @settings(
        max_examples=SESSION_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(scripts)
    def one_session(script: list[Step]) -> None:
        played = until_the_end(script)
        outcome, record = asyncio.run(play(fuzz_server, played))
        endings[check(played, outcome, record)] += 1

    with caplog.at_level(logging.WARNING), Companion(fuzz_server.url) as companion:
        one_session()
    print(f"fuzzed sessions: {dict(endings)}; healthy sessions beside: {len(companion.results)}")
    # Every kind of ending was tried, and nothing crashed inside the server (a handler that
    # raises is logged as an error by websockets; a failed synthesis by the server).
    assert set(endings) == {"stop", "error", "too big", "gone"}, endings
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not companion.errors, companion.errors
    assert len(companion.results) >= 2
    for name, audio in companion.results:
        assert audio == reference[name], f"{name}: audio differs beside the fuzzer"
    assert healthy(fuzz_server)
    assert (
        asyncio.run(steady_audio(fuzz_server.url, "wav, two pieces"))
        == reference["wav, two pieces"]
    )
    assert fuzz_server.server.active_sessions == 0


# --- below the WebSocket layer: raw bytes on the TCP socket ------------------------------------


CONVERSATION = [start(format="pcm"), text("Hi."), STOP]
PATHS = ["/", "/healthz", "/v1/voices", LIVE, LIVE + "/with-timestamp", LIVE + "?x=1", "//"]
URL_CHARS = string.ascii_letters + string.digits + "/?=&%.-_~"
random_frames = st.lists(
    st.builds(
        ws_frame,
        st.integers(0, 15),
        st.binary(max_size=40) | st.sampled_from(CONVERSATION),
        fin=st.booleans(),
        masked=st.booleans() | st.just(True),
    ),
    max_size=4,
)
# A frame header announcing far more than max_frame_size, and a few bytes of it.
huge_header = st.integers(MAX_FRAME + 1, 2**63 - 1).map(
    lambda n: bytes([0x82, 0x80 | 127]) + n.to_bytes(8, "big") + b"\0\0\0\0" + b"x" * 10
)


@st.composite
def raw_inputs(draw: st.DrawFn, host: str, port: int) -> tuple[bytes, bytes]:
    """What to send before and after the server's answer to the handshake: a handshake cut
    anywhere, garbage, bad frames after a good handshake, a good conversation cut at any
    byte."""
    hello = handshake(host, port)
    kinds = ["frames", "cut conversation", "http", "cut handshake", "garbage"]
    kind = draw(st.sampled_from(kinds))
    if kind == "frames":
        return hello, b"".join(draw(random_frames)) + draw(st.just(b"") | huge_header)
    if kind == "cut conversation":
        frames = b"".join(ws_frame(2, f) for f in CONVERSATION)
        return hello, frames[: draw(st.integers(0, len(frames)))]
    if kind == "http":
        method = draw(st.sampled_from(["GET", "POST", "HEAD", "OPTIONS", "PUT"]))
        path = draw(st.sampled_from(PATHS) | st.text(URL_CHARS, min_size=1, max_size=30))
        headers = draw(
            st.lists(
                st.sampled_from(hello.decode().split("\r\n")[1:-2])
                | st.builds("{}: {}".format, st.text(URL_CHARS, min_size=1), st.text(URL_CHARS)),
                max_size=6,
            )
        )
        lines = [f"{method} {path} HTTP/1.1", *headers, "", ""]
        return "\r\n".join(lines).encode(), draw(st.binary(max_size=20))
    if kind == "cut handshake":
        return hello[: draw(st.integers(0, len(hello) - 1))] + draw(st.binary(max_size=40)), b""
    return draw(st.binary(min_size=1, max_size=200) | st.text(max_size=100).map(str.encode)), b""


def exchange(port: int, head: bytes, body: bytes, *, reset: bool) -> bytes:
    """Send ``head``; if it is a whole handshake, read the answer and send ``body``. Then
    reset the connection, or half-close it and read until the server closes (bounded).
    Returns what the server sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(head)
        received = b""
        if head.endswith(b"\r\n\r\n"):
            while b"\r\n\r\n" not in received and (chunk := sock.recv(65536)):
                received += chunk
            sock.sendall(body)
        if reset:  # RST instead of FIN: the most abrupt way to leave
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            return received
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_raw_bytes_never_hurt_the_server(
    fuzz_server: ThreadedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage, cut handshakes, bad frames and connections reset at any byte get an HTTP
    answer or a close; the server logs no error, ends every session and keeps serving."""
    host, port = "127.0.0.1", fuzz_server.port
    answers: Counter[str] = Counter()

    def answer(received: bytes) -> str:
        status = received.split(b"\r\n", 1)[0].decode() or "closed, no answer"
        body = received.partition(b"\r\n\r\n")[2]
        return status + (", then a close frame" if body.startswith(b"\x88") else "")

    @settings(max_examples=RAW_EXAMPLES, deadline=None)
    @given(raw_inputs(host, port), st.booleans())
    def one_connection(data: tuple[bytes, bytes], reset: bool) -> None:
        received = exchange(port, *data, reset=reset)
        assert received == b"" or received.startswith(b"HTTP/1.1 "), received[:80]
        answers[answer(received)] += 1

    with caplog.at_level(logging.WARNING):
        one_connection()
    print(f"raw connections: {dict(answers)}")
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert healthy(fuzz_server)
    out = asyncio.run(raw_session(fuzz_server.url, CONVERSATION))
    assert out.finish == {"event": "finish", "reason": "stop"} and out.audio
    assert asyncio.run(wait_for_no_sessions(fuzz_server)) == 0


async def wait_for_no_sessions(server: ThreadedServer, timeout: float = 30) -> int:
    """Sessions still open once every one has ended, or ``timeout`` passed."""
    for _ in range(int(timeout / 0.05)):
        if server.server.active_sessions == 0:
            break
        await asyncio.sleep(0.05)
    return server.server.active_sessions


# --- the HTTP side: POST /v1/tts bodies and headers, GET /model queries ------------------------

HTTP_EXAMPLES = 120
CONTENT_TYPES = [
    "application/msgpack",
    "application/json",
    "",
    "text/plain",
    "application/x-msgpack",
]
short_speech = st.lists(words, min_size=1, max_size=4).map(" ".join)
tts_request = st.fixed_dictionaries(
    {"text": short_speech | st.text(max_size=12) | msgpack_values},
    optional={
        "format": st.sampled_from([*SUPPORTED_FORMATS, "flac"]) | msgpack_values,
        "sample_rate": st.sampled_from([None, 8000, 24000, 44100, 7]),
        "opus_bitrate": st.sampled_from([-1000, 24, 64000, 5]),
        "latency": st.sampled_from(["normal", "balanced", "low", "now"]),
        "prosody": st.none() | msgpack_values,
        "chunk_length": st.integers(0, 400),
    },
)


@st.composite
def http_bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """A content type and a body: a request map (JSON or MessagePack), any value, garbage."""
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    value: Any = draw(tts_request | msgpack_values)
    if "json" in content_type or not content_type:
        try:
            body = json.dumps(value).encode()
        except (TypeError, ValueError):  # bytes, odd keys: not JSON
            body = draw(st.binary(max_size=40))
    else:
        body = packed(value)
    return content_type, draw(st.just(body) | st.binary(max_size=60))


model_queries = st.lists(
    st.tuples(
        st.sampled_from(["page_size", "page_number", "title", "tag", "self", "language",
                         "sort_by", "author_id", "x"]),
        st.text(URL_CHARS, max_size=6) | st.sampled_from(["1", "0", "100", "true", "created_at"]),
    ),
    max_size=4,
)  # fmt: skip


def check_http_answer(answer: httpx.Response) -> str:
    """200 with audio of a registry type (a text with nothing to say may give no audio, but
    a WAV is always a file), or a 4xx JSON message; never anything else."""
    if answer.status_code == 200:
        mime = answer.headers["content-type"]
        assert mime in {f.mime for f in formats.FORMATS.values()} | {"application/json"}, mime
        if mime == formats.get("wav").mime:
            assert answer.content.startswith(b"RIFF")
        return "200"
    assert 400 <= answer.status_code < 500, answer.status_code
    assert answer.headers["content-type"] == "application/json"
    data = answer.json()
    assert data["status"] == answer.status_code and data["message"]
    return str(answer.status_code)


def test_http_endpoints_answer_4xx_json_or_audio_beside_a_healthy_session(
    fuzz_server: ThreadedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Random bodies, content types and model headers for POST /v1/tts and random queries
    for GET /model get audio or a 4xx JSON message, never a 5xx or a hang; the server logs
    no error, and a healthy WebSocket session beside them gets byte-identical audio."""
    reference = {name: asyncio.run(steady_audio(fuzz_server.url, name)) for name in STEADY_SESSIONS}
    answers: Counter[str] = Counter()
    http = httpx.Client(base_url=fuzz_server.http_url, timeout=60)

    @settings(
        max_examples=HTTP_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(http_bodies(), st.text(URL_CHARS, max_size=12), model_queries)
    def one_round(body: tuple[str, bytes], model: str, query: list[tuple[str, str]]) -> None:
        content_type, data = body
        headers = {"model": model} | ({"Content-Type": content_type} if content_type else {})
        answers[
            "tts " + check_http_answer(http.post("/v1/tts", content=data, headers=headers))
        ] += 1
        answers["model " + check_http_answer(http.get("/model", params=query))] += 1

    with caplog.at_level(logging.WARNING), Companion(fuzz_server.url) as companion, http:
        one_round()
    print(f"HTTP answers: {dict(answers)}; healthy sessions beside: {len(companion.results)}")
    assert {"tts 200", "tts 400", "model 200", "model 400"} <= set(answers), answers
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not companion.errors and len(companion.results) >= 1
    for name, audio in companion.results:
        assert audio == reference[name], f"{name}: audio differs beside the HTTP fuzzer"
    assert healthy(fuzz_server)
    assert asyncio.run(wait_for_no_sessions(fuzz_server)) == 0
