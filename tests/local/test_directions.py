"""Directions in the text, as the embedded server performs them: delivery cues never spoken
(one log a session), breaks as silence, speaker tags and reference_id lists as voices."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from local_wire import FLUSH, LIVE, STOP, Outcome, read_all, session, start, text
from websockets.asyncio.client import connect

from fish_notebook.cues import BREAK_SECONDS, LONG_BREAK_SECONDS, Pause, speaker_tag
from fish_notebook.local import LocalServer, ThreadedServer
from fish_notebook.local.asr import Transcriber
from fish_notebook.local.cast import RENDITION_SHIFTS
from fish_notebook.local.directions import Turn, split_turns
from fish_notebook.local.engine import DEFAULT_VOICE, default_voice_files
from fish_notebook.protocol import LIVE_TIMESTAMP_PATH

RATE = 16000  # Whisper's rate: no resampling before recognition
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "We will meet at the station after the meeting tomorrow morning.",
    "She sells fresh fish by the river, and the fish are surely real.",
    "A large yellow boat sailed slowly across the quiet lake.",
    "Reading a good book on a rainy afternoon is one of life's simple pleasures.",
]


async def timed_session(url: str, frames: list[bytes], headers: Any = None) -> Outcome:
    async with connect(
        url + LIVE_TIMESTAMP_PATH, additional_headers=headers, open_timeout=10, max_size=None
    ) as ws:
        for item in frames:
            await ws.send(item)
        return await read_all(ws, 120)


def final_words(out: Outcome) -> list[tuple[str, float, float]]:
    """Each word of each chunk's last snapshot: (text, start, end) on the stream."""
    last: dict[int, tuple[float, list[dict[str, Any]]]] = {}
    for event in out.named("audio"):
        if event["alignment"] is not None:
            last[event["chunk_seq"]] = (
                event["chunk_audio_offset_sec"],
                event["alignment"]["segments"],
            )
    return [
        (s["text"], offset + s["start"], offset + s["end"])
        for offset, segments in last.values()
        for s in segments
    ]


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2")


# Silence resampled to another rate keeps the resampler's dither: a least significant bit.
QUIET = 2


