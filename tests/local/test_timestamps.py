"""Word timestamps: matching words to Piper's phonemes, and /v1/tts/live/with-timestamp."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from local_wire import FLUSH, LIVE, SENTENCE, STOP, Outcome, read_all, start, text
from websockets.asyncio.client import connect

from fish_notebook.cues import Pause, strip_cues
from fish_notebook.local import ThreadedServer, timing
from fish_notebook.local.cast import Cast
from fish_notebook.local.directions import split_turns
from fish_notebook.local.encoding import StreamEncoder
from fish_notebook.local.engine import PhonemeSpan, SpeechChunk, VoiceLibrary
from fish_notebook.local.output import TimedPart
from fish_notebook.local.synthesis import Synthesis
from fish_notebook.local.timing import (
    TextWord,
    TimedWord,
    WordPlan,
    cut_at_words,
    place_words,
    split_words,
    time_words,
)
from fish_notebook.protocol import LIVE_TIMESTAMP_PATH, TTSRequest

TRICKY = "Hello, world! It was the best of times; in 1999 about 12,500 people — ok? Yes"


def words_of(value: str) -> list[str]:
    return value.split()


# --- matching words to phonemes (pure, with a made-up phonemizer) ----------------------------


def test_exports() -> None:
    """Every name in timing.__all__ exists."""
    assert all(hasattr(timing, name) for name in timing.__all__)


def test_split_words_keeps_punctuation_and_splits_cjk() -> None:
    """Words are whitespace runs with their punctuation; CJK characters stand alone."""
    found = split_words("Hi, there!  你好 ok")
    assert [w.text for w in found] == ["Hi,", "there!", "你", "好", "ok"]
    assert all("Hi, there!  你好 ok"[w.start : w.end] == w.text for w in found)


def alone(word: str) -> list[str]:
    """A made-up phonemizer: letters are phonemes, digits speak as two words."""
    letters = [c for c in word.lower() if c.isalpha()]
    digits = [c for c in word if c.isdigit()]
    spoken = letters + (["d", "i", "g", " ", "i", "t"] if digits else [])
    return spoken + [p for p in word if p in ",.!?"]


def test_joined_words_are_split_back_by_their_own_phonemes() -> None:
    """Two words spoken as one phoneme word ("wasthe") each get their own phonemes."""
    sentences = [list("it wasthe best.")]
    places = place_words("It was the best.", sentences, alone)
    spans = ["".join(sentences[p.sentence][p.first : p.last]) for p in places]
    assert spans == ["it", "was", "the", "best."]


def test_a_word_spoken_as_several_phoneme_words_keeps_them_all() -> None:
    """A number expanded into two phoneme words is one word spanning both."""
    sentences = [list("in dig it, we")]
    places = place_words("In 1999, we", sentences, alone)
    assert [p.word.text for p in places] == ["In", "1999,", "we"]
    assert "".join(sentences[0][places[1].first : places[1].last]) == "dig it,"


def test_punctuation_only_tokens_join_a_neighbour() -> None:
    """A dash joins the word before it; a leading one joins the word after it."""
    places = place_words("— Go — now", [list("go now")], alone)
    assert [p.word.text for p in places] == ["— Go —", "now"]


def test_words_in_later_sentences() -> None:
    """Each word is placed in the sentence that speaks it."""
    places = place_words("One. Two three.", [list("one."), list("two three.")], alone)
    assert [(p.word.text, p.sentence) for p in places] == [
        ("One.", 0),
        ("Two", 1),
        ("three.", 1),
    ]


def test_a_word_not_spoken_gets_an_empty_span_in_order() -> None:
    """A word whose phonemes are nowhere sits, empty, where its neighbours meet."""
    places = place_words("go xyz now", [list("go now")], alone)
    assert [p.word.text for p in places] == ["go", "xyz", "now"]
    assert places[1].first == places[1].last == places[0].last
    assert places[1].last <= places[2].first


@given(st.text(alphabet="ab .,", max_size=40), st.text(alphabet="ab .,", max_size=40))
def test_places_are_ordered_for_any_text(source: str, spoken: str) -> None:
    """Whatever the text and phonemes, places come in text order and never overlap."""
    places = place_words(source, [list(spoken)], alone)
    assert [w for p in places for w in words_of(p.word.text)] == words_of(source)
    for before, after in itertools.pairwise(places):
        assert before.word.end <= after.word.start
        assert (before.sentence, before.last) <= (after.sentence, after.first)
    assert all(0 <= p.first <= p.last <= len(spoken) for p in places)


def test_time_words_uses_the_spans_and_gives_the_closing_silence_to_the_last_word() -> None:
    """Start/end come from the per-phoneme samples; the last word ends with the audio."""
    sentences = [list("ab cd.")]
    places = place_words("ab cd.", sentences, alone)
    spans = [PhonemeSpan("^", 100)] + [
        PhonemeSpan(p, n) for p, n in zip(sentences[0], [10, 20, 30, 40, 50, 60], strict=True)
    ]
    spans.append(PhonemeSpan("$", 70))
    timed = time_words(places, spans, 380)
    assert [(t.start, t.end) for t in timed] == [(100, 130), (160, 380)]


def test_estimated_times_when_the_voice_has_no_alignment() -> None:
    """Without spans each phoneme gets an equal share; the plan still times every word."""
    plan = WordPlan("ab cd", [list("ab cd")], alone)
    timed = plan.timed(0, list("ab cd"), None, 500)
    assert timed is not None and [(t.start, t.end) for t in timed] == [(0, 200), (300, 500)]
    assert plan.timed(0, list("other"), None, 500) is None
    assert plan.content(timed) == "ab cd"


def timed(*edges: tuple[int, int]) -> list[TimedWord]:
    return [TimedWord(TextWord(f"w{i}", i, i + 1), a, b) for i, (a, b) in enumerate(edges)]


def test_cut_at_words_keeps_words_whole() -> None:
    """Parts end where a word ends, hold what fits, and a long word goes alone."""
    words = timed((10, 40), (50, 90), (100, 300), (310, 330))
    parts = cut_at_words(words, 400, 100, 10_000)
    assert [(a, b, [w.word.text for w in ws]) for a, b, ws in parts] == [
        (0, 90, ["w0", "w1"]),
        (90, 300, ["w2"]),
        (300, 400, ["w3"]),
    ]


@given(
    st.lists(st.tuples(st.integers(0, 50), st.integers(0, 80)), max_size=12),
    st.integers(1, 200),
    st.integers(1, 400),
)
def test_cut_at_words_covers_the_audio_once(
    gaps: list[tuple[int, int]], soft: int, hard: int
) -> None:
    """For any words and limits: parts tile [0, samples), each word once, inside its part."""
    edges, at = [], 0
    for gap, length in gaps:
        edges.append((at + gap, at + gap + length))
        at += gap + length
    samples = at + 7
    words = timed(*edges)
    parts = cut_at_words(words, samples, soft, hard)
    assert parts[0][0] == 0 and parts[-1][1] == samples
    for (_, end, _), (begin, _, _) in itertools.pairwise(parts):
        assert end == begin
    assert [w.word for _, _, held in parts for w in held] == [w.word for w in words]
    for a, b, held in parts:
        assert b - a <= hard
        assert len(held) <= 1 or held[-1].end - a <= soft
        assert all(a <= w.start <= w.end <= b for w in held)


# --- the real voice ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timed_voice() -> Any:
    return VoiceLibrary().default(alignment=True)


def test_real_voice_places_joined_and_expanded_words(timed_voice: Any) -> None:
    """espeak joins "was the" and expands 1999; each text word still gets its own span."""
    sentences = timed_voice.phonemize(TRICKY)
    plan = WordPlan(TRICKY, sentences, timed_voice.phonemize_word)
    texts = [p.word.text for p in plan.places]
    assert texts == [
        *("Hello,", "world!", "It", "was", "the", "best", "of", "times;", "in", "1999"),
        *("about", "12,500", "people —", "ok?", "Yes"),
    ]
    assert all(p.first < p.last for p in plan.places)
    number = plan.places[9]
    assert sentences[number.sentence][number.first : number.last].count(" ") >= 2


def test_real_voice_times_fit_the_audio(timed_voice: Any) -> None:
    """Per sentence: words in order inside the audio, the last ending at its end."""
    plan = WordPlan(TRICKY, timed_voice.phonemize(TRICKY), timed_voice.phonemize_word)
    seen: list[str] = []
    for index, chunk in enumerate(timed_voice.synthesize(TRICKY)):
        samples = len(chunk.pcm) // 2
        assert chunk.alignment is not None
        words = plan.timed(index, chunk.phonemes, chunk.alignment, samples)
        assert words
        assert words[0].start > 0
        for before, after in itertools.pairwise(words):
            assert before.start < before.end <= after.start < after.end
        assert words[-1].end == samples
        seen += [w.word.text for w in words]
    assert seen == [p.word.text for p in plan.places]


class RecordingVoice:
    """A real voice that keeps every sentence it speaks: (text handed, index, chunk)."""

    def __init__(self, voice: Any) -> None:
        self.voice = voice
        self.spoken: list[tuple[str, int, SpeechChunk]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.voice, name)

    def synthesize(self, text: str, **options: Any) -> Iterator[SpeechChunk]:
        for index, chunk in enumerate(self.voice.synthesize(text, **options)):
            self.spoken.append((text, index, chunk))
            yield chunk


def heard_at(voice: RecordingVoice, piece: str) -> list[tuple[str, float, float, int]]:
    """Each word of ``piece``, when it is heard and how many chunks (sentences and pauses)
    start before it: from the voice's own phoneme alignment of what it spoke (pauses as
    cues.py says), seconds from the piece's first sample."""
    spoken = iter(voice.spoken)
    words, at, chunks = [], 0.0, 0
    for item in split_turns(piece).items:
        chunks += 1
        if isinstance(item, Pause):
            at += round(item.seconds * voice.sample_rate) / voice.sample_rate
            continue
        plan = WordPlan(item.text, voice.phonemize(item.text), voice.phonemize_word)
        for number, _ in enumerate(plan.sentences):
            text, index, chunk = next(spoken)
            assert text == item.text
            samples = len(chunk.pcm) // 2
            timed = plan.timed(index, chunk.phonemes, chunk.alignment, samples)
            assert timed is not None
            rate = chunk.sample_rate
            chunks += number > 0
            words += [(w.word.text, at + w.start / rate, at + w.end / rate, chunks) for w in timed]
            at += samples / rate
    assert next(spoken, None) is None
    return words


