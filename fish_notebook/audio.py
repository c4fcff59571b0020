"""PCM and WAV helpers: whole samples from arbitrary chunks, streamed WAV headers, saving.

Audio chunk boundaries on the wire are arbitrary (PROTOCOL.md): a 16-bit sample may
straddle two chunks, and a streamed ``wav`` starts with a header whose sizes are unknown.
Everything here is exact to the byte: feeding a stream in any split gives back the same
PCM as feeding it whole, and saving writes exactly the samples it was given.

Sans-I/O like :mod:`fish_notebook.protocol` except :func:`write_wav`, which writes a file.
PCM is signed 16-bit little-endian, interleaved when multichannel.
No numpy: the stdlib ``array`` and ``struct`` do what is needed. MP3 lives in
:mod:`fish_notebook.mp3`; which format is which, in :mod:`fish_notebook.formats`.
"""

from __future__ import annotations

import array
import math
import os
import struct
import sys
from pathlib import Path
from typing import Protocol

from .errors import ProtocolError, ValidationError

__all__ = [
    "UNKNOWN_SIZE",
    "AudioDecoder",
    "PcmDecoder",
    "PcmStreamEncoder",
    "SampleAligner",
    "WavDecoder",
    "WavStreamEncoder",
    "WavStreamParser",
    "check_pcm_format",
    "check_whole_frames",
    "pcm_duration",
    "pcm_peak",
    "pcm_rms",
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
    check_pcm_format(sample_rate, channels, bits)
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


def check_pcm_format(sample_rate: int, channels: int, bits: int = 16) -> None:
    """Raise ValidationError unless these make a PCM format we can handle."""
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


def check_whole_frames(pcm: bytes | bytearray | memoryview, channels: int) -> None:
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
    check_pcm_format(sample_rate, channels)
    check_whole_frames(pcm, channels)
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
    check_pcm_format(sample_rate, channels)
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
        check_pcm_format(sample_rate, channels)
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
        check_pcm_format(sample_rate, channels)
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


# --- encoding a stream of PCM ---------------------------------------------------------------


class PcmStreamEncoder:
    """For ``format="pcm"``: PCM out as it came in, whole samples only."""

    def __init__(self, sample_rate: int, bitrate: int | None = None) -> None:
        check_pcm_format(sample_rate, 1)
        self.sample_rate = sample_rate
        self._aligner = SampleAligner(2)

    def encode(self, pcm: bytes | bytearray | memoryview) -> bytes:
        return self._aligner.feed(pcm)

    def drain(self) -> bytes:
        return b""

    def finish(self) -> bytes:
        self._aligner.finish()
        return b""


class WavStreamEncoder(PcmStreamEncoder):
    """For ``format="wav"``: a header with unknown sizes (:data:`UNKNOWN_SIZE`, as streaming
    servers send it) before the first audio, then the PCM. No audio, no header."""

    def __init__(self, sample_rate: int, bitrate: int | None = None) -> None:
        super().__init__(sample_rate)
        self._header_sent = False

    def encode(self, pcm: bytes | bytearray | memoryview) -> bytes:
        samples = super().encode(pcm)
        if not samples or self._header_sent:
            return samples
        self._header_sent = True
        return wav_stream_header(self.sample_rate) + samples
