"""``POST /v1/asr``: speech recognition on the embedded server, as Fish documents it.

What the Fish SDK's ``client.asr.transcribe(audio=..., language=..., include_timestamps=...)``
sends: a MessagePack body (``Content-Type: application/msgpack``) ``{audio: bytes, language:
str (left out: detect), ignore_timestamps: bool}``; ``multipart/form-data`` with the same
fields is taken too (``audio`` a file or a field, ``ignore_timestamps`` ``true``/``false``).
The answer is JSON ``{text, duration, segments: [{text, start, end}]}``, times in seconds
(:mod:`.asr`); ``ignore_timestamps`` true (its default when left out, as Fish's API
reference says) leaves ``segments`` empty. Guarantees:

- Every bad request gets a 4xx JSON ``{"status", "message"}`` saying what to do, before any
  model work: a body that is neither MessagePack nor multipart (415) or not a map of the
  fields (400); ``audio`` missing or not bytes, ``language`` neither a string nor null,
  ``ignore_timestamps`` not a bool (400); audio that is not integer-PCM WAV, is cut short,
  holds no samples, lasts over :data:`~.asr.MAX_AUDIO_SECONDS` or has a rate outside
  :data:`~.asr.MIN_SAMPLE_RATE`..:data:`~.asr.MAX_SAMPLE_RATE` Hz (400); a language the
  model does not have (400); a body over :data:`MAX_BODY` bytes (413) or slower than
  ``idle_timeout`` (408); a request past ``max_sessions`` (429, ``max_concurrency``).
- A request holds a session slot (as ``POST /v1/tts`` does) from its checked body to its
  answer, so uploads and synthesis together never outnumber the server's threads.
- The model run takes a core slot (:mod:`.slots`, shared with Piper's runs) with the
  deadline "now", as a session with nothing to play yet: it shares the cores with synthesis
  earliest deadline first. A run that has the machine to itself (no other run holds or
  waits for a slot) uses :data:`ASR_SOLO_THREADS` threads, any other one thread, as Piper's
  runs do (:mod:`.engine`): Whisper's encoder always works on a 30 s window, so a short
  question costs about as much as a long one, and two threads take it in about 0.6x the
  time (docs/LISTENING.md). A client that leaves while it waits gives its place up; a run
  that started finishes (at most :data:`~.asr.MAX_AUDIO_SECONDS` of audio).
- The model loads on the first request (about 1 s and 185 MB; see docs/LISTENING.md), not
  when the server starts: a server that never transcribes never pays for it. Without the
  ``listen`` extra the answer is 503, naming it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from tornado import httputil

from ..errors import MissingDependencyError, ValidationError
from .asr import MAX_AUDIO_BYTES, ASRResponse, PreparedAudio, Transcriber, prepare_audio
from .engine import SLOTS
from .http import BadRequest, BodyHandler, decode_body
from .slots import SynthesisCancelled, usable_cores

__all__ = [
    "ASR_PATH",
    "ASR_SOLO_THREADS",
    "ASR_THREADS",
    "MAX_BODY",
    "ASRHandler",
    "AsrRequest",
    "parse_asr_request",
]

logger = logging.getLogger("fish_notebook.local")

ASR_PATH = "/v1/asr"
#: Largest body: the largest audio :mod:`.asr` takes, and room for the other fields.
MAX_BODY = MAX_AUDIO_BYTES + 64 * 1024
#: Threads of one model run beside others: one core, the share of one core slot.
ASR_THREADS = 1
#: Threads of a run alone on the machine (its other cores are idle).
ASR_SOLO_THREADS = min(2, usable_cores())


class AsrRequest:
    """The checked fields of one request."""

    def __init__(self, audio: bytes, language: str | None, timestamps: bool) -> None:
        self.audio = audio
        self.language = language
        self.timestamps = timestamps

    def __repr__(self) -> str:
        return (
            f"AsrRequest(<{len(self.audio)} bytes>, language={self.language!r}, "
            f"timestamps={self.timestamps})"
        )


def parse_asr_request(content_type: str, body: bytes) -> AsrRequest:
    """The request in ``body``, its fields checked. Raises BadRequest saying what is wrong."""
    data = decode_body(
        content_type,
        body,
        "application/msgpack (as the Fish SDK does) or multipart/form-data",
        multipart=_multipart_fields,
    )
    audio = data.get("audio")
    if not isinstance(audio, bytes | bytearray):
        got = "missing" if audio is None else f"a {type(audio).__name__}"
        raise BadRequest(400, f"'audio' must be the bytes of a WAV file, not {got}")
    language = data.get("language")
    if language is not None and not isinstance(language, str):
        got = type(language).__name__
        raise BadRequest(400, f"'language' must be a language code or null, not a {got}")
    ignore = data.get("ignore_timestamps", True)
    if not isinstance(ignore, bool):
        got = type(ignore).__name__
        raise BadRequest(400, f"'ignore_timestamps' must be true or false, not a {got}")
    return AsrRequest(bytes(audio), language or None, not ignore)


def _multipart_fields(content_type: str, body: bytes) -> dict[str, Any]:
    """The fields of a multipart body: files as bytes, other fields as text."""
    arguments: dict[str, list[bytes]] = {}
    files: dict[str, list[httputil.HTTPFile]] = {}
    try:
        httputil.parse_body_arguments(content_type, body, arguments, files)
    except httputil.HTTPInputError as exc:
        why = str(exc).rsplit(": ", 1)[-1]  # tornado repeats its prefix
        raise BadRequest(400, f"the body is not valid multipart/form-data: {why}") from exc
    fields: dict[str, Any] = {}
    for name, values in arguments.items():
        fields[name] = values[0].decode("utf-8", "replace")
    for name, parts in files.items():
        fields[name] = parts[0]["body"]
    if "audio" in arguments and "audio" not in files:
        fields["audio"] = arguments["audio"][0]  # sent as a plain field: its bytes as they are
    flag = fields.get("ignore_timestamps")
    if isinstance(flag, str):
        fields["ignore_timestamps"] = {"true": True, "false": False}.get(flag.strip().lower(), flag)
    return fields


class ASRHandler(BodyHandler):
    """``POST /v1/asr`` (module docstring)."""

    def max_body(self) -> int:
        return MAX_BODY

    async def post(self) -> None:
        self.body_complete()
        try:
            request = parse_asr_request(
                self.request.headers.get("Content-Type", ""), bytes(self.body)
            )
        except BadRequest as bad:
            self.fail(bad.status, bad.message)
            return
        self.body = bytearray()  # the request holds its own copy
        if not self.open_session("a transcription"):
            return
        try:
            answer = await self._transcribe(request)
        finally:
            self.server.sessions.release()
        if answer is not None and not self.gone:
            self.send_json(answer)

    async def _transcribe(self, request: AsrRequest) -> ASRResponse | None:
        """The answer, or None once a 4xx/5xx has been sent (or the client left)."""
        loop = asyncio.get_running_loop()
        pool = self.server.session_context().pool
        try:
            transcriber = self.server.transcriber()
            prepared = await loop.run_in_executor(pool, self._prepare, transcriber, request)
            deadline = time.monotonic()
            return await loop.run_in_executor(
                pool, self._recognize, transcriber, prepared, request, deadline
            )
        except ValidationError as exc:
            self.fail(400, f"{exc}")
        except MissingDependencyError as exc:
            logger.warning("POST %s: %s", ASR_PATH, exc)
            self.send_json({"status": 503, "message": str(exc)}, 503)
        except SynthesisCancelled:
            logger.debug("the client left before its transcription began")
        return None

    @staticmethod
    def _prepare(transcriber: Transcriber, request: AsrRequest) -> PreparedAudio:
        return prepare_audio(
            request.audio, max_seconds=transcriber.max_seconds, max_bytes=transcriber.max_bytes
        )

    def _recognize(
        self,
        transcriber: Transcriber,
        prepared: PreparedAudio,
        request: AsrRequest,
        deadline: float,
    ) -> ASRResponse:
        with SLOTS.slot(deadline, lambda: self.gone) as alone:
            return transcriber.recognize(
                prepared, request.language, request.timestamps, alone=alone
            )