@pytest.mark.parametrize("rate", [22050, 44100, 16000])
async def test_each_word_is_where_the_voice_says_it(timed_voice: Any, rate: int) -> None:
    """The last snapshot of a chunk holds every word once, at the sample where the voice's
    phoneme alignment puts it; snapshots only grow; cues are no words and a long break is
    0.8 s of the chunk's time. Each sentence and pause is resampled on its own, so its
    length may round by half a sample: a word may sit a sample off per chunk before it (Piper's
    noise makes the lengths, and so the rounding, differ from run to run)."""
    voice = RecordingVoice(timed_voice)
    piece = "Hello, world! [happy] It was the best of times; [long-break] in 1999 about 12,500."
    request = TTSRequest(format="pcm", sample_rate=rate)
    with ThreadPoolExecutor(2) as pool:
        cast = Cast(voice)  # type: ignore[arg-type]
        synthesis = Synthesis(cast, request, StreamEncoder("pcm", rate), pool, timestamps=True)
        parts = [part async for part in synthesis.speak(piece)]
    assert all(isinstance(part, TimedPart) for part in parts)
    snapshots = [part.alignment for part in parts if isinstance(part, TimedPart)]
    for before, after in itertools.pairwise(snapshots):
        assert before is not None and after is not None
        assert after.segments[: len(before.segments)] == before.segments
    final = snapshots[-1]
    assert final is not None
    expected = heard_at(voice, piece)
    assert [s.text for s in final.segments] == [text for text, _, _, _ in expected]
    assert "[happy]" not in " ".join(s.text for s in final.segments)
    for segment, (_, begins, ends, chunks) in zip(final.segments, expected, strict=True):
        off = (chunks if rate != voice.sample_rate else 1) / rate + 1e-6
        assert segment.start == pytest.approx(begins, abs=off)
        assert segment.end == pytest.approx(ends, abs=off)
    pcm = sum(len(p.data) for p in parts if isinstance(p, TimedPart)) // 2
    assert final.audio_duration == pytest.approx(pcm / rate, abs=1e-6)


