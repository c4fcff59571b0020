"""Voice activity detection for the voice loop: when the user starts speaking, and stops.

:class:`VoiceActivityDetector` takes the microphone's 16 kHz 16-bit mono PCM in frames of
any length and answers with events: :class:`SpeechStarted` once speech has lasted
``min_speech`` seconds, :class:`SpeechEnded` (the end of the turn) once ``silence`` seconds
have followed it. It runs Silero VAD v6 (MIT), the ONNX file that ``faster-whisper``
ships, with onnxruntime directly: no torch, one small model run per 32 ms of audio
(docs/LISTENING.md has its CPU cost).

Guarantees:

- Deterministic: the same samples give the same events, however they are split into
  frames (the model sees fixed 512-sample windows and carries its state across them).
- Offsets are sample indexes counted from the first sample fed (or since :meth:`reset`).
  ``SpeechEnded.sample - SpeechEnded.end >= silence`` in samples: the end of a turn is
  decided only after the whole silence was heard.
- Pure apart from the model: no threads, no clock, no I/O. One detector per stream; the
  loaded model is shared by every detector in the process (onnxruntime runs are
  thread-safe, the recurrent state lives in the detector).

Needs ``numpy``, ``onnxruntime`` and ``faster-whisper`` (for the model file), all in the
``listen`` extra; they are imported when a detector is made, not with this module.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .audio import SampleAligner
from .errors import MissingDependencyError, ValidationError

__all__ = [
    "DEFAULT_MIN_SPEECH",
    "DEFAULT_SILENCE",
    "DEFAULT_THRESHOLD",
    "SAMPLE_RATE",
    "WINDOW",
    "SpeechEnded",
    "SpeechStarted",
    "VadEvent",
    "VoiceActivityDetector",
    "silero_model_path",
]

#: The only rate the detector takes: what the page's AudioWorklet sends.
SAMPLE_RATE = 16_000
#: Samples per model run (32 ms): Silero v5/v6 at 16 kHz.
WINDOW = 512
#: Samples of the previous window the model sees before each window.
_CONTEXT = 64
#: Speech probability at or above which a window is speech (Silero's own default).
DEFAULT_THRESHOLD = 0.5
#: Seconds speech must last before it counts: a click or a cough does not start a turn,
#: a short "no" (about 0.25 s) does.
DEFAULT_MIN_SPEECH = 0.2
#: Seconds of silence that end a turn: longer than the pauses inside a sentence, short
#: enough that the answer does not keep the user waiting.
DEFAULT_SILENCE = 0.6
# A window below this is silence; between it and the threshold, it continues what was.
_HYSTERESIS = 0.15
_MODEL_FILE = "silero_vad_v6.onnx"


@dataclass(frozen=True)
class SpeechStarted:
    """Speech began at ``sample``; reported once it has lasted ``min_speech``."""

    sample: int

    @property
    def seconds(self) -> float:
        return self.sample / SAMPLE_RATE


@dataclass(frozen=True)
class SpeechEnded:
    """The turn is over: speech ran from ``start`` to ``end`` (the first silent sample);
    the end was decided at ``sample``, after ``silence`` seconds without speech (or when
    the stream finished)."""

    start: int
    end: int
    sample: int

    @property
    def seconds(self) -> float:
        """Seconds of speech in the turn (with the short pauses inside it)."""
        return (self.end - self.start) / SAMPLE_RATE


VadEvent = SpeechStarted | SpeechEnded


def _imports() -> tuple[Any, Any]:
    try:
        import numpy
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError("onnxruntime", "listen", "Voice activity detection") from exc
    return numpy, onnxruntime


def silero_model_path() -> Path:
    """The Silero VAD v6 ONNX file inside the installed ``faster-whisper`` (not imported)."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "faster-whisper", "listen", "Voice activity detection (its Silero VAD model)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / _MODEL_FILE
    if not path.is_file():
        raise MissingDependencyError(
            "faster-whisper>=1.2", "listen", f"Voice activity detection ({_MODEL_FILE})"
        )
    return path


