"""Word timestamps through the client and the session: timeline, listeners, subtitles."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fish_notebook import FlushEvent
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
from fish_notebook.recording import Recording
from fish_notebook.session import Session, subtitles
from fish_notebook.timeline import TimedWord, WordChange, WordTimeline, without_cues
from tests.cloud_double import CloudDouble, samples_per_char, speech_pcm
from tests.helpers import RecordingListener, WordListener

TEXT = "The quick brown fox jumps over the lazy dog. It was 1999, and then it rested."


def words_of(value: str) -> list[str]:
    return value.split()


def event(
    segments: list[tuple[str, float, float]],
    duration: float,
    offset: float | None = None,
    seq: int | None = None,
) -> AudioEvent:
    alignment = Alignment(tuple(AlignmentSegment(*s) for s in segments), duration)
    return AudioEvent(
        b"", content="", alignment=alignment, chunk_seq=seq, chunk_audio_offset_sec=offset
    )


def assert_timeline(words: list[TimedWord]) -> None:
    """In order, no overlap, each word's end at or after its start."""
    for word in words:
        assert word.start <= word.end
    for before, after in itertools.pairwise(words):
        assert before.end <= after.start


# --- the timeline helper ----------------------------------------------------------------------


def test_timeline_uses_the_servers_offsets() -> None:
    """Each chunk's words are placed at its chunk_audio_offset_sec, even when the caller
    offers another offset (the audio received so far is only a fallback)."""
    timeline = WordTimeline()
    a, b = TimedWord("a", 0.125, 0.375), TimedWord("b", 0.5625, 0.8125)
    assert timeline.add(event([("a", 0.125, 0.375)], 0.5, 0.0, seq=0)) == WordChange(0, [a])
    change = timeline.add(event([("b", 0.0625, 0.3125)], 0.3125, 0.5, seq=1), fallback_offset=9.0)
    assert change == WordChange(1, [b])
    assert timeline.words == [a, b]
    assert timeline.duration == 0.8125


def test_timeline_without_offsets_takes_the_fallback_else_adds_up_durations() -> None:
    """No offset on the wire (an older server): the fallback offset passed with the chunk's
    first event, else the end of the previous chunk."""
    timeline = WordTimeline()
    timeline.add(event([("a", 0.0, 0.25)], 0.5))
    assert timeline.add(event([("b", 0.125, 0.25)], 0.5)) == WordChange(
        1, [TimedWord("b", 0.625, 0.75)]
    )
    assert timeline.add(event([("c", 0.0, 0.125)], 0.5), fallback_offset=2.0) == WordChange(
        2, [TimedWord("c", 2.0, 2.125)]
    )
    assert timeline.add(AudioEvent(b"x")) is None
    # A chunk_seq first seen without alignment keeps the fallback it came with.
    assert timeline.add(AudioEvent(b"", chunk_seq=7), fallback_offset=3.0) is None
    late = timeline.add(event([("d", 0.0, 0.125)], 0.25, seq=7), fallback_offset=3.5)
    assert late == WordChange(3, [TimedWord("d", 3.0, 3.125)])


def test_snapshots_of_a_chunk_replace_each_other() -> None:
    """The documented shape: null, then cumulative snapshots per chunk_seq, each replacing
    the last; add() says from which word on the list changed, and a repeat changes nothing."""
    timeline = WordTimeline()
    assert timeline.add(AudioEvent(b"", chunk_seq=0, chunk_audio_offset_sec=0.0)) is None
    assert timeline.add(event([("One", 0.0, 0.25)], 0.25, 0.0, seq=0)) == WordChange(
        0, [TimedWord("One", 0.0, 0.25)]
    )
    two = event([("One", 0.0, 0.25), ("two", 0.25, 0.5)], 0.5, 0.0, seq=0)
    assert timeline.add(two) == WordChange(1, [TimedWord("two", 0.25, 0.5)])
    assert timeline.add(two) is None  # the previous chunk_seq's label on new audio
    revised = event([("One", 0.0, 0.25), ("too", 0.25, 0.5), ("three", 0.5, 0.75)], 0.75, 0.0, 0)
    assert timeline.add(revised) == WordChange(
        1, [TimedWord("too", 0.25, 0.5), TimedWord("three", 0.5, 0.75)]
    )
    assert timeline.add(event([("Four.", 0.0, 0.25)], 0.25, 0.75, seq=1)) == WordChange(
        3, [TimedWord("Four.", 0.75, 1.0)]
    )
    shorter = event([("One", 0.0, 0.25), ("to", 0.25, 0.5)], 0.5, 0.0, seq=0)  # a revision
    assert timeline.add(shorter) == WordChange(
        1, [TimedWord("to", 0.25, 0.5), TimedWord("Four.", 0.75, 1.0)]
    )
    assert [w.text for w in timeline.words] == ["One", "to", "Four."]
    assert timeline.duration == 1.0


