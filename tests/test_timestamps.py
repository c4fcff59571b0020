"""Word timestamps through the client and the session: timeline, listeners, subtitles."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from fish_notebook.client import AsyncRealtimeClient, RealtimeClient
from fish_notebook.errors import SessionStateError
from fish_notebook.local import ThreadedServer
from fish_notebook.protocol import (
    LIVE_TIMESTAMP_PATH,
    Alignment,
    AlignmentSegment,
    AudioEvent,
    pack,
    unpack_server_event,
)
from fish_notebook.session import Session, subtitles
from fish_notebook.timeline import TimedWord, WordTimeline
from tests.helpers import RecordingListener

TEXT = "The quick brown fox jumps over the lazy dog. It was 1999, and then it rested."


def words_of(value: str) -> list[str]:
    return value.split()


def event(
    segments: list[tuple[str, float, float]], duration: float, offset: float | None = None
) -> AudioEvent:
    alignment = Alignment(tuple(AlignmentSegment(*s) for s in segments), duration)
    return AudioEvent(b"", content="", alignment=alignment, chunk_audio_offset_sec=offset)


def assert_timeline(words: list[TimedWord]) -> None:
    """In order, no overlap, each word's end at or after its start."""
    for word in words:
        assert word.start <= word.end
    for before, after in itertools.pairwise(words):
        assert before.end <= after.start


# --- the timeline helper ----------------------------------------------------------------------


def test_timeline_uses_the_servers_offsets() -> None:
    """Each event's words are placed at its chunk_audio_offset_sec."""
    timeline = WordTimeline()
    assert timeline.add(event([("a", 0.1, 0.4)], 0.5, 0.0)) == [TimedWord("a", 0.1, 0.4)]
    assert timeline.add(event([("b", 0.05, 0.3)], 0.3, 0.5)) == [TimedWord("b", 0.55, 0.8)]
    assert timeline.words == [TimedWord("a", 0.1, 0.4), TimedWord("b", 0.55, 0.8)]
    assert timeline.duration == pytest.approx(0.8)


def test_timeline_without_offsets_adds_up_durations_or_takes_the_callers() -> None:
    """No offset on the wire: the previous events' durations; an explicit offset wins."""
    timeline = WordTimeline()
    timeline.add(event([("a", 0.0, 0.2)], 0.5))
    assert timeline.add(event([("b", 0.1, 0.2)], 0.5)) == [TimedWord("b", 0.6, 0.7)]
    assert timeline.add(event([("c", 0.0, 0.1)], 0.5, 9.0), offset=2.0) == [
        TimedWord("c", 2.0, 2.1)
    ]
    assert timeline.add(AudioEvent(b"x")) == []


def test_timeline_never_goes_back_or_overlaps() -> None:
    """Overlapping or backwards input is clamped into a monotonic timeline."""
    timeline = WordTimeline()
    timeline.add(event([("a", 0.0, 1.0), ("b", 0.5, 0.4)], 1.0, 0.0))
    timeline.add(event([("c", 0.0, 0.2)], 0.5, 0.5))
    assert [w.text for w in timeline.words] == ["a", "b", "c"]
    assert_timeline(timeline.words)


def test_alignment_survives_the_wire() -> None:
    """An audio event with every timestamp field packs and unpacks to an equal event."""
    original = AudioEvent(
        b"\x00\x01",
        content="Hi there",
        alignment=Alignment(
            (AlignmentSegment("Hi", 0.0, 0.2), AlignmentSegment("there", 0.25, 0.5)), 0.5
        ),
        chunk_seq=3,
        chunk_audio_offset_sec=1.5,
        time=120.5,
    )
    assert unpack_server_event(pack(original)) == original


# --- subtitles --------------------------------------------------------------------------------

VTT_CUE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})$")
SRT_CUE = re.compile(r"^(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})$")


def millis(match: re.Match[str], first: int) -> int:
    h, m, s, ms = (int(match.group(first + i)) for i in range(4))
    return ((h * 60 + m) * 60 + s) * 1000 + ms


