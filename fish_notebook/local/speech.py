"""``POST /v1/tts``: the whole text in one request, the audio back as it is spoken.

What the Fish SDK's ``tts.convert`` and ``tts.stream`` send: the request map of
PROTOCOL.md with ``text`` filled in, as MessagePack (``Content-Type: application/msgpack``)
or JSON, with the ``Authorization`` and ``model`` headers. The answer streams (chunked) in
the requested format with its MIME type from the formats registry; concatenated it is the
whole file. Guarantees:

- A bad request is answered before any synthesis, with a 4xx JSON body
  ``{"status", "message"}`` that says what to do: a body that is not JSON / MessagePack
  (400), a content type that is neither (415), a field of the wrong type or range (400),
  no text (400), more than ``max_text`` characters (413), a body over ``max_frame_size``
  (413, from its ``Content-Length``), a body that takes longer than ``idle_timeout`` to
  arrive (408), a request past ``max_sessions`` (429, with ``max_concurrency``).
- A request holds a session slot from its body until its last byte; a client that leaves
  mid-answer stops the synthesis after its current sentence and frees the slot.
- What the request asks for that the local voice cannot honour (several voices, cloning,
  an unknown ``reference_id``) is logged, and the default voice speaks.
"""

from __future__ import annotations

import asyncio
import json
import logging

import msgpack
from tornado.iostream import StreamClosedError
from tornado.web import stream_request_body

from .. import formats
from ..errors import ValidationError
from ..protocol import AudioEvent, FinishEvent, StartEvent, TTSRequest, resolve_model
from .chunker import TextChunker, voice_parts
from .encoding import SUPPORTED_FORMATS, StreamEncoder
from .http import JsonHandler
from .output import clipped
from .recorder import SessionNotes
from .synthesis import Synthesis, choose_voice

__all__ = ["TTS_PATH", "BadRequest", "TTSHandler", "parse_request"]

logger = logging.getLogger("fish_notebook.local")

TTS_PATH = "/v1/tts"
_MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
_JSON_TYPES = ("application/json", "text/json")


class BadRequest(Exception):
    """A request answered with ``status`` and ``message`` before any synthesis."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_request(content_type: str, body: bytes, max_text: int) -> TTSRequest:
    """The request in ``body``, checked. Raises BadRequest saying what is wrong."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in _MSGPACK_TYPES:
        try:
            data = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException, TypeError) as exc:
            raise BadRequest(400, f"the body is not valid MessagePack: {exc}") from exc
    elif kind in _JSON_TYPES or not kind:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise BadRequest(400, f"the body is not valid JSON: {exc}") from exc
    else:
        raise BadRequest(
            415, f"Content-Type {kind!r} is not supported: send application/msgpack or JSON"
        )
    if not isinstance(data, dict):
        raise BadRequest(
            400, f"the body must be a map of request fields, not {type(data).__name__}"
        )
    if not isinstance(data.get("text"), str) or not data["text"].strip():
        raise BadRequest(400, "the request needs a non-empty string 'text' to speak")
    if len(data["text"]) > max_text:
        raise BadRequest(413, f"'text' is longer than {max_text} characters: send it in parts")
    try:
        request = TTSRequest.from_wire(data)
    except (ValidationError, TypeError, ValueError, RecursionError) as exc:
        raise BadRequest(400, f"bad request field: {exc}") from exc
    if request.format not in SUPPORTED_FORMATS:
        raise BadRequest(
            400,
            f"format {request.format!r} is not available from the local server: "
            f"use one of {', '.join(SUPPORTED_FORMATS)}",
        )
    return request