def test_timeline_never_goes_back_or_overlaps() -> None:
    """Overlapping or backwards input is clamped into a monotonic timeline."""
    timeline = WordTimeline()
    timeline.add(event([("a", 0.0, 1.0), ("b", 0.5, 0.4)], 1.0, 0.0))
    timeline.add(event([("c", 0.0, 0.2)], 0.5, 0.5))
    assert [w.text for w in timeline.words] == ["a", "b", "c"]
    assert_timeline(timeline.words)


def test_cues_and_speaker_tags_are_never_words() -> None:
    """A segment that is only a cue or a tag places no word; cue text in a segment goes."""
    timeline = WordTimeline()
    segments = [("[happy]", 0.0, 0.1), ("<|speaker:1|>Hi", 0.1, 0.2), ("(excited)", 0.2, 0.3)]
    timeline.add(event([*segments, ("there.", 0.3, 0.4), ("[break]", 0.4, 0.5)], 0.5, 0.0))
    assert [w.text for w in timeline.words] == ["Hi", "there."]
    assert timeline.words[0].start == 0.1
    assert [without_cues(t) for t in ("[slightly sad]", "(like this)", "[happy]Hello")] == [
        "",
        "(like this)",
        "Hello",
    ]


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


def test_subtitles_never_show_cues_or_speaker_tags() -> None:
    """Words given with cue text (by hand, or from a server that times its cues) are
    subtitled without it; a word that is only a cue is left out."""
    words = [
        TimedWord("[happy]", 0.0, 0.2),
        TimedWord("<|speaker:1|>Hello", 0.2, 0.5),
        TimedWord("(excited)", 0.5, 0.6),
        TimedWord("world.", 0.6, 0.9),
    ]
    cues = parse_cues(subtitles(words, "srt"), "srt")
    assert [(start, end, text) for start, end, text in cues] == [(200, 900, "Hello world.")]


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
    assert " ".join(e.content or "" for e in events).split() == ["Hello", "there."]
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
    assert seqs == list(range(len(seqs)))
    assert [w.text for w in timeline.words] == ["One", "two", "three", "four."]
    assert_timeline(timeline.words)


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
    assert live.words() == words
    # Words come after the audio that holds them: each batch ends inside the audio so far.
    heard = 0
    for kind, value in live.calls:
        if kind == "audio":
            heard += value[1]
        elif kind == "words" and value[1]:
            assert value[1][-1].end <= heard / 2 / session.sample_rate + 1e-6
    assert not [c for c in old.calls if c[0] == "words"]
    assert [c for c in old.calls if c[0] == "audio"]

    late = WordListener()
    session.add_listener(late)
    assert [v for k, v in late.calls if k == "words"] == [(0, words)]
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


# --- against the cloud double: the shape Fish documents -------------------------------------------

TEXT15 = "The quick brown fox jumps over the lazy dog. It was late, so we left."
#: Sent in pieces with a flush: two text chunks, so the next-chunk-under-the-previous-seq quirk
#: and a second chunk_audio_offset_sec are in play.
PIECES15: list[Any] = [
    "The quick brown fox ",
    "jumps over the lazy dog.",
    FlushEvent(),
    " It was late,",
    " so we left.",
]
RATE = 44100


@pytest.fixture
def cloud() -> Iterator[CloudDouble]:
    with CloudDouble() as double:
        yield double


