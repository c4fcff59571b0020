"""The audio formats, in one registry: name, file suffix, MIME type, default rate, and how to
decode a stream of it to PCM and encode PCM into it.

Everything that names a format asks here: the session (its decoder, what ``save`` writes),
``play()``, the player's static fallback (MIME, encoder), the CLI (``--format``, suffixes),
and the embedded server's encoder. Adding a format is one :class:`AudioFormat` entry in
:data:`FORMATS` (with its codec) plus its test.

The wire names are the protocol's (:data:`fish_notebook.protocol.AUDIO_FORMATS`); the
registry holds exactly those, which a test checks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .audio import (
    AudioDecoder,
    PcmDecoder,
    PcmStreamEncoder,
    WavDecoder,
    WavStreamEncoder,
    check_whole_frames,
    wav_bytes,
)
from .errors import ValidationError
from .mp3 import Mp3RunEncoder, Mp3StreamDecoder
from .opus import OpusStreamEncoder, opus_byte_rate

__all__ = [
    "FORMATS",
    "AudioFormat",
    "StreamEncoder",
    "for_path",
    "get",
    "savable",
    "save_audio",
]


class StreamEncoder(Protocol):
    """Encodes 16-bit mono PCM into a format, chunk by chunk. Concatenating everything
    :meth:`encode`, :meth:`drain` and :meth:`finish` return is one valid stream."""

    def encode(self, pcm: bytes | bytearray | memoryview) -> bytes: ...

    def drain(self) -> bytes:
        """Nothing more to encode for now: the bytes the encoder still holds."""
        ...

    def finish(self) -> bytes:
        """End of the stream: the last bytes. Safe to call twice."""
        ...


@dataclass(frozen=True)
class AudioFormat:
    """One audio format and what fish-notebook can do with it."""

    name: str
    suffix: str
    mime: str
    default_rate: int
    #: ``(sample_rate, channels)`` -> a decoder of this format's stream to PCM, or None.
    decoder: Callable[[int, int], AudioDecoder] | None
    #: ``(sample_rate, bitrate)`` -> an encoder of PCM into this format, or None.
    encoder: Callable[[int, int], StreamEncoder] | None
    #: Bytes per second of a stream: ``(sample_rate, bitrate in kbps) -> bytes``.
    byte_rate: Callable[[int, int], int]

    def __repr__(self) -> str:
        return f"<AudioFormat {self.name}>"

    def decode_stream(self, sample_rate: int, channels: int = 1) -> AudioDecoder:
        """A decoder for a stream of this format; raises ValidationError if there is none."""
        if self.decoder is None:
            raise ValidationError(
                "format",
                self.name,
                f"cannot be decoded to PCM here: use one of {_names('decoder')}",
            )
        return self.decoder(sample_rate, channels)

    def encode_stream(self, sample_rate: int, bitrate: int = 128) -> StreamEncoder:
        """An encoder of PCM into this format; raises ValidationError if there is none."""
        if self.encoder is None:
            raise ValidationError(
                "format", self.name, f"cannot be encoded here: use one of {_names('encoder')}"
            )
        return self.encoder(sample_rate, bitrate)

    def encode(
        self, pcm: bytes | bytearray | memoryview, sample_rate: int, bitrate: int = 128
    ) -> bytes:
        """A whole file of this format holding ``pcm`` (16-bit mono)."""
        if self.name == "wav":  # exact sizes in the header, not the streaming "unknown"
            return wav_bytes(pcm, sample_rate)
        encoder = self.encode_stream(sample_rate, bitrate)
        return encoder.encode(pcm) + encoder.finish()


def _pcm_rate(sample_rate: int, _bitrate: int) -> int:
    return sample_rate * 2


def _compressed_rate(_sample_rate: int, bitrate: int) -> int:
    return bitrate * 125  # kbps -> bytes per second


#: Every format of the protocol, by wire name.
FORMATS: dict[str, AudioFormat] = {
    "pcm": AudioFormat("pcm", ".pcm", "audio/L16", 44100, PcmDecoder, PcmStreamEncoder, _pcm_rate),
    "wav": AudioFormat("wav", ".wav", "audio/wav", 44100, WavDecoder, WavStreamEncoder, _pcm_rate),
    "mp3": AudioFormat(
        "mp3", ".mp3", "audio/mpeg", 44100, Mp3StreamDecoder, Mp3RunEncoder, _compressed_rate
    ),
    "opus": AudioFormat(
        "opus", ".opus", "audio/ogg", 48000, None, OpusStreamEncoder, opus_byte_rate
    ),
}

#: Formats a recording can be saved as (a file people open): an encoder and not raw PCM.
SAVABLE: tuple[str, ...] = tuple(
    name for name, fmt in FORMATS.items() if fmt.encoder is not None and name != "pcm"
)


def _names(codec: str) -> str:
    return ", ".join(repr(n) for n, f in FORMATS.items() if getattr(f, codec) is not None)


def get(name: str) -> AudioFormat:
    """The format called ``name``; ValidationError naming the known ones otherwise."""
    fmt = FORMATS.get(name) if isinstance(name, str) else None
    if fmt is None:
        raise ValidationError("format", name, f"must be one of {', '.join(map(repr, FORMATS))}")
    return fmt


def savable(name: str) -> AudioFormat:
    """The format called ``name`` if a recording can be saved as it, else ValidationError."""
    if name not in SAVABLE:
        raise ValidationError("format", name, f"a recording saves as {' or '.join(SAVABLE)}")
    return FORMATS[name]


def for_path(path: str | os.PathLike[str], default: str | None = None) -> tuple[Path, AudioFormat]:
    """The path (with ``default``'s suffix added when it has none) and the savable format its
    suffix names. Raises ValidationError for another suffix."""
    target = Path(path)
    if not target.suffix and default is not None:
        target = target.with_suffix(savable(default).suffix)
    for name in SAVABLE:
        if target.suffix.lower() == FORMATS[name].suffix:
            return target, FORMATS[name]
    suffixes = " or ".join(FORMATS[n].suffix for n in SAVABLE)
    raise ValidationError("path", str(target), f"must end in {suffixes}")


def save_audio(
    path: str | os.PathLike[str],
    pcm: bytes | bytearray | memoryview,
    sample_rate: int,
    *,
    mp3_bitrate: int = 128,
) -> Path:
    """Save 16-bit mono PCM in the format the file suffix names (``.wav`` exact samples,
    ``.mp3``). Raises ValidationError for any other suffix. Returns the path written."""
    target, fmt = for_path(path)
    check_whole_frames(pcm, 1)
    target.write_bytes(fmt.encode(pcm, sample_rate, mp3_bitrate))
    return target