def longest_silence(pcm: bytes) -> int:
    """The longest run of samples that are silent (at most QUIET, -84 dBFS)."""
    zero = np.concatenate(([0], (np.abs(samples(pcm)) <= QUIET).astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(zero))
    return int((edges[1::2] - edges[::2]).max()) if len(edges) else 0


def median_pitch(pcm: bytes, rate: int) -> float:
    """Median pitch (Hz) of the voiced frames: 40 ms frames every 10 ms, louder than a tenth
    of the loudest, whose autocorrelation peaks above 0.5 at a lag of 60..400 Hz."""
    x = samples(pcm).astype(np.float64)
    frame, hop = int(0.04 * rate), int(0.01 * rate)
    shortest, longest = int(rate / 400), int(rate / 60)
    starts = range(0, len(x) - frame, hop)
    energy = np.array([np.sqrt(np.mean(x[i : i + frame] ** 2)) for i in starts])
    pitches = []
    for i, loudness in zip(starts, energy, strict=True):
        if loudness < 0.1 * energy.max():
            continue
        segment = x[i : i + frame] - x[i : i + frame].mean()
        correlation = np.correlate(segment, segment, "full")[frame - 1 :]
        if correlation[0] <= 0:
            continue
        correlation /= correlation[0]
        lag = shortest + int(np.argmax(correlation[shortest:longest]))
        if correlation[lag] > 0.5:
            pitches.append(rate / lag)
    assert len(pitches) > 20, "too few voiced frames to tell a pitch"
    return float(np.median(pitches))


def word_error_rate(reference: str, heard: str) -> float:
    """Word-level edit distance over the reference's length (case and punctuation aside)."""
    said, got = (re.findall(r"[a-z0-9']+", t.lower()) for t in (reference, heard))
    row = list(range(len(got) + 1))
    for i, word in enumerate(said, 1):
        diagonal, row[0] = row[0], i
        for j, other in enumerate(got, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (word != other))
    return row[-1] / len(said)


def cut(pcm: bytes, start: float, end: float, rate: int) -> bytes:
    return pcm[round(start * rate) * 2 : round(end * rate) * 2]


# --- reading the directions (pure) -------------------------------------------------------------


def test_split_turns_keeps_every_word_where_it_was_written() -> None:
    """Turns hold the words at their places in the piece; cues go, breaks become pauses,
    a speaker tag starts a turn (its own speaker's tag does not), the last speaker carries."""
    piece = "<|speaker:0|>Hi [happy] there.\n<|speaker:1|>Oh (sad) [long-break] bye."
    turns = split_turns(piece)
    assert turns.cues == ("[happy]", "(sad)") and turns.speaker == 1
    first, second, pause, third = turns.items
    assert isinstance(first, Turn) and isinstance(second, Turn) and isinstance(third, Turn)
    assert [(t.speaker, t.text.split()) for t in (first, second, third)] == [
        (0, ["Hi", "there."]), (1, ["Oh"]), (1, ["bye."]),
    ]  # fmt: skip
    assert pause == Pause(LONG_BREAK_SECONDS)
    for turn in (first, second, third):
        for word in re.finditer(r"\S+", turn.text):
            at = turn.start + word.start()
            assert piece[at : at + len(word.group())] == word.group()
    assert split_turns("more", speaker=1).items == (Turn(1, "more", 0),)


def test_split_turns_takes_a_cue_that_closes_around_another() -> None:
    """ "[a[x]]" goes whole, as strip_cues says; a cue never reaches over a break."""
    (turn,) = split_turns("go [a[x]] on").items
    assert isinstance(turn, Turn) and turn.text.split() == ["go", "on"]
    items = split_turns("[a [break] b]").items
    assert len(items) == 3 and items[1] == Pause(BREAK_SECONDS)


# --- delivery cues and breaks ------------------------------------------------------------------


async def test_cues_are_never_spoken_and_a_break_is_silence(local_server: ThreadedServer) -> None:
    """ "Hello [happy] there [break] friend.": three words, no "happy"; between "there" and
    "friend." (the voice's own word times) the break's 0.3 s of silence, while the cue adds
    no pause; one log event names the cue."""
    out = await timed_session(
        local_server.url,
        [start(format="pcm", sample_rate=RATE), text("Hello [happy] there [break] friend."), STOP],
    )
    assert out.finish == {"event": "finish", "reason": "stop"}
    words = final_words(out)
    assert [w[0] for w in words] == ["Hello", "there", "friend."]
    (_, _, hello_end), (_, there_start, there_end), (_, friend_start, _) = words
    assert there_start - hello_end < BREAK_SECONDS  # the cue is no pause
    assert friend_start - there_end >= BREAK_SECONDS - 1 / RATE
    gap = cut(out.audio, there_end + 1 / RATE, there_end + BREAK_SECONDS - 1 / RATE, RATE)
    assert len(gap) > 0.29 * RATE * 2 and np.abs(samples(gap)).max() <= QUIET
    assert len(out.logs) == 1 and "[happy]" in out.logs[0] and "cues" in out.logs[0]


async def test_cues_are_told_once_per_session_across_pieces(local_server: ThreadedServer) -> None:
    """Cues of either syntax in several pieces: one log event (naming the first piece's
    cues), no cue among the words, a long break of 0.8 s of silence."""
    frames = [
        start(format="pcm", sample_rate=RATE),
        text("[whispering] Come closer. "),
        FLUSH,
        text("(sad) It is late [long-break] and (in a hurry tone) we go. [audience laughing] "),
        FLUSH,
        text("[slightly sad] Bye."),
        STOP,
    ]
    out = await timed_session(local_server.url, frames)
    assert out.finish == {"event": "finish", "reason": "stop"}
    assert [w[0] for w in final_words(out)] == [
        *("Come", "closer.", "It", "is", "late", "and", "we", "go.", "Bye."),
    ]
    assert len(out.logs) == 1 and "[whispering]" in out.logs[0]
    assert longest_silence(out.audio) >= round(LONG_BREAK_SECONDS * RATE) - 1
    assert len({e["chunk_seq"] for e in out.named("audio")}) == 3


async def test_plain_endpoint_skips_cues_with_one_log(local_server: ThreadedServer) -> None:
    """/v1/tts/live: the same one log event, and a break's silence in the audio."""
    frames = [start(format="pcm", sample_rate=RATE), text("So [excited] (happy) [long-break] yes.")]
    out = await session(local_server.url, [*frames, STOP])
    assert out.finish == {"event": "finish", "reason": "stop"}
    assert len(out.logs) == 1 and "[excited]" in out.logs[0] and "(happy)" in out.logs[0]
    assert longest_silence(out.audio) >= round(LONG_BREAK_SECONDS * RATE) - 1


async def test_a_cue_split_over_text_events_is_never_spoken(local_server: ThreadedServer) -> None:
    """A cue arriving in pieces, with a flush in its middle, is held until it is whole."""
    frames = [
        start(format="pcm"),
        text("Wait [slightly "),
        FLUSH,
        text("sad] for me."),
        STOP,
    ]
    out = await timed_session(local_server.url, frames)
    assert [w[0] for w in final_words(out)] == ["Wait", "for", "me."]
    assert "[slightly sad]" in out.logs[0]


def test_post_tts_skips_cues_with_one_log(
    local_server: ThreadedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """POST /v1/tts: cues logged once by the server, a long break is silence."""
    body = {"text": "One [happy] two. (sad) Three [long-break] four.", "format": "pcm",
            "sample_rate": RATE}  # fmt: skip
    with caplog.at_level(logging.INFO, logger="fish_notebook.local"):
        answer = httpx.post(local_server.http_url + "/v1/tts", json=body, timeout=60)
    assert answer.status_code == 200
    told = [r.getMessage() for r in caplog.records if "delivery cues" in r.getMessage()]
    assert len(told) == 1 and "[happy]" in told[0] and "(sad)" in told[0]
    assert longest_silence(answer.content) >= round(LONG_BREAK_SECONDS * RATE) - 1


# --- dialogue ----------------------------------------------------------------------------------


def dialogue(*turns: tuple[int, str]) -> str:
    return "".join(f"{speaker_tag(n)}{line}\n" for n, line in turns)


async def test_two_speakers_sound_apart_and_tags_are_never_words(
    local_server: ThreadedServer,
) -> None:
    """A dialogue without voices: speaker 1 is a rendition of the default voice, higher by
    its shift (median pitch over each speaker's words); the tags are never words."""
    script = dialogue((0, SENTENCES[0]), (1, SENTENCES[0]), (0, SENTENCES[4]), (1, SENTENCES[4]))
    out = await timed_session(local_server.url, [start(format="pcm", sample_rate=RATE),
                                                 text(script), STOP])  # fmt: skip
    assert out.finish == {"event": "finish", "reason": "stop"} and out.logs == []
    words = final_words(out)
    spoken = [w[0] for w in words]
    assert spoken == (SENTENCES[0].split() * 2) + (SENTENCES[4].split() * 2)
    assert not any("speaker" in word for word in spoken)
    turns: list[bytes] = [b"", b""]
    at = 0
    for index, sentence in enumerate([SENTENCES[0]] * 2 + [SENTENCES[4]] * 2):
        mine = words[at : at + len(sentence.split())]
        at += len(mine)
        turns[index % 2] += cut(out.audio, mine[0][1], mine[-1][2], RATE)
    ratio = median_pitch(turns[1], RATE) / median_pitch(turns[0], RATE)
    assert ratio == pytest.approx(RENDITION_SHIFTS[1], rel=0.08)


async def speak_as(url: str, speaker: int, sentences: list[str]) -> bytes:
    lines = "".join(f"{speaker_tag(speaker)}{s} " for s in sentences)
    out = await session(url, [start(format="pcm", sample_rate=RATE), text(lines), STOP])
    assert out.finish == {"event": "finish", "reason": "stop"}
    return out.audio


async def test_a_rendition_is_as_intelligible_as_the_voice(local_server: ThreadedServer) -> None:
    """Whisper (tiny.en) hears speaker 1's rendition about as well as the voice itself on the
    same sentences, and its pitch is higher by the rendition's shift."""
    transcriber = Transcriber()
    reference = " ".join(SENTENCES)
    rates, pitches = [], []
    for speaker in (0, 1):
        audio = await speak_as(local_server.url, speaker, SENTENCES)
        heard = await asyncio.to_thread(transcriber.transcribe, audio, "en", sample_rate=RATE)
        rates.append(word_error_rate(reference, heard["text"]))
        pitches.append(median_pitch(audio, RATE))
    print(f"WER speaker 0 {rates[0]:.3f}, speaker 1 {rates[1]:.3f}; pitch {pitches}")
    assert rates[1] <= rates[0] + 0.1
    assert pitches[1] / pitches[0] == pytest.approx(RENDITION_SHIFTS[1], rel=0.08)


def test_post_tts_speaks_a_dialogue(local_server: ThreadedServer) -> None:
    """POST /v1/tts with speaker tags and a reference_id list (as JSON): the second
    speaker's rendition is higher; with model s1 the list is a 400 that says what to do."""
    pitches = []
    for speaker in (0, 1):
        body = {"text": dialogue((speaker, SENTENCES[2])), "format": "pcm", "sample_rate": RATE,
                "reference_id": [DEFAULT_VOICE, "nobody"]}  # fmt: skip
        answer = httpx.post(local_server.http_url + "/v1/tts", json=body, timeout=60)
        assert answer.status_code == 200
        pitches.append(median_pitch(answer.content, RATE))
    assert pitches[1] / pitches[0] == pytest.approx(RENDITION_SHIFTS[1], rel=0.08)
    refused = httpx.post(local_server.http_url + "/v1/tts", json=body, headers={"model": "s1"})
    assert refused.status_code == 400 and "S2 model" in refused.json()["message"]


async def test_a_voice_list_with_model_s1_fails_the_session(local_server: ThreadedServer) -> None:
    """The WebSocket refuses a reference_id list with model s1 (the cloud's S2 rule)."""
    request = start(format="pcm", reference_id=["a", "b"])
    async with connect(
        local_server.url + LIVE, additional_headers={"model": "s1"}, open_timeout=10
    ) as ws:
        await ws.send(request)
        await ws.send(STOP)
        out = await read_all(ws, 30)
    assert out.finish is not None and out.finish["reason"] == "error"
    assert "S2 model" in out.finish["message"] and not out.audio


async def test_references_per_speaker_are_accepted_and_said_to_be_ignored(
    local_server: ThreadedServer,
) -> None:
    """references as a list of lists (zero-shot dialogue) reach the server, which says it
    cannot clone and speaks the dialogue with renditions."""
    sample = {"audio": b"\x00" * 64, "text": "hi"}
    request = start(format="pcm", references=[[sample], [sample]])
    out = await session(local_server.url, [request, text(dialogue((0, "Hi."), (1, "Ho."))), STOP])
    assert out.finish == {"event": "finish", "reason": "stop"} and out.audio
    assert len(out.logs) == 1 and "references" in out.logs[0]


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one voice, "my-voice" (the bundled model under another name)."""
    folder = tmp_path_factory.mktemp("voices")
    model, config = default_voice_files()
    (folder / "my-voice.onnx").symlink_to(model)
    shutil.copy(config, folder / "my-voice.onnx.json")
    return folder


async def test_a_listed_folder_voice_speaks_its_speaker(voices_dir: Path) -> None:
    """reference_id ["nobody", "my-voice"]: speaker 0 gets the default voice (with a log
    naming "nobody"), speaker 1 the folder's voice itself, not a rendition: the same pitch
    as speaker 0 (it is the same model), where a rendition would be higher."""
    async with LocalServer(voices_dir=str(voices_dir), record=True) as server:
        request = start(format="pcm", sample_rate=RATE, reference_id=["nobody", "my-voice"])
        script = dialogue((0, SENTENCES[1]), (1, SENTENCES[1]))
        out = await timed_session(server.url, [request, text(script), STOP])
        assert server.recorder is not None
        record = await server.recorder.await_for()
    assert out.finish == {"event": "finish", "reason": "stop"}
    assert len(out.logs) == 1 and "'nobody'" in out.logs[0] and DEFAULT_VOICE in out.logs[0]
    assert record.voice == f"{DEFAULT_VOICE}, my-voice"
    words = final_words(out)
    count = len(SENTENCES[1].split())
    assert len(words) == 2 * count
    first = cut(out.audio, words[0][1], words[count - 1][2], RATE)
    second = cut(out.audio, words[count][1], words[-1][2], RATE)
    ratio = median_pitch(second, RATE) / median_pitch(first, RATE)
    assert ratio == pytest.approx(1.0, rel=0.08)