def assert_on_their_sound(
    words: list[TimedWord], spoken: str, pcm: bytes, ms_per_char: int
) -> None:
    """Exactly the words of ``spoken``, once each, in order, each starting and ending at the
    exact sample where the double's voice (one tone per character) starts and ends it."""
    per_char = samples_per_char(RATE, ms_per_char)
    places = list(re.finditer(r"\S+", spoken))
    assert [w.text for w in words] == [m.group() for m in places]
    assert [round(w.start * RATE) for w in words] == [m.start() * per_char for m in places]
    assert [round(w.end * RATE) for w in words] == [m.end() * per_char for m in places]
    samples = np.frombuffer(pcm, "<i2")
    assert len(samples) == len(spoken) * per_char
    for word in words:
        at = round(word.start * RATE)
        assert np.any(samples[at : at + per_char] != 0)  # its sound starts here...
        assert at == 0 or not np.any(samples[at - per_char // 2 : at])  # ...after a silence
    assert_timeline(words)


async def test_cloud_snapshots_through_the_client_give_each_word_once_on_its_sound(
    cloud: CloudDouble,
) -> None:
    """The raw client's events (null alignment, growing snapshots per chunk_seq, the quirk)
    through a WordTimeline: 15 words, not the 30-odd that appending every snapshot gives."""
    client = AsyncRealtimeClient(api_key=cloud.script.api_key, base_url=cloud.base_url, timeout=10)
    events = [e async for e in client.stream_websocket(PIECES15, format="pcm", timestamps=True)]
    assert all(isinstance(e, AudioEvent) for e in events)
    assert any(e.alignment is None for e in events)  # the documented null comes first
    every = sum(len(e.alignment.segments) for e in events if e.alignment is not None)
    assert every > 2 * len(words_of(TEXT15))  # appending snapshots would repeat words
    timeline = WordTimeline()
    changes = [c for e in events if (c := timeline.add(e, fallback_offset=99.0)) is not None]
    (connection,) = cloud.connections
    spoken = "".join(connection.spoken)
    assert len(connection.spoken) == 2 and words_of(spoken) == words_of(TEXT15)
    assert len(timeline.words) == 15
    assert_on_their_sound(timeline.words, spoken, b"".join(e.audio for e in events), 10)
    replayed: list[TimedWord] = []
    for change in changes:
        replayed[change.start :] = change.words
    assert replayed == timeline.words


@pytest.mark.parametrize("events_per_chunk", [4, 7])
def test_cloud_session_words_listeners_and_subtitles_have_no_repeats(
    cloud: CloudDouble, tmp_path: Path, events_per_chunk: int
) -> None:
    """Session(timestamps=True) against the documented shape: session.words, what listeners
    are told (replaced from each change's index), a late listener's replay and the .vtt and
    .srt files all hold the 15 words once, each at its sound."""
    cloud.script.events_per_chunk = events_per_chunk
    live = WordListener()
    session = Session(
        PIECES15,
        api_key=cloud.script.api_key,
        base_url=cloud.base_url,
        timestamps=True,
        start=False,
    )
    session.add_listener(live)
    session.start().wait(60)
    assert session.state == "finished"
    spoken = "".join(cloud.connections[0].spoken)
    words = session.words
    assert len(words) == 15
    assert_on_their_sound(words, spoken, session.audio, cloud.script.ms_per_char)
    assert live.words() == words
    late = WordListener()
    session.add_listener(late)
    assert late.of("words") == [(0, words)]
    for kind in ("vtt", "srt"):
        cues = parse_cues(session.save(tmp_path / f"speech.{kind}").read_text("utf-8"), kind)
        assert " ".join(text for _, _, text in cues).split() == words_of(TEXT15)
        assert cues[0][0] == round(words[0].start * 1000)
        assert cues[-1][1] == round(words[-1].end * 1000)


def test_cloud_session_never_takes_cues_or_speaker_tags_for_words(
    cloud: CloudDouble, tmp_path: Path
) -> None:
    """The double voices cues as it voices anything and times them as words: the session's
    words and subtitles leave them out (a highlight never lands on a cue)."""
    text = "[happy] Hello there. <|speaker:1|>Hi (excited) friend [break] bye."
    session = Session(
        text, api_key=cloud.script.api_key, base_url=cloud.base_url, timestamps=True
    ).wait(60)
    assert "[happy]" in "".join(cloud.connections[0].spoken)  # sent as written
    assert [w.text for w in session.words] == ["Hello", "there.", "Hi", "friend", "bye."]
    srt = parse_cues(session.save(tmp_path / "cues.srt").read_text("utf-8"), "srt")
    assert " ".join(t for _, _, t in srt).split() == ["Hello", "there.", "Hi", "friend", "bye."]


def test_the_old_local_server_shape_still_places_each_word_on_its_sound() -> None:
    """Each word once, in an event of its own, without chunk_audio_offset_sec (our embedded
    server before it took the cloud's shape): the words sit where their event's audio starts."""
    per_char = samples_per_char(RATE, 10)
    recording = Recording(RATE, timestamps=True)
    pieces = re.findall(r"\S+\s*", TEXT15)
    for seq, piece in enumerate(pieces):
        word = piece.strip()
        alignment = Alignment(
            (AlignmentSegment(word, 0.0, len(word) * per_char / RATE),),
            len(piece) * per_char / RATE,
        )
        recording.add_audio(
            speech_pcm(piece),
            words_of=AudioEvent(b"", content=word, alignment=alignment, chunk_seq=seq),
        )
    assert_on_their_sound(recording.words, TEXT15, recording.audio, 10)
