"""A Fish Audio cloud double: a small real server that behaves as Fish's documents say.

Written from Fish's documents and the official SDK, never from fish_notebook's protocol code,
so a test against it can fail where our client and our embedded server share a wrong reading.
One loopback port serves HTTP and WebSocket (tornado). Each behaviour cites its source:

[A] Fish's AsyncAPI description of ``/v1/tts/live`` (docs repository, api-reference/
    asyncapi.yml): headers ``Authorization: Bearer`` and ``model`` (missing or unknown falls
    back to s2.1-pro); binary MessagePack frames; ``start`` first; ``text`` buffered and
    synthesized by ``chunk_length``; ``flush``; ``stop`` drains, then ``finish`` {reason:
    stop | error}; many ``audio`` events concatenate to the stream; request field ranges.
[O] Fish's OpenAPI description (api-reference/openapi.json): ``POST /v1/tts`` answers bare
    audio; ``POST /v1/asr`` (MessagePack or multipart {audio, language, ignore_timestamps})
    answers {text, duration (s), segments}; ``GET /model`` (page_size 1..100, page_number,
    title, tag, self, author_id, language, sort_by score | task_count | created_at) answers
    {total, items, has_more} with ModelEntity's required fields; ``GET /model/{id}``.
[T] "Text to Speech Stream with Timestamps" (openapi-v1/text-to-speech-stream-with-
    timestamps.mdx, written for the SSE endpoint): per text chunk a ``chunk_seq``;
    ``alignment`` {segments [{text, start, end}], audio_duration} is a cumulative snapshot
    replacing the last one for its chunk_seq, null before the first, repeatable later;
    start/end count from the chunk's own audio; ``chunk_audio_offset_sec`` places the chunk;
    ``content`` is the text the snapshot describes.
[P] PROTOCOL.md, "Facts added in the second round": the WebSocket ``/v1/tts/live/with-
    timestamp`` carries [T]'s fields on ``audio`` events, plus ``time`` (ms since start); a
    frame may carry the next chunk's first bytes under the previous chunk_seq; another
    ``start`` may follow ``finish`` on the same socket; ``error`` (invalid start, "Concurrency
    limit exceeded" with ``max_concurrency``) is followed by the close; a streamed wav header
    has unknown sizes; pcm is 16-bit mono little-endian, 44100 Hz by default.
[S] Fish's raw-API skill (.mintlify/skills/fish-audio-api/SKILL.md): errors are JSON
    {status, message} for 401 and 404, a list of {loc, type, msg} for 422.
[K] The official SDK (fish-audio-sdk 1.3.0): it sends every request field (opus_bitrate in
    kbps, not [A]'s bps, so the double leaves it unchecked) and its Voice model requires
    description, cover_image, train_mode, samples, languages and lock_visibility.

Left open by the docs, decided here: close code 1011 after an error; no ``opus`` (a start
asking for it is an invalid start). The voice is a pattern a test can check: speech_pcm.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import lameenc
import msgpack
import numpy as np
import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket
from tornado.httputil import HTTPHeaders

KNOWN_MODELS = ("s1", "s2-pro", "s2.1-pro", "s2.1-pro-free", "speech-1.5", "speech-1.6")
FALLBACK_MODEL = "s2.1-pro"  # [A]
FORMATS = {"pcm": "audio/pcm", "wav": "audio/wav", "mp3": "audio/mpeg"}
DEFAULT_RATE = 44100  # [A], [P]
SELF_AUTHOR = "author-self"  # the owner of the double's key, for GET /model?self=true
ERROR_CLOSE_CODE = 1011  # the docs name no code for the close after an error
MAX_EVENT_BYTES = 16384  # audio events stay well under a client's 64 KiB message limit
TONE_HZ = 440.0


def samples_per_char(sample_rate: int, ms_per_char: int, speed: float = 1.0) -> int:
    """How many samples the double's voice spends on one character."""
    return round(sample_rate * ms_per_char / 1000 / speed)


