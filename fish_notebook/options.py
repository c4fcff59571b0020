"""What a realtime stream asks for, validated before any I/O: the request, the model, the
timeouts and the socket's keepalive and size limits. Pure value objects, as httpx's ``_config``.

- :class:`Timeout`: the bounds on every wait of a stream.
- :func:`build_request`: a base config merged with per-call options, the Fish SDK's way.
- :class:`SocketOptions`: keepalive and size limits, read from the SDK's ``ws_options``.
- :class:`StreamSpec`: all of it for one stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ValidationError
from .protocol import Prosody, TTSRequest

__all__ = ["WS_OPTION_FIELDS", "SocketOptions", "StreamSpec", "Timeout", "build_request"]


@dataclass(frozen=True)
class Timeout:
    """Bounds, in seconds, on every wait of a stream. ``None`` disables one bound.

    ::

        Timeout()                     # connect 10 s, receive 30 s, close 5 s
        Timeout(5.0)                  # 5 s on every wait
        Timeout(connect=3.0)          # 3 s to connect, defaults elsewhere

    ``receive`` bounds silence from the server while audio is owed: after a ``flush`` that
    followed new text, and after ``stop``. While the source itself is quiet (an LLM thinking),
    the server owes nothing and no bound applies; keepalive pings still detect a dead peer.
    """

    connect: float | None = 10.0
    receive: float | None = 30.0
    close: float | None = 5.0

    @classmethod
    def coerce(cls, value: Timeout | float | None) -> Timeout:
        if isinstance(value, Timeout):
            return value
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return cls(value, value, value)
        raise ValidationError("timeout", value, "must be a Timeout, a number of seconds or None")


def build_request(
    config: Any = None,
    *,
    reference_id: str | list[str] | None = None,
    references: list[Any] | None = None,
    format: str | None = None,
    latency: str | None = None,
    speed: float | None = None,
    volume: float | None = None,
    prosody: Prosody | Mapping[str, Any] | None = None,
    sample_rate: int | None = None,
    **fields: Any,
) -> TTSRequest:
    """Merge a base config with per-call options, the SDK's way: options given win.

    ``config`` may be our :class:`~fish_notebook.protocol.TTSRequest`, the Fish SDK's
    ``TTSConfig``/``TTSRequest`` (anything with ``model_dump()``), a mapping, or None.
    Raises ValidationError naming the first bad field.
    """
    if config is None:
        base = TTSRequest()
    elif isinstance(config, TTSRequest):
        base = config
    elif hasattr(config, "model_dump"):
        base = TTSRequest.from_wire(config.model_dump())
    elif isinstance(config, Mapping):
        base = TTSRequest.from_wire(dict(config))
    else:
        raise ValidationError(
            "config", type(config).__name__, "must be a TTSRequest, the SDK's TTSConfig, or a dict"
        )
    changes: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    if reference_id is not None:
        changes["reference_id"] = reference_id
    if references is not None:
        changes["references"] = tuple(references)
    if format is not None:
        changes["format"] = format
    if latency is not None:
        changes["latency"] = latency
    if sample_rate is not None:
        changes["sample_rate"] = sample_rate
    if prosody is not None:
        changes["prosody"] = prosody if isinstance(prosody, Prosody) else Prosody.from_wire(prosody)
    if speed is not None or volume is not None:
        current = changes.get("prosody", base.prosody) or Prosody()
        changes["prosody"] = Prosody(
            speed=current.speed if speed is None else speed,
            volume=current.volume if volume is None else volume,
            normalize_loudness=current.normalize_loudness,
        )
    unknown = set(changes) - set(TTSRequest.__dataclass_fields__)
    if unknown:
        name = sorted(unknown)[0]
        raise ValidationError(name, changes[name], "is not a TTS request field")
    return base.replace(**changes) if changes else base


WS_OPTION_FIELDS = (
    "keepalive_ping_interval_seconds",
    "keepalive_ping_timeout_seconds",
    "max_message_size_bytes",
    "queue_size",
)


@dataclass(frozen=True)
class SocketOptions:
    """Keepalive and size limits of the socket: ``websockets.connect``'s arguments.

    Our defaults: a ping every 20 s, 20 s for its pong, no limit on a message's size (an audio
    event may be large), websockets' default receive queue.
    """

    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    max_size: int | None = None
    max_queue: int | None = 16

    @classmethod
    def from_ws_options(cls, ws_options: Any) -> SocketOptions:
        """Read the Fish SDK's ``ws_options``: its ``WebSocketOptions`` (or a dict with its
        field names) or None. A field left at None keeps our default, as in the SDK.

        Raises ValidationError for anything else, naming the field.
        """
        if ws_options is None:
            return cls()
        if isinstance(ws_options, Mapping):
            unknown = sorted(set(map(str, ws_options)) - set(WS_OPTION_FIELDS))
            if unknown:
                raise ValidationError(
                    f"ws_options.{unknown[0]}",
                    ws_options[unknown[0]],
                    "is not a WebSocketOptions field",
                )
            values = {name: ws_options.get(name) for name in WS_OPTION_FIELDS}
        elif any(hasattr(ws_options, name) for name in WS_OPTION_FIELDS):
            values = {name: getattr(ws_options, name, None) for name in WS_OPTION_FIELDS}
        else:
            raise ValidationError(
                "ws_options",
                type(ws_options).__name__,
                "must be the Fish SDK's WebSocketOptions, a dict of its fields, or None",
            )
        default = cls()
        return cls(
            ping_interval=_positive(
                values, "keepalive_ping_interval_seconds", default.ping_interval
            ),
            ping_timeout=_positive(values, "keepalive_ping_timeout_seconds", default.ping_timeout),
            max_size=_positive(values, "max_message_size_bytes", default.max_size, whole=True),
            max_queue=_positive(values, "queue_size", default.max_queue, whole=True),
        )


def _positive(values: Mapping[str, Any], name: str, default: Any, *, whole: bool = False) -> Any:
    value = values[name]
    if value is None:
        return default
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        allowed = "a positive whole number" if whole else "a positive number of seconds"
        raise ValidationError(f"ws_options.{name}", value, f"must be {allowed} or None")
    return value


@dataclass(frozen=True)
class StreamSpec:
    """What one stream asks for, validated before any I/O."""

    request: TTSRequest
    model: str
    timestamps: bool = False
    socket: SocketOptions = field(default_factory=SocketOptions)
