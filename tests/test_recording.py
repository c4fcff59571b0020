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
from tests.helpers import RecordingListener, WordListener, wait_until


def pcm(samples: int, value: int = 1000) -> bytes:
    return struct.pack(f"<{samples}h", *([value] * samples))


def event(
    words: list[tuple[str, float, float]],
    duration: float,
    offset: float | None,
    seq: int | None = None,
) -> AudioEvent:
    alignment = Alignment(tuple(AlignmentSegment(*w) for w in words), duration)
    return AudioEvent(
        b"", content="", alignment=alignment, chunk_seq=seq, chunk_audio_offset_sec=offset
    )


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
            recording.add_audio(pcm(10, i), words_of=event(words, 0.01, offset=i * 0.01))
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
        assert listener.words() == recording.words
        # Replayed from 0, then each live word after the ones before: none told twice.
        starts = [start for start, _ in listener.of("words")]
        sizes = [len(words) for _, words in listener.of("words")]
        assert starts == [sum(sizes[:n]) for n in range(len(sizes))]
        assert listener.of("state") == ["connecting"]  # told once, at subscription
        # Each chunk comes after the text it was spoken from, replayed or live.
        position = {
            (kind, value[0] if kind == "audio" else value): n
            for n, (kind, value) in enumerate(listener.calls)
            if kind in ("text", "audio")
        }
        assert all(position["text", f"w{i} "] < position["audio", i] for i in range(count))
    assert [w.text for w in recording.words] == [f"w{i}" for i in range(count)]


def test_words_sit_at_the_servers_offset_else_where_their_chunk_starts() -> None:
    """A chunk_audio_offset_sec places the words (not the audio received so far); without
    one (an older server), the chunk's words sit where its audio starts in the recording."""
    recording = Recording(1000, timestamps=True)
    recording.add_audio(pcm(500), words_of=event([("One", 0.1, 0.4)], 0.5, offset=0.0))
    recording.add_audio(pcm(250), words_of=event([("two", 0.0, 0.1)], 0.6, offset=0.4))
    assert recording.words == [TimedWord("One", 0.1, 0.4), TimedWord("two", 0.4, 0.5)]
    bare = Recording(1000, timestamps=True)
    bare.add_audio(pcm(500), words_of=event([("One", 0.1, 0.4)], 0.5, offset=None))
    bare.add_audio(b"", words_of=event([("two", 0.0, 0.1)], 0.1, offset=None))
    bare.add_audio(pcm(500), words_of=event([("three.", 0.05, 0.3)], 0.5, offset=None))
    assert bare.words == [
        TimedWord("One", 0.1, 0.4),
        TimedWord("two", 0.5, 0.6),
        TimedWord("three.", 0.6, 0.8),  # 0.55 would overlap "two": moved to its end
    ]
    assert bare.chunk_count == 2 and bare.duration == 1.0


def test_a_revised_snapshot_replaces_words_for_the_recording_and_its_listeners() -> None:
    """Snapshots of one chunk_seq replace each other: the recording's words, what listeners
    are told (from the first changed index) and a late listener's replay all agree."""
    recording = Recording(1000, timestamps=True)
    live = WordListener()
    recording.add_listener(live)
    recording.add_audio(pcm(125), words_of=event([("Hi", 0.0, 0.125)], 0.125, 0.0, seq=0))
    recording.add_audio(
        pcm(50), words_of=AudioEvent(b"", chunk_seq=1, chunk_audio_offset_sec=0.125)
    )
    partial = [("so", 0.0, 0.0625), ("fa", 0.0625, 0.125)]
    recording.add_audio(pcm(50), words_of=event(partial, 0.125, 0.125, seq=1))
    full = [("so", 0.0, 0.0625), ("far", 0.0625, 0.125), ("away.", 0.125, 0.25)]
    recording.add_audio(pcm(50), words_of=event(full, 0.25, 0.125, seq=1))
    recording.add_audio(pcm(50), words_of=event(full, 0.25, 0.125, seq=1))  # no change
    assert recording.words == [
        TimedWord("Hi", 0.0, 0.125),
        TimedWord("so", 0.125, 0.1875),
        TimedWord("far", 0.1875, 0.25),
        TimedWord("away.", 0.25, 0.375),
    ]
    assert [(start, [w.text for w in words]) for start, words in live.of("words")] == [
        (0, ["Hi"]),
        (1, ["so", "fa"]),
        (2, ["far", "away."]),
    ]
    assert live.words() == recording.words
    late = WordListener()
    recording.add_listener(late)
    assert late.of("words") == [(0, recording.words)]


def test_words_given_placed_replace_from_their_index() -> None:
    """add_words appends by default, or replaces from ``start``; listeners hear the same."""
    recording = Recording(1000, timestamps=True)
    live = WordListener()
    recording.add_listener(live)
    a, b, c = TimedWord("a", 0.0, 0.1), TimedWord("b", 0.1, 0.2), TimedWord("c", 0.2, 0.3)
    assert recording.add_words([a, b]) == 0
    assert recording.add_words([c], start=1) == 1
    assert recording.add_words([]) == 2  # nothing to tell
    assert recording.words == [a, c] == live.words()
    assert live.of("words") == [(0, [a, b]), (1, [c])]


def test_skipped_markup_is_kept_for_the_transcript_but_never_sent() -> None:
    """add_skipped: in transcript_entries and told to on_skipped (and replayed) in its
    place; text and transcript (what was sent) leave it out."""
    recording = Recording(1000)
    live = WordListener()
    recording.add_listener(live)
    recording.add_text("Look ")
    recording.add_skipped("**")
    recording.add_text("here")
    recording.add_flush()
    assert recording.text == ["Look ", "here", None]
    assert recording.transcript_entries == ["Look ", {"skipped": "**"}, "here", None]
    assert recording.transcript == "Look here |"
    late = WordListener()
    recording.add_listener(late)
    for listener in (live, late):
        kinds = [(k, v) for k, v in listener.calls if k in ("text", "skipped", "flush")]
        assert kinds == [("text", "Look "), ("skipped", "**"), ("text", "here"), ("flush", None)]
    plain = RecordingListener()  # no on_skipped: never told
    recording.add_listener(plain)
    assert [k for k, _ in plain.calls if k == "skipped"] == []


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