def parse_cues(text: str, kind: str) -> list[tuple[int, int, str]]:
    """Parse WebVTT or SubRip strictly enough to catch malformed output."""
    blocks = text.strip("\n").split("\n\n")
    if kind == "vtt":
        assert blocks[0] == "WEBVTT"
        blocks = blocks[1:]
    cues = []
    for number, block in enumerate(blocks, 1):
        lines = block.split("\n")
        if kind == "srt":
            assert lines[0] == str(number)
            lines = lines[1:]
        match = (VTT_CUE if kind == "vtt" else SRT_CUE).match(lines[0])
        assert match, lines[0]
        assert len(lines) == 2 and lines[1].strip() and "-->" not in lines[1]
        cues.append((millis(match, 1), millis(match, 5), lines[1]))
    for start, end, _ in cues:
        assert start < end
    for before, after in itertools.pairwise(cues):
        assert before[1] <= after[0]
    return cues


WORDS = [
    TimedWord("Hello,", 0.05, 0.5),
    TimedWord("world!", 0.6, 1.1),
    TimedWord("Fish", 1.2, 1.4),
    TimedWord("&", 1.45, 1.5),
    TimedWord("<chips>", 1.55, 1.9),
    TimedWord("after", 3.0, 3.3),
    TimedWord("pause", 3.35, 3.8),
    TimedWord("x", 3661.0, 3661.0),
]


@pytest.mark.parametrize("kind", ["vtt", "srt"])
def test_subtitles_are_valid_short_phrases(kind: str) -> None:
    """Cues close at sentence ends and pauses; times are valid and never overlap."""
    cues = parse_cues(subtitles(WORDS, kind), kind)  # type: ignore[arg-type]
    texts = [text for _, _, text in cues]
    if kind == "vtt":
        assert texts == ["Hello, world!", "Fish &amp; &lt;chips&gt;", "after pause", "x"]
    else:
        assert texts == ["Hello, world!", "Fish & <chips>", "after pause", "x"]
    assert cues[0][:2] == (50, 1100)
    assert cues[-1][0] == 3661000 and cues[-1][1] == 3661001


def test_subtitles_split_long_runs_of_words() -> None:
    """A long run without punctuation or pauses is cut into cues of at most 8 words."""
    words = [TimedWord(f"w{i}", i * 0.3, i * 0.3 + 0.25) for i in range(20)]
    cues = parse_cues(subtitles(words, "srt"), "srt")
    assert all(len(text.split()) <= 8 for _, _, text in cues)
    assert " ".join(text for _, _, text in cues) == " ".join(w.text for w in words)


def test_no_words_gives_an_empty_but_valid_file() -> None:
    """No words: a bare WEBVTT header, an empty SubRip file."""
    assert subtitles([], "vtt") == "WEBVTT\n"
    assert subtitles([], "srt") == ""


# --- against the embedded server ----------------------------------------------------------------


async def test_async_stream_websocket_with_timestamps(local_server: ThreadedServer) -> None:
    """timestamps=True yields AudioEvents whose words, placed, make a monotonic timeline."""
    async with AsyncRealtimeClient(base_url=local_server.url) as client:
        events = [e async for e in client.stream_websocket(TEXT, format="pcm", timestamps=True)]
    assert all(isinstance(e, AudioEvent) and e.alignment is not None for e in events)
    timeline = WordTimeline()
    for e in events:
        timeline.add(e)
    assert_timeline(timeline.words)
    assert [w for t in timeline.words for w in words_of(t.text)] == words_of(TEXT)
    audio_seconds = sum(len(e.audio) for e in events) / 2 / 44100
    assert timeline.words[-1].end == pytest.approx(audio_seconds, abs=0.01)
    assert timeline.duration == pytest.approx(audio_seconds, abs=0.01)


