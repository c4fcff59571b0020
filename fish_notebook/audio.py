"""PCM and WAV helpers: whole samples from arbitrary chunks, streamed WAV headers, saving.

Audio chunk boundaries on the wire are arbitrary (PROTOCOL.md): a 16-bit sample may
straddle two chunks, and a streamed ``wav`` starts with a header whose sizes are unknown.
Everything here is exact to the byte: feeding a stream in any split gives back the same
PCM as feeding it whole, and saving writes exactly the samples it was given.

Sans-I/O like :mod:`fish_notebook.protocol` except :func:`write_wav` and :func:`save_audio`,
which write a file. PCM is signed 16-bit little-endian, interleaved when multichannel.
No numpy: the stdlib ``array`` and ``struct`` do what is needed. MP3 encoding uses
``lameenc`` from the optional ``local`` extra, imported only when an MP3 is made.
"""

from __future__ import annotations

import array
import collections
import math
import os
import struct
import sys
import threading
import weakref
from pathlib import Path
from typing import Any, Protocol

from .errors import MissingDependencyError, ProtocolError, SessionStateError, ValidationError

__all__ = [
    "UNKNOWN_SIZE",
    "AudioDecoder",
    "Mp3Encoder",
    "Mp3StreamDecoder",
    "PcmDecoder",
    "SampleAligner",
    "WavDecoder",
    "WavStreamParser",
    "encode_mp3",
    "format_decoder",
    "pcm_duration",
    "pcm_peak",
    "pcm_rms",
    "save_audio",
    "wav_bytes",
    "wav_stream_header",
    "write_wav",
]

#: The size a streamed WAV header carries for the RIFF and data chunks: "unknown, read to the end".
UNKNOWN_SIZE = 0xFFFFFFFF

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_FORMAT_NAMES = {0x0003: "IEEE float", 0x0006: "A-law", 0x0007: "mu-law", 0x0055: "MP3"}
# Sample rates an MP3 stream can carry; others are resampled by LAME itself.
_MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


# --- whole samples from arbitrary chunks ----------------------------------------------------


class SampleAligner:
    """Cut a byte stream into whole frames, carrying a partial frame to the next chunk.

    A frame is one sample per channel (2 bytes for 16-bit mono). Guarantee: the
    concatenation of everything :meth:`feed` returns, plus what :meth:`finish` returns,
    equals the concatenation of everything fed, whatever the split.
    """

    def __init__(self, frame_size: int = 2) -> None:
        if isinstance(frame_size, bool) or not isinstance(frame_size, int) or frame_size < 1:
            raise ValidationError("frame_size", frame_size, "must be an int >= 1")
        self.frame_size = frame_size
        self._carry = b""

    @property
    def remainder(self) -> bytes:
        """The partial frame held back until more bytes arrive (shorter than one frame)."""
        return self._carry

    def feed(self, chunk: bytes | bytearray | memoryview) -> bytes:
        """Return the whole frames now available; keep the partial tail for the next call."""
        data = self._carry + bytes(chunk) if self._carry else bytes(chunk)
        cut = len(data) - len(data) % self.frame_size
        self._carry = data[cut:]
        return data[:cut]

    def finish(self) -> bytes:
        """End of stream: return the partial frame left over (``b""`` for a clean stream), reset.

        The tail is not a whole sample; callers that need whole samples drop it.
        """
        tail, self._carry = self._carry, b""
        return tail


# --- reading a streamed WAV -----------------------------------------------------------------


def _looks_like_chunk_id(chunk_id: bytes) -> bool:
    return all(32 <= b < 127 for b in chunk_id)


