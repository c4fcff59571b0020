"""The voice loop end to end with real parts: a question spoken by the embedded Piper voice,
the Silero detector, speech recognition through ``POST /v1/asr`` on the cloud double (a
canned transcript), the agent, and the answer spoken by the suite's embedded server.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fish_notebook.agents import (
    VOICE_SYSTEM_PROMPT,
    AgentAnswer,
    EchoAgent,
    default_agent,
    llm_agent,
)
from fish_notebook.audio import wav_bytes
from fish_notebook.errors import AuthenticationError, ValidationError
from fish_notebook.local.engine import VoiceLibrary
from fish_notebook.local.server import ThreadedServer
from fish_notebook.protocol import FlushEvent
from fish_notebook.sources import apaced, llm_tokens, paced
from fish_notebook.voiceloop import (
    FRAME_BYTES,
    PRE_ROLL,
    TAIL,
    VoiceLoop,
    VoiceTurn,
    microphone_pcm,
)
from tests.cloud_double import CloudDouble, Script
from tests.helpers import wait_until
from tests.llm_server import LLMServer

QUESTION = "What is the capital of France? Tell me in one short sentence."
LONG_ANSWER = (
    "Paris is the capital of France. It stands on the river Seine. It has many old bridges. "
    "It is known for its museums. Millions of people visit it every year. "
    "The city is also famous for its food."
)
AUDIBLE = 0.01 * 32768  # -40 dBFS: a sample above it is part of the speech


@pytest.fixture(scope="module")
def question_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The question spoken by Piper, then 1.5 s of silence, saved as a user would."""
    chunks = list(VoiceLibrary().default().synthesize(QUESTION))
    rate = chunks[0].sample_rate
    pcm = b"".join(chunk.pcm for chunk in chunks) + bytes(2 * round(1.5 * rate))
    path = tmp_path_factory.mktemp("voice") / "question.wav"
    path.write_bytes(wav_bytes(pcm, rate))
    return path


@pytest.fixture
def cloud() -> Iterator[CloudDouble]:
    transcript = {"text": QUESTION, "duration": 4.0, "segments": []}
    with CloudDouble(Script(transcript=transcript)) as double:
        yield double


@pytest.fixture
def make_loop(
    cloud: CloudDouble, local_server: ThreadedServer
) -> Iterator[Callable[..., VoiceLoop]]:
    """Loops that hear through the cloud double and speak through the embedded server."""
    loops: list[VoiceLoop] = []

    def make(agent: Any = None, **options: Any) -> VoiceLoop:
        options.setdefault("asr_api_key", cloud.script.api_key)
        loop = VoiceLoop(
            agent or EchoAgent(),
            base_url=local_server.url,
            asr_base_url=cloud.base_url,
            **options,
        )
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        loop.close()


def feed_file(loop: VoiceLoop, path: Path, start: float = 0.0, end: float | None = None) -> None:
    """Feed the file's audio from ``start`` to ``end`` seconds, in 20 ms frames."""
    pcm = microphone_pcm(path)[
        round(start * 16_000) * 2 : None if end is None else round(end * 16_000) * 2
    ]
    for at in range(0, len(pcm), FRAME_BYTES):
        loop.feed(pcm[at : at + FRAME_BYTES])


def asr_requests(cloud: CloudDouble) -> list[Any]:
    return [r for r in cloud.requests if r.path == "/v1/asr"]


def words(text: str) -> list[str]:
    return text.split()


def test_a_spoken_question_is_answered_in_speech(
    make_loop: Callable[..., VoiceLoop], cloud: CloudDouble, question_wav: Path
) -> None:
    loop = make_loop()
    turn = loop.hear(question_wav)
    assert isinstance(turn, VoiceTurn) and turn.error is None
    assert turn.user == QUESTION and turn.agent == EchoAgent.name
    assert turn.answer == f"{EchoAgent.introduction} You said: {QUESTION}"
    assert turn.heard == turn.answer and not turn.interrupted and turn.done
    assert turn.heard_detail is not None and turn.heard_detail.method == "all"
    # The answer was spoken: real audio, and word timings that spell the answer.
    session = turn.session
    assert session is not None and session.state == "finished" and session.duration > 2.0
    samples = np.frombuffer(session.audio, "<i2")
    assert np.sqrt(np.mean(samples.astype("f8") ** 2)) > 300
    assert [w.text for w in session.words] == words(turn.answer)
    assert loop.state == "listening"
    assert loop.messages() == [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": turn.answer},
    ]


