"""StreamEncoder: a voice's PCM into the bytes of a pcm, wav, mp3 or opus stream."""

from __future__ import annotations

import math
import struct

import pytest
from local_wire import parse_mp3, parse_wav, rms

from fish_notebook.errors import ValidationError
from fish_notebook.local.encoding import StreamEncoder


def tone(seconds: float, rate: int = 22050) -> bytes:
    count = int(seconds * rate)
    return struct.pack(f"<{count}h", *(int(8000 * math.sin(i / 8)) for i in range(count)))


def test_pcm_at_the_native_rate_passes_through() -> None:
    """Same rate in and out: the PCM bytes are unchanged."""
    pcm = tone(0.5)
    assert StreamEncoder("pcm", 22050).encode(pcm, 22050) == pcm


def test_pcm_is_resampled_to_the_requested_rate() -> None:
    """22050 -> 44100 doubles the sample count (within a few samples)."""
    out = StreamEncoder("pcm", 44100).encode(tone(1.0), 22050)
    assert abs(len(out) // 2 - 44100) <= 4


def test_wav_header_once_and_only_with_audio() -> None:
    """The WAV header comes with the first audio only; no audio, no header."""
    encoder = StreamEncoder("wav", 16000)
    assert encoder.finish() == b""
    stream = encoder.encode(tone(0.2), 22050) + encoder.encode(tone(0.2), 22050) + encoder.finish()
    wav = parse_wav(stream)
    assert wav.sample_rate == 16000 and stream.count(b"RIFF") == 1


def test_mp3_drain_lets_the_tail_out_and_runs_concatenate() -> None:
    """drain() ends an MP3 run; the runs together parse as one stream of the right length."""
    encoder = StreamEncoder("mp3", 44100, mp3_bitrate=64)
    first = encoder.encode(tone(1.0), 22050) + encoder.drain()
    second = encoder.encode(tone(1.0), 22050) + encoder.finish()
    frames = parse_mp3(first + second)
    assert frames.bitrates == {64} and frames.sample_rate == 44100
    assert 2.0 <= frames.duration < 2.3
    assert parse_mp3(first).duration >= 1.0  # nothing of the first second held back


def test_unsupported_format_is_refused() -> None:
    """A format the registry does not know: ValidationError naming the formats it does."""
    with pytest.raises(ValidationError, match="pcm, wav, mp3, opus"):
        StreamEncoder("flac", 48000)


@pytest.mark.parametrize(("rate", "kbps"), [(48000, 24), (48000, 64000), (22050, -1000)])
def test_opus_drain_and_finish_make_one_ogg_opus_stream(rate: int, kbps: int) -> None:
    """Opus out of two drained runs decodes (libsndfile) to the audio's length, at 48 kHz or
    the next Opus rate up; the drain lets all but the open page out; the bitrate counts."""
    import io

    import soundfile

    encoder = StreamEncoder("opus", rate, opus_bitrate=kbps)
    first = encoder.encode(tone(1.0), 22050) + encoder.drain()
    second = encoder.encode(tone(1.0), 22050) + encoder.finish()
    samples, opus_rate = soundfile.read(io.BytesIO(first + second), dtype="int16")
    assert first.startswith(b"OggS") and opus_rate == (24000 if rate == 22050 else 48000)
    assert abs(len(samples) / opus_rate - 2.0) < 0.01
    assert rms(samples.tobytes()) > 1000
    let_out, _ = soundfile.read(io.BytesIO(first), dtype="int16")  # the drain's pages
    assert len(let_out) / opus_rate > 0.85  # all but the open page of the first second
    kept = (len(first) + len(second)) * 8 / 2.0 / 1000  # kbps on the wire
    assert kept < 40 if kbps == 24 else kept > 40


@pytest.mark.parametrize("audio_format", ["pcm", "wav", "mp3", "opus"])
def test_slices_join_to_the_whole(audio_format: str) -> None:
    """encode_slices joined equals encode of the whole chunk, in several slices."""
    pcm = tone(2.0)
    rate = 48000 if audio_format == "opus" else 44100  # an Opus rate: no second resampling
    whole = StreamEncoder(audio_format, rate)
    sliced = StreamEncoder(audio_format, rate)
    parts = list(sliced.encode_slices(pcm, 22050, seconds=0.5))
    assert len(parts) >= 3
    joined, alone = b"".join(parts) + sliced.finish(), whole.encode(pcm, 22050) + whole.finish()
    if audio_format == "opus":  # each Ogg stream has its own random serial number
        joined, alone = decoded_opus(joined), decoded_opus(alone)
    assert joined == alone


def decoded_opus(stream: bytes) -> bytes:
    import io

    import soundfile

    samples, _ = soundfile.read(io.BytesIO(stream), dtype="int16")
    return bytes(samples.tobytes())
