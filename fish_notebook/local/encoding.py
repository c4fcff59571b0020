"""From a voice's PCM to the bytes of the stream a client asked for: pcm, wav, mp3 or opus.

Pure apart from CPU work (no I/O). One :class:`StreamEncoder` per session; call
:meth:`~StreamEncoder.encode` with each synthesized chunk, :meth:`~StreamEncoder.drain` when
the session has nothing more to synthesize for now, and :meth:`~StreamEncoder.finish` once
at the end. Concatenating everything returned is one valid stream of the requested format:

- ``pcm``: 16-bit little-endian mono samples at the requested rate.
- ``wav``: a 44-byte header whose sizes are ``0xFFFFFFFF`` (unknown, as streaming servers
  send them), then the PCM. The header comes with the first audio; no audio, no header.
- ``mp3``: MPEG audio frames (LAME, constant ``mp3_bitrate``). :meth:`drain` ends the
  current MP3 run so its last frames go out now instead of waiting for more speech; the
  next audio starts a new run. Runs concatenate into one playable stream (a few
  milliseconds of encoder padding between them, at pauses in the speech anyway).
- ``opus``: Ogg Opus pages (:mod:`fish_notebook.opus`) at ``opus_bitrate``; :meth:`drain`
  hands out the whole pages (the open one, up to 0.1 s at a pause, waits for more audio).

Each chunk is resampled on its own (``soxr``): chunks are whole sentences with silence at
both ends, so nothing is held back between chunks and no seam is audible.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from .. import formats
from ..errors import MissingDependencyError, ValidationError
from ..protocol import TTSRequest

__all__ = ["SUPPORTED_FORMATS", "StreamEncoder", "opus_kbps"]

#: What the local server can send: every registered format with an encoder.
SUPPORTED_FORMATS: tuple[str, ...] = tuple(
    name for name, fmt in formats.FORMATS.items() if fmt.encoder is not None
)


def opus_kbps(opus_bitrate: int) -> int:
    """A request's ``opus_bitrate`` in kbps: the SDK sends kbps (24..64), the cloud takes
    bits per second (24000..64000); -1000 (auto) is 0, the encoder's choice."""
    if opus_bitrate <= 0:
        return 0
    return opus_bitrate // 1000 if opus_bitrate >= 1000 else opus_bitrate


def _import_numpy_soxr() -> tuple[Any, Any]:
    try:
        import numpy
        import soxr
    except ImportError as exc:
        raise MissingDependencyError("soxr", "local", "Resampling speech") from exc
    return numpy, soxr


class StreamEncoder:
    """Encodes one session's speech into ``audio_format`` at ``sample_rate``.

    Not thread-safe: a session feeds it from one thread at a time.
    """

    def __init__(
        self,
        audio_format: str,
        sample_rate: int,
        *,
        mp3_bitrate: int = 128,
        opus_bitrate: int = -1000,
    ) -> None:
        if audio_format not in SUPPORTED_FORMATS:
            raise ValidationError(
                "format", audio_format, "the local server speaks " + ", ".join(SUPPORTED_FORMATS)
            )
        self.format = audio_format
        self.sample_rate = sample_rate
        self.mp3_bitrate = mp3_bitrate
        # kbps for the format's encoder; the protocol's opus_bitrate may be in bps, -1000 auto
        self.bitrate = opus_kbps(opus_bitrate) if audio_format == "opus" else mp3_bitrate
        self._format = formats.get(audio_format)
        self._encoder = self._format.encode_stream(sample_rate, self.bitrate)

    @classmethod
    def for_request(cls, request: TTSRequest) -> StreamEncoder:
        """The encoder a request asks for: its format, rate and bitrate."""
        return cls(
            request.format,
            request.effective_sample_rate,
            mp3_bitrate=request.mp3_bitrate,
            opus_bitrate=request.opus_bitrate,
        )

    def __repr__(self) -> str:
        return f"StreamEncoder({self.format!r}, {self.sample_rate})"

    def encode(self, pcm: bytes, rate: int) -> bytes:
        """Encode 16-bit mono PCM at ``rate``; return the stream bytes ready now."""
        return self._encode_resampled(self._resample(pcm, rate)) if pcm else b""

    def _encode_resampled(self, samples: bytes) -> bytes:
        return self._encoder.encode(samples) if samples else b""

    def encode_slices(self, pcm: bytes, rate: int, seconds: float = 0.5) -> Iterator[bytes]:
        """:meth:`encode` in slices of ``seconds`` of audio, so the first bytes come sooner.

        Resampling is done on the whole chunk first (slicing before it would leave seams);
        only the encoding is sliced. Joined, the slices equal what :meth:`encode` returns.
        """
        samples = self._resample(pcm, rate)
        step = max(2, int(seconds * self.sample_rate) * 2)
        for start in range(0, len(samples), step):
            data = self._encode_resampled(samples[start : start + step])
            if data:
                yield data

    def encode_parts(
        self, pcm: bytes, rate: int, cuts: Sequence[int]
    ) -> Iterator[tuple[bytes, int]]:
        """:meth:`encode` in parts cut at ``cuts`` (sample indexes at ``rate``, from 0 to the
        end, ascending): yields each part's stream bytes and its length in samples at the
        output rate. Resampling is done on the whole chunk, then cut where the input cuts
        fall; the lengths add up to the resampled chunk. For ``mp3`` the bytes of a part
        are what the encoder gives back then (it lags a few milliseconds and may return
        nothing for a short part)."""
        samples = self._resample(pcm, rate)
        total_in = max(1, len(pcm) // 2)
        total_out = len(samples) // 2
        edges = [min(total_out, round(cut * total_out / total_in)) for cut in cuts]
        for start, end in itertools.pairwise(edges):
            yield self._encode_resampled(samples[start * 2 : end * 2]), max(0, end - start)

    def drain(self) -> bytes:
        """Nothing more to encode for now: return what the encoder still holds."""
        return self._encoder.drain()

    def finish(self) -> bytes:
        """End of the stream: the last bytes. Safe to call twice."""
        return self._encoder.finish()

    @property
    def byte_rate(self) -> int:
        """Bytes per second of the stream this encoder makes."""
        return self._format.byte_rate(self.sample_rate, self.bitrate)

    def _resample(self, pcm: bytes, rate: int) -> bytes:
        if rate == self.sample_rate:
            return pcm[: len(pcm) - len(pcm) % 2]
        numpy, soxr = _import_numpy_soxr()
        samples = numpy.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2)
        return bytes(soxr.resample(samples, rate, self.sample_rate, quality="HQ").astype("<i2"))
