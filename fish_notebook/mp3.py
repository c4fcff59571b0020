"""MP3: a streaming encoder (LAME, via ``lameenc``) and an incremental decoder (``miniaudio``).

The encoder takes 16-bit PCM chunks of any length and hands back the MP3 frames completed so
far; :class:`Mp3RunEncoder` adds runs that end on demand, so a server's last frames of a
sentence go out at once. The decoder turns an MP3 stream arriving in arbitrary chunks into
whole-sample PCM, each frame's samples as soon as its last byte is in: it finds frame
boundaries itself (:class:`_Mp3Framer`) and feeds whole frames to ``miniaudio`` in a worker
thread, so a chunk's PCM leaves when the chunk does.

Both libraries come with optional extras (``local`` / ``mp3``) and are imported only when
used; a missing one raises MissingDependencyError naming the extra.
"""

from __future__ import annotations

import collections
import sys
import threading
import weakref
from typing import Any

from .audio import SampleAligner, check_pcm_format
from .errors import ProtocolError, SessionStateError, ValidationError, require

__all__ = ["Mp3Encoder", "Mp3RunEncoder", "Mp3StreamDecoder", "encode_mp3"]

#: Rates an MPEG-1/2/2.5 layer III stream can have; another input rate is resampled by LAME.
_MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


# --- encoding -------------------------------------------------------------------------------


def _import_lameenc() -> Any:
    return require("lameenc", "lameenc", "local", "MP3 encoding")


class Mp3Encoder:
    """Streaming MP3 encoder (LAME, constant bitrate) for 16-bit PCM.

    Call :meth:`encode` with PCM chunks of any length (a sample split across two calls is
    carried over), then :meth:`finish` once to get the last frames. Each call returns the
    MP3 bytes ready so far (often ``b""`` for small inputs). Concatenating all returned
    bytes gives one playable MP3 stream. After :meth:`finish`, the encoder is closed.
    Raises MissingDependencyError when ``lameenc`` (extra ``local``) is not installed.
    """

    def __init__(self, sample_rate: int, bitrate: int = 128, channels: int = 1, quality: int = 5):
        check_pcm_format(sample_rate, channels)
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


class Mp3RunEncoder:
    """An MP3 stream made of runs: :meth:`drain` ends the current run so its last frames go
    out now (a server with nothing more to say for the moment); the next audio starts a new
    run. Runs concatenate into one playable stream (a few milliseconds of encoder padding
    between them, at pauses in the speech anyway)."""

    def __init__(self, sample_rate: int, bitrate: int = 128) -> None:
        self.sample_rate = sample_rate
        self.bitrate = bitrate
        self._run: Mp3Encoder | None = None

    def encode(self, pcm: bytes | bytearray | memoryview) -> bytes:
        if self._run is None:
            self._run = Mp3Encoder(self.sample_rate, bitrate=self.bitrate)
        return self._run.encode(pcm)

    def drain(self) -> bytes:
        """End the current run: the frames it still holds."""
        run, self._run = self._run, None
        return run.finish() if run is not None else b""

    def finish(self) -> bytes:
        """End of the stream. Safe to call twice."""
        return self.drain()


# --- decoding, incrementally ----------------------------------------------------------------

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
    return require("miniaudio", "miniaudio", "mp3", "Decoding MP3 to PCM")


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
        check_pcm_format(sample_rate, channels)
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
