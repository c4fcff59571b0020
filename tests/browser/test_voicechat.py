"""The voice chat in a real page: JupyterLab in headless Chromium with a fake microphone.

Chromium's fake capture device plays a WAV file made here with the embedded Piper voice (and
loops it); the widget's AudioWorklet turns it into 16 kHz frames sent to the kernel, whose
voice loop detects the turns, sends each utterance to ``POST /v1/asr`` and speaks the agent's
answer with the suite's embedded TTS server; the answer plays in the widget's player.

Speech recognition is the same embedded server's ``POST /v1/asr`` (Whisper tiny.en), the
kernel's default: every part of the loop is real. Each transcript is checked word for word
against the text its utterance was spoken from (punctuation aside), and its duration shows
the utterance reached recognition whole.

Each capture file needs a browser of its own (the file is a launch flag): the fixtures below
launch them, apart from the suite's shared browser. Figures (voice-to-voice, barge-in) are
printed and written to test-artifacts/browser_metrics.json, never asserted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fish_notebook.audio import wav_bytes

from ..helpers import spoken_words
from .conftest import (
    ARTIFACTS,
    CHROMIUM_FLAGS,
    REPO,
    Lab,
    NotebookPage,
    launch,
    notebook_page,
    write_metrics,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

QUESTION = "What is the capital of France? Tell me in one short sentence."
INTERRUPTION = "Wait, stop please. Tell me about Berlin instead."
#: A long answer, written at once: it is still playing when the user talks over it.
ANSWER = (
    "Paris is the capital of France. It stands on the river Seine, in the north of the "
    "country. It is known for its museums, its cafes and its old bridges. Millions of people "
    "visit it every year, and many of them climb the Eiffel Tower."
)
SHORT_ANSWER = "Paris is the capital of France."
BERLIN = "Berlin is the capital of Germany, and its largest city."
FAKE_MIC = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


def spoken(text: str) -> tuple[bytes, int]:
    """``text`` spoken by the embedded Piper voice: 16-bit mono PCM and its rate."""
    from fish_notebook.local.engine import VoiceLibrary

    chunks = list(VoiceLibrary().default().synthesize(text))
    return b"".join(chunk.pcm for chunk in chunks), chunks[0].sample_rate


@pytest.fixture(scope="module")
def capture_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fake microphone's files: ``question`` (the question, then 10 s of silence: the
    answer plays out before the file loops) and ``barge_in`` (the question, a 10 s pause in
    which the answer starts, a second utterance over it, then 20 s of silence: on a loaded
    machine the second turn's transcript and answer take a while, and the question said
    again by the looping file would join that turn)."""
    folder = tmp_path_factory.mktemp("mic")
    question, rate = spoken(QUESTION)
    interruption, _ = spoken(INTERRUPTION)
    silence = bytes(2 * rate)  # one second
    files = {
        "question": question + 10 * silence,
        "barge_in": question + 10 * silence + interruption + 20 * silence,
    }
    paths = {}
    for name, pcm in files.items():
        paths[name] = folder / f"{name}.wav"
        paths[name].write_bytes(wav_bytes(pcm, rate))
    return paths


@pytest.fixture(scope="module", autouse=True)
def _warm_server(tts_server: Any) -> None:
    """The voice loop asks for word timings and speech recognition: the server's voice with
    per-phoneme timing and its Whisper model load on first use (seconds on a loaded
    machine), here rather than in the first turn."""
    started = time.monotonic()
    tts_server.voices.default(alignment=True)
    tts_server.transcriber().load()
    print(f"timestamp voice and Whisper loaded in {time.monotonic() - started:.1f} s")


def chat_cell(
    answer: str, *, listen: bool = True, mode: str = "hands-free", pace: float | None = None
) -> str:
    """The cell showing the chat: its agent answers ``answer``, or about Berlin when asked;
    with ``pace``, it writes ``answer`` a word every ``pace`` seconds, as a slow LLM streams
    (``closed`` notes when its stream is closed). Speech and speech recognition go where the
    kernel's defaults say: the suite's server."""
    written = f"written({answer!r}, {pace!r})" if pace is not None else repr(answer)
    return (
        "import time\n"
        "from fish_notebook.voicechat import VoiceChat\n"
        "errors, closed = [], []\n"
        "def written(text, pace):\n"
        "    try:\n"
        "        for word in text.split(' '):\n"
        "            yield word + ' '\n"
        "            time.sleep(pace)\n"
        "    finally:\n"
        "        closed.append(True)\n"
        "def agent(messages):\n"
        f"    return {BERLIN!r} if 'Berlin' in messages[-1]['content'] else {written}\n"
        f"chat = VoiceChat(agent, listen={listen}, mode={mode!r}, on_error=errors.append)\n"
        "chat"
    )


