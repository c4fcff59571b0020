"""``POST /v1/tts``: the whole text in one request, the audio back as it is spoken.

What the Fish SDK's ``tts.convert`` and ``tts.stream`` send: the request map of
PROTOCOL.md with ``text`` filled in, as MessagePack (``Content-Type: application/msgpack``)
or JSON, with the ``Authorization`` and ``model`` headers. The answer streams (chunked) in
the requested format with its MIME type from the formats registry; concatenated it is the
whole file. Guarantees:

- A bad request is answered before any synthesis, with a 4xx JSON body
  ``{"status", "message"}`` that says what to do: a body that is not JSON / MessagePack
  (400), a content type that is neither (415), a field of the wrong type or range (400),
  a list of voices for a model that takes one (400), no text (400), more than
  ``max_text`` characters (413), a body over ``max_frame_size`` (413, from its
  ``Content-Length``), a body that takes longer than ``idle_timeout`` to arrive (408), a
  request past ``max_sessions`` (429, with ``max_concurrency``).
- A request holds a session slot from its body until its last byte; a client that leaves
  mid-answer stops the synthesis after its current sentence and frees the slot.
- The text is performed as on the WebSocket (:mod:`.synthesis`): speaker tags and a
  ``reference_id`` list give each speaker a voice (:mod:`.cast`), breaks are silence,
  delivery cues are skipped. What the local voices cannot honour (cues, cloning, an
  unknown ``reference_id``) is logged once, and the default voice speaks.
"""

from __future__ import annotations

import logging

from tornado.iostream import StreamClosedError

from .. import formats
from ..errors import ValidationError
from ..protocol import AudioEvent, FinishEvent, StartEvent, TTSRequest, resolve_model
from .cast import choose_cast
from .chunker import TextChunker, voice_parts
from .encoding import SUPPORTED_FORMATS, StreamEncoder
from .http import BadRequest, BodyHandler, decode_body
from .output import clipped
from .recorder import SessionNotes
from .synthesis import Synthesis

__all__ = ["TTS_PATH", "BadRequest", "TTSHandler", "parse_request"]

logger = logging.getLogger("fish_notebook.local")

TTS_PATH = "/v1/tts"


def parse_request(
    content_type: str, body: bytes, max_text: int, model: str | None = None
) -> TTSRequest:
    """The request in ``body`` for the ``model`` header, checked. Raises BadRequest saying
    what is wrong."""
    data = decode_body(content_type, body, "application/msgpack or JSON", json_ok=True)
    if not isinstance(data.get("text"), str) or not data["text"].strip():
        raise BadRequest(400, "the request needs a non-empty string 'text' to speak")
    if len(data["text"]) > max_text:
        raise BadRequest(413, f"'text' is longer than {max_text} characters: send it in parts")
    try:
        request = TTSRequest.from_wire(data)
        request.check_for_model(model)
    except (ValidationError, TypeError, ValueError, RecursionError) as exc:
        raise BadRequest(400, f"bad request field: {exc}") from exc
    if request.format not in SUPPORTED_FORMATS:
        raise BadRequest(
            400,
            f"format {request.format!r} is not available from the local server: "
            f"use one of {', '.join(SUPPORTED_FORMATS)}",
        )
    return request


class TTSHandler(BodyHandler):
    """``POST /v1/tts`` (module docstring)."""

    async def post(self) -> None:
        self.body_complete()
        self._wrote = False
        try:
            request = parse_request(
                self.request.headers.get("Content-Type", ""),
                bytes(self.body),
                self.server.max_text,
                self.request.headers.get("model"),
            )
        except BadRequest as bad:
            self.fail(bad.status, bad.message)
            return
        if not self.open_session("a speech request"):
            return
        try:
            await self._speak(request)
        finally:
            self.server.sessions.release()

    async def _speak(self, request: TTSRequest) -> None:
        """Synthesize the whole text; write each sentence's audio as it comes."""
        headers = {k.lower(): v for k, v in self.request.headers.get_all()}
        notes = SessionNotes(self.server.recorder, headers, resolve_model(headers.get("model")))
        notes.received(StartEvent(request))
        context = self.server.session_context()
        cast = await choose_cast(context.voices, request, context.pool, _log)
        notes.voice(", ".join(cast.names))
        encoder = StreamEncoder.for_request(request)
        synthesis = Synthesis(
            cast, request, encoder, context.pool, cancelled=lambda: self.gone, notes=notes,
            log=_log,
        )  # fmt: skip
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
