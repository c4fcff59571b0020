"""Piper voices: loading once, synthesis per sentence, prosody, alignments, the voice folder."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from local_wire import SENTENCE, rms

from fish_notebook.errors import ValidationError
from fish_notebook.local.engine import (
    DEFAULT_VOICE,
    SLOTS,
    SpeechChunk,
    VoiceLibrary,
    default_voice_files,
)
from fish_notebook.local.slots import usable_cores


def test_default_voice_loads_once_per_process() -> None:
    """Two libraries share one loaded default voice."""
    assert VoiceLibrary().default() is VoiceLibrary().default()


def test_one_chunk_per_sentence_at_the_native_rate() -> None:
    """Two sentences give two chunks of 16-bit PCM at 22050 Hz."""
    chunks = list(VoiceLibrary().default().synthesize("First sentence here. And a second one."))
    assert len(chunks) == 2
    assert all(isinstance(c, SpeechChunk) and c.sample_rate == 22050 for c in chunks)
    assert all(len(c.pcm) % 2 == 0 and c.duration > 0.5 for c in chunks)
    assert chunks[0].phonemes


def test_speed_and_volume() -> None:
    """speed scales the duration; volume_db scales the loudness."""
    voice = VoiceLibrary().default()

    def speak(**options: float) -> bytes:
        return b"".join(c.pcm for c in voice.synthesize(SENTENCE, **options))  # type: ignore[arg-type]

    normal, fast = speak(), speak(speed=2.0)
    assert len(fast) < len(normal) * 0.7
    assert rms(speak(volume_db=-20)) < rms(normal) / 5


def test_a_shifted_rendition_keeps_the_tempo_and_its_alignment() -> None:
    """shift 1.3: Piper speaks 1.3 times slower and the chunk says a 1.3 times higher rate,
    so it lasts as long as the voice itself (Piper's noise aside) and its phoneme
    alignment still adds up to its samples; a shift outside 0.5..2.0 is refused."""
    voice = VoiceLibrary().default(alignment=True)
    (plain,) = voice.synthesize(SENTENCE)
    (shifted,) = voice.synthesize(SENTENCE, shift=1.3)
    assert shifted.sample_rate == round(voice.sample_rate * 1.3)
    assert len(shifted.pcm) > 1.15 * len(plain.pcm)  # more samples...
    assert shifted.duration == pytest.approx(plain.duration, rel=0.15)  # ...in the same time
    assert shifted.alignment is not None
    assert sum(span.samples for span in shifted.alignment) == len(shifted.pcm) // 2
    with pytest.raises(ValidationError, match="shift"):
        next(voice.synthesize("Hi.", shift=2.5))


def test_out_of_range_prosody_is_refused() -> None:
    """speed and volume outside the protocol's ranges raise ValidationError."""
    voice = VoiceLibrary().default()
    with pytest.raises(ValidationError):
        next(voice.synthesize("Hi.", speed=3.0))
    with pytest.raises(ValidationError):
        next(voice.synthesize("Hi.", volume_db=30))


def test_cancelled_stops_between_sentences() -> None:
    """A cancelled callback that says yes stops after the current sentence."""
    chunks = list(VoiceLibrary().default().synthesize("One. Two. Three.", cancelled=lambda: True))
    assert len(chunks) == 1


def test_concurrent_synthesis_from_threads() -> None:
    """Several threads synthesizing with one voice all get their audio."""
    voice = VoiceLibrary().default()
    results: list[int] = []

    def work() -> None:
        results.append(sum(len(c.pcm) for c in voice.synthesize(SENTENCE)))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 3 and min(results) > 22050 * 2


def test_alignment_gives_phoneme_durations() -> None:
    """With alignment=True each chunk carries per-phoneme sample counts covering its audio."""
    voice = VoiceLibrary(alignment=True).default()
    assert voice.has_alignment
    (chunk,) = voice.synthesize("Hello world.")
    assert chunk.alignment is not None
    total = sum(span.samples for span in chunk.alignment)
    assert abs(total - len(chunk.pcm) // 2) <= 256 * 2  # within a hop or two


def test_voice_folder_lists_valid_voices(tmp_path: Path) -> None:
    """A folder voice with its config is listed; one without is skipped; unknown names are None."""
    model, config = default_voice_files()
    (tmp_path / "alt.onnx").symlink_to(model)
    (tmp_path / "alt.onnx.json").write_bytes(config.read_bytes())
    (tmp_path / "lonely.onnx").write_bytes(b"")
    library = VoiceLibrary(tmp_path)
    assert library.names() == [DEFAULT_VOICE, "alt"]
    assert [v.default for v in library.voices()] == [True, False]
    assert library.find("lonely") is None and library.find("nope") is None
    alt = library.find("alt")
    assert alt is not None and alt.name == "alt"


def test_missing_voice_folder_is_an_error(tmp_path: Path) -> None:
    """A voices_dir that does not exist is a ValidationError naming it."""
    with pytest.raises(ValidationError, match="voices_dir"):
        VoiceLibrary(tmp_path / "missing")


def _hold_every_slot() -> list[tuple[threading.Thread, threading.Event]]:
    """Threads that hold every core slot of the process, each until its event is set."""
    holders = []
    for _ in range(SLOTS.size):
        release = threading.Event()

        def hold(release: threading.Event = release) -> None:
            with SLOTS.slot(float("-inf")):
                release.wait(60)

        thread = threading.Thread(target=hold, daemon=True)
        thread.start()
        holders.append((thread, release))
    _wait_until(lambda: SLOTS.running == SLOTS.size)
    return holders


def _let_go(holders: list[tuple[threading.Thread, threading.Event]]) -> None:
    for thread, release in holders:
        release.set()
        thread.join(60)


def _wait_until(condition: Callable[[], bool]) -> None:
    limit = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < limit, "condition not reached in time"
        time.sleep(0.005)


def test_runs_alone_get_two_threads_runs_side_by_side_one() -> None:
    """On two or more cores a voice has a two-thread session (alone) and a one-thread one
    (built after the voice is ready); runs side by side get it once it is there."""
    voice = VoiceLibrary().default()
    sessions = voice._sessions
    shared = sessions.wait_shared(60)
    assert shared is not None
    solo_threads = voice._piper.session.get_session_options().intra_op_num_threads
    assert solo_threads == min(2, usable_cores())
    assert shared.get_session_options().intra_op_num_threads == 1
    assert sessions.for_run(alone=True) is sessions.solo is voice._piper.session
    assert sessions.for_run(alone=False) is shared


def test_the_earliest_deadline_is_synthesized_first() -> None:
    """When one slot frees up, the sentence due sooner takes it, the one due later waits."""
    voice = VoiceLibrary().default()
    holders = _hold_every_slot()
    order: list[str] = []

    def speak(name: str, due: float) -> None:
        for _ in voice.synthesize("Hello.", deadline=lambda: due):
            order.append(name)

    later = threading.Thread(target=speak, args=("later", 2.0), daemon=True)
    later.start()
    _wait_until(lambda: SLOTS.waiting == 1)
    sooner = threading.Thread(target=speak, args=("sooner", 1.0), daemon=True)
    sooner.start()
    _wait_until(lambda: SLOTS.waiting == 2)
    _let_go(holders[:1])  # one slot: the other holders keep theirs until sooner is done
    sooner.join(60)
    _let_go(holders[1:])
    later.join(60)
    assert order == ["sooner", "later"]


def test_cancelled_while_waiting_for_a_slot_speaks_nothing() -> None:
    """A synthesis cancelled while all slots are busy ends with no chunk and holds no slot."""
    voice = VoiceLibrary().default()
    stop = threading.Event()
    holders = _hold_every_slot()
    chunks: list[SpeechChunk] = []
    thread = threading.Thread(
        target=lambda: chunks.extend(voice.synthesize("Never heard.", cancelled=stop.is_set)),
        daemon=True,
    )
    thread.start()
    _wait_until(lambda: SLOTS.waiting == 1)
    stop.set()
    thread.join(60)
    _let_go(holders)
    assert not thread.is_alive() and chunks == []
    assert SLOTS.waiting == 0 and SLOTS.running == 0