def test_the_official_sdk_has_no_timestamp_stream() -> None:
    """fish-audio-sdk 1.3.0 streams /v1/tts/live only: nothing in it asks for word timings,
    so only our client reads /with-timestamp. Fails when an SDK update adds it (test it then)."""
    import fish_audio_sdk
    import fishaudio

    for package in (fishaudio, fish_audio_sdk):
        root = Path(str(package.__file__)).parent
        for source in root.rglob("*.py"):
            assert "with-timestamp" not in source.read_text(encoding="utf-8"), source


# --- the endpoint ------------------------------------------------------------------------------


async def timestamp_session(url: str, frames: Sequence[bytes]) -> Outcome:
    async with connect(url + LIVE_TIMESTAMP_PATH, open_timeout=10, max_size=None) as ws:
        for item in frames:
            await ws.send(item)
        return await read_all(ws, 120)


def spoken_words(text: str) -> list[str]:
    """The words of ``text`` a voice says: cues, breaks and speaker tags are not words."""
    return [w for part in strip_cues(text) if isinstance(part, str) for w in part.split()]


@dataclass
class Chunk:
    """What a client knows of one text chunk after reading its events."""

    offset: float
    segments: list[dict[str, Any]] = field(default_factory=list)
    duration: float = 0.0
    audio_bytes: int = 0