def panel_stats(notebook: NotebookPage) -> dict[str, Any]:
    text = notebook.page.locator(".fishnb-chat").first.get_attribute("data-stats")
    return json.loads(text) if text else {}


def wait_panel(notebook: NotebookPage, predicate: str, timeout_ms: int = 60_000) -> None:
    """Wait until ``predicate`` (a JS function of the panel element) is true."""
    try:
        notebook.page.wait_for_function(
            """(source) => {
                const el = document.querySelector(".fishnb-chat");
                return !!el && !!(0, eval)(source)(el);
            }""",
            arg=predicate,
            timeout=timeout_ms,
        )
    except Exception as exc:
        raise AssertionError(
            f"{predicate} not true in {timeout_ms} ms: {exc}\npanel stats: {panel_stats(notebook)}"
            f"\ncell errors: {notebook.cell_errors()}\nconsole: {notebook.console[-10:]}"
        ) from exc


def catch_stats(notebook: NotebookPage, predicate: str, timeout_ms: int = 60_000) -> Any:
    """The stats of the first player (of any in the page) for which ``predicate`` (a JS
    function of the stats) holds, caught as they change: a player replaced a moment later
    still counts, where :meth:`NotebookPage.wait_stats` looks only at the players there are."""
    page = notebook.page
    page.evaluate(
        """(source) => {
            const holds = (0, eval)(source);
            window.__fishnbCaught = null;
            const look = (el) => {
                const stats = el.dataset.stats && JSON.parse(el.dataset.stats);
                if (stats && window.__fishnbCaught === null && holds(stats)) {
                    window.__fishnbCaught = stats;
                }
            };
            document.querySelectorAll(".fishnb-player").forEach(look);
            new MutationObserver((changes) => changes.forEach((c) => look(c.target))).observe(
                document.body, { subtree: true, attributeFilter: ["data-stats"] });
        }""",
        predicate,
    )
    try:
        page.wait_for_function("() => window.__fishnbCaught !== null", timeout=timeout_ms)
    except Exception as exc:
        raise AssertionError(
            f"no player had {predicate} within {timeout_ms} ms: {exc}\n"
            f"stats: {json.dumps(notebook.stats())[:2000]}\ncell errors: {notebook.cell_errors()}"
        ) from exc
    return page.evaluate("() => window.__fishnbCaught")


def utterance_seconds(notebook: NotebookPage) -> list[float]:
    """How long each utterance sent to speech recognition was (the server's ``duration``)."""
    return notebook.kernel_json("[t.transcript.duration for t in chat.turns if t.transcript]")


@contextlib.contextmanager
def chat_page(
    lab: Lab, playwright: Any, flags: list[str], name: str, cell: str
) -> Iterator[NotebookPage]:
    """A browser launched with ``flags`` (the suite's and these), showing the chat of
    ``cell``, run; the browser closes and the kernel is shut down after."""
    browser = launch(playwright, [*CHROMIUM_FLAGS, *flags])
    try:
        with notebook_page(lab, browser) as notebook:
            notebook.open(name, [cell])
            notebook.run_all()
            notebook.wait_cells_done(timeout_ms=90_000)
            assert notebook.cell_errors() == []
            yield notebook
    finally:
        browser.close()


