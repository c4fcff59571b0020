"""Speech recognition over Fish's API: ``POST /v1/asr`` on the cloud or the embedded server.

::

    from fish_notebook.transcribe import transcribe

    result = transcribe(open("question.wav", "rb").read())
    result.text, result.duration, result.segments

Where it goes is decided as for speech (:mod:`fish_notebook.endpoints`): ``base_url``,
``backend``, ``FISH_BASE_URL``, ``FISH_API_KEY`` (cloud), else the embedded server. The
body is MessagePack ``{audio, language, ignore_timestamps}`` as Fish documents it (the Fish
SDK leaves ``language`` out when it is not given; so does this); the answer is JSON
``{text, duration, segments: [{text, start, end}]}``, seconds.

Guarantees:

- The embedded server gets its own token, any other server the API key; the key never
  appears in a message, and a redirect is never followed (it could carry the key elsewhere).
  A loopback server is reached without any proxy from the environment.
- Every wait is bounded by ``timeout`` (the connection, the server's work, the answer); the
  answer is read up to :data:`MAX_ANSWER_BYTES`.
- Errors are typed: :class:`~fish_notebook.errors.AuthenticationError` (401/403),
  :class:`~fish_notebook.errors.ServerBusyError` (429),
  :class:`~fish_notebook.errors.ValidationError` (another 4xx, with the server's message),
  :class:`~fish_notebook.errors.ConnectError` / ``ConnectTimeout`` (cannot connect; also a
  5xx or a redirect), ``ReceiveTimeout`` (no answer in time),
  :class:`~fish_notebook.errors.ProtocolError` (an answer that is not the documented JSON).

Two faces on one core: :func:`transcribe` blocks the calling thread; :func:`atranscribe`
runs the request in a worker thread. Standard library HTTP only.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import msgpack

from . import endpoints
from ._version import __version__
from .audio import wav_bytes
from .endpoints import Endpoint
from .errors import (
    ConnectError,
    ConnectTimeout,
    FishNotebookError,
    ProtocolError,
    ReceiveTimeout,
    ValidationError,
    refused,
)

__all__ = [
    "ASR_PATH",
    "DEFAULT_TIMEOUT",
    "MAX_ANSWER_BYTES",
    "MICROPHONE_RATE",
    "Segment",
    "Transcript",
    "atranscribe",
    "transcribe",
]

ASR_PATH = "/v1/asr"
#: Seconds for the whole request: connecting, the server's work, reading the answer.
DEFAULT_TIMEOUT = 60.0
#: The longest answer read: a transcript of minutes of speech with its segments fits.
MAX_ANSWER_BYTES = 4 * 1024 * 1024
#: The rate of raw PCM when none is given: what the page's microphone worklet sends.
MICROPHONE_RATE = 16_000
_READ_SIZE = 65_536
_MESSAGE_CHARS = 300


@dataclass(frozen=True)
class Segment:
    """A stretch of the transcript and its times, in seconds from the start of the audio."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Transcript:
    """What the server heard: ``text``, the audio's ``duration`` (seconds) and ``segments``
    (empty when timestamps were not asked for)."""

    text: str
    duration: float
    segments: tuple[Segment, ...] = ()


# --- the request ----------------------------------------------------------------------------


def _wav(audio: Any, sample_rate: int) -> bytes:
    """``audio`` as a WAV file: a WAV as it is, raw 16-bit mono PCM wrapped at ``sample_rate``."""
    if not isinstance(audio, bytes | bytearray | memoryview):
        raise ValidationError(
            "audio", type(audio).__name__, "must be bytes: a WAV file, or 16-bit mono PCM"
        )
    data = bytes(audio)
    if not data:
        raise ValidationError("audio", "<0 bytes>", "is empty: send some speech")
    if data[:4] in (b"RIFF", b"RF64"):
        return data
    return wav_bytes(data, sample_rate)  # ValidationError for half a sample or a bad rate