def check_events(out: Outcome, rate: int, spoken: str, *, pcm_bytes: bool) -> list[Any]:
    """The cloud's with-timestamp shape (PROTOCOL.md), checked event by event; returns each
    word of each chunk's final snapshot as (text, start, end) on the stream's timeline.

    Per chunk_seq (0, 1, ... in order, never back): one chunk_audio_offset_sec, where the
    chunk before ended; alignment null only before the chunk's first word, then snapshots
    that only grow (each holds the last one's words, unchanged, then new ones) with times
    in order inside audio_duration; content the chunk's text up to its last word.
    """
    assert out.finish == {"event": "finish", "reason": "stop"}
    audio = out.named("audio")
    assert audio
    chunks: dict[int, Chunk] = {}
    seq, received = -1, 0
    for event in audio:
        assert {"content", "alignment", "chunk_seq", "chunk_audio_offset_sec", "time"} <= set(event)
        assert event["time"] >= 0
        if event["chunk_seq"] != seq:
            assert event["chunk_seq"] == seq + 1
            before = chunks.get(seq)
            end = before.offset + before.duration if before else 0.0
            if pcm_bytes:
                end = received / 2 / rate
            assert event["chunk_audio_offset_sec"] == pytest.approx(end, abs=2e-6)
            seq = event["chunk_seq"]
            chunks[seq] = Chunk(event["chunk_audio_offset_sec"])
        chunk = chunks[seq]
        assert event["chunk_audio_offset_sec"] == chunk.offset
        chunk.audio_bytes += len(event["audio"])
        received += len(event["audio"])
        alignment = event["alignment"]
        if alignment is None:
            assert not chunk.segments and event["content"] == ""
            continue
        segments, duration = alignment["segments"], alignment["audio_duration"]
        assert segments[: len(chunk.segments)] == chunk.segments  # cumulative, never shrinking
        assert len(segments) >= len(chunk.segments) and duration >= chunk.duration
        if pcm_bytes:
            assert duration == pytest.approx(chunk.audio_bytes / 2 / rate, abs=2e-6)
        last_end = 0.0
        for segment in segments:
            assert last_end <= segment["start"] <= segment["end"] <= duration
            last_end = segment["end"]
        assert [w for s in segments for w in words_of(s["text"])] == spoken_words(event["content"])
        chunk.segments, chunk.duration = segments, duration
    words = [
        (s["text"], chunk.offset + s["start"], chunk.offset + s["end"])
        for chunk in chunks.values()
        for s in chunk.segments
    ]
    assert [w for text, _, _ in words for w in words_of(text)] == spoken_words(spoken)
    return words


@pytest.mark.parametrize(
    ("audio_format", "rate"), [("pcm", 44100), ("wav", 16000), ("mp3", 44100), ("pcm", 8000)]
)
async def test_with_timestamp_events(
    local_server: ThreadedServer, audio_format: str, rate: int
) -> None:
    """Every format: events in sequence on one timeline, words in order inside each event."""
    request: dict[str, Any] = {"format": audio_format, "sample_rate": rate}
    out = await timestamp_session(local_server.url, [start(**request), text(TRICKY), STOP])
    check_events(out, rate, TRICKY, pcm_bytes=audio_format == "pcm")
    audio = out.named("audio")
    if audio_format == "mp3":  # the encoder's tail repeats its chunk's last labels
        tail, before = audio[-1], audio[-2]
        assert tail["alignment"] == before["alignment"] and tail["content"] == before["content"]
    snapshots = [e["alignment"] for e in audio if e["alignment"]]
    assert len({len(a["segments"]) for a in snapshots}) > 1  # rendered in several snapshots


async def test_word_times_follow_the_speech_not_an_even_split(
    local_server: ThreadedServer,
) -> None:
    """A long word lasts several times longer than a short one spoken next to it."""
    spoken = "I said extraordinarily, a word."
    out = await timestamp_session(local_server.url, [start(format="pcm"), text(spoken), STOP])
    words = {w[0]: w[2] - w[1] for w in check_events(out, 44100, spoken, pcm_bytes=True)}
    assert words["extraordinarily,"] > 3 * words["I"]
    assert words["extraordinarily,"] > 3 * words["a"]