def speech_pcm(
    text: str, sample_rate: int = DEFAULT_RATE, ms_per_char: int = 10, speed: float = 1.0
) -> bytes:
    """The double's voice: 16-bit mono PCM, ``ms_per_char / speed`` per character.

    Whitespace is silence; any other character is a 440 Hz tone whose amplitude depends on
    the character, each starting at phase 0, so the audio of a text does not depend on how
    it was cut into chunks, and a word starts exactly at ``index * samples_per_char``.
    """
    n = samples_per_char(sample_rate, ms_per_char, speed)
    tone = np.sin(2 * np.pi * TONE_HZ * np.arange(n) / sample_rate)
    waves = [tone * (0 if c.isspace() else 2000 + 1000 * (ord(c) % 16)) for c in text]
    return np.concatenate([np.zeros(0), *waves]).astype("<i2").tobytes()


def wav_stream_header(sample_rate: int) -> bytes:
    """A WAV header for a stream whose length is unknown: both sizes 0xFFFFFFFF [P]."""
    unknown = 0xFFFFFFFF
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", unknown, b"WAVE", b"fmt ", 16, 1, 1,
        sample_rate, sample_rate * 2, 2, 16, b"data", unknown,
    )  # fmt: skip


def default_voices() -> list[dict[str, Any]]:
    """23 voices with every field ModelEntity requires [O] and the SDK's Voice parses [K]."""
    kinds = ["Narrator", "Storyteller", "News Anchor", "Teacher"]
    voices = []
    for i in range(23):
        owner = SELF_AUTHOR if i % 5 == 0 else f"author-{i % 3}"
        stamp = f"2025-01-{i + 1:02d}T12:00:00Z"
        voices.append({
            "_id": f"voice{i:02d}", "type": "tts", "title": f"{kinds[i % 4]} {i}",
            "description": f"Voice number {i}", "cover_image": "", "train_mode": "fast",
            "state": "trained", "tags": [kinds[i % 4].lower(), "female" if i % 2 else "male"],
            "samples": [], "created_at": stamp, "updated_at": stamp,
            "languages": ["zh"] if i % 3 == 2 else ["en"], "visibility": "public",
            "lock_visibility": False, "like_count": i, "mark_count": i // 2,
            "shared_count": i // 3, "task_count": (i * 37) % 101,
            "author": {"_id": owner, "nickname": f"Author {owner}", "avatar": ""},
        })  # fmt: skip
    return voices


TRANSCRIPT = {  # duration in seconds [O] (the SDK's docstring says milliseconds)
    "text": "Hello from the cloud double.", "duration": 1.5,
    "segments": [{"text": "Hello from", "start": 0.0, "end": 0.7},
                 {"text": "the cloud double.", "start": 0.7, "end": 1.5}],
}  # fmt: skip


@dataclass
class Script:
    """How the double behaves; a test may change it at any time (read at each use)."""

    api_key: str = "double-test-key"
    ms_per_char: int = 10
    events_per_chunk: int = 4  # at least this many audio events per synthesized chunk
    first_audio_delay: float = 0.0  # seconds before a session's first audio
    busy_seconds: float = 0.0  # the loop blocks this long per chunk: pongs come late
    ping_interval: float | None = None  # server keepalive pings (read when a socket opens)
    ping_timeout: float | None = None  # close after a pong this late; None: the interval
    close_between_sessions: bool = False  # close after finish instead of awaiting a start
    max_concurrency: int | None = None  # sessions at once over all sockets
    fail_at_chunk: int | None = None  # this chunk of a session (0-based) fails instead
    failure: str = "finish_error"  # "finish_error" | "error_event" | "drop"
    error_message: str = "Internal server error"
    previous_seq_quirk: bool = True  # [P] next chunk's first bytes under the previous seq
    voices: list[dict[str, Any]] = field(default_factory=default_voices)
    transcript: dict[str, Any] = field(default_factory=lambda: dict(TRANSCRIPT))


