"""Network safety shared by the client and the embedded server: which hosts are loopback, and
a logger for websockets that never writes credentials, even at DEBUG.

At DEBUG, websockets logs every request header it receives, ``Authorization`` included: the
server's own token, or an API key a client sent by mistake. The client and the server hand
websockets a :class:`RedactingLogger` instead, which replaces

- the value of a credential header (``Authorization``, ``Proxy-Authorization``, ``Cookie``)
  in websockets' ``"< %s: %s"`` header lines,
- ``Bearer <anything>`` / ``Basic <anything>`` in any message or argument,
- the secret it was given (the client's API key, the server's token) wherever it appears,

with ``<redacted>``. Everything else is logged as websockets meant it.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from typing import Any

__all__ = ["REDACTED", "RedactingLogger", "is_loopback"]

REDACTED = "<redacted>"

_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
_SCHEME_AND_CREDENTIALS = re.compile(r"(?i)\b(bearer|basic)\s+\S+")


def is_loopback(host: str) -> bool:
    """True when ``host`` is a loopback address or ``localhost``."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class RedactingLogger(logging.LoggerAdapter):
    """Logs to ``base`` with credentials and ``secret`` replaced by ``<redacted>``."""

    def __init__(self, base: logging.Logger, secret: str | None = None) -> None:
        super().__init__(base, {})
        self._secret = secret or None

    def __repr__(self) -> str:
        return f"RedactingLogger({self.logger.name!r})"  # never the secret

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        if len(args) == 2 and str(args[0]).lower() in _CREDENTIAL_HEADERS:
            args = (args[0], REDACTED)  # websockets: "< %s: %s" % (name, value)
        # Redact the formatted line: a credential may sit in the format or in an argument.
        try:
            line = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            line = f"{msg} {args!r}"
        self.logger.log(level, "%s", self._redact(line), **kwargs)

    def _redact(self, line: str) -> str:
        if self._secret is not None:
            line = line.replace(self._secret, REDACTED)
        return _SCHEME_AND_CREDENTIALS.sub(rf"\1 {REDACTED}", line)
