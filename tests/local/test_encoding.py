"""StreamEncoder: a voice's PCM into the bytes of a pcm, wav or mp3 stream."""

from __future__ import annotations

import math
import struct

import pytest
from local_wire import parse_mp3, parse_wav

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
    """opus is not encoded locally: ValidationError naming the formats that are."""
    with pytest.raises(ValidationError, match="pcm, wav, mp3"):
        StreamEncoder("opus", 48000)


@pytest.mark.parametrize("audio_format", ["pcm", "wav", "mp3"])
def test_slices_join_to_the_whole(audio_format: str) -> None:
    """encode_slices joined equals encode of the whole chunk, in several slices."""
    pcm = tone(2.0)
    whole = StreamEncoder(audio_format, 44100)
    sliced = StreamEncoder(audio_format, 44100)
    parts = list(sliced.encode_slices(pcm, 22050, seconds=0.5))
    assert len(parts) >= 3
    assert b"".join(parts) + sliced.finish() == whole.encode(pcm, 22050) + whole.finish()