def sent_audio(request: Any) -> bytes:
    """The PCM of the WAV a speech recognition request sent (16 kHz 16-bit mono)."""
    with wave.open(io.BytesIO(request.body["audio"])) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16_000, 1, 2)
        return w.readframes(w.getnframes())


def test_the_utterance_sent_to_speech_recognition_covers_the_speech(
    make_loop: Callable[..., VoiceLoop], cloud: CloudDouble, question_wav: Path
) -> None:
    turn = make_loop().hear(question_wav)
    assert turn is not None and turn.early_transcript  # asked for in the last pause
    *_, request = asr_requests(cloud)  # any earlier one: a pause between the sentences
    assert request.body["ignore_timestamps"] is True and "language" not in request.body
    sent = sent_audio(request)
    microphone = microphone_pcm(question_wav)
    for each in asr_requests(cloud):
        at = microphone.find(sent_audio(each))
        assert at >= 0 and at % 2 == 0, "the utterance is a slice of what the microphone heard"
    at = microphone.find(sent)
    loud = np.nonzero(np.abs(np.frombuffer(microphone, "<i2").astype("i4")) > AUDIBLE)[0]
    first, last = at // 2, at // 2 + len(sent) // 2
    assert first <= loud[0] and last >= loud[-1]
    assert len(sent) // 2 <= loud[-1] - loud[0] + (PRE_ROLL + TAIL + 0.2) * 16_000


FIRST_PART, SECOND_PART = "What is the capital of France?", "Tell me in one short sentence."


def spoken_pcm(text: str) -> bytes:
    """``text`` spoken by Piper, as the microphone sends it (16 kHz 16-bit mono), from its
    first to its last audible sample (Piper's own silences around it cut off)."""
    chunks = list(VoiceLibrary().default().synthesize(text))
    pcm = microphone_pcm(wav_bytes(b"".join(c.pcm for c in chunks), chunks[0].sample_rate))
    loud = np.nonzero(np.abs(np.frombuffer(pcm, "<i2").astype("i4")) > AUDIBLE)[0]
    return pcm[2 * loud[0] : 2 * (loud[-1] + 1)]


def quiet(seconds: float) -> bytes:
    return bytes(2 * round(seconds * 16_000))


@pytest.fixture(scope="module")
def resumed() -> tuple[bytes, int]:
    """Two sentences with a 0.4 s pause between them (more than the early transcript's 0.2 s,
    less than the 0.6 s that ends a turn), then silence; and where the second begins
    (bytes)."""
    first = quiet(0.3) + spoken_pcm(FIRST_PART) + quiet(0.4)
    return first + spoken_pcm(SECOND_PART) + quiet(1.5), len(first)


def feed_pcm(loop: VoiceLoop, pcm: bytes) -> None:
    for at in range(0, len(pcm), FRAME_BYTES):
        loop.feed(pcm[at : at + FRAME_BYTES])
    loop.finish()
    loop.wait(90)


def test_the_transcript_asked_for_in_the_pause_that_ends_the_turn_is_used(
    make_loop: Callable[..., VoiceLoop], cloud: CloudDouble, question_wav: Path
) -> None:
    turn = make_loop().hear(question_wav)
    assert turn is not None and turn.early_transcript and turn.user == QUESTION
    *_, used = asr_requests(cloud)
    utterance = sent_audio(used)
    # Asked for once: the end of the turn took the early answer, it did not ask again.
    assert [sent_audio(r) for r in asr_requests(cloud)].count(utterance) == 1
    m = turn.metrics
    assert m.recognized is not None and m.transcript is not None
    assert m.recognized <= m.transcript and m.turn_end is not None and m.turn_end <= m.transcript