class WavStreamParser:
    """Strip a WAV header from a stream arriving in arbitrary chunks; hand back the PCM.

    Call :meth:`feed` with every chunk as it arrives; it returns the PCM bytes that follow
    the header (possibly ``b""`` while the header is still incomplete, even when it comes one
    byte at a time). Once the header is parsed, :attr:`sample_rate`, :attr:`channels` and
    :attr:`bits_per_sample` are set and :attr:`header_complete` is true. Call
    :meth:`finish` at the end of the stream.

    - Sizes of 0 or ``0xFFFFFFFF`` (streaming: "unknown") mean "PCM to the end of the stream".
    - Chunks other than ``fmt `` and ``data`` (``LIST``, ``fact``, ...) are skipped.
    - A known ``data`` size is honoured: what follows is read as further chunks (trailing
      metadata is skipped; a second ``RIFF`` header, as when a server sends one WAV file per
      chunk, is parsed and must have the same format). If the bytes after the declared end
      do not look like a chunk, the declared size was wrong and they are kept as PCM.
    - Only integer PCM is accepted; anything else raises
      :class:`~fish_notebook.errors.ProtocolError` saying what was found.

    The returned PCM is not aligned to whole samples; see :class:`WavDecoder` for that.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._state = "riff"  # riff -> chunk -> (fmt body | skip | data) -> chunk ...
        self._to_skip = 0
        self._data_left: int | None = None  # None: unknown size, to the end of the stream
        self._fmt_size = 0
        self._pad_after_data = False
        self._seen_data = False
        self._received = 0
        self.sample_rate: int | None = None
        self.channels: int | None = None
        self.bits_per_sample: int | None = None

    @property
    def header_complete(self) -> bool:
        """True once the ``data`` chunk has started: format known, PCM flowing."""
        return self._seen_data

    @property
    def frame_size(self) -> int | None:
        """Bytes per frame (one sample for every channel), once the format is known."""
        if self.channels is None or self.bits_per_sample is None:
            return None
        return self.channels * (self.bits_per_sample // 8)

    def feed(self, chunk: bytes | bytearray | memoryview) -> bytes:
        """Take the next bytes of the stream; return the PCM they complete."""
        self._received += len(chunk)
        if self._state == "data" and self._data_left is None and not self._buffer:
            return bytes(chunk)  # the common case once streaming: no copying through the buffer
        self._buffer += chunk
        out = bytearray()
        while self._step(out):
            pass
        return bytes(out)

    def finish(self) -> bytes:
        """End of stream. Raises ProtocolError if the stream stopped inside the header."""
        if self._received and not self._seen_data:
            raise ProtocolError(
                f"the WAV stream ended after {self._received} bytes, inside its header: "
                "no audio was received"
            )
        return b""

    # One step of the state machine; returns False when it needs more bytes.
    def _step(self, out: bytearray) -> bool:
        buf = self._buffer
        if self._state == "riff":
            return self._parse_riff(buf)
        if self._state == "chunk":
            return self._parse_chunk_header(buf, out)
        if self._state == "fmt":
            if len(buf) < self._fmt_size:
                return False
            self._parse_fmt(bytes(buf[: self._fmt_size]))
            del buf[: self._fmt_size]
            self._state = "chunk"
            return True
        if self._state == "skip":
            n = min(self._to_skip, len(buf))
            del buf[:n]
            self._to_skip -= n
            if self._to_skip:
                return False
            self._state = "chunk"
            return True
        # data
        if not buf:
            return False
        if self._data_left is None:
            out += buf
            buf.clear()
            return False
        n = min(self._data_left, len(buf))
        out += buf[:n]
        del buf[:n]
        self._data_left -= n
        if self._data_left:
            return False
        if self._pad_after_data:
            self._to_skip, self._state = 1, "skip"
        else:
            self._state = "chunk"
        return True

    def _parse_riff(self, buf: bytearray) -> bool:
        head = bytes(buf[:4])
        if not (b"RIFF".startswith(head) or b"RF64".startswith(head)):
            raise ProtocolError(
                f"not a WAV stream: it starts with {bytes(buf[:12])!r}, expected b'RIFF'. "
                "Request format='wav' only from a server that sends WAV, or use format='pcm'"
            )
        if len(buf) < 12:
            return False
        if buf[8:12] != b"WAVE":
            raise ProtocolError(
                f"not a WAV stream: RIFF form type is {bytes(buf[8:12])!r}, not b'WAVE'"
            )
        del buf[:12]
        self._state = "chunk"
        return True

    def _parse_chunk_header(self, buf: bytearray, out: bytearray) -> bool:
        if len(buf) < 8:
            return False
        chunk_id = bytes(buf[:4])
        (size,) = struct.unpack_from("<I", buf, 4)
        if self._seen_data and not _looks_like_chunk_id(chunk_id):
            # The declared data size was too small (a server wrote a guess): keep all as PCM.
            self._state = "data"
            self._data_left = None
            return True
        if chunk_id in (b"RIFF", b"RF64"):
            self._state = "riff"
            return True
        del buf[:8]
        padded = size + (size & 1)  # RIFF chunks are word-aligned
        if chunk_id == b"fmt ":
            if size < 16 or size == UNKNOWN_SIZE:
                raise ProtocolError(f"WAV 'fmt ' chunk has size {size}, expected at least 16")
            self._fmt_size = padded
            self._state = "fmt"
        elif chunk_id == b"data":
            if self.sample_rate is None:
                raise ProtocolError("WAV 'data' chunk comes before any 'fmt ' chunk")
            self._seen_data = True
            self._data_left = None if size in (0, UNKNOWN_SIZE) else size
            self._pad_after_data = self._data_left is not None and bool(size & 1)
            self._state = "data"
        else:
            if size == UNKNOWN_SIZE:
                raise ProtocolError(f"WAV chunk {chunk_id!r} has an unknown size; cannot skip it")
            self._to_skip = padded
            self._state = "skip"
        return True

    def _parse_fmt(self, body: bytes) -> None:
        code, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", body)
        if code == _WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
            (code,) = struct.unpack_from("<H", body, 24)  # first two bytes of the sub-format GUID
        if code != _WAVE_FORMAT_PCM:
            name = _FORMAT_NAMES.get(code, "unknown")
            raise ProtocolError(
                f"WAV stream holds format code {code:#06x} ({name}), not integer PCM: "
                "only PCM WAV can be played; request format='pcm' or 'wav' with PCM"
            )
        if channels < 1 or rate < 1 or bits not in (8, 16, 24, 32):
            raise ProtocolError(
                f"WAV 'fmt ' chunk is not usable: {channels} channels, {rate} Hz, {bits} bits"
            )
        fmt = (rate, channels, bits)
        if self.sample_rate is not None and fmt != (
            self.sample_rate,
            self.channels,
            self.bits_per_sample,
        ):
            raise ProtocolError(
                f"a later WAV header in the same stream changes the format from "
                f"{self.sample_rate} Hz/{self.channels} ch/{self.bits_per_sample} bit to "
                f"{rate} Hz/{channels} ch/{bits} bit"
            )
        self.sample_rate, self.channels, self.bits_per_sample = fmt


# --- writing WAV ----------------------------------------------------------------------------


def _wav_header(
    sample_rate: int, channels: int, bits: int, data_size: int, riff_size: int
) -> bytes:
    _check_format(sample_rate, channels, bits)
    block_align = channels * bits // 8
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        riff_size,
        b"WAVE",
        b"fmt ",
        16,
        _WAVE_FORMAT_PCM,
        channels,
        sample_rate,
        sample_rate * block_align,
        block_align,
        bits,
        b"data",
        data_size,
    )


def _check_format(sample_rate: int, channels: int, bits: int = 16) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate < 1:
        raise ValidationError("sample_rate", sample_rate, "must be a positive int (Hz)")
    if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= 16:
        raise ValidationError("channels", channels, "must be an int in 1..16")
    if bits not in (8, 16, 24, 32):
        raise ValidationError("bits", bits, "must be 8, 16, 24 or 32")


def wav_stream_header(sample_rate: int, channels: int = 1, bits: int = 16) -> bytes:
    """The 44-byte header that starts a streamed WAV whose length is not known yet.

    Both sizes are ``0xFFFFFFFF`` ("read to the end"), as streaming servers send them.
    Append PCM after it, in as many chunks as you like.
    """
    return _wav_header(sample_rate, channels, bits, UNKNOWN_SIZE, UNKNOWN_SIZE)


def _check_whole_frames(pcm: bytes | bytearray | memoryview, channels: int) -> None:
    frame = 2 * channels
    if len(pcm) % frame:
        raise ValidationError(
            "pcm",
            f"<{len(pcm)} bytes>",
            f"must be whole 16-bit frames ({frame} bytes each for {channels} channel(s)); "
            "pass chunks through SampleAligner first",
        )


def wav_bytes(pcm: bytes | bytearray | memoryview, sample_rate: int, channels: int = 1) -> bytes:
    """A complete 16-bit PCM WAV file with exact sizes holding ``pcm`` unchanged."""
    _check_format(sample_rate, channels)
    _check_whole_frames(pcm, channels)
    header = _wav_header(sample_rate, channels, 16, len(pcm), 36 + len(pcm))
    return header + bytes(pcm)


def write_wav(
    path: str | os.PathLike[str],
    pcm: bytes | bytearray | memoryview,
    sample_rate: int,
    channels: int = 1,
) -> Path:
    """Write ``pcm`` (16-bit LE) to a WAV file at ``path``; return the path."""
    target = Path(path)
    target.write_bytes(wav_bytes(pcm, sample_rate, channels))
    return target


# --- MP3 ------------------------------------------------------------------------------------


def _import_lameenc() -> Any:
    try:
        import lameenc
    except ImportError as exc:
        raise MissingDependencyError("lameenc", "local", "MP3 encoding") from exc
    return lameenc


class Mp3Encoder:
    """Streaming MP3 encoder (LAME, constant bitrate) for 16-bit PCM.

    Call :meth:`encode` with PCM chunks of any length (a sample split across two calls is
    carried over), then :meth:`finish` once to get the last frames. Each call returns the
    MP3 bytes ready so far (often ``b""`` for small inputs). Concatenating all returned
    bytes gives one playable MP3 stream. After :meth:`finish`, the encoder is closed.
    Raises MissingDependencyError when ``lameenc`` (extra ``local``) is not installed.
    """

    def __init__(self, sample_rate: int, bitrate: int = 128, channels: int = 1, quality: int = 5):
        _check_format(sample_rate, channels)
        if channels > 2:
            raise ValidationError("channels", channels, "MP3 holds 1 or 2 channels")
        if isinstance(bitrate, bool) or not isinstance(bitrate, int) or not 8 <= bitrate <= 320:
            raise ValidationError("bitrate", bitrate, "must be an int in 8..320 (kbps)")
        lameenc = _import_lameenc()
        self.sample_rate = sample_rate
        self.bitrate = bitrate
        self.channels = channels
        self._encoder = lameenc.Encoder()
        self._encoder.set_bit_rate(bitrate)
        self._encoder.set_in_sample_rate(sample_rate)
        if sample_rate in _MP3_SAMPLE_RATES:
            self._encoder.set_out_sample_rate(sample_rate)  # else LAME picks the nearest it can
        self._encoder.set_channels(channels)
        self._encoder.set_quality(quality)
        self._encoder.silence()
        self._aligner = SampleAligner(2 * channels)
        self._started = False
        self._closed = False

    def encode(self, pcm: bytes | bytearray | memoryview) -> bytes:
        """Encode more PCM; return the MP3 bytes completed so far."""
        if self._closed:
            raise SessionStateError("this Mp3Encoder is finished; create a new one")
        whole = self._aligner.feed(pcm)
        if not whole:
            return b""
        self._started = True
        return bytes(self._encoder.encode(whole))

    def finish(self) -> bytes:
        """Flush the encoder: the last MP3 frames. A trailing partial sample is dropped.

        Safe to call twice (the second call returns ``b""``).
        """
        if self._closed:
            return b""
        self._closed = True
        self._aligner.finish()
        if not self._started:
            return b""  # LAME refuses to flush an encoder that never saw a sample
        return bytes(self._encoder.flush())


def encode_mp3(
    pcm: bytes | bytearray | memoryview, sample_rate: int, bitrate: int = 128, channels: int = 1
) -> bytes:
    """Encode a whole PCM buffer to MP3 bytes in one call."""
    encoder = Mp3Encoder(sample_rate, bitrate=bitrate, channels=channels)
    return encoder.encode(pcm) + encoder.finish()


# --- saving ---------------------------------------------------------------------------------


def save_audio(
    path: str | os.PathLike[str],
    pcm: bytes | bytearray | memoryview,
    sample_rate: int,
    channels: int = 1,
    *,
    mp3_bitrate: int = 128,
) -> Path:
    """Save 16-bit PCM as ``.wav`` (exact samples) or ``.mp3``, chosen by the file suffix.

    Raises ValidationError for any other suffix. Returns the path written.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix == ".wav":
        return write_wav(target, pcm, sample_rate, channels)
    if suffix == ".mp3":
        _check_whole_frames(pcm, channels)
        target.write_bytes(encode_mp3(pcm, sample_rate, bitrate=mp3_bitrate, channels=channels))
        return target
    raise ValidationError("path", str(target), "must end in .wav or .mp3")