@functools.lru_cache(maxsize=4)
def _session(path: str) -> Any:
    """One onnxruntime session per model file, shared: one thread, no arena (it is tiny)."""
    _, onnxruntime = _imports()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 4
    try:
        session = onnxruntime.InferenceSession(
            path, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise ValidationError("model_path", path, f"is not a loadable ONNX model ({exc})") from exc
    inputs = {i.name: i.shape for i in session.get_inputs()}
    if set(inputs) != {"input", "h", "c"} or inputs["input"][-1] != WINDOW + _CONTEXT:
        raise ValidationError(
            "model_path", path, "is not Silero VAD v6 (inputs input[N, 576], h and c)"
        )
    return session


def _check(name: str, value: Any, low: float, high: float) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not low <= value <= high:
        raise ValidationError(name, value, f"must be a number in {low:g}..{high:g}")
    return float(value)


class VoiceActivityDetector:
    """Streaming speech start / end-of-turn detection on 16 kHz 16-bit mono PCM.

    ``threshold``: speech probability (0..1) at which a 32 ms window counts as speech;
    higher ignores more noise and misses more soft speech. ``min_speech``: seconds speech
    must last to start a turn. ``silence``: seconds without speech that end it.
    ``model_path``: another Silero VAD v6 ONNX file (default: faster-whisper's).

    :meth:`feed` frames as they come; each call returns the events its samples completed
    (mostly none). :meth:`finish` at the end of the stream ends an open turn. Not
    thread-safe: feed one detector from one thread at a time.
    """

    def __init__(
        self,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        min_speech: float = DEFAULT_MIN_SPEECH,
        silence: float = DEFAULT_SILENCE,
        model_path: str | Path | None = None,
    ) -> None:
        self.threshold = _check("threshold", threshold, 0.05, 0.95)
        self.min_speech = _check("min_speech", min_speech, 0.0, 10.0)
        self.silence = _check("silence", silence, 0.0, 30.0)
        self._off_threshold = max(self.threshold - _HYSTERESIS, 0.01)
        self._min_speech_samples = round(self.min_speech * SAMPLE_RATE)
        self._silence_samples = round(self.silence * SAMPLE_RATE)
        self._np, _ = _imports()
        self._session = _session(str(model_path) if model_path else str(silero_model_path()))
        self.reset()

    def __repr__(self) -> str:
        return (
            f"VoiceActivityDetector(threshold={self.threshold:g}, "
            f"min_speech={self.min_speech:g}, silence={self.silence:g}, "
            f"{'speaking' if self.speaking else 'silent'} at sample {self.samples})"
        )

    def reset(self) -> None:
        """Forget everything: a new stream, offsets from 0 again."""
        np = self._np
        self._aligner = SampleAligner(2)
        self._pending = np.zeros(0, dtype="f4")  # samples short of a whole window
        self._context = np.zeros(_CONTEXT, dtype="f4")
        self._h = np.zeros((1, 1, 128), dtype="f4")
        self._c = np.zeros((1, 1, 128), dtype="f4")
        self._evaluated = 0  # samples the model has seen (whole windows)
        self._received = 0  # whole samples fed
        self._state = "silence"  # silence -> candidate -> speech -> silence
        self._start = 0
        self._silence_from: int | None = None
        self._voiced_until = 0
        #: The speech probability of the last window evaluated.
        self.probability = 0.0

    @property
    def speaking(self) -> bool:
        """True between a :class:`SpeechStarted` and its :class:`SpeechEnded`."""
        return self._state == "speech"

    @property
    def voiced_until(self) -> int:
        """The sample just past the last window judged speech (at or above ``threshold``)
        since speech last began; 0 before any. While :attr:`speaking`, how far the speech
        really goes (the silence that may end it is not counted)."""
        return self._voiced_until

    @property
    def silent_from(self) -> int | None:
        """While :attr:`speaking`: the sample where the silence heard now began, None while
        the speech goes on. If no speech comes before ``silence`` has passed, the turn's
        :class:`SpeechEnded` puts its ``end`` there (the voice loop transcribes ahead)."""
        return self._silence_from if self._state == "speech" else None

    @property
    def samples(self) -> int:
        """Whole samples fed since the start (or :meth:`reset`)."""
        return self._received

    def feed(self, pcm: bytes | bytearray | memoryview) -> list[VadEvent]:
        """Take the next PCM (any length; a split sample is carried over); return events."""
        if not isinstance(pcm, bytes | bytearray | memoryview):
            raise ValidationError("pcm", type(pcm).__name__, "must be bytes of 16-bit PCM")
        data = self._aligner.feed(pcm)
        if not data:
            return []
        np = self._np
        samples = np.frombuffer(data, dtype="<i2").astype("f4") / 32768.0
        self._received += len(samples)
        buffer = np.concatenate((self._pending, samples)) if len(self._pending) else samples
        count = len(buffer) // WINDOW
        self._pending = buffer[count * WINDOW :].copy()
        if not count:
            return []
        windows = buffer[: count * WINDOW].reshape(count, WINDOW)
        contexts = np.concatenate((self._context[None, :], windows[:-1, -_CONTEXT:]))
        self._context = windows[-1, -_CONTEXT:].copy()
        # All complete windows in one run: the model's recurrent state runs along them.
        probabilities, self._h, self._c = self._session.run(
            None,
            {"input": np.concatenate((contexts, windows), axis=1), "h": self._h, "c": self._c},
        )
        events = []
        for probability in probabilities.ravel().tolist():
            event = self._step(probability)
            if event is not None:
                events.append(event)
        return events

    def _step(self, probability: float) -> VadEvent | None:
        """Advance one window; return the event it completes, if any."""
        begin = self._evaluated
        self._evaluated = end = begin + WINDOW
        self.probability = probability
        if self._state == "silence":
            if probability < self.threshold:
                return None
            self._state, self._start = "candidate", begin
        if probability >= self.threshold:
            self._voiced_until = end
        if self._state == "candidate":
            if probability < self._off_threshold:
                self._state = "silence"  # too short: a click, a breath
                return None
            if end - self._start < self._min_speech_samples:
                return None
            self._state, self._silence_from = "speech", None
            return SpeechStarted(self._start)
        if probability >= self.threshold:
            self._silence_from = None
        elif probability < self._off_threshold and self._silence_from is None:
            self._silence_from = begin
        if self._silence_from is not None and end - self._silence_from >= self._silence_samples:
            ended = SpeechEnded(self._start, self._silence_from, end)
            self._state, self._silence_from = "silence", None
            return ended
        return None

    def finish(self) -> list[VadEvent]:
        """End of the stream: end an open turn where its speech stopped, then :meth:`reset`.

        A turn not yet started (shorter than ``min_speech`` so far) is dropped.
        """
        events: list[VadEvent] = []
        if self._state == "speech":
            end = self._received if self._silence_from is None else self._silence_from
            events.append(SpeechEnded(self._start, end, self._received))
        self.reset()
        return events