@dataclass
class HttpRecord:
    """One HTTP request (WebSocket handshakes included), as the double received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: HTTPHeaders
    body: Any = None
    status: int = 200


@dataclass
class WsRecord:
    """One WebSocket: the handshake headers, and every event received and sent, decoded."""

    path: str
    headers: HTTPHeaders
    model: str  # the model the session runs: the header, or the fallback [A]
    received: list[Any] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    spoken: list[str] = field(default_factory=list)  # each text chunk synthesized, in order
    pongs: int = 0
    closed: bool = False


def request_problem(request: Any) -> str | None:
    """What makes a TTS request invalid, or None. Ranges from [A]."""
    if not isinstance(request, dict):
        return "request must be a map"
    rate, get = request.get("sample_rate"), request.get
    rules = {  # field: (holds, what it must be)
        "format": (get("format") or "mp3") in FORMATS,
        "chunk_length": 100 <= (get("chunk_length") or 300) <= 300,
        "latency": (get("latency") or "normal") in ("normal", "balanced", "low"),
        "mp3_bitrate": (get("mp3_bitrate") or 128) in (64, 128, 192),
        "sample_rate": rate is None or (isinstance(rate, int) and rate > 0),
        "prosody.speed": 0.5 <= ((get("prosody") or {}).get("speed") or 1.0) <= 2.0,
    }
    allowed = {
        "format": "pcm, wav or mp3 (the double has no opus)", "chunk_length": "100..300",
        "latency": "normal, balanced or low", "mp3_bitrate": "64, 128 or 192",
        "sample_rate": "a positive integer or null", "prosody.speed": "0.5..2.0",
    }  # fmt: skip
    bad = [name for name, holds in rules.items() if not holds]
    if not bad:
        return None
    value = (get("prosody") or {}).get("speed") if bad[0] == "prosody.speed" else get(bad[0])
    return f"{bad[0]} {value!r} is not valid: {allowed[bad[0]]}"


def _split(data: bytes, minimum: int) -> list[bytes]:
    count = max(minimum, math.ceil(len(data) / MAX_EVENT_BYTES))
    bounds = [len(data) * i // count for i in range(count + 1)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


class Synthesis:
    """One session's audio: the voice, encoded as requested, and its timestamp labels [T]."""

    def __init__(self, request: dict[str, Any], script: Script, timestamps: bool) -> None:
        self.script, self.timestamps = script, timestamps
        self.format = request.get("format") or "mp3"
        self.rate = request.get("sample_rate") or DEFAULT_RATE
        self.speed = (request.get("prosody") or {}).get("speed") or 1.0
        self.chunk_length = request.get("chunk_length") or 300
        per_char = samples_per_char(self.rate, script.ms_per_char, self.speed)
        self.seconds_per_char = per_char / self.rate
        self.header_due = self.format == "wav"
        self.mp3: Any = None
        if self.format == "mp3":
            self.mp3 = lameenc.Encoder()
            self.mp3.set_in_sample_rate(self.rate)
            self.mp3.set_channels(1)
            self.mp3.set_bit_rate(request.get("mp3_bitrate") or 128)
            self.mp3.set_quality(7)
        self.chunks = 0  # text chunks rendered so far: the next chunk_seq
        self.offset = 0.0  # seconds of audio before the next chunk
        self.latest: dict[str, Any] | None = None  # the last chunk's full labels
        self.started = time.monotonic()

    def encode(self, pcm: bytes) -> bytes:
        if self.mp3 is not None:
            return bytes(self.mp3.encode(pcm))
        if self.header_due:
            self.header_due = False
            return wav_stream_header(self.rate) + pcm
        return pcm

    def render(self, text: str) -> list[dict[str, Any]]:
        """The audio events for one text chunk."""
        pcm = speech_pcm(text, self.rate, self.script.ms_per_char, self.speed)
        pieces = _split(self.encode(pcm), max(3, self.script.events_per_chunk))
        if self.timestamps:
            events = self._timed(text, pieces)
        else:
            events = [{"event": "audio", "audio": piece} for piece in pieces]
        self.chunks += 1
        self.offset += len(text) * self.seconds_per_char
        return events

    def _timed(self, text: str, pieces: list[bytes]) -> list[dict[str, Any]]:
        """Label each piece of one chunk's audio [T], [P]."""
        duration = len(text) * self.seconds_per_char
        words = [
            {"text": m.group(), "start": m.start() * self.seconds_per_char,
             "end": m.end() * self.seconds_per_char}
            for m in re.finditer(r"\S+", text)
        ]  # fmt: skip
        full = self._labels(text, {"segments": words, "audio_duration": duration})
        quirk = self.latest is not None and self.script.previous_seq_quirk
        events = []
        for i, piece in enumerate(pieces):
            if i == 0 and quirk and self.latest:
                labels = self.latest  # [P] the previous chunk's label on this chunk's bytes
            elif i == len(pieces) - 1:
                labels = full
            elif i < (2 if quirk else 1):
                labels = self._labels("", None)
            else:
                labels = self._partial(text, words, duration * (i + 1) / len(pieces))
            events.append({"event": "audio", "audio": piece, **labels, "time": self._ms()})
        self.latest = full
        return events

    def finish(self) -> list[dict[str, Any]]:
        """What the encoder still holds, labelled with the latest snapshot [T]."""
        tail = bytes(self.mp3.flush()) if self.mp3 is not None else b""
        if not tail:
            return []
        if not (self.timestamps and self.latest):
            return [{"event": "audio", "audio": tail}]
        return [{"event": "audio", "audio": tail, **self.latest, "time": self._ms()}]

    def _partial(self, text: str, words: list[dict[str, Any]], heard: float) -> dict[str, Any]:
        done = [w for w in words if w["end"] <= heard + 1e-9]
        if not done:
            return self._labels("", None)
        content = text[: round(done[-1]["end"] / self.seconds_per_char)]
        return self._labels(content, {"segments": done, "audio_duration": heard})

    def _labels(self, content: str, alignment: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "content": content, "alignment": alignment, "chunk_seq": self.chunks,
            "chunk_audio_offset_sec": self.offset,
        }  # fmt: skip

    def _ms(self) -> int:
        return round((time.monotonic() - self.started) * 1000)