def test_sync_stream_websocket_with_and_without_timestamps(local_server: ThreadedServer) -> None:
    """The sync face yields events with timestamps=True, plain bytes without."""
    with RealtimeClient(base_url=local_server.http_url) as client:
        events = list(client.stream_websocket("Hello there.", format="pcm", timestamps=True))
        chunks = list(client.stream_websocket("Hello there.", format="pcm"))
    assert events and all(isinstance(e, AudioEvent) for e in events)
    assert events[-1].content == "Hello there."  # content: the chunk's text heard so far
    assert {e.chunk_seq for e in events} == {0}
    assert chunks and all(isinstance(c, bytes) for c in chunks)


async def test_connect_with_timestamps(local_server: ThreadedServer) -> None:
    """connect(timestamps=True) opens the with-timestamp endpoint; flushed pieces line up."""
    client = AsyncRealtimeClient(base_url=local_server.url)
    timeline = WordTimeline()
    async with client.connect(format="pcm", timestamps=True) as stream:
        assert stream.endpoint.ws_url(timestamps=stream.timestamps).endswith(LIVE_TIMESTAMP_PATH)
        await stream.send_text("One two")
        await stream.flush()
        await stream.send_text(" three four.")
        await stream.stop()
        seqs = []
        async for e in stream:
            if isinstance(e, AudioEvent):
                seqs.append(e.chunk_seq)
                timeline.add(e)
    assert seqs == sorted(seqs) and set(seqs) == {0, 1}  # one chunk_seq per flushed piece
    assert [w.text for w in timeline.words] == ["One", "two", "three", "four."]
    assert_timeline(timeline.words)


class WordListener(RecordingListener):
    """A listener that also hears of words."""

    def on_words(self, words: list[TimedWord]) -> None:
        self.calls.append(("words", list(words)))


def test_session_words_listeners_and_subtitles(
    local_server: ThreadedServer, tmp_path: Path
) -> None:
    """Session(timestamps=True): words on the audio timeline, told to listeners, saved."""
    live, old = WordListener(), RecordingListener()
    session = Session(TEXT, base_url=local_server.url, timestamps=True, start=False)
    session.add_listener(live)
    session.add_listener(old)
    session.start().wait(120)

    words = session.words
    assert [w for t in words for w in words_of(t.text)] == words_of(TEXT)
    assert_timeline(words)
    assert words[-1].end == pytest.approx(session.duration, abs=0.01)
    told = [w for kind, value in live.calls if kind == "words" for w in value]
    assert told == words
    # Words come after the audio that holds them: each batch ends inside the audio so far.
    heard = 0
    for kind, value in live.calls:
        if kind == "audio":
            heard += value[1]
        elif kind == "words":
            assert value[-1].end <= heard / 2 / session.sample_rate + 1e-6
    assert not [c for c in old.calls if c[0] == "words"]
    assert [c for c in old.calls if c[0] == "audio"]

    late = WordListener()
    session.add_listener(late)
    assert [v for k, v in late.calls if k == "words"] == [words]
    assert [k for k, _ in late.calls].index("words") > [k for k, _ in late.calls].index("audio")

    vtt = parse_cues(session.save(tmp_path / "speech.vtt").read_text("utf-8"), "vtt")
    srt = parse_cues(session.save(tmp_path / "speech.srt").read_text("utf-8"), "srt")
    assert " ".join(t for _, _, t in srt).split() == words_of(TEXT)
    assert [c[:2] for c in vtt] == [c[:2] for c in srt]
    assert srt[-1][1] <= round(session.duration * 1000) + 1


def test_subtitles_need_timestamps(local_server: ThreadedServer, tmp_path: Path) -> None:
    """A session without timestamps has no words and refuses to write subtitles."""
    session = Session("Hi.", base_url=local_server.url).wait(120)
    assert session.words == []
    with pytest.raises(SessionStateError, match="timestamps=True"):
        session.save(tmp_path / "x.vtt")
    assert session.save(tmp_path / "x.wav").stat().st_size > 44
