"""The plain HTTP side of the embedded server: who may ask, what is logged, the small endpoints.

- :class:`Gate` checks the bearer token (HTTP 401 with ``WWW-Authenticate`` without it),
  and logs each request line and header at DEBUG with every credential redacted
  (:class:`~fish_notebook._net.RedactingLogger`), as websockets did for the handshake.
- ``GET /healthz`` answers ``ok`` to anyone; ``GET /v1/voices`` answers
  ``{"voices": [{"id", "default", "sample_rate"}]}``; any other path is a 404 that says
  where the TTS WebSocket is. Health and voices carry ``Access-Control-Allow-Origin: *``
  (not secret; a browser panel may read them).
- Errors are JSON ``{"status": 4xx, "message": "..."}`` (the Fish SDK reads ``message``),
  except the plain-text 401 and 404 above.
- :class:`BodyHandler` reads a POST body as it streams, bounded in size (413, from the
  ``Content-Length`` or as it arrives) and in time (408 past ``idle_timeout``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack
from tornado.web import RequestHandler, stream_request_body

from .._net import RedactingLogger
from ..protocol import LIVE_PATH
from .output import clipped

if TYPE_CHECKING:
    from .server import LocalServer

__all__ = [
    "BadRequest",
    "BodyHandler",
    "Gate",
    "HealthHandler",
    "JsonHandler",
    "NotFoundHandler",
    "VoicesHandler",
    "decode_body",
]

logger = logging.getLogger("fish_notebook.local.http")


class Gate:
    """The bearer token (if any) every request but ``/healthz`` must carry; request logs."""

    def __init__(self, token: str | None) -> None:
        self._token = token
        # Request headers are logged at DEBUG: never a token or a client's key.
        self._log = RedactingLogger(logger, token)

    def __repr__(self) -> str:
        return f"Gate(token={'<set>' if self._token else None})"

    def authorized(self, handler: RequestHandler) -> bool:
        """True when no token is set or the request carries ``Bearer <token>``."""
        if self._token is None:
            return True
        header = handler.request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), self._token.encode()
        )

    def refuse(self, handler: RequestHandler) -> None:
        """Answer 401, saying which header to send."""
        handler.set_status(401)
        handler.set_header("WWW-Authenticate", 'Bearer realm="fish-notebook"')
        handler.set_header("Access-Control-Allow-Origin", "*")
        handler.set_header("Content-Type", "text/plain; charset=utf-8")
        # A body may still be on its way: the connection closes after this answer, and
        # the client must know not to send its next request on it.
        handler.set_header("Connection", "close")
        handler.finish(
            "Missing or wrong token: send the header 'Authorization: Bearer <token>' "
            "with the token the server was started with\n"
        )

    def log_request(self, handler: RequestHandler) -> None:
        """The request line and headers at DEBUG, credentials redacted."""
        if not logger.isEnabledFor(logging.DEBUG):
            return
        request = handler.request
        self._log.debug("< %s %s %s", request.method, request.uri, request.version)
        for name, value in request.headers.get_all():
            self._log.debug("< %s: %s", name, value)


def log_access(handler: RequestHandler) -> None:
    """One line per answered request (tornado's ``log_function``); no query, no headers."""
    status = handler.get_status()
    level = logging.DEBUG if status < 400 else logging.INFO if status < 500 else logging.ERROR
    request = handler.request
    logger.log(
        level, "%d %s %s %.1fms", status, request.method, request.path,
        1000 * request.request_time(),
    )  # fmt: skip


class JsonHandler(RequestHandler):
    """A handler of this server: token checked (unless ``open``), errors as JSON."""

    open = False  # True: served without the token

    def initialize(self, server: LocalServer) -> None:
        self.server = server

    def set_default_headers(self) -> None:
        self.clear_header("Server")  # no version banner

    async def prepare(self) -> None:
        self.server.gate.log_request(self)
        if not self.open and not self.server.gate.authorized(self):
            self.server.gate.refuse(self)

    @property
    def answered(self) -> bool:
        """True once the answer is complete (no more may be written)."""
        return bool(self._finished)

    def send_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        message = self._reason
        error = kwargs.get("exc_info", (None, None, None))[1]
        if error is not None and getattr(error, "log_message", None):
            message = error.log_message % error.args if error.args else error.log_message
        self.send_json({"status": status_code, "message": message}, status_code)


MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
JSON_TYPES = ("application/json", "text/json")


class BadRequest(Exception):
    """A request answered with ``status`` and ``message`` before any work on it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_body(
    content_type: str,
    body: bytes,
    accepted: str,
    *,
    json_ok: bool = False,
    multipart: Callable[[str, bytes], Any] | None = None,
) -> dict[str, Any]:
    """The map a request body holds, by its Content-Type: MessagePack always; JSON (also with
    no Content-Type) when ``json_ok``; multipart/form-data through ``multipart``. Raises
    BadRequest: 400 for a body that does not decode to a map, 415 for another type (the
    message says ``accepted``)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    data: Any
    if kind in MSGPACK_TYPES:
        try:
            data = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException, TypeError) as exc:
            raise BadRequest(400, f"the body is not valid MessagePack: {exc}") from exc
    elif json_ok and (kind in JSON_TYPES or not kind):
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise BadRequest(400, f"the body is not valid JSON: {exc}") from exc
    elif multipart is not None and kind == "multipart/form-data":
        data = multipart(content_type, body)
    else:
        raise BadRequest(415, f"Content-Type {kind or 'none'!r} is not supported: send {accepted}")
    if not isinstance(data, dict):
        raise BadRequest(400, f"the body must be a map of fields, not {type(data).__name__}")
    return data