class _SessionEnded(Exception):
    """The double ended the socket on purpose (refusal or scripted failure)."""


def _cut(buffer: str, limit: int) -> tuple[str, str]:
    """Cut ``buffer`` near ``limit`` characters, at the last whitespace when there is one."""
    at = buffer.rfind(" ", 1, limit + 1)
    at = at if at > 0 else limit
    return buffer[:at], buffer[at:]


def _record(double: CloudDouble, handler: tornado.web.RequestHandler, body: Any) -> HttpRecord:
    record = HttpRecord(
        handler.request.method or "", handler.request.path,
        {k: [v.decode() for v in vs] for k, vs in handler.request.query_arguments.items()},
        HTTPHeaders(handler.request.headers), body,
    )  # fmt: skip
    double.requests.append(record)
    if handler.request.headers.get("Authorization") != f"Bearer {double.script.api_key}":
        record.status = 401
        handler.set_status(401)
        handler.set_header("Content-Type", "application/json")
        handler.finish(json.dumps({"status": 401, "message": "Invalid API key"}))  # [S]
    return record


class LiveSocket(tornado.websocket.WebSocketHandler):
    """``/v1/tts/live`` and ``/v1/tts/live/with-timestamp`` [A], [P]."""

    def initialize(self, double: CloudDouble, timestamps: bool) -> None:
        self.double, self.timestamps = double, timestamps

    @property
    def ping_interval(self) -> float | None:
        return self.double.script.ping_interval

    @property
    def ping_timeout(self) -> float | None:
        return self.double.script.ping_timeout

    async def get(self, *args: Any, **kwargs: Any) -> None:
        if _record(self.double, self, None).status == 200:
            await super().get(*args, **kwargs)

    def open(self, *args: Any, **kwargs: Any) -> None:
        model = self.request.headers.get("model", "")
        model = model if model in KNOWN_MODELS else FALLBACK_MODEL
        self.record = WsRecord(self.request.path, HTTPHeaders(self.request.headers), model)
        self.double.connections.append(self.record)
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.stop_seen = asyncio.Event()
        self.task = asyncio.ensure_future(self._converse())
        self.double.open_sockets.add(self)

    def on_message(self, message: str | bytes) -> None:
        try:
            event = msgpack.unpackb(message, raw=False) if isinstance(message, bytes) else None
        except ValueError:
            event = None
        self.record.received.append(event if event is not None else message)
        if isinstance(event, dict) and event.get("event") == "stop":
            self.stop_seen.set()
        self.inbox.put_nowait(event if isinstance(event, dict) else {"event": None})

    def on_pong(self, data: bytes) -> None:
        self.record.pongs += 1

    def on_close(self) -> None:
        self.record.closed = True
        self.inbox.put_nowait(None)
        self.double.open_sockets.discard(self)

    async def _send(self, event: dict[str, Any]) -> None:
        self.record.sent.append(event)
        await self.write_message(msgpack.packb(event, use_bin_type=True), binary=True)

    async def _refuse(self, message: str, **extra: Any) -> None:
        """An ``error`` event, then the socket closes [P]."""
        await self._send({"event": "error", "error": message, **extra})
        self.close(ERROR_CLOSE_CODE, message[:100])
        raise _SessionEnded

    async def _converse(self) -> None:
        """Sessions one after another: each begins with ``start`` [A], [P]."""
        try:
            while (event := await self.inbox.get()) is not None:
                if event.get("event") != "start":
                    await self._refuse("The first event must be start")
                if not await self._session(event.get("request")):
                    return
                if self.double.script.close_between_sessions:
                    self.close(1000, "session finished")
                    return
        except (_SessionEnded, tornado.websocket.WebSocketClosedError):
            return

    async def _session(self, request: Any) -> bool:
        """One start..finish. False when the socket went away first."""
        script = self.double.script
        problem = request_problem(request)
        if problem:
            await self._refuse(f"Invalid start: {problem}")
        if script.max_concurrency is not None and self.double.active >= script.max_concurrency:
            await self._refuse("Concurrency limit exceeded", max_concurrency=script.max_concurrency)
        self.double.active += 1
        try:
            synthesis, buffer = Synthesis(request, script, self.timestamps), ""
            while (event := await self.inbox.get()) is not None:
                kind = event.get("event")
                if kind == "text":
                    buffer += str(event.get("text") or "")
                    while len(buffer) >= synthesis.chunk_length:  # [A] chunk_length
                        head, buffer = _cut(buffer, synthesis.chunk_length)
                        await self._speak(synthesis, head)
                elif kind in ("flush", "stop"):
                    await self._speak(synthesis, buffer)
                    buffer = ""
                if kind == "stop":
                    for tail in synthesis.finish():
                        await self._send(tail)
                    await self._send({"event": "finish", "reason": "stop"})
                    return True
            return False
        finally:
            self.double.active -= 1

    async def _speak(self, synthesis: Synthesis, text: str) -> None:
        script = self.double.script
        if not text.strip():
            return
        if script.fail_at_chunk == synthesis.chunks:
            await self._fail()
        if synthesis.chunks == 0 and script.first_audio_delay:
            await asyncio.sleep(script.first_audio_delay)
        if script.busy_seconds:
            time.sleep(script.busy_seconds)  # on purpose: a loop too busy to answer pings
        self.record.spoken.append(text)
        for event in synthesis.render(text):
            await self._send(event)

    def _drop(self) -> None:
        """End the TCP connection at once, with no close frame."""
        if self.ws_connection is not None and self.ws_connection.stream is not None:
            self.ws_connection.stream.close()

    async def _fail(self) -> None:
        script = self.double.script
        if script.failure == "finish_error":  # [A] reason error, then the socket closes
            await self._send({"event": "finish", "reason": "error"})
            self.close(1000, "finished with an error")
        elif script.failure == "error_event":
            await self._refuse(script.error_message)
        elif script.failure == "drop":
            # End TCP without a close frame, once the client has sent everything: closing
            # with unread data would answer with a reset that discards the client's audio.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_seen.wait(), 5)
            self._drop()
        else:
            raise ValueError(f"unknown failure {script.failure!r}")
        raise _SessionEnded