def test_a_spoken_question_goes_round_the_whole_loop(
    lab: Lab, playwright: Any, capture_files: dict[str, Path]
) -> None:
    """Fake microphone -> page -> kernel -> detector -> /v1/asr -> agent -> TTS -> page."""
    flags = [*FAKE_MIC, f"--use-file-for-fake-audio-capture={capture_files['question']}"]
    cell = chat_cell(SHORT_ANSWER)
    with chat_page(lab, playwright, flags, "voice_loop.ipynb", cell) as notebook:
        wait_panel(notebook, "el => el.dataset.mic === 'on'")
        mic = notebook.kernel_json("chat.microphone")
        assert mic["settings"]["echoCancellation"] is True
        assert mic["settings"]["noiseSuppression"] is True
        assert mic["settings"]["autoGainControl"] is True

        # The answer reaches the page and plays there to its end, which the page reports.
        notebook.wait_stats("s => s.scheduled > 0", timeout_ms=120_000)
        stats = notebook.wait_stats("s => s.status === 'finished' && !s.playing")
        notebook.wait_kernel("len(chat.turns) >= 1 and chat.turns[0].done", True, 30)
        notebook.kernel("chat.stop()")
        wait_panel(notebook, "el => JSON.parse(el.dataset.stats).status === 'off'")
        panel = panel_stats(notebook)
        turn = notebook.kernel_json(
            "dict(user=chat.turns[0].user, answer=chat.turns[0].answer,"
            " heard=chat.turns[0].heard, interrupted=chat.turns[0].interrupted,"
            " latencies=chat.turns[0].metrics.latencies(), frames=chat.frames,"
            " lost=chat.lost_frames, errors=[str(e) for e in errors],"
            " session=chat.turns[0].session.state)"
        )

        assert spoken_words(turn["user"]) == spoken_words(QUESTION) and turn["errors"] == []
        assert turn["answer"] == SHORT_ANSWER and turn["heard"] == SHORT_ANSWER
        assert not turn["interrupted"] and turn["session"] == "finished"
        assert stats["scheduled_seqs"] == list(range(stats["chunk_count"]))
        assert stats["position_s"] == pytest.approx(stats["audio_s"], abs=0.05)
        # The utterance reached speech recognition whole (Piper's question is 3-4 s).
        seconds = utterance_seconds(notebook)
        assert seconds and 2.5 < seconds[0] < 6.0, seconds
        # Every frame the page sent reached the kernel, in order (20 ms each).
        assert turn["lost"] == 0 and turn["frames"] == panel["frames_sent"] > 200
        assert panel["capture_rate"] in (44100, 48000) and panel["loudest_db"] > -40
        lat = turn["latencies"]
        for step in ("turn_end_s", "transcript_s", "first_audio_s", "first_sample_s"):
            assert lat[step] is not None and lat[step] > 0, step
        assert lat["turn_end_s"] <= lat["transcript_s"] <= lat["first_audio_s"]
        assert lat["first_audio_s"] <= lat["first_sample_s"]
        # The widget shows the turn and its voice-to-voice time.
        text = notebook.page.locator(".fishnb-chat-turn").first.inner_text()
        assert QUESTION in text and SHORT_ANSWER in text and "voice-to-voice" in text
        figures = {
            "voicechat_voice_to_voice_s": lat["first_sample_s"],
            "voicechat_transcript_s": lat["transcript_s"],
            "voicechat_first_audio_s": lat["first_audio_s"],
        }
        write_metrics("browser_metrics.json", figures)
        print("voice chat figures:", json.dumps(figures))


def test_talking_over_the_answer_silences_it_in_the_page(
    lab: Lab, playwright: Any, capture_files: dict[str, Path]
) -> None:
    """A second utterance over the answer, which the agent is still writing: the page fades
    it out, the kernel stops the session and the agent's stream and keeps what was heard."""
    flags = [*FAKE_MIC, f"--use-file-for-fake-audio-capture={capture_files['barge_in']}"]
    cell = chat_cell(ANSWER, pace=0.3)  # 15 s of writing: still going at the interruption
    with chat_page(lab, playwright, flags, "voice_barge_in.ipynb", cell) as notebook:
        notebook.wait_stats("s => s.scheduled > 0", timeout_ms=120_000)
        # Silenced in the page: nothing plays, well before the answer's end. The answer to
        # the interruption replaces its player soon after: the page keeps the stats it had.
        stats = catch_stats(notebook, "s => s.status === 'stopped' && !s.playing")
        notebook.wait_kernel("len(chat.turns) >= 1 and chat.turns[0].done", True, 30)
        first = notebook.kernel_json(
            "dict(interrupted=chat.turns[0].interrupted, heard=chat.turns[0].heard,"
            " answer=chat.turns[0].answer, session=chat.turns[0].session.wait(10)"
            " and chat.turns[0].session.state, fade=chat.fades.get(id(chat.turns[0])),"
            " playhead=chat.turns[0].heard_detail.playhead,"
            " method=chat.turns[0].heard_detail.method,"
            " latencies=chat.turns[0].metrics.latencies(), messages=chat.messages(),"
            " closed=closed)"
        )
        assert first["interrupted"] and first["session"] == "stopped"
        assert first["closed"] == [True], "the agent's stream was closed"
        assert first["fade"], "the page reported its fade"
        heard, answer, whole = first["heard"].split(), first["answer"].split(), ANSWER.split()
        assert 0 < len(answer) < len(whole) and whole[: len(answer)] == answer
        assert 0 < len(heard) <= len(answer) and answer[: len(heard)] == heard
        assert first["method"] == "words" and 0 < first["playhead"] <= stats["audio_s"]
        assert stats["position_s"] == pytest.approx(first["playhead"], abs=0.05)
        assert first["messages"][1] == {"role": "assistant", "content": first["heard"]}
        lat = first["latencies"]
        assert lat["barge_in_to_silence_s"] is not None and lat["barge_in_to_silence_s"] > 0

        # The interruption is the user's next turn, answered in a new player.
        wait_panel(notebook, "el => el.querySelector('.fishnb-chat-cut')")
        notebook.wait_kernel("len(chat.turns) >= 2 and chat.turns[1].session is not None", True, 60)
        # Chromium's echo canceller may damp the first word said over the answer (double
        # talk): the words heard are the interruption's, from its first or a later word.
        heard_next = spoken_words(notebook.kernel_json("chat.turns[1].user"))
        assert (
            "berlin" in heard_next and spoken_words(INTERRUPTION)[-len(heard_next) :] == heard_next
        )
        # Each utterance reached speech recognition whole, the interruption from its onset.
        seconds = utterance_seconds(notebook)
        assert len(seconds) == 2 and 2.5 < seconds[0] < 6.0 and 1.5 < seconds[1] < 5.0, seconds
        notebook.wait_stats("s => s.scheduled > 0 && s.position_s > 1", timeout_ms=60_000)
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "voicechat.png"
        output = notebook.page.locator(".jp-Cell-outputArea").first
        output.screenshot(path=str(shot), timeout=10_000)
        if os.environ.get("FISH_NOTEBOOK_UPDATE_DOCS"):  # refresh the README's picture
            shutil.copyfile(shot, REPO / "docs" / "voicechat.png")
        notebook.kernel("chat.stop()")
        figures = {
            "voicechat_barge_in_s": lat["barge_in_to_silence_s"],
            "voicechat_barge_in_page_fade_ms": first["fade"].get("fade_ms"),
            "voicechat_barge_in_page_took_ms": first["fade"].get("took_ms"),
            "voicechat_barge_in_first_voice_to_voice_s": lat["first_sample_s"],
        }
        write_metrics("browser_metrics.json", figures)
        print("voice chat barge-in figures:", json.dumps(figures))


