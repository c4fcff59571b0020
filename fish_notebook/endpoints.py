"""Where speech goes: the one resolver, used by the client, ``speak()``, the panel and the CLI.

First match wins:

1. an explicit URL (a ``base_url`` argument, ``%speak_config --url``);
2. ``backend="local"``: the embedded server, even when a key or ``FISH_BASE_URL`` is set;
3. ``backend="cloud"``: Fish Audio's cloud (needs a key);
4. ``FISH_BASE_URL``;
5. ``FISH_API_KEY`` set (or a key passed): Fish Audio's cloud;
6. otherwise the embedded server, started on demand on a free loopback port
   (``fish-notebook[local]``).

:func:`plan` decides with no I/O (``None`` means "the embedded server, not started yet");
:func:`resolve` also starts the embedded server when that is the answer. An
:class:`Endpoint` knows its WebSocket URLs, its HTTP URLs (``/v1/tts``, ``/model``) and how
to describe itself to people without showing a secret.
"""

from __future__ import annotations

import asyncio
import os
import urllib.parse
from dataclasses import dataclass, field
from typing import Literal

from ._local_process import LocalServerInfo, ensure_local_server
from ._net import is_loopback
from .errors import ValidationError
from .protocol import CLOUD_BASE_URL, LIVE_PATH, LIVE_TIMESTAMP_PATH

__all__ = ["BACKENDS", "Endpoint", "Origin", "aresolve", "describe", "plan", "resolve"]

Origin = Literal["argument", "FISH_BASE_URL", "cloud", "local"]
#: How a caller may choose where speech goes (an explicit URL overrides it).
BACKENDS = ("auto", "local", "cloud")

_WS_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_HTTP_SCHEMES = {"ws": "http", "wss": "https", "http": "http", "https": "https"}
_LOCAL_DESCRIPTION = "the embedded local server (started on demand)"

_ADVICE: dict[Origin, str] = {
    "argument": "check the base_url you passed",
    "FISH_BASE_URL": "check FISH_BASE_URL (unset it to use the embedded local server)",
    "cloud": "check the network, or unset FISH_API_KEY to use the embedded local server",
    "local": "the embedded local server did not answer; see its log above",
}


@dataclass(frozen=True)
class Endpoint:
    """A server that speaks Fish's API, and why it was chosen.

    ``base`` is the server's http(s) root as given (``https://api.fish.audio``,
    ``http://127.0.0.1:PORT``, or a proxy path), without the realtime path.
    """

    base: str
    origin: Origin
    #: The embedded server's own token (never the user's key; never in a repr).
    token: str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_url(cls, url: str, origin: Origin, token: str | None = None) -> Endpoint:
        """Parse any http(s)/ws(s) URL of the server, the realtime path included or not.

        Raises ValidationError for anything else.
        """
        parts = urllib.parse.urlsplit(url.strip() if isinstance(url, str) else "")
        scheme = _HTTP_SCHEMES.get(parts.scheme.lower())
        if scheme is None or not parts.netloc:
            raise ValidationError(
                "base_url", url, "must be an http://, https://, ws:// or wss:// URL with a host"
            )
        path = parts.path.rstrip("/")
        for suffix in (LIVE_TIMESTAMP_PATH, LIVE_PATH):
            if path.endswith(suffix):
                path = path[: -len(suffix)]
                break
        base = urllib.parse.urlunsplit((scheme, parts.netloc, path, parts.query, ""))
        return cls(base, origin, token)

    def ws_url(self, *, timestamps: bool = False) -> str:
        """The realtime WebSocket URL (``/with-timestamp`` when asked)."""
        parts = urllib.parse.urlsplit(self.base)
        path = parts.path + (LIVE_TIMESTAMP_PATH if timestamps else LIVE_PATH)
        return urllib.parse.urlunsplit(
            (_WS_SCHEMES[parts.scheme], parts.netloc, path, parts.query, "")
        )

    def http_url(self, path: str) -> str:
        """An HTTP URL of the same server: ``http_url("/model")``."""
        parts = urllib.parse.urlsplit(self.base)
        return urllib.parse.urlunsplit(
            (parts.scheme, parts.netloc, parts.path + path, parts.query, "")
        )

    @property
    def is_loopback(self) -> bool:
        return is_loopback(urllib.parse.urlsplit(self.base).hostname or "")

    @property
    def is_cloud(self) -> bool:
        """True for Fish Audio's own servers, however they were chosen."""
        cloud_host = urllib.parse.urlsplit(CLOUD_BASE_URL).hostname
        return urllib.parse.urlsplit(self.base).hostname == cloud_host

    @property
    def safe_base(self) -> str:
        """``base`` without user info or query (they can hold credentials)."""
        parts = urllib.parse.urlsplit(self.base)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))

    def describe(self) -> str:
        """Where speech goes, for people: never a key, user info or query."""
        if self.origin == "cloud":
            return f"Fish Audio's cloud ({self.safe_base}), API key set (hidden)"
        if self.origin == "local":
            return f"the embedded local server ({self.safe_base})"
        if self.origin == "FISH_BASE_URL":
            return f"FISH_BASE_URL {self.safe_base}"
        return self.safe_base

    def advice(self) -> str:
        """What to check when this endpoint cannot be reached."""
        return _ADVICE[self.origin]

    def credential(self, api_key: str | None) -> str | None:
        """The bearer token to send here: the embedded server's own token to it (never the
        user's Fish key), the caller's ``api_key`` to any other server."""
        return self.token if self.origin == "local" else api_key


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValidationError("backend", backend, f"must be one of {', '.join(BACKENDS)}")