def _body(audio: Any, language: str | None, timestamps: bool, sample_rate: int) -> bytes:
    if language is not None and (not isinstance(language, str) or not language.strip()):
        raise ValidationError("language", language, "must be a language code ('en') or None")
    body: dict[str, Any] = {"audio": _wav(audio, sample_rate)}
    if language is not None:
        body["language"] = language.strip()
    body["ignore_timestamps"] = not timestamps
    return msgpack.packb(body, use_bin_type=True)


def _check_timeout(timeout: float) -> float:
    number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    if not number or math.isnan(timeout) or timeout <= 0:
        raise ValidationError("timeout", timeout, "must be a number of seconds > 0")
    return float(timeout)


def _key(api_key: str | None, base_url: str | None, backend: str) -> str | None:
    """The caller's key, as the realtime client takes it (none for ``backend="local"``)."""
    if api_key is not None and not isinstance(api_key, str):
        raise ValidationError("api_key", type(api_key).__name__, "must be a str or None")
    if backend == "local" and not base_url:
        return None
    return api_key or os.environ.get("FISH_API_KEY") or None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: following one would send the key to wherever it points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener(endpoint: Endpoint) -> urllib.request.OpenerDirector:
    handlers: list[Any] = [_NoRedirect()]
    if endpoint.is_loopback:
        handlers.append(urllib.request.ProxyHandler({}))  # never via a proxy
    return urllib.request.build_opener(*handlers)


# --- the answer -----------------------------------------------------------------------------


def _read(response: Any, deadline: float, where: str) -> bytes:
    """The body, bounded in size and time (each read waits at most the socket timeout)."""
    data = bytearray()
    while True:
        if time.monotonic() > deadline:
            raise ReceiveTimeout(f"the answer of {where} did not arrive in time")
        piece = response.read(_READ_SIZE)
        if not piece:
            return bytes(data)
        data += piece
        if len(data) > MAX_ANSWER_BYTES:
            raise ProtocolError(f"the answer of {where} is larger than {MAX_ANSWER_BYTES} bytes")


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _parse(data: bytes, where: str) -> Transcript:
    try:
        answer = json.loads(data)
    except ValueError as exc:
        raise ProtocolError(f"the answer of {where} is not JSON: {data[:80]!r}") from exc
    if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
        raise ProtocolError(f"the answer of {where} has no text: {str(answer)[:120]}")
    segments = []
    for item in answer.get("segments") or ():
        start = _number(item.get("start")) if isinstance(item, dict) else None
        end = _number(item.get("end")) if isinstance(item, dict) else None
        if start is None or end is None or not isinstance(item.get("text"), str):
            raise ProtocolError(f"the answer of {where} has a bad segment: {str(item)[:120]}")
        segments.append(Segment(item["text"], start, end))
    duration = _number(answer.get("duration"))
    return Transcript(answer["text"], duration or 0.0, tuple(segments))


def _said(body: bytes, key: str | None) -> str:
    """The server's own words from an error body ({message}, {detail}, [{loc, msg}], text)."""
    try:
        answer: Any = json.loads(body)
    except ValueError:
        answer = body.decode("utf-8", "replace")
    if isinstance(answer, dict):
        answer = answer.get("message") or answer.get("detail") or answer
    if isinstance(answer, list):
        parts = [
            f"{'.'.join(map(str, i.get('loc', ())))}: {i.get('msg')}" if isinstance(i, dict) else i
            for i in answer
        ]
        answer = "; ".join(map(str, parts))
    said = " ".join(str(answer).split())[:_MESSAGE_CHARS]
    return said.replace(key, "<redacted>") if key else said


def _status_error(status: int, body: bytes, where: str, key: str | None, size: int) -> Exception:
    said = _said(body, key) or "no message"
    refusal = refused(status, where, said)
    if refusal is not None:
        return refusal
    if status in (404, 405):
        return ValidationError(
            "base_url",
            where,
            f"has no speech recognition (HTTP {status}: {said}): send it to a server "
            "that has POST /v1/asr (Fish's cloud, or a newer embedded server)",
        )
    if 400 <= status < 500:
        return ValidationError(
            "audio", f"<{size} bytes>", f"was refused by {where} (HTTP {status}): {said}"
        )
    if 300 <= status < 400:
        return ConnectError(
            f"{where} redirects (HTTP {status}); it is not followed: pass the final URL"
        )
    return ConnectError(f"{where} failed (HTTP {status}): {said}; retry, or see its log")