def test_an_early_transcript_is_dropped_when_the_user_speaks_on(
    make_loop: Callable[..., VoiceLoop], cloud: CloudDouble, resumed: tuple[bytes, int]
) -> None:
    pcm, second = resumed
    loop = make_loop()
    feed_pcm(loop, pcm)
    (turn,) = loop.turns
    assert turn.early_transcript and turn.error is None
    ends = []  # where each request's audio ends in the microphone's stream (bytes)
    for request in asr_requests(cloud):
        audio = sent_audio(request)
        at = pcm.find(audio)
        assert at >= 0
        ends.append(at + len(audio))
    # One was asked for in the pause after the first sentence, without the second ...
    assert any(end <= second for end in ends)
    # ... and the turn's, in the pause that ended it, holds both; asked for once.
    *_, used = asr_requests(cloud)
    assert ends[-1] > second + len(spoken_pcm(SECOND_PART)) // 2
    assert [sent_audio(r) for r in asr_requests(cloud)].count(sent_audio(used)) == 1


def test_without_early_transcripts_only_the_end_of_the_turn_asks(
    make_loop: Callable[..., VoiceLoop], cloud: CloudDouble, resumed: tuple[bytes, int]
) -> None:
    pcm, second = resumed
    loop = make_loop(early_transcript_s=None)
    feed_pcm(loop, pcm)
    (turn,) = loop.turns
    assert not turn.early_transcript and turn.error is None
    (request,) = asr_requests(cloud)
    audio = sent_audio(request)
    assert pcm.find(audio) + len(audio) > second
    with pytest.raises(ValidationError, match="early_transcript_s"):
        make_loop(early_transcript_s=0.1)  # shorter than the tail the utterance keeps


def test_whisper_hears_the_whole_turn_after_a_dropped_early_transcript(
    local_server: ThreadedServer, resumed: tuple[bytes, int]
) -> None:
    """Speech recognition on the embedded server (Whisper): the transcript made in the
    pause between the sentences is not the turn's; the turn's has both sentences."""
    pcm, _ = resumed
    with VoiceLoop(EchoAgent(), base_url=local_server.url) as loop:
        feed_pcm(loop, pcm)
        (turn,) = loop.turns
    assert turn.error is None and turn.early_transcript
    heard = [w.strip(".,?!").lower() for w in turn.user.split()]
    assert "france" in heard and "sentence" in heard, turn.user


def test_the_metrics_of_a_turn_are_in_order(
    make_loop: Callable[..., VoiceLoop], question_wav: Path
) -> None:
    loop = make_loop()
    turn = loop.hear(question_wav)
    assert turn is not None
    m = turn.metrics
    steps = [m.speech_end, m.turn_end, m.transcript, m.first_token, m.first_audio, m.answer_end]
    assert None not in steps and steps == sorted(steps)  # type: ignore[type-var]
    # The end of the turn is decided after the detector's 0.6 s of silence (audio time).
    turn_end = m.latencies()["turn_end_s"]
    assert turn_end is not None and 0.6 <= turn_end < 0.7
    assert m.first_sample is None and m.barge_in is None and m.silenced is None
    loop.first_sample_scheduled()
    assert m.first_sample is not None and m.first_sample >= m.first_audio  # type: ignore[operator]


def test_an_agents_stream_is_flushed_at_each_sentence_end(
    make_loop: Callable[..., VoiceLoop], question_wav: Path
) -> None:
    answer = "Paris is the capital of France. It is also its largest city."
    seen: list[list[dict[str, str]]] = []

    def agent(messages: list[dict[str, str]]) -> Iterator[str]:
        seen.append(messages)
        return iter(llm_tokens(answer))

    turn = make_loop(agent, system="Answer briefly.").hear(question_wav)
    assert (
        turn is not None
        and turn.answer == answer
        and turn.agent == "test_an_agents_stream_is_flushed_at_each_sentence_end.<locals>.agent"
    )
    assert seen == [
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}]
    ]
    assert turn.session is not None
    tokens: list[str | None] = list(llm_tokens(answer))
    tokens.insert(tokens.index(" It"), None)  # one flush, right after "France."
    assert turn.session.text == tokens


