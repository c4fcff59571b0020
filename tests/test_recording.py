"""The recording: one copy of a session's text, audio and words, its fan-out, save, metrics."""

from __future__ import annotations

import struct
import threading
import time
import wave
from pathlib import Path
from typing import Any

import pytest

from fish_notebook.client import TimedWord
from fish_notebook.errors import SessionStateError, ValidationError
from fish_notebook.protocol import Alignment, AlignmentSegment, AudioEvent
from fish_notebook.recording import Recording
from fish_notebook.subtitles import subtitles
from tests.helpers import RecordingListener, wait_until


def pcm(samples: int, value: int = 1000) -> bytes:
    return struct.pack(f"<{samples}h", *([value] * samples))


def event(words: list[tuple[str, float, float]], duration: float, offset: float) -> AudioEvent:
    alignment = Alignment(tuple(AlignmentSegment(*w) for w in words), duration)
    return AudioEvent(b"", content="", alignment=alignment, chunk_audio_offset_sec=offset)


class WordListener(RecordingListener):
    """Writes down every call, words too."""

    def on_words(self, words: list[TimedWord]) -> None:
        self.calls.append(("words", list(words)))


def test_replay_then_live_under_concurrent_appends_misses_nothing_and_repeats_nothing() -> None:
    """Listeners subscribing from other threads while a writer appends hear every text piece,
    flush, chunk and word exactly once, in the recording's order."""
    recording = Recording(1000, timestamps=True)
    count = 400
    listeners: list[WordListener] = []
    joined_at: list[int] = []  # chunks recorded when each listener's replay ran

    class Joining(WordListener):
        def on_state(self, state: str, error: str | None) -> None:
            super().on_state(state, error)
            joined_at.append(recording.chunk_count)  # under the recording's lock

    def write() -> None:
        for i in range(count):
            recording.add_text(f"w{i} ")
            if i % 7 == 0:
                recording.add_flush()
            words = [(f"w{i}", 0.001, 0.009)]
            recording.add_audio(pcm(10, i), words_of=event(words, 0.01, offset=99.0))
            time.sleep(0.0005)  # let the subscribers in between appends

    def subscribe(first: int) -> None:
        for target in range(first, count, 80):  # 4 threads x 5 points along the stream
            wait_until(lambda t=target: recording.chunk_count >= t, f"chunk {target}")  # type: ignore[misc]
            listener = Joining()
            recording.add_listener(listener)
            listeners.append(listener)

    threads = [threading.Thread(target=write)] + [
        threading.Thread(target=subscribe, args=(first,)) for first in (0, 20, 40, 60)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    late = Joining()
    recording.add_listener(late)
    listeners.append(late)

    assert recording.chunk_count == count and len(listeners) == 21
    assert any(0 < n < count for n in joined_at), "no listener joined mid-stream"
    text = [("flush", None) if t is None else ("text", t) for t in recording.text]
    for listener in listeners:
        assert [c for c in listener.calls if c[0] in ("text", "flush")] == text
        assert listener.of("audio") == [(seq, 20) for seq in range(count)]
        assert [w for batch in listener.of("words") for w in batch] == recording.words
        assert listener.of("state") == ["connecting"]  # told once, at subscription
        # Each chunk comes after the text it was spoken from, replayed or live.
        position = {
            (kind, value[0] if kind == "audio" else value): n
            for n, (kind, value) in enumerate(listener.calls)
            if kind in ("text", "audio")
        }
        assert all(position["text", f"w{i} "] < position["audio", i] for i in range(count))
    assert [w.text for w in recording.words] == [f"w{i}" for i in range(count)]


def test_words_are_placed_where_their_chunk_starts() -> None:
    """An event's words sit at its chunk's start in the recording, whatever the server said."""
    recording = Recording(1000, timestamps=True)
    recording.add_audio(pcm(500), words_of=event([("One", 0.1, 0.4)], 0.5, offset=7.0))
    recording.add_audio(b"", words_of=event([("two", 0.0, 0.1)], 0.1, offset=9.0))
    recording.add_audio(pcm(500), words_of=event([("three.", 0.05, 0.3)], 0.5, offset=9.0))
    assert recording.words == [
        TimedWord("One", 0.1, 0.4),
        TimedWord("two", 0.5, 0.6),
        TimedWord("three.", 0.6, 0.8),  # 0.55 would overlap "two": moved to its end
    ]
    assert recording.chunk_count == 2 and recording.duration == 1.0


def test_a_wav_header_rate_counts_only_before_the_first_chunk() -> None:
    """The first chunk may correct the rate (nobody heard the old one); later ones may not."""
    recording = Recording(24000)
    assert recording.add_audio(pcm(160), sample_rate=16000) == 0
    assert recording.add_audio(pcm(160), sample_rate=8000) == 1
    assert recording.sample_rate == 16000
    assert recording.chunk(1) == (1, pcm(160), 0)
    with pytest.raises(IndexError):
        recording.chunk(2)


def test_chunks_remember_how_much_text_came_before_them() -> None:
    """Each chunk carries the characters of text sent when it arrived (the page's cap)."""
    recording = Recording(1000)
    recording.add_text("Hello ")
    recording.add_audio(pcm(10))
    recording.add_flush()
    recording.add_text("world.")
    recording.add_audio(pcm(10))
    assert [recording.chunk(i).chars for i in range(2)] == [6, 12]
    assert recording.transcript == "Hello  | world."


def test_metrics_clock_and_final_state() -> None:
    """TTFA from the first text; a flush's latency only when text preceded it; a final state
    is kept and sends the final metrics."""
    recording = Recording(1000)
    listener = RecordingListener()
    recording.add_listener(listener, replay=False)
    recording.add_flush()  # nothing to speak: no latency to measure
    recording.add_text("Hi.")
    recording.add_flush()
    recording.add_audio(pcm(1000))
    recording.add_audio(pcm(1000))
    recording.stop_clock()
    recording.set_state("finished")
    recording.set_state("failed", "too late")
    m = recording.metrics
    assert m["ttfa_s"] is not None and m["ttfa_s"] >= 0
    assert len(m["ttfa_flush_s"]) == 1
    assert (m["audio_s"], m["chunks"], m["bytes"], m["state"]) == (2.0, 2, 4000, "finished")
    assert recording.error is None
    assert listener.of("state") == ["finished"]
    assert listener.of("metrics")[-1]["state"] == "finished"


def test_a_broken_listener_does_not_stop_the_recording() -> None:
    """A listener that raises is logged; the others and the recording go on."""

    class Broken(RecordingListener):
        def on_audio(self, pcm: bytes, seq: int) -> None:
            raise ValueError("listener bug")

    recording = Recording(1000)
    good = RecordingListener()
    recording.add_listener(Broken())
    recording.add_listener(good)
    recording.add_audio(pcm(10))
    assert good.of("audio") == [(0, 20)] and recording.chunk_count == 1
    recording.remove_listener(good)
    recording.remove_listener(good)  # not subscribed any more: nothing happens
    recording.add_audio(pcm(10))
    assert good.of("audio") == [(0, 20)]


def _recorded(timestamps: bool = True, format: str = "wav") -> Recording:
    recording = Recording(8000, timestamps=timestamps, format=format)
    recording.add_audio(pcm(4000, 500), words_of=event([("Hello", 0.0, 0.2)], 0.5, 0.0))
    recording.add_audio(pcm(4000, -500), words_of=event([("there.", 0.1, 0.4)], 0.5, 0.5))
    return recording


def test_save_writes_exact_wav_and_an_mp3(tmp_path: Path) -> None:
    """.wav holds the exact samples at the recording's rate; .mp3 is an MP3 stream."""
    pytest.importorskip("lameenc")
    recording = _recorded()
    with wave.open(str(recording.save(tmp_path / "a.wav"))) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (8000, 1, 2)
        assert wav.readframes(wav.getnframes()) == recording.audio
    mp3 = recording.save(tmp_path / "a.MP3").read_bytes()
    assert mp3[:3] == b"ID3" or (mp3[0] == 0xFF and mp3[1] & 0xE0 == 0xE0)


def test_a_path_without_suffix_takes_the_recordings_format(tmp_path: Path) -> None:
    """No suffix: the format the recording was given (wav unless told); others refused."""
    pytest.importorskip("lameenc")
    assert _recorded().save(tmp_path / "plain").name == "plain.wav"
    assert _recorded(format="mp3").save(tmp_path / "plain").name == "plain.mp3"
    with pytest.raises(ValidationError, match="format"):
        Recording(8000, format="opus")
    with pytest.raises(ValidationError, match="path"):
        _recorded().save(tmp_path / "a.ogg")


def test_save_writes_subtitles_of_the_words(tmp_path: Path) -> None:
    """.vtt and .srt hold the words in cues; without timestamps they are refused."""
    recording = _recorded()
    for kind in ("vtt", "srt"):
        path = recording.save(tmp_path / f"words.{kind}")
        assert path.read_text("utf-8") == subtitles(recording.words, kind)  # type: ignore[arg-type]
    assert "00:00:00.000 --> 00:00:00.900\nHello there." in (tmp_path / "words.vtt").read_text()
    with pytest.raises(SessionStateError, match="timestamps=True"):
        _recorded(timestamps=False).save(tmp_path / "x.srt")
    assert not (tmp_path / "x.srt").exists()


def test_replay_tells_state_and_error_last() -> None:
    """A listener subscribing after a failure hears the audio, then the state with its error."""
    recording = _recorded()
    recording.set_state("failed", "WebSocketError: boom")
    calls: list[tuple[str, Any]] = []

    class Listener(RecordingListener):
        def on_state(self, state: str, error: str | None) -> None:
            calls.append((state, error))

    listener = Listener()
    recording.add_listener(listener)
    assert [c[0] for c in listener.calls] == ["audio", "audio", "metrics"]
    assert calls == [("failed", "WebSocketError: boom")]