@stream_request_body
class TTSHandler(JsonHandler):
    """``POST /v1/tts`` (module docstring)."""

    async def prepare(self) -> None:
        await super().prepare()
        if self.answered:
            return
        self._body = bytearray()
        self._body_read = False
        self._wrote = False
        self._gone = False
        self._slot = False
        length = self.request.headers.get("Content-Length")
        limit = self.server.max_frame_size
        if length is not None and length.isdigit() and int(length) > limit:
            self.fail(413, f"the body is larger than {limit} bytes")
            return
        loop = asyncio.get_running_loop()
        self._slow = loop.call_later(self.server.idle_timeout, self._too_slow)

    def data_received(self, chunk: bytes) -> None:
        if self.answered:
            return
        self._body += chunk
        if len(self._body) > self.server.max_frame_size:
            self.fail(413, f"the body is larger than {self.server.max_frame_size} bytes")

    def _too_slow(self) -> None:
        if not self.answered:
            self.fail(408, f"the body did not arrive within {self.server.idle_timeout:g}s")

    def fail(self, status: int, message: str) -> None:
        """Answer ``status`` with a JSON message now (the rest of the body is not read)."""
        logger.info("POST %s refused (%d): %s", TTS_PATH, status, clipped(message))
        if not self._body_read:  # tornado closes the connection after this answer
            self.set_header("Connection", "close")
        self.send_json({"status": status, "message": clipped(message)}, status)

    def on_finish(self) -> None:
        slow = getattr(self, "_slow", None)
        if slow is not None:
            slow.cancel()

    def on_connection_close(self) -> None:
        self._gone = True  # the synthesis stops after its sentence

    async def post(self) -> None:
        self._slow.cancel()
        self._body_read = True
        try:
            request = parse_request(
                self.request.headers.get("Content-Type", ""),
                bytes(self._body),
                self.server.max_text,
            )
        except BadRequest as bad:
            self.fail(bad.status, bad.message)
            return
        sessions = self.server.sessions
        if not sessions.try_open():
            logger.warning("refused a request: %d sessions already open", sessions.active)
            self.send_json(
                {"status": 429, "message": "Concurrency limit exceeded",
                 "max_concurrency": sessions.limit},
                429,
            )  # fmt: skip
            return
        try:
            await self._speak(request)
        finally:
            sessions.release()

    async def _speak(self, request: TTSRequest) -> None:
        """Synthesize the whole text; write each sentence's audio as it comes."""
        headers = {k.lower(): v for k, v in self.request.headers.get_all()}
        notes = SessionNotes(self.server.recorder, headers, resolve_model(headers.get("model")))
        notes.received(StartEvent(request))
        context = self.server.session_context()
        voice = await choose_voice(context.voices, request, context.pool, _log)
        notes.voice(voice.name)
        encoder = StreamEncoder.for_request(request)
        synthesis = Synthesis(
            voice, request, encoder, context.pool, cancelled=lambda: self._gone, notes=notes
        )
        self.set_header("Content-Type", formats.get(request.format).mime)
        try:
            for part in _parts(request):
                async for audio in synthesis.speak(part):
                    assert isinstance(audio, bytes)
                    await self._write(audio, notes)
            await self._write(encoder.finish(), notes)
            if not self._wrote and request.format == "wav":  # nothing said: still a file
                await self._write(formats.get("wav").encode(b"", encoder.sample_rate), notes)
            notes.sent(FinishEvent("stop"))
            self.finish()
        except StreamClosedError:
            logger.debug("client went away")
        finally:
            notes.closed(None)

    async def _write(self, audio: bytes, notes: SessionNotes) -> None:
        if audio:
            self._wrote = True
            self.write(audio)
            notes.sent(AudioEvent(audio))
            await self.flush()


def _parts(request: TTSRequest) -> list[str]:
    """The pieces of the request's text, as the voice is handed them."""
    chunker = TextChunker(
        chunk_length=request.chunk_length,
        min_chunk_length=min(request.min_chunk_length, request.chunk_length),
        latency=request.latency,
    )
    pieces = [*chunker.feed(request.text), *chunker.stop()]
    return [part for piece in pieces for part in voice_parts(piece)]


async def _log(message: str) -> None:
    logger.info("POST %s: %s", TTS_PATH, clipped(message))