def slow_agent(kind: str, ended: dict[str, Any]) -> Callable[[Any], Any]:
    """An agent writing LONG_ANSWER like an LLM: two sentences at 12 tokens a second, then
    it waits for its next token until ``ended["release"]`` is set (at most 30 s).
    ``ended["closed"]`` is set when its stream ends; ``ended["finished"]`` if it ran out."""
    ended["closed"], ended["release"] = threading.Event(), threading.Event()
    tokens = llm_tokens(LONG_ANSWER)
    cut = tokens.index(" has")  # after "It stands on the river Seine. It"

    def sync_tokens() -> Iterator[str]:
        try:
            yield from paced("".join(tokens[:cut]), tokens_per_second=12, first_token_delay=0)
            ended["release"].wait(30)
            yield from tokens[cut:]
            ended["finished"] = True
        finally:
            ended["closed"].set()

    async def async_tokens() -> AsyncIterator[str]:
        try:
            async for token in apaced("".join(tokens[:cut]), tokens_per_second=12):
                yield token
            await asyncio.to_thread(ended["release"].wait, 30)
            for token in tokens[cut:]:
                yield token
            ended["finished"] = True
        finally:
            ended["closed"].set()

    return lambda messages: sync_tokens() if kind == "sync" else async_tokens()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_interrupted_answer_keeps_what_was_heard(
    make_loop: Callable[..., VoiceLoop], question_wav: Path, kind: str
) -> None:
    ended: dict[str, Any] = {}
    loop = make_loop(slow_agent(kind, ended))
    feed_file(loop, question_wav)
    turn = wait_until(lambda: loop.turns and loop.turns[-1], "the turn", timeout=60)
    session = wait_until(lambda: turn.session, "the answer's session", timeout=30)
    wait_until(lambda: len(session.words) >= 6, "the first words of the answer", timeout=60)
    assert not turn.done and loop.state == "answering"

    assert loop.interrupt(playhead_s=1.0) is turn
    ended["release"].set()  # the LLM's next token arrives: its stream is closed after it
    assert turn.interrupted and turn.done and turn.metrics.silenced is not None
    session.wait(15)
    assert session.state == "stopped"
    assert ended["closed"].wait(15) and not ended.get("finished"), "the agent's stream was closed"
    heard = turn.heard_detail
    assert heard is not None and heard.method == "words" and heard.playhead == 1.0
    assert heard.words and all(word[2] <= 1.0 for word in heard.words)
    assert 0 < len(words(turn.heard)) < len(words(LONG_ANSWER))
    assert words(LONG_ANSWER)[: len(words(turn.heard))] == words(turn.heard)
    assert loop.messages()[-1] == {"role": "assistant", "content": turn.heard}
    loop.wait(30)
    assert loop.interrupt(0.5) is None  # nothing left to interrupt


def test_talking_over_the_answer_asks_the_page_then_starts_a_new_turn(
    make_loop: Callable[..., VoiceLoop], question_wav: Path
) -> None:
    ended: dict[str, Any] = {}
    slow = slow_agent("sync", ended)
    answers = iter([slow, EchoAgent()])
    asked: list[VoiceTurn] = []
    loop = make_loop(lambda messages: next(answers)(messages), on_barge_in=asked.append)
    feed_file(loop, question_wav)
    first = wait_until(lambda: loop.turns and loop.turns[-1], "the first turn", timeout=60)
    session = wait_until(lambda: first.session, "the answer's session", timeout=30)
    wait_until(lambda: session.duration > 1.0, "a second of the answer", timeout=60)

    feed_file(loop, question_wav, end=1.2)  # the user speaks again, over the answer
    assert asked == [first] and not first.interrupted  # the page is asked for its playhead
    assert loop.interrupt(playhead_s=0.5) is first  # the page answers
    ended["release"].set()
    feed_file(loop, question_wav, start=1.2)
    assert first.interrupted and first.heard_detail is not None
    assert first.heard_detail.playhead == 0.5
    m = first.metrics
    assert m.barge_in_onset is not None and m.barge_in is not None and m.silenced is not None
    assert m.barge_in_onset <= m.barge_in <= m.silenced

    loop.wait(90)
    second = loop.turns[-1]
    assert len(loop.turns) == 2 and second.user == QUESTION and not second.interrupted
    assert second.answer == f"You said: {QUESTION}"  # the echo agent introduced itself once