def _post(endpoint: Endpoint, body: bytes, key: str | None, timeout: float) -> Transcript:
    """The blocking core: one POST, the answer read and parsed, errors mapped."""
    url = endpoint.http_url(ASR_PATH)
    where = f"the server at {endpoint.safe_base}{ASR_PATH}"
    headers = {
        "Content-Type": "application/msgpack",
        "Accept": "application/json",
        "User-Agent": f"fish-notebook/{__version__}",
    }
    token = endpoint.credential(key)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    deadline = time.monotonic() + timeout
    try:
        with _opener(endpoint).open(request, timeout=timeout) as response:
            return _parse(_read(response, deadline, where), where)
    except FishNotebookError:
        raise
    except urllib.error.HTTPError as exc:
        error_body = exc.read(_READ_SIZE) if exc.fp is not None else b""
        raise _status_error(exc.code, error_body, where, token, len(body)) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise ConnectTimeout(f"{where} did not accept a connection in {timeout:g} s") from None
        raise ConnectError(f"cannot reach {where}: {reason}; {endpoint.advice()}") from None
    except TimeoutError:
        raise ReceiveTimeout(f"{where} did not answer within {timeout:g} s") from None
    except (http.client.HTTPException, ConnectionError) as exc:
        raise ConnectError(f"{where} closed the connection ({type(exc).__name__})") from None


# --- the two faces --------------------------------------------------------------------------


def _checked(
    audio: Any,
    language: str | None,
    timestamps: bool,
    sample_rate: int,
    api_key: str | None,
    base_url: str | None,
    backend: str,
    timeout: float,
) -> tuple[float, str | None, bytes]:
    """Both faces' arguments checked before any I/O: the timeout, the key and the body."""
    timeout = _check_timeout(timeout)
    return (
        timeout,
        _key(api_key, base_url, backend),
        _body(audio, language, timestamps, sample_rate),
    )


def transcribe(
    audio: bytes | bytearray | memoryview,
    *,
    language: str | None = None,
    timestamps: bool = True,
    sample_rate: int = MICROPHONE_RATE,
    base_url: str | None = None,
    api_key: str | None = None,
    backend: str = "auto",
    timeout: float = DEFAULT_TIMEOUT,
) -> Transcript:
    """Transcribe ``audio`` with ``POST /v1/asr``; block until the answer.

    Args:
        audio: a WAV file's bytes, or raw 16-bit little-endian mono PCM at ``sample_rate``
            (the microphone's 16 kHz by default), sent as a WAV file.
        language: a language code (``"en"``), or None to let the server decide.
        timestamps: ask for ``segments`` (Fish's ``ignore_timestamps`` is the opposite).
        base_url, api_key, backend: where to send it, as for speech (module docstring).
        timeout: seconds for the whole request.

    Starts the embedded server when that is where speech recognition goes. Raises
    ValidationError for bad arguments before any I/O; see the module docstring for the rest.
    """
    timeout, key, body = _checked(
        audio, language, timestamps, sample_rate, api_key, base_url, backend, timeout
    )
    endpoint = endpoints.resolve(base_url, key, backend)
    return _post(endpoint, body, key, timeout)


async def atranscribe(
    audio: bytes | bytearray | memoryview,
    *,
    language: str | None = None,
    timestamps: bool = True,
    sample_rate: int = MICROPHONE_RATE,
    base_url: str | None = None,
    api_key: str | None = None,
    backend: str = "auto",
    timeout: float = DEFAULT_TIMEOUT,
) -> Transcript:
    """:func:`transcribe` for async code: the request runs in a worker thread, so the event
    loop keeps going. Cancelling the call abandons the answer (the request ends by its
    ``timeout``)."""
    timeout, key, body = _checked(
        audio, language, timestamps, sample_rate, api_key, base_url, backend, timeout
    )
    endpoint = await endpoints.aresolve(base_url, key, backend)
    return await asyncio.to_thread(_post, endpoint, body, key, timeout)