async def test_flushes_and_slow_speech_stay_on_one_timeline(
    local_server: ThreadedServer,
) -> None:
    """Pieces spoken after flushes continue the sequence; slow speech fits its events."""
    frames = [
        start(format="pcm", prosody={"speed": 0.5, "volume": 0}),
        text("First part"),
        FLUSH,
        text(" and the second, "),
        FLUSH,
        text("then the end."),
        STOP,
    ]
    out = await timestamp_session(local_server.url, frames)
    words = check_events(out, 44100, "First part and the second, then the end.", pcm_bytes=True)
    starts = [w[1] for w in words]
    assert starts == sorted(starts)


async def test_a_chunk_that_starts_with_a_pause_has_no_alignment_yet(
    local_server: ThreadedServer,
) -> None:
    """A chunk opening with a break sends its silence with a null alignment and no content,
    then snapshots; speaker tags and cues are in the content as sent, never in the words."""
    spoken = "[long-break] <|speaker:1|>Hello there. <|speaker:0|>[happy] Bye now."
    frames = [start(format="pcm", sample_rate=16000), text(spoken), STOP]
    out = await timestamp_session(local_server.url, frames)
    words = check_events(out, 16000, spoken, pcm_bytes=True)
    audio = out.named("audio")
    assert audio[0]["alignment"] is None and audio[0]["content"] == ""
    assert sum(len(e["audio"]) for e in audio if e["alignment"] is None) >= 0.8 * 16000 * 2
    assert words[0][1] >= 0.8  # the first word after the long break
    assert audio[-1]["content"] == spoken


async def test_text_without_words_ends_cleanly(local_server: ThreadedServer) -> None:
    """Punctuation alone (nothing to speak, or nothing but silence) still finishes."""
    out = await timestamp_session(local_server.url, [start(format="pcm"), text("— ... !"), STOP])
    assert out.finish == {"event": "finish", "reason": "stop"}
    for event in out.named("audio"):
        segments = event["alignment"]["segments"] if event["alignment"] else []
        assert [w for s in segments for w in words_of(s["text"])] == words_of(event["content"])


async def test_plain_endpoint_events_carry_no_timestamp_fields(
    local_server: ThreadedServer,
) -> None:
    """/v1/tts/live stays as it was: audio events hold only event and audio."""
    async with connect(local_server.url + LIVE, open_timeout=10) as ws:
        await ws.send(start(format="pcm"))
        await ws.send(text(SENTENCE))
        await ws.send(STOP)
        out = await read_all(ws, 60)
    assert out.named("audio")
    assert all(set(e) == {"event", "audio"} for e in out.named("audio"))


def test_official_sdk_still_streams_after_timestamp_sessions(
    local_server: ThreadedServer,
) -> None:
    """The Fish SDK (no timestamps) gets plain audio from a server that served timestamps."""
    from fishaudio import FishAudio

    client = FishAudio(api_key="x", base_url=local_server.http_url)
    audio = b"".join(client.tts.stream_websocket(iter([SENTENCE]), format="pcm"))
    assert len(audio) / 2 / 44100 > 1.0


async def test_timestamp_path_with_trailing_slash_and_bad_frames(
    local_server: ThreadedServer,
) -> None:
    """The endpoint takes a trailing slash, and a bad frame fails the session as usual."""
    url = local_server.url + LIVE_TIMESTAMP_PATH + "/"
    async with connect(url, open_timeout=10) as ws:
        await ws.send(start(format="pcm"))
        await ws.send(msgpack.packb({"event": "text"}))
        out = await read_all(ws, 60)
    assert out.finish is not None and out.finish["reason"] == "error"
    assert re.search("text", out.finish.get("message", ""))


async def test_a_socket_on_the_timestamp_path_loads_the_timed_voice_ahead() -> None:
    """The timed voice starts loading when a socket opens on the timestamp path (a voice
    loop opens one as the user starts speaking), not for a plain one, and only once."""
    from fish_notebook.local import LocalServer

    with LocalServer().run_in_thread() as running:
        server = running.server
        async with connect(running.url + LIVE, open_timeout=10) as ws:
            for frame in (start(format="pcm"), text(SENTENCE), STOP):
                await ws.send(frame)
            assert (await read_all(ws)).finish is not None  # open() ran long ago
        assert server.timed_voice_warming is None
        async with connect(running.url + LIVE_TIMESTAMP_PATH, open_timeout=10):
            for _ in range(1000):  # open() runs right after the handshake: a bounded look
                if server.timed_voice_warming is not None:
                    break
                await asyncio.sleep(0.01)
            loading = server.timed_voice_warming
            assert loading is not None
            voice = await asyncio.wrap_future(loading)
            assert voice.has_alignment
        async with connect(running.url + LIVE_TIMESTAMP_PATH, open_timeout=10):
            pass
        assert server.timed_voice_warming is loading