def test_a_page_that_never_answers_does_not_stop_the_barge_in(
    make_loop: Callable[..., VoiceLoop], question_wav: Path
) -> None:
    ended: dict[str, Any] = {}
    loop = make_loop(slow_agent("sync", ended), on_barge_in=lambda turn: None)
    feed_file(loop, question_wav)
    first = wait_until(lambda: loop.turns and loop.turns[-1], "the first turn", timeout=60)
    session = wait_until(lambda: first.session, "the answer's session", timeout=30)
    wait_until(lambda: session.duration > 0.5, "the answer's first audio", timeout=60)
    feed_file(loop, question_wav)
    wait_until(lambda: first.interrupted, "the loop's own interruption", timeout=10)
    ended["release"].set()
    # With no playhead from the page, the time since the first audio stands for it.
    assert first.heard_detail is not None and first.heard_detail.playhead > 0
    assert ended["closed"].wait(15) and not ended.get("finished")


@pytest.mark.parametrize("kind", ["silence", "noise"])
def test_silence_and_noise_make_no_turn(
    make_loop: Callable[..., VoiceLoop], cloud: CloudDouble, tmp_path: Path, kind: str
) -> None:
    rng = np.random.default_rng(3)
    samples = np.zeros(5 * 16_000) if kind == "silence" else rng.normal(0, 0.05, 5 * 16_000)
    path = tmp_path / f"{kind}.wav"
    path.write_bytes(wav_bytes((samples.clip(-1, 1) * 32767).astype("<i2").tobytes(), 16_000))
    loop = make_loop()
    assert loop.hear(path) is None
    assert loop.turns == [] and asr_requests(cloud) == [] and loop.state == "listening"


def test_an_empty_transcript_makes_no_turn(
    make_loop: Callable[..., VoiceLoop], cloud: CloudDouble, question_wav: Path
) -> None:
    cloud.script.transcript = {"text": " ", "duration": 4.0, "segments": []}
    loop = make_loop(early_transcript_s=None)  # one request for the turn, none in its pauses
    assert loop.hear(question_wav) is None
    assert len(asr_requests(cloud)) == 1 and loop.turns == [] and loop.state == "listening"


def test_a_refused_key_is_a_failed_turn_not_a_stuck_loop(
    make_loop: Callable[..., VoiceLoop], question_wav: Path
) -> None:
    loop = make_loop(asr_api_key="wrong-key")
    turn = loop.hear(question_wav)
    assert turn is not None and isinstance(turn.error, AuthenticationError)
    assert turn.user == "" and turn.session is None and turn.done
    assert loop.messages() == [] and loop.state == "listening"


def test_an_llm_agent_gets_the_whole_conversation(
    make_loop: Callable[..., VoiceLoop], question_wav: Path
) -> None:
    with LLMServer("Paris. It is the capital.", token_delay=0.0) as server:
        loop = make_loop(llm_agent(base_url=server.url, api_key="llm-test-key"))
        turn = loop.hear(question_wav)
        assert turn is not None and turn.answer == "Paris. It is the capital."
        assert turn.agent.startswith("LLM ")
        body = server.requests[-1]["body"]
        assert body["stream"] is True and body["messages"] == [
            {"role": "system", "content": VOICE_SYSTEM_PROMPT},
            {"role": "user", "content": QUESTION},
        ]


def test_the_default_agent_is_honest_without_a_language_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    agent = default_agent()
    assert isinstance(agent, EchoAgent) and "no language model" in agent.name
    first = agent([{"role": "user", "content": "Hello there."}])
    assert first.startswith(EchoAgent.introduction) and first.endswith("You said: Hello there.")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert getattr(default_agent(), "name", "").startswith("LLM ")


