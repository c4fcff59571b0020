"""Fish Audio's realtime TTS protocol: events, the request, and MessagePack framing.

Pure: no sockets, no threads, no clocks. Both our client and our embedded server use it,
so they cannot disagree about the wire.

Every frame, in both directions, is one binary WebSocket message holding one MessagePack
map with an ``event`` key. Client events: ``start`` (with a ``request`` map), ``text``,
``flush``, ``stop``. Server events: ``audio``, ``finish``, ``log``, ``error``; any other
server event is kept as :class:`UnknownEvent`, never an error.

Use :func:`pack` to turn an event into a frame, and :func:`unpack_client_event` (server
side) or :func:`unpack_server_event` (client side) to turn a frame back into an event.
Both raise :class:`~fish_notebook.errors.ProtocolError` for a frame of the wrong shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeAlias

import msgpack

from ._checks import check_number
from .errors import ProtocolError, ValidationError

__all__ = [
    "AUDIO_FORMATS",
    "CLOUD_BASE_URL",
    "DEFAULT_MODEL",
    "LATENCY_MODES",
    "LIVE_PATH",
    "LIVE_TIMESTAMP_PATH",
    "MODELS",
    "Alignment",
    "AlignmentSegment",
    "AudioEvent",
    "ClientEvent",
    "CloseEvent",
    "ErrorEvent",
    "FinishEvent",
    "FlushEvent",
    "LogEvent",
    "Prosody",
    "ReferenceAudio",
    "ServerEvent",
    "StartEvent",
    "StopEvent",
    "TTSRequest",
    "TextEvent",
    "UnknownEvent",
    "default_sample_rate",
    "pack",
    "resolve_model",
    "unpack_client_event",
    "unpack_server_event",
]

CLOUD_BASE_URL = "https://api.fish.audio"
LIVE_PATH = "/v1/tts/live"
LIVE_TIMESTAMP_PATH = "/v1/tts/live/with-timestamp"

AudioFormat: TypeAlias = Literal["mp3", "wav", "pcm", "opus"]
LatencyMode: TypeAlias = Literal["normal", "balanced", "low"]
AUDIO_FORMATS: tuple[str, ...] = ("mp3", "wav", "pcm", "opus")
LATENCY_MODES: tuple[str, ...] = ("normal", "balanced", "low")
MP3_BITRATES: tuple[int, ...] = (64, 128, 192)
# The cloud takes bits per second (-1000 = auto); the SDK sends kbps. Both are accepted.
OPUS_BITRATES: tuple[int, ...] = (-1000, 24, 32, 48, 64, 24000, 32000, 48000, 64000)

MODELS: tuple[str, ...] = ("s1", "s2-pro", "s2.1-pro", "s2.1-pro-free", "speech-1.5", "speech-1.6")
LEGACY_MODELS: tuple[str, ...] = ("speech-1.5", "speech-1.6")
DEFAULT_MODEL = "s2-pro"


def resolve_model(name: str | None) -> str:
    """Return the model the server uses for a ``model`` header: unknown or missing -> default."""
    return name if name in MODELS else DEFAULT_MODEL


def default_sample_rate(audio_format: str) -> int:
    """The sample rate a format gets when the request leaves ``sample_rate`` null."""
    return 48000 if audio_format == "opus" else 44100


# --- validation helpers -------------------------------------------------------------------


def _check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if isinstance(value, bool) or value not in choices:
        raise ValidationError(name, value, "must be one of " + ", ".join(repr(c) for c in choices))


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValidationError(name, value, "must be True or False")


# --- the request ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Prosody:
    """Speed (0.5..2.0, 1.0 = natural) and volume (-20..20 dB, 0 = unchanged)."""

    speed: float = 1.0
    volume: float = 0.0
    normalize_loudness: bool | None = None

    def __post_init__(self) -> None:
        check_number("prosody.speed", self.speed, 0.5, 2.0)
        check_number("prosody.volume", self.volume, -20.0, 20.0)
        if self.normalize_loudness is not None:
            _check_bool("prosody.normalize_loudness", self.normalize_loudness)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"speed": float(self.speed), "volume": float(self.volume)}
        if self.normalize_loudness is not None:
            wire["normalize_loudness"] = self.normalize_loudness
        return wire

    @classmethod
    def from_wire(cls, data: Any) -> Prosody | None:
        if data is None:
            return None
        if not isinstance(data, Mapping):
            raise ValidationError("prosody", data, "must be a map with speed and volume, or null")
        return cls(
            speed=_or_default(data.get("speed"), 1.0),
            volume=_or_default(data.get("volume"), 0.0),
            normalize_loudness=data.get("normalize_loudness"),
        )


@dataclass(frozen=True)
class ReferenceAudio:
    """A reference sample for zero-shot cloning: audio bytes and what is said in it."""

    audio: bytes
    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.audio, (bytes, bytearray)):
            raise ValidationError("references[].audio", type(self.audio).__name__, "must be bytes")
        if not isinstance(self.text, str):
            raise ValidationError("references[].text", self.text, "must be a str")

    def __repr__(self) -> str:
        return f"ReferenceAudio(audio=<{len(self.audio)} bytes>, text={self.text!r})"

    def to_wire(self) -> dict[str, Any]:
        return {"audio": bytes(self.audio), "text": self.text}


def _or_default(value: Any, default: Any) -> Any:
    return default if value is None else value


@dataclass(frozen=True)
class TTSRequest:
    """The ``request`` map of a ``start`` event, validated.

    Defaults are the cloud's. Every field is checked on construction and a bad one raises
    :class:`~fish_notebook.errors.ValidationError` naming the field, the value and the
    allowed range. ``text`` is always ``""`` in realtime mode.
    """

    text: str = ""
    chunk_length: int = 200
    format: AudioFormat = "mp3"
    sample_rate: int | None = None
    mp3_bitrate: int = 128
    opus_bitrate: int = -1000
    references: tuple[ReferenceAudio, ...] = ()
    reference_id: str | tuple[str, ...] | None = None
    normalize: bool = True
    latency: LatencyMode = "balanced"
    prosody: Prosody | None = None
    top_p: float = 0.7
    temperature: float = 0.7
    max_new_tokens: int = 1024
    repetition_penalty: float = 1.2
    min_chunk_length: int = 50
    condition_on_previous_chunks: bool = True
    early_stop_threshold: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise ValidationError("text", self.text, "must be a str")
        check_number("chunk_length", self.chunk_length, 100, 300, integer=True)
        _check_choice("format", self.format, AUDIO_FORMATS)
        if self.sample_rate is not None:
            check_number("sample_rate", self.sample_rate, 8000, 192000, integer=True)
        _check_choice("mp3_bitrate", self.mp3_bitrate, MP3_BITRATES)
        _check_choice("opus_bitrate", self.opus_bitrate, OPUS_BITRATES)
        refs = self.references
        if not isinstance(refs, (list, tuple)):
            raise ValidationError("references", refs, "must be a list of ReferenceAudio")
        object.__setattr__(self, "references", tuple(_as_reference(r) for r in refs))
        rid = self.reference_id
        if isinstance(rid, list):
            rid = tuple(rid)
            object.__setattr__(self, "reference_id", rid)
        if rid is not None and not (
            isinstance(rid, str)
            or (isinstance(rid, tuple) and all(isinstance(r, str) for r in rid))
        ):
            raise ValidationError("reference_id", rid, "must be a str, a list of str, or None")
        _check_bool("normalize", self.normalize)
        _check_choice("latency", self.latency, LATENCY_MODES)
        if self.prosody is not None and not isinstance(self.prosody, Prosody):
            raise ValidationError("prosody", self.prosody, "must be a Prosody or None")
        check_number("top_p", self.top_p, 0.0, 1.0)
        check_number("temperature", self.temperature, 0.0, 1.0)
        check_number("max_new_tokens", self.max_new_tokens, 1, 1_000_000, integer=True)
        check_number("repetition_penalty", self.repetition_penalty, 0.0, 10.0)
        check_number("min_chunk_length", self.min_chunk_length, 0, 100, integer=True)
        _check_bool("condition_on_previous_chunks", self.condition_on_previous_chunks)
        check_number("early_stop_threshold", self.early_stop_threshold, 0.0, 1.0)

    @property
    def effective_sample_rate(self) -> int:
        """``sample_rate``, or the format's default when it is null."""
        return self.sample_rate or default_sample_rate(self.format)

    def replace(self, **changes: Any) -> TTSRequest:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_wire(self) -> dict[str, Any]:
        """The map sent inside ``start``: every field, nulls included, as the SDK sends it."""
        rid = self.reference_id
        return {
            "text": self.text,
            "chunk_length": self.chunk_length,
            "format": self.format,
            "sample_rate": self.sample_rate,
            "mp3_bitrate": self.mp3_bitrate,
            "opus_bitrate": self.opus_bitrate,
            "references": [r.to_wire() for r in self.references],
            "reference_id": list(rid) if isinstance(rid, tuple) else rid,
            "normalize": self.normalize,
            "latency": self.latency,
            "prosody": self.prosody.to_wire() if self.prosody else None,
            "top_p": self.top_p,
            "temperature": self.temperature,
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
            "min_chunk_length": self.min_chunk_length,
            "condition_on_previous_chunks": self.condition_on_previous_chunks,
            "early_stop_threshold": self.early_stop_threshold,
        }

    @classmethod
    def from_wire(cls, data: Any) -> TTSRequest:
        """Build from a received ``request`` map: null or missing fields take defaults,
        unknown keys are ignored (the cloud is lenient in the same way)."""
        if not isinstance(data, Mapping):
            raise ValidationError("request", type(data).__name__, "must be a map")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known or value is None:
                continue
            if key == "prosody":
                kwargs[key] = Prosody.from_wire(value)
            elif key == "references":
                if not isinstance(value, (list, tuple)):
                    raise ValidationError("references", value, "must be a list")
                kwargs[key] = tuple(_reference_from_wire(r) for r in value)
            else:
                kwargs[key] = value
        return cls(**kwargs)