@stream_request_body
class BodyHandler(JsonHandler):
    """A POST whose body streams in, bounded: at most :meth:`max_body` bytes (413, from the
    ``Content-Length`` or as it arrives), whole within ``idle_timeout`` (408). ``post`` reads
    :attr:`body`; :meth:`fail` answers a 4xx JSON message at any point."""

    def max_body(self) -> int:
        """Largest body accepted, in bytes."""
        return self.server.max_frame_size

    async def prepare(self) -> None:
        await super().prepare()
        if self.answered:
            return
        self.body = bytearray()
        self.body_read = False
        self.gone = False  # the client left
        limit = self.max_body()
        self.request.connection.set_max_body_size(limit)  # type: ignore[union-attr]
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            self.fail(413, f"the body is larger than {limit} bytes")
            return
        loop = asyncio.get_running_loop()
        self._slow = loop.call_later(self.server.idle_timeout, self._too_slow)

    def data_received(self, chunk: bytes) -> None:
        if self.answered:
            return
        self.body += chunk
        if len(self.body) > self.max_body():
            self.fail(413, f"the body is larger than {self.max_body()} bytes")

    def _too_slow(self) -> None:
        if not self.answered:
            self.fail(408, f"the body did not arrive within {self.server.idle_timeout:g}s")

    def body_complete(self) -> None:
        """Call first in ``post``: the whole body is here."""
        self._slow.cancel()
        self.body_read = True

    def fail(self, status: int, message: str) -> None:
        """Answer ``status`` with a JSON message now (the rest of the body is not read)."""
        logger.info("%s %s refused (%d): %s", self.request.method, self.request.path, status,
                    clipped(message))  # fmt: skip
        if not self.body_read:  # tornado closes the connection after this answer
            self.set_header("Connection", "close")
        self.send_json({"status": status, "message": clipped(message)}, status)

    def on_finish(self) -> None:
        slow = getattr(self, "_slow", None)
        if slow is not None:
            slow.cancel()

    def on_connection_close(self) -> None:
        self.gone = True

    def open_session(self, what: str) -> bool:
        """Take a session slot for this request; False (and 429 answered, as the cloud's
        concurrency refusal) when every slot is taken. Release it with
        ``self.server.sessions.release()``."""
        sessions = self.server.sessions
        if sessions.try_open():
            return True
        logger.warning("refused %s: %d sessions already open", what, sessions.active)
        self.send_json(
            {"status": 429, "message": "Concurrency limit exceeded",
             "max_concurrency": sessions.limit},
            429,
        )  # fmt: skip
        return False


class HealthHandler(JsonHandler):
    """``GET /healthz``: ``ok``, for anyone."""

    open = True

    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Access-Control-Allow-Origin", "*")
        self.finish("ok\n")


class VoicesHandler(JsonHandler):
    """``GET /v1/voices``: the local voices, the default first."""

    def get(self) -> None:
        self.set_header("Access-Control-Allow-Origin", "*")
        self.send_json({"voices": [v.to_json() for v in self.server.voices.voices()]})


class NotFoundHandler(JsonHandler):
    """Any other path: 404, saying where the TTS WebSocket is."""

    open = True

    def prepare(self) -> None:  # type: ignore[override]
        self.server.gate.log_request(self)
        self.set_status(404)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(f"Not found. The TTS WebSocket is at {LIVE_PATH}\n")