class _Http(tornado.web.RequestHandler):
    def initialize(self, double: CloudDouble) -> None:
        self.double = double

    def prepare(self) -> None:
        self.record = _record(self.double, self, self._body())

    def _body(self) -> Any:
        kind, body = self.request.headers.get("Content-Type", ""), self.request.body
        try:
            if "msgpack" in kind:
                return msgpack.unpackb(body, raw=False)
            if "json" in kind:
                return json.loads(body)
        except ValueError:
            return body
        if "multipart" in kind:  # [O] /v1/asr accepts multipart too
            fields: dict[str, Any] = {
                k: v[0].decode() for k, v in self.request.body_arguments.items()
            }
            fields |= {k: v[0]["body"] for k, v in self.request.files.items()}
            if "ignore_timestamps" in fields:
                fields["ignore_timestamps"] = fields["ignore_timestamps"].lower() == "true"
            return fields
        return body or None

    def _json(self, status: int, body: Any) -> None:
        self.record.status = status
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def _invalid(self, problem: str) -> None:
        self._json(422, [{"loc": ["body"], "type": "value_error", "msg": problem}])  # [S]


class TtsHandler(_Http):
    """``POST /v1/tts``: the whole audio, written in several chunks [O]."""

    async def post(self) -> None:
        request = self.record.body
        problem = request_problem(request)
        if not problem and not isinstance(request.get("text"), str):
            problem = "text is required"
        if problem:
            return self._invalid(problem)
        synthesis = Synthesis(request, self.double.script, timestamps=False)
        self.set_header("Content-Type", FORMATS[synthesis.format])
        for event in synthesis.render(request["text"]) + synthesis.finish():
            self.write(event["audio"])
            await self.flush()


