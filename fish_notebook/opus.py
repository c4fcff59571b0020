"""Ogg Opus encoding, chunk by chunk, with libsndfile (the ``soundfile`` package).

Why libsndfile through ``soundfile``: its wheels carry libsndfile built with Ogg, Opus and
Vorbis for Linux, macOS and Windows, so nothing needs a system library; ``PyOgg`` and
``opuslib`` load the system's libopus (absent here and on many machines), and ``av``
(FFmpeg) is a far heavier wheel for one codec. libsndfile writes Ogg pages as it goes,
only appending, so the bytes can be handed out as soon as a page is complete.

:class:`OpusStreamEncoder` follows the formats registry's encoder protocol: concatenating
everything :meth:`~OpusStreamEncoder.encode`, :meth:`~OpusStreamEncoder.drain` and
:meth:`~OpusStreamEncoder.finish` return is one Ogg Opus stream (RFC 7845) that any
player opens. Opus codes 8, 12, 16, 24 or 48 kHz; PCM at another rate is resampled to the
next of those up (``soxr``, as a stream, so chunks join without seams). Pages close every
:data:`PAGE_MS` of audio; :meth:`~OpusStreamEncoder.drain` returns only whole pages (an
Opus stream cannot end a page mid-packet without ending the stream), so up to a page of
audio, at a pause in speech anyway, waits for the next audio or :meth:`finish`.
"""

from __future__ import annotations

import io
from typing import Any

from ._checks import check_number
from .errors import MissingDependencyError

__all__ = ["OPUS_RATES", "PAGE_MS", "OpusStreamEncoder", "opus_byte_rate", "opus_rate"]

#: The sample rates Opus codes at.
OPUS_RATES: tuple[int, ...] = (8000, 12000, 16000, 24000, 48000)
#: Audio per Ogg page (ms): how much a drain may leave behind. libsndfile's default is 1000.
PAGE_MS = 100.0
#: libsndfile's command for the page length (``SFC_SET_OGG_PAGE_LATENCY``, a double in ms).
_SET_PAGE_LATENCY = 0x1303
#: Bitrate assumed for sizing when the encoder picks its own (``opus_bitrate`` -1000).
_AUTO_KBPS = 64


def opus_rate(sample_rate: int) -> int:
    """The rate Opus codes PCM at ``sample_rate`` at: the next Opus rate up (48 kHz at most)."""
    return next((rate for rate in OPUS_RATES if rate >= sample_rate), OPUS_RATES[-1])


def opus_byte_rate(_sample_rate: int, kbps: int) -> int:
    """Bytes per second of a stream at ``kbps`` (0 = the encoder's choice, taken as 64)."""
    return (kbps or _AUTO_KBPS) * 125


def _soundfile() -> Any:
    try:
        import soundfile
    except (ImportError, OSError) as exc:
        raise MissingDependencyError("soundfile", "opus", "Encoding Ogg Opus") from exc
    return soundfile


class _Pages(io.RawIOBase):
    """Where libsndfile writes: an append-only buffer whose bytes are taken as they come."""

    def __init__(self) -> None:
        self._ready = bytearray()
        self._position = 0  # bytes written in all

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        data = bytes(data)
        self._ready += data
        self._position += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        # libsndfile only asks where the end is before it writes anything.
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self._position + offset}.get(whence)
        if whence == io.SEEK_END:
            target = self._position + offset
        if target != self._position:
            raise OSError("the Ogg Opus stream only appends")
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: Any) -> int:
        return 0  # nothing to read back: a new stream

    def take(self) -> bytes:
        data, self._ready = bytes(self._ready), bytearray()
        return data


class OpusStreamEncoder:
    """16-bit mono PCM at ``sample_rate`` into Ogg Opus at ``kbps`` (0: the encoder's
    choice). Not thread-safe: feed it from one thread at a time."""

    def __init__(self, sample_rate: int, kbps: int = 0) -> None:
        check_number("sample_rate", sample_rate, 1, integer=True)
        check_number("opus bitrate (kbps, 0 = auto)", kbps, 0, 256, integer=True)
        soundfile = _soundfile()
        self.sample_rate = sample_rate
        self.rate = opus_rate(sample_rate)
        self.kbps = kbps
        self._pages = _Pages()
        options: dict[str, Any] = {}
        if kbps:  # libsndfile: bitrate = (1 - level) * 250 kbps + 6 kbps
            options["compression_level"] = min(1.0, max(0.0, 1.0 - (kbps - 6) / 250))
        self._file = soundfile.SoundFile(
            self._pages, "w", self.rate, 1, format="OGG", subtype="OPUS", **options
        )
        _set_page_latency(soundfile, self._file, PAGE_MS)
        self._resampler = _resampler(sample_rate, self.rate)
        self._finished = False

    def __repr__(self) -> str:
        return f"OpusStreamEncoder({self.sample_rate}, kbps={self.kbps or 'auto'})"

    def encode(self, pcm: bytes | bytearray | memoryview) -> bytes:
        """Encode 16-bit mono PCM; return the whole pages ready now."""
        import numpy

        data = bytes(pcm)
        samples = numpy.frombuffer(data, dtype="<i2", count=len(data) // 2)
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        if len(samples):
            self._file.write(samples)
        return self._pages.take()

    def drain(self) -> bytes:
        """The whole pages ready now (the open page waits: see the module docstring)."""
        return self._pages.take()

    def finish(self) -> bytes:
        """End of the stream: the last page. Safe to call twice."""
        if self._finished:
            return b""
        self._finished = True
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(_empty(), last=True)
            if len(tail):
                self._file.write(tail)
        self._file.close()
        return self._pages.take()


def _empty() -> Any:
    import numpy

    return numpy.zeros(0, dtype="<i2")


def _resampler(rate: int, opus: int) -> Any:
    if rate == opus:
        return None
    try:
        import soxr
    except ImportError as exc:
        raise MissingDependencyError("soxr", "opus", f"Ogg Opus from {rate} Hz audio") from exc
    return soxr.ResampleStream(rate, opus, 1, dtype="int16", quality="HQ")


def _set_page_latency(soundfile: Any, file: Any, milliseconds: float) -> None:
    """Shorter Ogg pages than libsndfile's 1 s (its command is not in soundfile's API)."""
    try:
        ffi, library = soundfile._ffi, soundfile._snd
        value = ffi.new("double*", milliseconds)
        library.sf_command(file._file, _SET_PAGE_LATENCY, value, ffi.sizeof("double"))
    except AttributeError:  # another soundfile: keep its default pages
        pass