def _as_reference(value: Any) -> ReferenceAudio:
    if isinstance(value, ReferenceAudio):
        return value
    if isinstance(value, Mapping):
        return _reference_from_wire(value)
    audio, text = getattr(value, "audio", None), getattr(value, "text", None)
    if audio is not None and text is not None:  # the SDK's pydantic ReferenceAudio
        return ReferenceAudio(audio=audio, text=text)
    raise ValidationError("references[]", value, "must be a ReferenceAudio or {audio, text} map")


def _reference_from_wire(value: Any) -> ReferenceAudio:
    if not isinstance(value, Mapping):
        raise ValidationError("references[]", value, "must be a map with audio and text")
    return ReferenceAudio(audio=value.get("audio", b""), text=value.get("text", ""))


# --- events --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartEvent:
    """First frame of a session: configures it."""

    request: TTSRequest = field(default_factory=TTSRequest)
    event: ClassVar[str] = "start"

    def to_wire(self) -> dict[str, Any]:
        return {"event": "start", "request": self.request.to_wire()}


@dataclass(frozen=True)
class TextEvent:
    """Append text to the server's buffer. Same name and field as the Fish SDK's."""

    text: str
    event: ClassVar[str] = "text"

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise ValidationError("TextEvent.text", self.text, "must be a str")

    def to_wire(self) -> dict[str, Any]:
        return {"event": "text", "text": self.text}


