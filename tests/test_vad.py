"""Voice activity detection: Silero VAD on Piper's speech, silence and noise, streamed.

Real parts: speech from the embedded Piper voice resampled to 16 kHz, the Silero VAD v6
model that faster-whisper ships, run by onnxruntime. Offsets are checked against where the
speech really is in the stream (its first and last audible samples), not against times.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import soxr

from fish_notebook.errors import ValidationError
from fish_notebook.local.engine import VoiceLibrary
from fish_notebook.vad import (
    DEFAULT_SILENCE,
    SAMPLE_RATE,
    WINDOW,
    SpeechEnded,
    SpeechStarted,
    VadEvent,
    VoiceActivityDetector,
    silero_model_path,
)

FRAME = 320  # 20 ms at 16 kHz: what the page's AudioWorklet sends
AUDIBLE = 0.01  # of full scale (-40 dBFS): a sample above it is part of the speech
ONSET = 4 * WINDOW  # how late after the first audible sample a start may be found (128 ms)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """'What is the capital of France?' by Piper, as 16 kHz int16 samples."""
    chunks = list(VoiceLibrary().default().synthesize("What is the capital of France?"))
    pcm = np.frombuffer(b"".join(c.pcm for c in chunks), dtype="<i2").astype("f4") / 32768
    resampled = soxr.resample(pcm, chunks[0].sample_rate, SAMPLE_RATE)
    return (resampled.clip(-1, 1) * 32767).astype("<i2")


def silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * SAMPLE_RATE), dtype="<i2")


def audible(samples: np.ndarray) -> tuple[int, int]:
    """Indexes of the first and last samples above -40 dBFS."""
    loud = np.nonzero(np.abs(samples.astype("i4")) > AUDIBLE * 32768)[0]
    return int(loud[0]), int(loud[-1])


def stream(vad: VoiceActivityDetector, samples: np.ndarray, frame: int = FRAME) -> list[VadEvent]:
    """Feed ``samples`` in frames of ``frame`` bytes, then finish: every event, in order."""
    data = samples.astype("<i2").tobytes()
    events: list[VadEvent] = []
    for start in range(0, len(data), frame):
        events += vad.feed(data[start : start + frame])
    return events + vad.finish()


def test_silence_gives_no_turn() -> None:
    """Ten seconds of digital silence: no event at all, not even at finish."""
    vad = VoiceActivityDetector()
    assert stream(vad, silence(10.0), FRAME * 2) == []


@pytest.mark.parametrize("level", [0.003, 0.03, 0.3])
def test_white_noise_gives_no_turn(level: float) -> None:
    """Five seconds of white noise, soft to loud, is not speech."""
    noise = np.random.default_rng(7).normal(0, level, 5 * SAMPLE_RATE).clip(-1, 1)
    assert stream(VoiceActivityDetector(), (noise * 32767).astype("<i2"), FRAME * 2) == []


def test_speech_then_silence_is_one_turn(speech: np.ndarray) -> None:
    """A start at the speech, an end after its last sample plus the silence, decided in time."""
    lead = silence(0.5)
    samples = np.concatenate((lead, speech, silence(2.0)))
    first, last = audible(samples)
    vad = VoiceActivityDetector()
    events = stream(vad, samples, FRAME * 2)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    started, ended = events
    assert isinstance(started, SpeechStarted) and isinstance(ended, SpeechEnded)
    # The start is found within the first few windows of the speech (a soft onset may
    # stay under the threshold for a window or two).
    assert len(lead) - WINDOW <= started.sample <= first + ONSET
    assert ended.start == started.sample < last < ended.end
    assert ended.sample - ended.end >= round(DEFAULT_SILENCE * SAMPLE_RATE)
    assert ended.sample >= last + round(DEFAULT_SILENCE * SAMPLE_RATE)
    assert ended.sample <= len(samples), "the end was decided while the stream ran"


def test_events_do_not_depend_on_how_the_stream_is_split(speech: np.ndarray) -> None:
    """1 byte, 7 bytes, 20 ms frames or all at once: the same events (deterministic)."""
    samples = np.concatenate((silence(0.3), speech, silence(1.0)))
    expected = stream(VoiceActivityDetector(), samples, len(samples) * 2)
    assert len(expected) == 2
    for frame in (7, FRAME * 2, 999):
        assert stream(VoiceActivityDetector(), samples, frame) == expected
    vad = VoiceActivityDetector()
    assert stream(vad, samples[: 3 * WINDOW], 1) == []  # a byte at a time, in silence


def test_two_utterances_with_a_gap_are_two_turns(speech: np.ndarray) -> None:
    """Speech, 1.5 s of silence, speech: two turns, in order, each around its speech."""
    gap = silence(1.5)
    samples = np.concatenate((silence(0.2), speech, gap, speech, silence(1.0)))
    second_at = 0.2 * SAMPLE_RATE + len(speech) + len(gap)
    events = stream(VoiceActivityDetector(), samples)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded] * 2
    first_end, second_start = events[1], events[2]
    assert isinstance(first_end, SpeechEnded) and isinstance(second_start, SpeechStarted)
    assert first_end.sample < second_at - WINDOW < second_start.sample


def test_a_pause_shorter_than_the_silence_does_not_end_the_turn(speech: np.ndarray) -> None:
    """Two utterances 0.3 s apart with silence=1.0: one turn covering both."""
    samples = np.concatenate((speech, silence(0.3), speech, silence(1.5)))
    events = stream(VoiceActivityDetector(silence=1.0), samples)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    ended = events[1]
    assert isinstance(ended, SpeechEnded)
    assert ended.end > audible(samples)[1]
    assert ended.sample - ended.end >= SAMPLE_RATE


def test_the_silence_setting_moves_the_end_of_turn(speech: np.ndarray) -> None:
    """A longer silence setting decides the end later, at the same speech end."""
    samples = np.concatenate((speech, silence(3.0)))
    ends = {}
    for seconds in (0.3, 1.5):
        *_, ended = stream(VoiceActivityDetector(silence=seconds), samples)
        assert isinstance(ended, SpeechEnded)
        assert ended.sample - ended.end >= round(seconds * SAMPLE_RATE)
        ends[seconds] = ended
    assert ends[0.3].end == ends[1.5].end
    assert ends[0.3].sample < ends[1.5].sample


def test_min_speech_drops_turns_shorter_than_it(speech: np.ndarray) -> None:
    """With min_speech longer than the utterance, nothing starts; with 0, it starts at once."""
    samples = np.concatenate((speech, silence(1.0)))
    assert stream(VoiceActivityDetector(min_speech=len(speech) / SAMPLE_RATE + 0.5), samples) == []
    events = stream(VoiceActivityDetector(min_speech=0.0), samples)
    assert isinstance(events[0], SpeechStarted)


def test_a_very_high_threshold_hears_less(speech: np.ndarray) -> None:
    """The threshold is used: at 0.95 the speech counts for less time than at 0.5."""
    samples = np.concatenate((speech, silence(1.0)))
    spans = []
    for threshold in (0.5, 0.95):
        events = stream(VoiceActivityDetector(threshold=threshold, min_speech=0.0), samples)
        spans.append(sum(e.end - e.start for e in events if isinstance(e, SpeechEnded)))
    assert spans[0] > spans[1]


def test_finish_ends_an_open_turn(speech: np.ndarray) -> None:
    """Speech to the very end of the stream: finish() ends the turn at the last sample."""
    samples = np.concatenate((silence(0.3), speech[: len(speech) // 2]))
    vad = VoiceActivityDetector()
    events = vad.feed(samples.tobytes())
    assert [type(e) for e in events] == [SpeechStarted] and vad.speaking
    (ended,) = vad.finish()
    assert isinstance(ended, SpeechEnded)
    assert ended.end == ended.sample == len(samples)
    assert not vad.speaking and vad.samples == 0  # reset for the next stream


def test_options_and_input_are_checked() -> None:
    """Out-of-range options and non-bytes input raise ValidationError naming the field."""
    for options in ({"threshold": 1.5}, {"min_speech": -1}, {"silence": "long"}):
        with pytest.raises(ValidationError) as caught:
            VoiceActivityDetector(**options)
        assert caught.value.field in options
    with pytest.raises(ValidationError, match="pcm"):
        VoiceActivityDetector().feed("not bytes")  # type: ignore[arg-type]


def test_a_model_that_is_not_silero_is_refused(tmp_path: Path) -> None:
    """model_path: a missing file, or an ONNX model of another shape, says what is wrong."""
    with pytest.raises(ValidationError, match="not a loadable ONNX model"):
        VoiceActivityDetector(model_path=tmp_path / "absent.onnx")
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 512])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 512])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    other = tmp_path / "identity.onnx"
    onnx.save(
        onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), other
    )
    with pytest.raises(ValidationError, match="is not Silero VAD v6"):
        VoiceActivityDetector(model_path=other)
    assert silero_model_path().name == "silero_vad_v6.onnx"


def test_importing_the_module_is_light() -> None:
    """fish_notebook.vad alone imports neither onnxruntime nor numpy nor faster_whisper."""
    code = (
        "import sys, fish_notebook.vad; "
        "print([m for m in ('onnxruntime', 'numpy', 'faster_whisper') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cpu_share_on_silence_in_real_time() -> None:
    """Fed 20 ms frames of silence at real-time pace for 3 s: no event. Prints the share of
    one core the detector used (thread CPU time inside feed / wall time); no bound."""
    vad = VoiceActivityDetector()
    frame = bytes(FRAME * 2)
    events: list[VadEvent] = []
    busy, started = 0.0, time.perf_counter()
    due = started
    for _ in range(150):
        before = time.thread_time()
        events += vad.feed(frame)
        busy += time.thread_time() - before
        due += FRAME / SAMPLE_RATE
        time.sleep(max(0.0, due - time.perf_counter()))
    wall = time.perf_counter() - started
    assert events == []
    assert vad.samples == 150 * FRAME
    print(f"\nVAD on silence, real-time 20 ms frames: {busy / wall:.1%} of one core")


def test_voiced_until_follows_the_speech_not_the_silence_after_it(speech: np.ndarray) -> None:
    """While a turn is open, voiced_until is where the speech really goes: past its last
    loud sample (less a window), and short of where the silence that ends it began."""
    vad = VoiceActivityDetector()
    assert vad.voiced_until == 0
    lead = silence(0.5)
    samples = np.concatenate([lead, speech, silence(DEFAULT_SILENCE / 2)])
    events = stream_open(vad, samples)
    assert [type(e) for e in events] == [SpeechStarted] and vad.speaking
    _, last = audible(speech)
    assert len(lead) + last - 2 * WINDOW <= vad.voiced_until <= len(lead) + len(speech) + WINDOW
    ended = stream_open(vad, silence(DEFAULT_SILENCE))
    assert isinstance(ended[0], SpeechEnded) and vad.voiced_until <= ended[0].end
    vad.reset()
    assert vad.voiced_until == 0


def stream_open(vad: VoiceActivityDetector, samples: np.ndarray) -> list[VadEvent]:
    """Feed ``samples`` in 20 ms frames without finishing the stream."""
    data = samples.astype("<i2").tobytes()
    return [
        e for start in range(0, len(data), FRAME) for e in vad.feed(data[start : start + FRAME])
    ]


def test_silent_from_is_where_the_turn_will_end_if_no_speech_comes(speech: np.ndarray) -> None:
    """During the pause that ends a turn, silent_from is already the end that SpeechEnded
    reports; speech that resumes clears it, and the turn's end moves past that speech."""
    vad = VoiceActivityDetector()
    lead = silence(0.5)
    assert vad.silent_from is None
    stream_open(vad, np.concatenate([lead, speech, silence(DEFAULT_SILENCE / 2)]))
    paused = vad.silent_from
    assert paused is not None and vad.speaking
    assert len(lead) + audible(speech)[1] - WINDOW <= paused <= vad.samples - 4 * WINDOW
    ended = stream_open(vad, silence(DEFAULT_SILENCE))
    assert isinstance(ended[0], SpeechEnded) and ended[0].end == paused
    assert vad.silent_from is None and not vad.speaking

    vad.reset()
    stream_open(vad, np.concatenate([lead, speech, silence(DEFAULT_SILENCE / 2)]))
    first_pause = vad.silent_from
    assert first_pause is not None
    stream_open(vad, speech)  # the user goes on: that pause was not the end
    ended = stream_open(vad, silence(2 * DEFAULT_SILENCE))
    assert isinstance(ended[0], SpeechEnded) and ended[0].end > first_pause + len(speech) // 2
