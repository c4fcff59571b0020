"""Tests for fish_notebook.audio: exact to the byte whatever the chunking."""

from __future__ import annotations

import builtins
import gc
import io
import itertools
import math
import random
import struct
import sys
import threading
import time
import wave
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fish_notebook import audio, formats
from fish_notebook.audio import (
    UNKNOWN_SIZE,
    PcmDecoder,
    SampleAligner,
    WavDecoder,
    WavStreamParser,
    pcm_duration,
    pcm_peak,
    pcm_rms,
    wav_bytes,
    wav_stream_header,
    write_wav,
)
from fish_notebook.errors import (
    MissingDependencyError,
    ProtocolError,
    SessionStateError,
    ValidationError,
)
from fish_notebook.formats import save_audio
from fish_notebook.mp3 import Mp3Encoder, Mp3StreamDecoder, _Mp3Framer, encode_mp3

# --- helpers --------------------------------------------------------------------------------


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the given offsets (any order, duplicates allowed: empty chunks)."""
    points = sorted(min(c, len(data)) for c in cuts)
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def sine_pcm(seconds: float, rate: int, freq: float = 440.0, amplitude: int = 12000) -> bytes:
    n = int(seconds * rate)
    return struct.pack(
        f"<{n}h", *(int(amplitude * math.sin(2 * math.pi * freq * i / rate)) for i in range(n))
    )


def chunk(chunk_id: bytes, body: bytes) -> bytes:
    padded = body + (b"\0" if len(body) % 2 else b"")
    return chunk_id + struct.pack("<I", len(body)) + padded


def fmt_body(rate: int = 22050, channels: int = 1, bits: int = 16, code: int = 1) -> bytes:
    align = channels * bits // 8
    return struct.pack("<HHIIHH", code, channels, rate, rate * align, align, bits)


def riff(*chunks: bytes, size: int | None = None) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body) if size is None else size) + body


# MPEG audio frame header fields, for checking the encoder's output without a decoder.
_MPEG1_BITRATES = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320]
_MPEG2_BITRATES = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160]
_RATES = {3: [44100, 48000, 32000], 2: [22050, 24000, 16000], 0: [11025, 12000, 8000]}


def mp3_frames(data: bytes) -> list[tuple[int, int]]:
    """Walk MP3 frames from the start; return (sample_rate, samples) for each. Strict."""
    frames = []
    pos = 0
    while pos + 4 <= len(data):
        b1, b2, b3 = data[pos + 1], data[pos + 2], data[pos + 3]
        assert data[pos] == 0xFF and b1 & 0xE0 == 0xE0, f"no frame sync at byte {pos}"
        version = (b1 >> 3) & 3
        assert (b1 >> 1) & 3 == 1, "not layer III"
        table = _MPEG1_BITRATES if version == 3 else _MPEG2_BITRATES
        bitrate = table[b2 >> 4] * 1000
        rate = _RATES[version][(b2 >> 2) & 3]
        padding = (b2 >> 1) & 1
        del b3
        if version == 3:
            size, samples = 144 * bitrate // rate + padding, 1152
        else:
            size, samples = 72 * bitrate // rate + padding, 576
        frames.append((rate, samples))
        pos += size
    assert pos == len(data), "trailing bytes after the last MP3 frame"
    return frames


# --- SampleAligner ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 300), max_size=12),
    frame=st.integers(1, 8),
)
def test_aligner_any_split_gives_back_the_stream(data: bytes, cuts: list[int], frame: int) -> None:
    """Feeding any split returns whole frames only and, with finish(), exactly the input."""
    aligner = SampleAligner(frame)
    out = b""
    for piece in split_at(data, cuts):
        got = aligner.feed(piece)
        assert len(got) % frame == 0
        assert len(aligner.remainder) < frame
        out += got
    assert out == data[: len(data) - len(data) % frame]
    assert out + aligner.finish() == data
    assert aligner.remainder == b""


def test_aligner_carries_an_odd_byte() -> None:
    """An odd byte is held back and completed by the next chunk."""
    aligner = SampleAligner()
    assert aligner.feed(b"\x01\x02\x03") == b"\x01\x02"
    assert aligner.remainder == b"\x03"
    assert aligner.feed(b"\x04") == b"\x03\x04"
    assert aligner.finish() == b""


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_aligner_rejects_bad_frame_size(bad: Any) -> None:
    """A frame size that is not a positive int is a ValidationError."""
    with pytest.raises(ValidationError, match="frame_size"):
        SampleAligner(bad)


# --- WavStreamParser -------------------------------------------------------------------------


def parse_all(stream: bytes, cuts: list[int]) -> tuple[bytes, WavStreamParser]:
    parser = WavStreamParser()
    out = b"".join(parser.feed(piece) for piece in split_at(stream, cuts))
    out += parser.finish()
    return out, parser


@settings(max_examples=150, deadline=None)
@given(
    pcm=st.binary(max_size=400).map(lambda b: b[: len(b) // 2 * 2]),
    cuts=st.lists(st.integers(0, 600), max_size=15),
    size=st.sampled_from([0, UNKNOWN_SIZE, None]),
    extras=st.lists(
        st.tuples(st.sampled_from([b"LIST", b"fact", b"junk"]), st.binary(max_size=9)), max_size=3
    ),
    rate=st.sampled_from([8000, 16000, 22050, 44100, 48000]),
    channels=st.sampled_from([1, 2]),
)
def test_wav_parser_any_split_any_header(
    pcm: bytes,
    cuts: list[int],
    size: int | None,
    extras: list[tuple[bytes, bytes]],
    rate: int,
    channels: int,
) -> None:
    """Any split, unknown or exact sizes and extra chunks: the PCM comes back exactly."""
    pcm = pcm[: len(pcm) - len(pcm) % (2 * channels)]
    data_size = len(pcm) if size is None else size
    extra = b"".join(chunk(cid, body) for cid, body in extras)
    stream = riff(
        chunk(b"fmt ", fmt_body(rate, channels)),
        extra,
        b"data" + struct.pack("<I", data_size) + pcm,
        size=size,
    )
    out, parser = parse_all(stream, cuts)
    assert out == pcm
    assert (parser.sample_rate, parser.channels, parser.bits_per_sample) == (rate, channels, 16)
    assert parser.header_complete
    assert parser.frame_size == 2 * channels


def test_wav_parser_one_byte_at_a_time() -> None:
    """A header arriving one byte per chunk is parsed; no PCM leaks out before it ends."""
    pcm = sine_pcm(0.01, 22050)
    stream = wav_stream_header(22050) + pcm
    parser = WavStreamParser()
    outputs = [parser.feed(stream[i : i + 1]) for i in range(len(stream))]
    assert outputs[:44] == [b""] * 44
    assert b"".join(outputs) == pcm
    assert parser.sample_rate == 22050


def test_wav_parser_skips_trailing_metadata_after_exact_data() -> None:
    """With an exact data size, a LIST chunk after the data is not taken for audio."""
    pcm = b"\x01\x00\x02\x00\x03\x00"
    stream = riff(chunk(b"fmt ", fmt_body()), chunk(b"data", pcm), chunk(b"LIST", b"INFOabcd"))
    assert parse_all(stream, [3, 20, 47])[0] == pcm


def test_wav_parser_odd_sized_data_chunk_has_its_pad_byte_skipped() -> None:
    """An odd data size (8-bit audio) is followed by a pad byte that is not audio."""
    stream = riff(chunk(b"fmt ", fmt_body(bits=8)), chunk(b"data", b"abc"), chunk(b"LIST", b"xy"))
    out, parser = parse_all(stream, [])
    assert out == b"abc"
    assert parser.bits_per_sample == 8


def test_wav_parser_reads_concatenated_wav_files() -> None:
    """One WAV file per chunk (a second RIFF header) gives the PCM of both."""
    first, second = sine_pcm(0.005, 16000), sine_pcm(0.005, 16000, freq=880)
    stream = wav_bytes(first, 16000) + wav_bytes(second, 16000)
    assert parse_all(stream, [50, 51, 300])[0] == first + second


def test_wav_parser_refuses_a_format_change_mid_stream() -> None:
    """A second header with another sample rate is a ProtocolError."""
    stream = wav_bytes(b"\0\0", 16000) + wav_bytes(b"\0\0", 22050)
    with pytest.raises(ProtocolError, match="changes the format"):
        parse_all(stream, [])


def test_wav_parser_keeps_audio_past_a_too_small_data_size() -> None:
    """A header that under-declares the data size loses no audio after it."""
    pcm = b"\x00\x01\xff\xfe" * 50  # not printable: cannot be mistaken for a chunk id
    stream = riff(chunk(b"fmt ", fmt_body()), b"data" + struct.pack("<I", 8) + pcm)
    assert parse_all(stream, [60, 61])[0] == pcm


def test_wav_parser_accepts_extensible_pcm() -> None:
    """WAVE_FORMAT_EXTENSIBLE with the PCM sub-format is PCM."""
    ext = fmt_body(code=0xFFFE) + struct.pack("<HHI", 22, 16, 4) + b"\x01\x00" + b"\0" * 14
    stream = riff(chunk(b"fmt ", ext), chunk(b"data", b"\x05\x00"))
    assert parse_all(stream, [1])[0] == b"\x05\x00"


def test_wav_parser_rejects_non_wav_at_the_first_byte() -> None:
    """A stream that does not start with RIFF fails as soon as its first byte arrives."""
    parser = WavStreamParser()
    with pytest.raises(ProtocolError, match=r"not a WAV stream.*format='pcm'"):
        parser.feed(b"\xff")  # e.g. an MP3 frame sync


def test_wav_parser_rejects_riff_that_is_not_wave() -> None:
    """A RIFF container of another form (AVI) is a ProtocolError naming it."""
    with pytest.raises(ProtocolError, match="AVI"):
        WavStreamParser().feed(b"RIFF\0\0\0\0AVI LIST")


@pytest.mark.parametrize(("code", "name"), [(3, "IEEE float"), (0x55, "MP3"), (7, "mu-law")])
def test_wav_parser_rejects_non_pcm(code: int, name: str) -> None:
    """A WAV holding float, MP3 or mu-law data is a ProtocolError naming the format."""
    stream = riff(chunk(b"fmt ", fmt_body(code=code, bits=32 if code == 3 else 16)))
    with pytest.raises(ProtocolError, match=name):
        WavStreamParser().feed(stream)


def test_wav_parser_rejects_data_before_fmt() -> None:
    """A data chunk with no format before it is a ProtocolError."""
    with pytest.raises(ProtocolError, match="before any 'fmt '"):
        WavStreamParser().feed(riff(chunk(b"data", b"\0\0")))


def test_wav_parser_finish_inside_header_is_an_error() -> None:
    """A stream that ends inside its header says no audio was received."""
    parser = WavStreamParser()
    parser.feed(wav_stream_header(22050)[:30])
    with pytest.raises(ProtocolError, match="inside its header"):
        parser.finish()


def test_wav_parser_empty_stream_finishes_cleanly() -> None:
    """No bytes at all (a session with no text) is not an error."""
    parser = WavStreamParser()
    assert parser.finish() == b""
    assert not parser.header_complete
    assert parser.frame_size is None


# --- writing WAV -----------------------------------------------------------------------------


def test_wav_stream_header_fields() -> None:
    """The streaming header is 44 bytes with both sizes unknown and the right format."""
    header = wav_stream_header(24000, channels=2)
    assert len(header) == 44
    riff_size, data_size = (
        struct.unpack_from("<I", header, 4)[0],
        struct.unpack_from("<I", header, 40)[0],
    )
    assert riff_size == data_size == UNKNOWN_SIZE
    assert header[36:40] == b"data"
    assert struct.unpack_from("<HHIIHH", header, 20) == (1, 2, 24000, 96000, 4, 16)


def test_stdlib_wave_reads_a_streamed_wav() -> None:
    """The stdlib reads our streaming header followed by PCM."""
    pcm = sine_pcm(0.02, 22050)
    with wave.open(io.BytesIO(wav_stream_header(22050) + pcm)) as reader:
        assert reader.getframerate() == 22050
        assert reader.readframes(10**6) == pcm


@settings(max_examples=60, deadline=None)
@given(
    samples=st.lists(st.integers(-32768, 32767), max_size=200),
    rate=st.integers(8000, 192000),
    channels=st.sampled_from([1, 2]),
)
def test_wav_bytes_round_trip_through_stdlib_wave(
    samples: list[int], rate: int, channels: int
) -> None:
    """wav_bytes read back with the stdlib wave module gives the same samples and format."""
    samples = samples[: len(samples) - len(samples) % channels]
    pcm = struct.pack(f"<{len(samples)}h", *samples)
    data = wav_bytes(pcm, rate, channels)
    with wave.open(io.BytesIO(data)) as reader:
        assert reader.getframerate() == rate
        assert reader.getnchannels() == channels
        assert reader.getsampwidth() == 2
        assert reader.getnframes() == len(samples) // channels
        assert reader.readframes(10**6) == pcm
    assert parse_all(data, [])[0] == pcm


def test_write_wav_file(tmp_path: Path) -> None:
    """write_wav writes a file the stdlib reads back identically."""
    pcm = sine_pcm(0.1, 16000)
    path = write_wav(tmp_path / "a.wav", pcm, 16000)
    with wave.open(str(path)) as reader:
        assert reader.readframes(10**6) == pcm


def test_wav_bytes_rejects_partial_samples() -> None:
    """PCM with an odd byte count cannot be written as 16-bit WAV."""
    with pytest.raises(ValidationError, match="SampleAligner"):
        wav_bytes(b"\0\0\0", 16000)


@pytest.mark.parametrize(
    ("rate", "channels", "field"),
    [(0, 1, "sample_rate"), (16000, 0, "channels"), (True, 1, "sample_rate")],
)
def test_wav_bytes_rejects_bad_format(rate: Any, channels: int, field: str) -> None:
    """A bad rate or channel count is a ValidationError naming the field."""
    with pytest.raises(ValidationError, match=field):
        wav_bytes(b"", rate, channels)


# --- MP3 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "bitrate"), [(22050, 128), (44100, 64), (16000, 192), (48000, 128)]
)
def test_mp3_encoder_streams_valid_frames_of_the_right_length(rate: int, bitrate: int) -> None:
    """Odd-sized chunks encode to back-to-back MP3 frames covering the input duration."""
    pcm = sine_pcm(1.0, rate)
    encoder = Mp3Encoder(rate, bitrate=bitrate)
    out = b"".join(encoder.encode(piece) for piece in split_at(pcm, list(range(1, len(pcm), 4097))))
    out += encoder.finish()
    frames = mp3_frames(out)
    assert {r for r, _ in frames} == {rate}
    duration = sum(n for _, n in frames) / rate
    # LAME adds its encoder delay and pads the last frame: at most a few frames more.
    assert 1.0 <= duration <= 1.0 + 4 * frames[0][1] / rate


def test_mp3_encoder_stereo() -> None:
    """Two interleaved channels encode to valid frames."""
    mono = sine_pcm(0.3, 44100)
    stereo = b"".join(mono[i : i + 2] * 2 for i in range(0, len(mono), 2))
    frames = mp3_frames(encode_mp3(stereo, 44100, channels=2))
    assert 0.3 <= sum(n for _, n in frames) / 44100 <= 0.5


def test_mp3_encoder_lifecycle() -> None:
    """finish() is safe twice; encode() after finish() is a SessionStateError."""
    encoder = Mp3Encoder(22050)
    encoder.encode(sine_pcm(0.1, 22050) + b"\x01")  # a stray byte is carried, then dropped
    assert encoder.finish()
    assert encoder.finish() == b""
    with pytest.raises(SessionStateError):
        encoder.encode(b"\0\0")


def test_mp3_encoder_with_no_audio() -> None:
    """An encoder that never saw a whole sample finishes with no bytes."""
    encoder = Mp3Encoder(22050)
    assert encoder.encode(b"\x01") == b""
    assert encoder.finish() == b""


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"bitrate": 1000}, "bitrate"), ({"channels": 3}, "channels")]
)
def test_mp3_encoder_rejects_bad_options(kwargs: dict[str, int], field: str) -> None:
    """Bitrates and channel counts MP3 cannot hold are ValidationErrors."""
    with pytest.raises(ValidationError, match=field):
        Mp3Encoder(22050, **kwargs)


def test_mp3_without_lameenc_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without lameenc, MP3 encoding raises MissingDependencyError naming the local extra."""
    real_import = builtins.__import__

    def no_lameenc(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "lameenc":
            raise ImportError("No module named 'lameenc'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "lameenc", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_lameenc)
    with pytest.raises(MissingDependencyError, match=r"fish-notebook\[local\]"):
        Mp3Encoder(22050)


# --- save_audio ------------------------------------------------------------------------------


def test_save_audio_wav_is_exact(tmp_path: Path) -> None:
    """Saving to .WAV (any case) keeps every sample."""
    pcm = sine_pcm(0.05, 22050)
    path = save_audio(tmp_path / "x.WAV", pcm, 22050)
    with wave.open(str(path)) as reader:
        assert reader.readframes(10**6) == pcm


def test_save_audio_mp3(tmp_path: Path) -> None:
    """Saving to .mp3 writes MP3 frames at the requested bitrate."""
    path = save_audio(tmp_path / "x.mp3", sine_pcm(0.5, 22050), 22050, mp3_bitrate=64)
    data = path.read_bytes()
    assert mp3_frames(data)
    assert data[2] >> 4 == _MPEG2_BITRATES.index(64)


def test_save_audio_rejects_other_suffixes(tmp_path: Path) -> None:
    """An unknown suffix is a ValidationError and writes nothing."""
    with pytest.raises(ValidationError, match=r"\.wav or \.mp3"):
        save_audio(tmp_path / "x.ogg", b"\0\0", 22050)
    assert not (tmp_path / "x.ogg").exists()


# --- measurements ----------------------------------------------------------------------------


def test_pcm_measurements() -> None:
    """Duration counts whole frames; peak and RMS read signed little-endian samples."""
    pcm = struct.pack("<4h", 100, -32768, 3, -4)
    assert pcm_duration(pcm, 4) == 1.0
    assert pcm_duration(pcm + b"\x01", 2, channels=2) == 1.0
    assert pcm_peak(pcm) == 32768
    assert pcm_rms(struct.pack("<2h", 3, -4)) == pytest.approx(math.sqrt(12.5))
    assert pcm_peak(b"") == 0
    assert pcm_rms(b"\x01") == 0.0


def test_sine_rms_is_amplitude_over_root_two() -> None:
    """A full-cycle sine has RMS amplitude/sqrt(2)."""
    assert pcm_rms(sine_pcm(0.1, 8000, freq=100)) == pytest.approx(12000 / math.sqrt(2), rel=1e-3)


# --- format decoders -------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    samples=st.lists(st.integers(-32768, 32767), max_size=150),
    cuts=st.lists(st.integers(0, 400), max_size=10),
    channels=st.sampled_from([1, 2]),
    fmt=st.sampled_from(["pcm", "wav"]),
)
def test_format_decoder_gives_whole_frames_exactly(
    samples: list[int], cuts: list[int], channels: int, fmt: str
) -> None:
    """pcm and wav streams split anywhere decode to exactly the PCM sent, in whole frames."""
    samples = samples[: len(samples) - len(samples) % channels]
    pcm = struct.pack(f"<{len(samples)}h", *samples)
    stream = pcm if fmt == "pcm" else wav_stream_header(16000, channels) + pcm
    decoder = formats.get(fmt).decode_stream(44100, channels)
    out = b""
    for piece in split_at(stream, cuts):
        got = decoder.feed(piece)
        assert len(got) % (2 * channels) == 0
        out += got
    out += decoder.finish()
    assert out == pcm
    assert decoder.sample_rate == (44100 if fmt == "pcm" else 16000)


def test_wav_decoder_takes_rate_and_channels_from_the_header() -> None:
    """The WAV header overrides the requested rate and channel count."""
    decoder = WavDecoder(44100)
    assert decoder.feed(wav_stream_header(22050, channels=2) + b"\1\0\2\0\3") == b"\1\0\2\0"
    assert (decoder.sample_rate, decoder.channels) == (22050, 2)


def test_wav_decoder_refuses_8_bit() -> None:
    """Only 16-bit WAV can be played: other widths are a ProtocolError."""
    with pytest.raises(ProtocolError, match="8-bit"):
        WavDecoder(22050).feed(riff(chunk(b"fmt ", fmt_body(bits=8)), chunk(b"data", b"ab")))


def test_pcm_decoder_drops_a_trailing_partial_sample() -> None:
    """A stream ending on half a sample keeps every whole sample and drops the half."""
    decoder = PcmDecoder(22050)
    assert decoder.feed(b"\1\2\3") == b"\1\2"
    assert decoder.remainder == b"\3"
    assert decoder.finish() == b""


def test_format_decoder_opus_not_available() -> None:
    """opus decoding is not available, and the message says what to do instead."""
    with pytest.raises(ValidationError, match="use one of 'pcm', 'wav', 'mp3'"):
        formats.get("opus").decode_stream(44100)


def test_format_decoder_unknown_format() -> None:
    """An unknown format is a ValidationError."""
    with pytest.raises(ValidationError, match="format"):
        formats.get("flac")


# --- Mp3StreamDecoder ------------------------------------------------------------------------

# LAME delays the audio by its encoder delay (576 samples) plus the decoder's (529), and pads
# the end to whole frames. Without a LAME header in the stream (a live stream has none) the
# decoder cannot remove them, so the decoded audio is the source shifted by 1105 samples
# plus up to one more frame at the end; with a header it would be the source exactly.
MP3_DELAY = 576 + 529


def tone_sequence(rate: int, tones: tuple[int, ...] = (300, 500, 800, 1200, 1800, 2500)) -> bytes:
    """A quarter second of each tone, at a level MP3 keeps well."""
    return b"".join(sine_pcm(0.25, rate, freq) for freq in tones)


def as_samples(pcm: bytes) -> Any:
    np = pytest.importorskip("numpy")
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


def best_lag(decoded: bytes, source: bytes, max_lag: int) -> tuple[int, float]:
    """The shift of ``source`` in ``decoded`` and the normalised correlation there."""
    np = pytest.importorskip("numpy")
    out, ref = as_samples(decoded), as_samples(source)
    ref = ref[: len(out) - max_lag]
    scores = np.correlate(out[: len(ref) + max_lag], ref, mode="valid")
    lag = int(np.argmax(scores))
    seg = out[lag : lag + len(ref)]
    return lag, float(np.dot(seg, ref) / math.sqrt(np.dot(seg, seg) * np.dot(ref, ref)))


def decode_in_chunks(decoder: Mp3StreamDecoder, data: bytes, seed: int, largest: int) -> bytes:
    rng = random.Random(seed)
    out, pos = b"", 0
    while pos < len(data):
        size = rng.randint(1, largest)
        pcm = decoder.feed(data[pos : pos + size])
        assert len(pcm) % (2 * decoder.channels) == 0
        out += pcm
        pos += size
    return out + decoder.finish()


@pytest.fixture
def miniaudio() -> Any:
    return pytest.importorskip("miniaudio")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mp3_decoder_random_chunks_decode_like_the_whole_file(miniaudio: Any, seed: int) -> None:
    """Random-size chunks decode to exactly what decoding the whole file gives, every frame."""
    rate = 24000
    source = tone_sequence(rate)
    mp3 = encode_mp3(source, rate, bitrate=64)
    out = decode_in_chunks(Mp3StreamDecoder(rate), mp3, seed, largest=3000)
    frames = mp3_frames(mp3)
    assert len(out) // 2 == sum(n for _, n in frames)
    whole = miniaudio.decode(mp3, nchannels=1, sample_rate=rate)
    assert out == whole.samples.tobytes()
    # The source is in there, shifted by the codec delay, at most padded by two frames.
    assert 0 <= len(out) // 2 - len(source) // 2 <= MP3_DELAY + 2 * 576
    lag, correlation = best_lag(out, source, max_lag=2 * 1152)
    assert lag == MP3_DELAY
    assert correlation > 0.98


def test_mp3_decoder_one_byte_at_a_time(miniaudio: Any) -> None:
    """Feeding one byte per call gives the same PCM as feeding the stream whole."""
    mp3 = encode_mp3(tone_sequence(16000, (400, 900)), 16000, bitrate=32)
    whole = Mp3StreamDecoder(16000)
    expected = whole.feed(mp3) + whole.finish()
    decoder = Mp3StreamDecoder(16000)
    out = b"".join(decoder.feed(mp3[i : i + 1]) for i in range(len(mp3))) + decoder.finish()
    assert out == expected and len(out) > 16000


def test_mp3_decoder_output_comes_while_the_stream_arrives(miniaudio: Any) -> None:
    """After half the bytes, the audio of (nearly) every frame in that half is already out."""
    rate = 44100
    mp3 = encode_mp3(tone_sequence(rate), rate, bitrate=128)
    decoder = Mp3StreamDecoder(rate)
    half = len(mp3) // 2
    first = decoder.feed(mp3[:half])
    total = len(first) + len(decoder.feed(mp3[half:])) + len(decoder.finish())
    # All frames complete in the first half are out but the last 128 samples of one.
    complete, end = 0, 0
    for frame, (_rate, samples) in zip(
        _Mp3Framer().feed(mp3, final=True), mp3_frames(mp3), strict=True
    ):
        end += len(frame)
        if end > half:
            break
        complete += samples
    assert complete * 2 - len(first) < 2 * 128
    assert 0.45 < len(first) / total < 0.55


def test_mp3_decoder_each_frame_comes_out_when_it_completes(miniaudio: Any) -> None:
    """Fed frame by frame, every frame but the first gives its audio on its own feed."""
    mp3 = encode_mp3(tone_sequence(22050, (600,)), 22050, bitrate=64)
    frames = _Mp3Framer().feed(mp3, final=True)
    decoder = Mp3StreamDecoder(22050)
    outs = [len(decoder.feed(frame)) // 2 for frame in frames]
    assert outs[0] == 0  # the first frame waits for the next header, to be sure it is one
    assert sum(outs[1:]) >= (len(frames) - 1) * 576 - 128
    assert all(out > 0 for out in outs[2:])


@pytest.mark.parametrize(("stream_rate", "rate"), [(48000, 24000), (22050, 44100)])
def test_mp3_decoder_resamples_to_the_requested_rate(
    miniaudio: Any, stream_rate: int, rate: int
) -> None:
    """A stream at another rate comes out at the requested one: same duration, same pitch."""
    source = sine_pcm(1.0, stream_rate, 1000.0)
    decoder = Mp3StreamDecoder(rate)
    out = decode_in_chunks(decoder, encode_mp3(source, stream_rate), seed=4, largest=2000)
    assert decoder.stream_sample_rate == stream_rate
    assert decoder.sample_rate == rate
    assert 1.0 <= pcm_duration(out, rate) <= 1.0 + 3 * 1152 / stream_rate
    samples = as_samples(out)[rate // 10 : rate // 10 + rate // 2]  # half a second, steady
    crossings = sum(1 for a, b in itertools.pairwise(samples) if a < 0 <= b)
    assert abs(crossings * 2 - 1000) <= 4  # upward crossings per second = frequency


def test_mp3_decoder_mixes_stereo_to_mono(miniaudio: Any) -> None:
    """A stereo stream decodes to the requested mono, with the audio in it."""
    mono = sine_pcm(0.5, 44100, 700.0)
    left = as_samples(mono).astype("<i2")
    stereo = b"".join(struct.pack("<hh", s, s) for s in left.tolist())
    out = decode_in_chunks(
        Mp3StreamDecoder(44100, 1), encode_mp3(stereo, 44100, channels=2), 5, 1500
    )
    assert pcm_duration(out, 44100) >= 0.5
    assert pcm_rms(out) > 0.5 * pcm_rms(mono)


def test_mp3_decoder_skips_id3_tags_and_junk(miniaudio: Any) -> None:
    """A leading ID3v2 tag and junk between frames do not change the decoded audio."""
    rate = 24000
    mp3 = encode_mp3(tone_sequence(rate, (500, 1500)), rate, bitrate=64)
    clean = Mp3StreamDecoder(rate)
    expected = clean.feed(mp3) + clean.finish()
    frames = _Mp3Framer().feed(mp3, final=True)
    tag = b"ID3\x04\x00\x00" + bytes([0, 0, 1, 0]) + b"\xff\xfb" * 64  # 128-byte body
    junk = b"\x00\xff\x12junk\xff"
    dirty = tag + junk + b"".join(frames)
    decoder = Mp3StreamDecoder(rate)
    out = decode_in_chunks(decoder, dirty, seed=6, largest=700)
    assert out == expected


def test_mp3_decoder_names_a_stream_that_is_not_mp3(miniaudio: Any) -> None:
    """WAV, Ogg and byte soup fed as MP3 are ProtocolErrors that say what they saw."""
    with pytest.raises(ProtocolError, match="format='wav'"):
        Mp3StreamDecoder(24000).feed(wav_stream_header(24000) + b"\0" * 100)
    ogg = Mp3StreamDecoder(24000)
    assert ogg.feed(b"Og") == b""
    with pytest.raises(ProtocolError, match="Ogg"):
        ogg.feed(b"gS\0\2")
    soup = Mp3StreamDecoder(24000)
    with pytest.raises(ProtocolError, match="not an MP3 stream"):
        for _ in range(20):
            soup.feed(bytes(range(0, 250)) * 20)
    short = Mp3StreamDecoder(24000)
    assert short.feed(b"not audio at all") == b""
    with pytest.raises(ProtocolError, match="without a single MPEG audio frame"):
        short.finish()


def test_mp3_decoder_lifecycle(miniaudio: Any) -> None:
    """An empty stream finishes cleanly; finish twice is fine; feed after finish is refused."""
    decoder = Mp3StreamDecoder(24000)
    assert decoder.finish() == b""
    assert decoder.finish() == b""
    with pytest.raises(SessionStateError):
        decoder.feed(b"\xff")
    with pytest.raises(ValidationError, match="channels"):
        Mp3StreamDecoder(24000, channels=3)


def decoder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fish-notebook-mp3-decoder"]


def wait_until(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_mp3_decoder_thread_ends_on_finish_and_when_dropped(miniaudio: Any) -> None:
    """The decoding thread ends after finish(), and when an unfinished decoder is dropped."""
    assert wait_until(lambda: not decoder_threads())
    mp3 = encode_mp3(tone_sequence(24000, (500,)), 24000)
    finished = Mp3StreamDecoder(24000)
    finished.feed(mp3)
    assert len(decoder_threads()) == 1
    finished.finish()
    assert wait_until(lambda: not decoder_threads())
    dropped = Mp3StreamDecoder(24000)
    assert dropped.feed(mp3[: len(mp3) // 2])
    assert len(decoder_threads()) == 1
    del dropped
    gc.collect()
    assert wait_until(lambda: not decoder_threads())


def test_format_decoder_mp3(miniaudio: Any) -> None:
    """format_decoder('mp3') is the incremental MP3 decoder at the requested rate."""
    decoder = formats.get("mp3").decode_stream(22050)
    assert isinstance(decoder, Mp3StreamDecoder)
    assert (decoder.sample_rate, decoder.channels) == (22050, 1)


def test_mp3_decoding_without_miniaudio_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without miniaudio, MP3 decoding raises MissingDependencyError naming the mp3 extra."""
    real_import = builtins.__import__

    def no_miniaudio(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "miniaudio":
            raise ImportError("No module named 'miniaudio'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "miniaudio", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_miniaudio)
    with pytest.raises(MissingDependencyError, match=r"fish-notebook\[mp3\]"):
        formats.get("mp3").decode_stream(44100)


def test_all_exports_exist() -> None:
    """Every name in __all__ is defined."""
    for name in audio.__all__:
        assert hasattr(audio, name), name


def test_format_registry_holds_every_wire_format() -> None:
    """The registry and the protocol name the same formats, and each entry is usable."""
    from fish_notebook.protocol import AUDIO_FORMATS, default_sample_rate

    assert set(formats.FORMATS) == set(AUDIO_FORMATS)
    for name, fmt in formats.FORMATS.items():
        assert fmt.name == name and fmt.suffix.startswith(".") and "/" in fmt.mime
        assert fmt.default_rate == default_sample_rate(name)
    assert formats.SAVABLE == ("wav", "mp3", "opus")


@pytest.mark.parametrize("name", ["pcm", "wav", "mp3"])
def test_each_encoder_round_trips_through_its_decoder(name: str) -> None:
    """What a format's encoder makes, its decoder reads back: the same length of audio."""
    fmt = formats.get(name)
    pcm = sine_pcm(0.5, 22050)
    encoder = fmt.encode_stream(22050, 64)
    data = b"".join([encoder.encode(pcm[:1001]), encoder.encode(pcm[1001:]), encoder.finish()])
    decoder = fmt.decode_stream(22050)
    out = decoder.feed(data) + decoder.finish()
    expected = len(pcm) // 2
    assert abs(len(out) // 2 - expected) <= (2400 if name == "mp3" else 0)  # MP3 pads frames


def test_for_path_adds_the_default_suffix_and_refuses_others(tmp_path: Path) -> None:
    """A path without suffix takes the default; .ogg is refused naming what is allowed."""
    path, fmt = formats.for_path(tmp_path / "x", default="mp3")
    assert path.suffix == ".mp3" and fmt.name == "mp3"
    with pytest.raises(ValidationError, match=r"\.wav or \.mp3"):
        formats.for_path(tmp_path / "x.ogg")