class ModelHandler(_Http):
    """``GET /model`` and ``GET /model/{id}`` [O]."""

    def get(self, voice_id: str | None = None) -> None:
        voices = self.double.script.voices
        if voice_id is not None:
            found = [v for v in voices if v["_id"] == voice_id]
            if found:
                return self._json(200, found[0])
            return self._json(404, {"status": 404, "message": "Model not found"})  # [S]
        arg = self.get_query_argument
        title, tags = arg("title", ""), set(self.get_query_arguments("tag"))
        languages = set(self.get_query_arguments("language"))
        items = [
            v for v in voices if title.lower() in v["title"].lower()
            and (not tags or tags & set(v["tags"]))
            and (not languages or languages & set(v["languages"]))
        ]  # fmt: skip
        if arg("self", "false").lower() == "true":
            items = [v for v in items if v["author"]["_id"] == SELF_AUTHOR]
        elif arg("author_id", None):
            items = [v for v in items if v["author"]["_id"] == arg("author_id")]
        sort_by = arg("sort_by", "score")
        if sort_by not in ("score", "task_count", "created_at"):
            return self._invalid("sort_by must be score, task_count or created_at")
        if sort_by != "score":
            items = sorted(items, key=lambda v: v[sort_by], reverse=True)
        size, number = int(arg("page_size", "10")), int(arg("page_number", "1"))
        if not 1 <= size <= 100 or number < 1:
            return self._invalid("page_size must be within 1..100 and page_number at least 1")
        page = items[(number - 1) * size : number * size]
        self._json(
            200, {"total": len(items), "items": page, "has_more": number * size < len(items)}
        )


class AsrHandler(_Http):
    """``POST /v1/asr``: the script's canned transcript [O]."""

    def post(self) -> None:
        body = self.record.body
        if not isinstance(body, dict) or not isinstance(body.get("audio"), bytes):
            return self._invalid("audio is required")
        answer = dict(self.double.script.transcript)
        if body.get("ignore_timestamps", True):  # [O] default true; the SDK sends it always
            answer["segments"] = []
        self._json(200, answer)


class CloudDouble:
    """``with CloudDouble(Script(...)) as cloud:`` then point a client at ``cloud.base_url``.

    Runs on its own thread and event loop, so sync and async clients alike can use it.
    """

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.requests: list[HttpRecord] = []
        self.connections: list[WsRecord] = []
        self.open_sockets: set[LiveSocket] = set()
        self.active = 0  # sessions in progress over all sockets
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _app(self) -> tornado.web.Application:
        me = {"double": self}
        return tornado.web.Application([
            (r"/v1/tts/live", LiveSocket, {**me, "timestamps": False}),
            (r"/v1/tts/live/with-timestamp", LiveSocket, {**me, "timestamps": True}),
            (r"/v1/tts", TtsHandler, me),
            (r"/v1/asr", AsrHandler, me),
            (r"/model", ModelHandler, me),
            (r"/model/([^/]+)", ModelHandler, me),
        ])  # fmt: skip

    def start(self) -> CloudDouble:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the cloud double did not start within 10 s")
        return self

    def _serve(self, ready: threading.Event) -> None:
        self._loop = loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        self.port = sockets[0].getsockname()[1]

        async def listen() -> tornado.httpserver.HTTPServer:
            server = tornado.httpserver.HTTPServer(self._app())
            server.add_sockets(sockets)
            return server

        self._server = loop.run_until_complete(listen())
        ready.set()
        loop.run_forever()
        loop.close()

    async def _shutdown(self) -> None:
        self._server.stop()
        for socket in list(self.open_sockets):
            socket.close(1001, "the double is stopping")
            socket._drop()
        await self._server.close_all_connections()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> CloudDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