@dataclass(frozen=True)
class FlushEvent:
    """Synthesize everything buffered now. Same name as the Fish SDK's."""

    event: ClassVar[str] = "flush"

    def to_wire(self) -> dict[str, Any]:
        return {"event": "flush"}


@dataclass(frozen=True)
class StopEvent:
    """No more text: the server speaks what is left, sends ``finish`` and closes."""

    event: ClassVar[str] = "stop"

    def to_wire(self) -> dict[str, Any]:
        return {"event": "stop"}


CloseEvent = StopEvent  # the Fish SDK's name for the same frame


@dataclass(frozen=True)
class AlignmentSegment:
    """One word (or piece of text) and when it is heard, in seconds from the chunk start."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Alignment:
    """Word timing for one audio chunk (``/v1/tts/live/with-timestamp`` only)."""

    segments: tuple[AlignmentSegment, ...]
    audio_duration: float

    def to_wire(self) -> dict[str, Any]:
        return {
            "segments": [{"text": s.text, "start": s.start, "end": s.end} for s in self.segments],
            "audio_duration": self.audio_duration,
        }

    @classmethod
    def from_wire(cls, data: Any) -> Alignment:
        if not isinstance(data, Mapping) or not isinstance(data.get("segments", []), list):
            raise ProtocolError(
                f"'alignment' must be a map with a segments list, got {data!r:.200}"
            )
        try:
            segments = tuple(
                AlignmentSegment(str(s["text"]), float(s["start"]), float(s["end"]))
                for s in data.get("segments", [])
            )
            duration = float(data.get("audio_duration", 0.0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed alignment segment: {exc}") from exc
        return cls(segments, duration)


@dataclass(frozen=True)
class AudioEvent:
    """A chunk of audio in the requested format; the timestamp fields only on that endpoint."""

    audio: bytes
    content: str | None = None
    alignment: Alignment | None = None
    chunk_seq: int | None = None
    chunk_audio_offset_sec: float | None = None
    time: float | None = None
    event: ClassVar[str] = "audio"

    def __repr__(self) -> str:
        extra = f", content={self.content!r}" if self.content is not None else ""
        return f"AudioEvent(audio=<{len(self.audio)} bytes>{extra})"

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"event": "audio", "audio": bytes(self.audio)}
        if self.content is not None:
            wire["content"] = self.content
        if self.alignment is not None:
            wire["alignment"] = self.alignment.to_wire()
        for name in ("chunk_seq", "chunk_audio_offset_sec", "time"):
            value = getattr(self, name)
            if value is not None:
                wire[name] = value
        return wire


@dataclass(frozen=True)
class FinishEvent:
    """End of the session; ``reason`` is ``"stop"`` or ``"error"``."""

    reason: str = "stop"
    message: str | None = None
    event: ClassVar[str] = "finish"

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"event": "finish", "reason": self.reason}
        if self.message is not None:
            wire["message"] = self.message
        return wire


@dataclass(frozen=True)
class LogEvent:
    """Informational message from the server."""

    message: str
    event: ClassVar[str] = "log"

    def to_wire(self) -> dict[str, Any]:
        return {"event": "log", "message": self.message}


@dataclass(frozen=True)
class ErrorEvent:
    """The server refused or failed something; ``details`` holds any extra fields."""

    error: str
    details: Mapping[str, Any] = field(default_factory=dict)
    event: ClassVar[str] = "error"

    @property
    def max_concurrency(self) -> int | None:
        value = self.details.get("max_concurrency")
        return value if isinstance(value, int) else None

    def to_wire(self) -> dict[str, Any]:
        return {**self.details, "event": "error", "error": self.error}


@dataclass(frozen=True)
class UnknownEvent:
    """A server event this version does not know. Kept, never an error."""

    name: str
    data: Mapping[str, Any]

    @property
    def event(self) -> str:
        return self.name

    def to_wire(self) -> dict[str, Any]:
        return dict(self.data)


ClientEvent: TypeAlias = StartEvent | TextEvent | FlushEvent | StopEvent
ServerEvent: TypeAlias = AudioEvent | FinishEvent | LogEvent | ErrorEvent | UnknownEvent


# --- framing -------------------------------------------------------------------------------


def pack(event: ClientEvent | ServerEvent) -> bytes:
    """Encode one event as the bytes of one binary WebSocket frame."""
    return msgpack.packb(event.to_wire(), use_bin_type=True)


def _unpack_map(frame: bytes | bytearray | memoryview | str) -> dict[Any, Any]:
    if isinstance(frame, str):
        raise ProtocolError("expected a binary frame holding a MessagePack map, got a text frame")
    try:
        data = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"frame holds a string that is not valid UTF-8: {exc}") from exc
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise ProtocolError(f"frame is not valid MessagePack ({len(frame)} bytes): {exc}") from exc
    if not isinstance(data, dict):
        raise ProtocolError(f"frame must be a MessagePack map, got {type(data).__name__}")
    if not isinstance(data.get("event"), str):
        raise ProtocolError(f"frame has no string 'event' key: keys {sorted(map(str, data))[:10]}")
    return data


def unpack_client_event(frame: bytes | bytearray | memoryview | str) -> ClientEvent:
    """Decode a frame a client sent. Raises ProtocolError (or ValidationError for a bad
    ``request``) when it is not one of start / text / flush / stop with the right fields."""
    data = _unpack_map(frame)
    name = data["event"]
    if name == "text":
        text = data.get("text")
        if not isinstance(text, str):
            raise ProtocolError(
                f"'text' event needs a string 'text' field, got {type(text).__name__}"
            )
        return TextEvent(text)
    if name == "flush":
        return FlushEvent()
    if name == "stop":
        return StopEvent()
    if name == "start":
        request = data.get("request")
        if not isinstance(request, Mapping):
            raise ProtocolError("'start' event needs a 'request' map")
        return StartEvent(TTSRequest.from_wire(request))
    raise ProtocolError(f"unknown client event {name!r}: expected start, text, flush or stop")


def unpack_server_event(frame: bytes | bytearray | memoryview | str) -> ServerEvent:
    """Decode a frame a server sent. Unknown events come back as UnknownEvent."""
    data = _unpack_map(frame)
    name = data["event"]
    if name == "audio":
        audio = data.get("audio")
        if not isinstance(audio, (bytes, bytearray)):
            raise ProtocolError(f"'audio' event needs bytes in 'audio', got {type(audio).__name__}")
        alignment = data.get("alignment")
        return AudioEvent(
            audio=bytes(audio),
            content=data.get("content"),
            alignment=Alignment.from_wire(alignment) if alignment is not None else None,
            chunk_seq=data.get("chunk_seq"),
            chunk_audio_offset_sec=data.get("chunk_audio_offset_sec"),
            time=data.get("time"),
        )
    if name == "finish":
        reason = data.get("reason")
        message = data.get("message")
        return FinishEvent(
            reason=reason if isinstance(reason, str) else "error",
            message=message if isinstance(message, str) else None,
        )
    if name == "log":
        message = data.get("message")
        return LogEvent(message if isinstance(message, str) else repr(message))
    if name == "error":
        error = data.get("error", data.get("message", "unknown error"))
        details = {k: v for k, v in data.items() if k not in ("event", "error")}
        return ErrorEvent(error if isinstance(error, str) else repr(error), details)
    return UnknownEvent(name, data)