# --- small measurements ---------------------------------------------------------------------


def _samples(pcm: bytes | bytearray | memoryview) -> array.array[int]:
    data = bytes(pcm)
    samples = array.array("h")
    samples.frombytes(data[: len(data) - len(data) % 2])
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def pcm_duration(pcm: bytes | bytearray | memoryview, sample_rate: int, channels: int = 1) -> float:
    """Seconds of audio in 16-bit PCM (whole frames only)."""
    _check_format(sample_rate, channels)
    return (len(pcm) // (2 * channels)) / sample_rate


def pcm_peak(pcm: bytes | bytearray | memoryview) -> int:
    """Largest absolute sample value of 16-bit LE PCM (0..32768); 0 for silence or no audio."""
    samples = _samples(pcm)
    if not samples:
        return 0
    return max(max(samples), -min(samples))


def pcm_rms(pcm: bytes | bytearray | memoryview) -> float:
    """Root mean square of 16-bit LE PCM samples (0.0 for no audio)."""
    samples = _samples(pcm)
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


# --- decoding what a server sends into whole-sample PCM -------------------------------------


class AudioDecoder(Protocol):
    """Turns received audio chunks into whole-sample 16-bit PCM."""

    sample_rate: int
    channels: int

    def feed(self, chunk: bytes | bytearray | memoryview) -> bytes: ...

    def finish(self) -> bytes: ...


class PcmDecoder:
    """For ``format="pcm"``: raw 16-bit PCM in, whole frames out (odd bytes carried over)."""

    def __init__(self, sample_rate: int, channels: int = 1) -> None:
        _check_format(sample_rate, channels)
        self.sample_rate = sample_rate
        self.channels = channels
        self._aligner = SampleAligner(2 * channels)

    def feed(self, chunk: bytes | bytearray | memoryview) -> bytes:
        """Return the whole frames now available."""
        return self._aligner.feed(chunk)

    def finish(self) -> bytes:
        """End of stream; a trailing partial frame is dropped. Returns ``b""``."""
        self._aligner.finish()
        return b""

    @property
    def remainder(self) -> bytes:
        """Bytes held back because they do not make a whole frame yet."""
        return self._aligner.remainder


class WavDecoder:
    """For ``format="wav"``: a streamed WAV in, whole frames of its PCM out.

    :attr:`sample_rate` and :attr:`channels` start as the requested values and become the
    header's once it is parsed (the header is the truth). Only 16-bit PCM is accepted.
    """

    def __init__(self, sample_rate: int, channels: int = 1) -> None:
        _check_format(sample_rate, channels)
        self.sample_rate = sample_rate
        self.channels = channels
        self._parser = WavStreamParser()
        self._aligner: SampleAligner | None = None

    def feed(self, chunk: bytes | bytearray | memoryview) -> bytes:
        """Return the whole PCM frames now available (``b""`` while the header is incomplete)."""
        pcm = self._parser.feed(chunk)
        if self._aligner is None:
            if self._parser.sample_rate is None:
                return b""
            if self._parser.bits_per_sample != 16:
                raise ProtocolError(
                    f"WAV stream is {self._parser.bits_per_sample}-bit PCM; "
                    "only 16-bit PCM can be played"
                )
            self.sample_rate = self._parser.sample_rate
            self.channels = self._parser.channels or 1
            self._aligner = SampleAligner(2 * self.channels)
        return self._aligner.feed(pcm)

    def finish(self) -> bytes:
        """End of stream; raises ProtocolError if it stopped inside the header."""
        self._parser.finish()
        if self._aligner is not None:
            self._aligner.finish()
        return b""


# --- decoding MP3 incrementally -------------------------------------------------------------

# MPEG audio frame header tables, indexed by the header's bit fields.
_MPEG_VERSIONS = {3: "1", 2: "2", 0: "2.5"}  # the value 1 is reserved
_MPEG_SAMPLE_RATES = {
    "1": (44100, 48000, 32000),
    "2": (22050, 24000, 16000),
    "2.5": (11025, 12000, 8000),
}
_MPEG_BITRATES = {  # kbps by (MPEG-1?, layer); index 0 is "free format", 15 is invalid
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
# Give up on a stream that shows no MPEG audio frame in this many bytes.
_MP3_MAX_JUNK = 64 * 1024
# PCM frames asked of the decoder per call: at most this many wait for the next MP3 frame.
_MP3_BLOCK_FRAMES = 128
# Bound on waiting for the decoding thread to catch up with what was fed (it never should).
_MP3_DECODE_TIMEOUT = 30.0


def _mp3_frame_size(data: bytes | bytearray, pos: int) -> int | None:
    """Bytes in the MPEG audio frame whose header starts at ``pos``; None if it is not one.

    Free-format frames (no bitrate in the header) are not recognised.
    """
    if len(data) - pos < 4 or data[pos] != 0xFF or data[pos + 1] & 0xE0 != 0xE0:
        return None
    b1, b2 = data[pos + 1], data[pos + 2]
    version = _MPEG_VERSIONS.get((b1 >> 3) & 3)
    layer = 4 - ((b1 >> 1) & 3)  # the field counts down: 3 -> layer I
    bitrate_index, rate_index = b2 >> 4, (b2 >> 2) & 3
    if version is None or layer == 4 or bitrate_index in (0, 15) or rate_index == 3:
        return None
    bitrate = _MPEG_BITRATES[(version == "1", layer)][bitrate_index] * 1000
    rate = _MPEG_SAMPLE_RATES[version][rate_index]
    padding = (b2 >> 1) & 1
    if layer == 1:
        return (12 * bitrate // rate + padding) * 4
    per_slot = 144 if layer == 2 or version == "1" else 72
    return per_slot * bitrate // rate + padding


def _same_stream(a: bytes | bytearray, pos_a: int, b: bytes | bytearray, pos_b: int) -> bool:
    """Two frame headers of one stream: same version, layer and sample rate."""
    return (a[pos_a + 1] ^ b[pos_b + 1]) & 0xFE == 0 and (a[pos_a + 2] ^ b[pos_b + 2]) & 0x0C == 0


class _Mp3Framer:
    """Cut an MP3 byte stream into whole MPEG audio frames; drop ID3 tags and junk.

    A frame comes out as soon as its last byte is in. To find the first frame (and to find
    its way back after junk) it wants the next frame's header too, so a random ``0xFF``
    byte is not taken for a frame; once in step, each frame header is checked against the
    previous one instead.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._last_header = b""  # the previous frame's header, once in step
        self.frames = 0
        self.junk = 0  # bytes dropped: tags, junk

    def feed(self, chunk: bytes | bytearray | memoryview, *, final: bool = False) -> list[bytes]:
        """Return the frames completed by ``chunk``. ``final``: the stream ends after it."""
        self._buffer += chunk
        frames: list[bytes] = []
        buf = self._buffer
        while len(buf) >= 4:
            if buf[:3] == b"ID3":
                if len(buf) < 10:
                    break
                tag = 10 + ((buf[6] & 0x7F) << 21 | (buf[7] & 0x7F) << 14)
                tag += (buf[8] & 0x7F) << 7 | (buf[9] & 0x7F)
                tag += 10 if buf[5] & 0x10 else 0  # a footer
                if len(buf) < tag and not final:
                    break
                self._drop(min(tag, len(buf)))
                continue
            size = _mp3_frame_size(buf, 0)
            if size is None:
                self._resync()
                continue
            if len(buf) < size:
                if not final:
                    break
                self._resync()  # cut short by the end of the stream
                continue
            if not (self._last_header and _same_stream(self._last_header, 0, buf, 0)):
                # A candidate: the next header must follow where this frame ends.
                if len(buf) >= size + 4:
                    confirmed = _mp3_frame_size(buf, size) is not None and _same_stream(
                        buf, 0, buf, size
                    )
                elif final:
                    confirmed = True  # the last frame: nothing follows to check it by
                else:
                    break
                if not confirmed:
                    self._resync()
                    continue
            self._last_header = bytes(buf[:4])
            frames.append(bytes(buf[:size]))
            del buf[:size]
            self.frames += 1
        if final:
            self._drop(len(buf))
        return frames

    def _drop(self, count: int) -> None:
        """Skip ``count`` bytes (a tag, junk); the next frame must prove itself again."""
        del self._buffer[:count]
        self.junk += count
        self._last_header = b""

    def _resync(self) -> None:
        """Not a frame here: skip to the next byte that could start one."""
        next_sync = self._buffer.find(0xFF, 1)
        self._drop(next_sync if next_sync > 0 else len(self._buffer))


def _import_miniaudio() -> Any:
    try:
        import miniaudio
    except ImportError as exc:
        raise MissingDependencyError("miniaudio", "mp3", "Decoding MP3 to PCM") from exc
    return miniaudio


class _Mp3Pipe:
    """What the decoding thread and :class:`Mp3StreamDecoder` share, under one condition.

    Also the byte source miniaudio pulls from (duck-typed ``miniaudio.StreamableSource``):
    :meth:`read` hands out exactly one whole MP3 frame per call and blocks while there is
    none. One frame per call matters: dr_mp3 reads before every frame it decodes, so a
    read that blocked while it still held a whole frame would hold that frame's audio back
    until more bytes came.
    """

    ffi_handle: Any = None  # set by miniaudio
    error_in_readcallback: BaseException | None = None  # set by miniaudio

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.frames: collections.deque[bytes] = collections.deque()
        self.pcm = bytearray()  # decoded, not yet handed out
        self.fed = 0  # feed() calls that brought frames
        self.starved_at = -1  # the value of ``fed`` when read() last found nothing to hand out
        self.closed = False  # no more frames will come
        self.done = False  # the thread ended
        self.error: BaseException | None = None
        # While miniaudio opens the stream it reads a few bytes, then seeks back to 0: keep
        # what was handed out until the decoder is open.
        self.history = bytearray()
        self.cursor = 0
        self.opening = True

    def read(self, num_bytes: int) -> bytes:
        with self.cond:
            if self.cursor < len(self.history):
                data = bytes(self.history[self.cursor : self.cursor + num_bytes])
                self.cursor += len(data)
                return data
            while not self.frames:
                if self.closed:
                    return b""  # end of stream
                self.starved_at = self.fed
                self.cond.notify_all()
                self.cond.wait()
            frame = self.frames.popleft()
            if not self.opening:
                if num_bytes >= len(frame):
                    return frame
                self.history.clear()  # all of it was read: keep only what is left of this frame
                self.cursor = 0
            self.history += frame
            data = bytes(self.history[self.cursor : self.cursor + num_bytes])
            self.cursor += len(data)
            return data

    def seek(self, offset: int, origin: Any) -> bool:
        with self.cond:
            base = {"START": 0, "CURRENT": self.cursor}.get(getattr(origin, "name", ""))
            if base is None or not 0 <= base + offset <= len(self.history):
                return False  # no seeking in a live stream (miniaudio carries on)
            self.cursor = base + offset
            return True

    def opened(self) -> None:
        """The decoder is open: it will not seek back, so forget what it has read."""
        with self.cond:
            self.opening = False
            del self.history[: self.cursor]
            self.cursor = 0

    def close(self) -> None:
        """No more input: the thread decodes what is left and ends. Safe to call twice."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def _decode_mp3(pipe: _Mp3Pipe, sample_rate: int, channels: int) -> None:
    """The decoding thread: pull frames from ``pipe``, push PCM back, until the stream ends."""
    try:
        miniaudio = _import_miniaudio()
        blocks = miniaudio.stream_any(
            pipe,
            source_format=miniaudio.FileFormat.MP3,
            output_format=miniaudio.SampleFormat.SIGNED16,
            nchannels=channels,
            sample_rate=sample_rate,
            frames_to_read=_MP3_BLOCK_FRAMES,
        )
        pipe.opened()
        for block in blocks:
            if sys.byteorder == "big":
                block.byteswap()
            with pipe.cond:
                pipe.pcm += block.tobytes()
    except BaseException as exc:
        pipe.error = exc
    finally:
        with pipe.cond:
            pipe.done = True
            pipe.cond.notify_all()


class Mp3StreamDecoder:
    """For ``format="mp3"``: an MP3 stream in arbitrary chunks in, 16-bit PCM out, as it comes.

    Decoding is stateful across chunks (the MP3 bit reservoir spans frames), and
    incremental: :meth:`feed` returns the PCM of every MP3 frame completed so far, less at
    most a few milliseconds (:data:`_MP3_BLOCK_FRAMES`) held back until the next frame.
    Output is resampled to ``sample_rate`` and mixed to ``channels`` whatever the stream
    holds; :attr:`stream_sample_rate` tells what it held. ID3 tags and junk between frames
    are skipped; the encoder delay and padding are removed when the stream carries a LAME
    header (encoders write it only into files, so a live stream keeps them).

    Decoding runs in a daemon thread (miniaudio's decoder pulls its input), started at the
    first MP3 frame; :meth:`feed` waits for it to catch up, so the call is synchronous.
    :meth:`finish` (or dropping the decoder) ends the thread. Needs ``miniaudio``
    (``pip install 'fish-notebook[mp3]'``): MissingDependencyError here otherwise.
    """

    def __init__(self, sample_rate: int, channels: int = 1) -> None:
        _check_format(sample_rate, channels)
        if channels > 2:
            raise ValidationError("channels", channels, "MP3 decodes to 1 or 2 channels")
        _import_miniaudio()
        self.sample_rate = sample_rate
        self.channels = channels
        self.stream_sample_rate: int | None = None
        self._framer = _Mp3Framer()
        self._received = 0
        self._head = b""  # the first bytes, to name a stream that is not MP3 at all
        self._pipe = _Mp3Pipe()
        self._thread: threading.Thread | None = None
        self._finished = False
        weakref.finalize(self, self._pipe.close)

    def feed(self, chunk: bytes | bytearray | memoryview) -> bytes:
        """Return the PCM (whole frames) of the MP3 frames completed by ``chunk``.

        Raises ProtocolError if the stream is not MP3 (no frame in its first 64 KiB) or
        cannot be decoded.
        """
        if self._finished:
            raise SessionStateError("this Mp3StreamDecoder is finished; create a new one")
        if self._received < 4:
            self._head += bytes(chunk[: 4 - self._received])
            self._reject_other_formats(self._head)
        self._received += len(chunk)
        frames = self._framer.feed(chunk)
        if not self._framer.frames and self._framer.junk > _MP3_MAX_JUNK:
            raise ProtocolError(
                f"not an MP3 stream: no MPEG audio frame in its first {self._framer.junk} "
                "bytes. Play it with the format it really has (format='wav' or 'pcm')"
            )
        return self._decode(frames, final=False)

    def finish(self) -> bytes:
        """End of stream: decode what is left, end the thread, return the last PCM.

        Raises ProtocolError if bytes came but no MP3 frame did. Safe to call twice.
        """
        if self._finished:
            return b""
        self._finished = True
        frames = self._framer.feed(b"", final=True)
        if self._received and not self._framer.frames:
            raise ProtocolError(
                f"the MP3 stream ended after {self._received} bytes without a single "
                "MPEG audio frame: no audio was received"
            )
        return self._decode(frames, final=True)

    def _reject_other_formats(self, head: bytes) -> None:
        if head.startswith(b"RIFF"):
            raise ProtocolError("this is a WAV stream, not MP3: play it with format='wav'")
        if head.startswith(b"OggS"):
            raise ProtocolError("this is an Ogg (Opus) stream, not MP3: it cannot be decoded")

    def _decode(self, frames: list[bytes], *, final: bool) -> bytes:
        pipe = self._pipe
        if frames and self.stream_sample_rate is None:
            version = _MPEG_VERSIONS[(frames[0][1] >> 3) & 3]
            self.stream_sample_rate = _MPEG_SAMPLE_RATES[version][(frames[0][2] >> 2) & 3]
        if self._thread is None:
            if not frames:
                return b""
            self._thread = threading.Thread(
                target=_decode_mp3,
                args=(pipe, self.sample_rate, self.channels),
                name="fish-notebook-mp3-decoder",
                daemon=True,
            )
            self._thread.start()
        with pipe.cond:
            if frames:
                pipe.frames.extend(frames)
                pipe.fed += 1
            if final:
                pipe.closed = True
            pipe.cond.notify_all()
            caught_up = pipe.cond.wait_for(
                lambda: pipe.done or (pipe.starved_at == pipe.fed and not final),
                _MP3_DECODE_TIMEOUT,
            )
            pcm, pipe.pcm = bytes(pipe.pcm), bytearray()
        if pipe.error is not None:
            raise ProtocolError(f"the MP3 stream could not be decoded: {pipe.error}") from (
                pipe.error
            )
        if not caught_up:
            raise ProtocolError(
                f"the MP3 decoder did not keep up within {_MP3_DECODE_TIMEOUT:.0f} s"
            )
        return pcm


def format_decoder(audio_format: str, sample_rate: int, channels: int = 1) -> AudioDecoder:
    """The decoder turning a stream in ``audio_format`` into whole-sample 16-bit PCM.

    ``"pcm"``, ``"wav"`` and ``"mp3"`` (needs ``fish-notebook[mp3]``; decoded to
    ``sample_rate``) are supported. ``"opus"`` raises NotImplementedError: its bytes can be
    saved as they are, but not decoded to PCM here.
    """
    if audio_format == "pcm":
        return PcmDecoder(sample_rate, channels)
    if audio_format == "wav":
        return WavDecoder(sample_rate, channels)
    if audio_format == "mp3":
        return Mp3StreamDecoder(sample_rate, channels)
    if audio_format == "opus":
        raise NotImplementedError(
            "decoding opus to PCM is not supported: request format='pcm', 'wav' or 'mp3' "
            "to play or measure the audio, or save the opus bytes as they arrive"
        )
    raise ValidationError("format", audio_format, "must be one of 'pcm', 'wav', 'mp3', 'opus'")
