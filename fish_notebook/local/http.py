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
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import TYPE_CHECKING, Any

from tornado.web import RequestHandler

from .._net import RedactingLogger
from ..protocol import LIVE_PATH

if TYPE_CHECKING:
    from .server import LocalServer

__all__ = ["Gate", "HealthHandler", "JsonHandler", "NotFoundHandler", "VoicesHandler"]

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