async def answer_events(source: Any) -> list[str | FlushEvent]:
    return [event async for event in AgentAnswer(lambda messages: source, []).stream()]


async def test_the_first_clause_of_an_answer_is_flushed_on_its_own() -> None:
    """A short first piece for the voice: cut after the first clause of two words or more,
    wherever the tokens split, when it ends before the first sentence; never a word lost."""
    whole = "You said: What is the capital of France? Tell me."
    assert await answer_events(whole) == [
        "You said:",
        FlushEvent(),
        " What is the capital of France? Tell me.",
    ]
    tokens = await answer_events(iter(llm_tokens("In short, Paris is. It is big.")))
    assert tokens.index(FlushEvent()) == tokens.index(" Paris") - 1  # right after "short,"
    assert "".join(t for t in tokens if isinstance(t, str)) == "In short, Paris is. It is big."
    # A lone word before the comma, or a sentence first: only the sentence flushes.
    for text in ("Sure, Paris is. It is big.", "Yes. Paris, of course, is. It is."):
        events = await answer_events(iter(llm_tokens(text)))
        flush = events.index(FlushEvent())
        assert "".join(e for e in events[:flush] if isinstance(e, str)).endswith(".")
    # The agent's own flush comes first: nothing is added.
    assert await answer_events(iter(["Well, then:", FlushEvent(), " go on, please."])) == [
        "Well, then:",
        FlushEvent(),
        " go on, please.",
    ]


async def test_an_answer_stream_reports_its_first_token_and_closes_its_source() -> None:
    closed = asyncio.Event()
    firsts: list[str] = []

    async def tokens() -> AsyncIterator[str]:
        try:
            for token in ["Hi.", " There", " you", " are."]:
                yield token
        finally:
            closed.set()

    answer = AgentAnswer(
        lambda messages: tokens(), [], on_first_token=lambda: firsts.append(answer.text)
    )
    stream = answer.stream()
    got = [await stream.__anext__() for _ in range(3)]
    assert got == ["Hi.", FlushEvent(), " There"] and firsts == [""]
    await answer.aclose()
    await stream.aclose()
    assert closed.is_set() and answer.text == "Hi. There"


@pytest.mark.kernel
@pytest.mark.timeout(180)
def test_hear_answers_inside_a_notebook_cell(
    cloud: CloudDouble, local_server: ThreadedServer, question_wav: Path, tmp_path: Path
) -> None:
    """In a real kernel (as nbclient runs a notebook): the cell blocks in hear() while the
    loop's work runs on fish-notebook's own thread, and returns the answered turn."""
    import jupyter_client

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FISH_", "OPENAI_"))}
    env["FISH_BASE_URL"] = local_server.url  # the answer's speech
    manager = jupyter_client.KernelManager(kernel_name="python3")
    manager.start_kernel(env=env, cwd=str(tmp_path))
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        code = (
            "import json\n"
            "from fish_notebook import VoiceLoop\n"
            f"loop = VoiceLoop(asr_base_url={cloud.base_url!r}, "
            f"asr_api_key={cloud.script.api_key!r})\n"
            f"turn = loop.hear({str(question_wav)!r})\n"
            "print(json.dumps([turn.user, turn.agent, turn.heard, turn.session.state, "
            "turn.session.duration > 1, loop.state]))"
        )
        out: list[str] = []

        def keep(message: dict[str, Any]) -> None:
            if message["msg_type"] == "stream":
                out.append(message["content"]["text"])

        reply = client.execute_interactive(code, timeout=150, output_hook=keep)
        assert reply["content"]["status"] == "ok", reply["content"].get("evalue")
        user, agent, heard, state, spoke, loop_state = json.loads("".join(out).splitlines()[-1])
        assert (user, agent) == (QUESTION, EchoAgent.name)
        assert heard == f"{EchoAgent.introduction} You said: {QUESTION}"
        assert (state, spoke, loop_state) == ("finished", True, "listening")
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