def plan(
    base_url: str | None = None, api_key: str | None = None, backend: str = "auto"
) -> Endpoint | None:
    """Where speech would go, with no I/O; ``None`` means the embedded server.

    ``api_key`` is the key the caller holds (``FISH_API_KEY`` is read here too).
    Raises ValidationError for a bad URL or backend, or ``"cloud"`` with no key.
    """
    _check_backend(backend)
    if base_url:
        return Endpoint.from_url(base_url, "argument")
    if backend == "local":
        return None
    key = api_key or os.environ.get("FISH_API_KEY")
    if backend == "cloud":
        if not key:
            raise ValidationError(
                "backend", "cloud", "needs a Fish Audio key: set FISH_API_KEY or pass api_key"
            )
        return Endpoint.from_url(CLOUD_BASE_URL, "cloud")
    env_url = os.environ.get("FISH_BASE_URL")
    if env_url:
        return Endpoint.from_url(env_url, "FISH_BASE_URL")
    if key:
        return Endpoint.from_url(CLOUD_BASE_URL, "cloud")
    return None


def resolve(
    base_url: str | None = None, api_key: str | None = None, backend: str = "auto"
) -> Endpoint:
    """:func:`plan`, starting the embedded server when that is the answer (blocking)."""
    endpoint = plan(base_url, api_key, backend)
    return endpoint or _local(ensure_local_server())


async def aresolve(
    base_url: str | None = None, api_key: str | None = None, backend: str = "auto"
) -> Endpoint:
    """:func:`resolve` for async code: the embedded server starts in a worker thread."""
    endpoint = plan(base_url, api_key, backend)
    if endpoint is not None:
        return endpoint
    return _local(await asyncio.to_thread(ensure_local_server))


def _local(server: LocalServerInfo) -> Endpoint:
    return Endpoint.from_url(server.url, "local", server.token)


def describe(base_url: str | None = None, api_key: str | None = None, backend: str = "auto") -> str:
    """Where speech would go, for people, without starting anything or showing a secret.

    Never raises for a missing key: it says so instead.
    """
    try:
        endpoint = plan(base_url, api_key, backend)
    except ValidationError:
        if backend != "cloud" or base_url:
            raise
        return f"Fish Audio's cloud ({CLOUD_BASE_URL}), but no FISH_API_KEY is set"
    return _LOCAL_DESCRIPTION if endpoint is None else endpoint.describe()