def test_push_to_talk_sends_frames_only_while_the_button_is_held(
    lab: Lab, playwright: Any, capture_files: dict[str, Path]
) -> None:
    """Push-to-talk: the microphone runs (the meter moves) but nothing reaches the kernel
    until the button is held; the release ends the turn after the last frames."""
    flags = [*FAKE_MIC, f"--use-file-for-fake-audio-capture={capture_files['question']}"]
    cell = chat_cell(SHORT_ANSWER, mode="push-to-talk")
    with chat_page(lab, playwright, flags, "voice_push.ipynb", cell) as notebook:
        wait_panel(notebook, "el => JSON.parse(el.dataset.stats || '{}').loudest_db > -40")
        assert panel_stats(notebook)["frames_sent"] == 0
        assert notebook.kernel_json("chat.frames") == 0
        talk = notebook.page.locator(".fishnb-chat-talk")
        assert talk.is_visible() and talk.is_enabled()

        talk.hover()
        notebook.page.mouse.down()
        wait_panel(notebook, "el => JSON.parse(el.dataset.stats).frames_sent >= 50")
        notebook.page.mouse.up()
        wait_panel(notebook, "el => !JSON.parse(el.dataset.stats).talking")
        notebook.page.wait_for_timeout(1000)  # the release's tail has gone, nothing more comes
        sent = panel_stats(notebook)
        notebook.page.wait_for_timeout(1000)
        assert panel_stats(notebook)["frames_sent"] == sent["frames_sent"] >= 50
        assert sent["talks"] == 1 and sent["in_flight"] == 0
        notebook.wait_kernel("[chat.frames, chat.lost_frames]", [sent["frames_sent"], 0])
        notebook.wait_kernel("chat.state != 'user_speaking'", True)  # the release ended it
        notebook.kernel("chat.stop()")


def test_a_refused_microphone_shows_in_the_widget_and_in_python(lab: Lab, playwright: Any) -> None:
    """No permission (a fake device, but no fake consent): the widget says what to do,
    and the kernel has the MicrophoneError."""
    cell = chat_cell(SHORT_ANSWER)
    with chat_page(
        lab, playwright, ["--use-fake-device-for-media-stream"], "voice_refused.ipynb", cell
    ) as notebook:
        wait_panel(notebook, "el => el.dataset.mic === 'error'")
        wait_panel(notebook, "el => /Allow microphone access/.test(el.innerText)")
        error = notebook.kernel_json(
            "dict(kind=type(chat.error).__name__, reason=chat.error.reason,"
            " name=chat.error.name, hooked=[type(e).__name__ for e in errors],"
            " listen=chat.panel.listen, frames=chat.frames)"
        )
        assert error == {
            "kind": "MicrophoneError",
            "reason": "denied",
            "name": "NotAllowedError",
            "hooked": ["MicrophoneError"],
            "listen": False,
            "frames": 0,
        }
        button = notebook.page.locator(".fishnb-chat-mic")
        assert button.inner_text() == "Try the microphone again"
        alert = notebook.page.locator(".fishnb-chat-error")
        assert alert.is_visible() and "NotAllowedError" in alert.inner_text()
        notebook.screenshot("voicechat-refused.png")
