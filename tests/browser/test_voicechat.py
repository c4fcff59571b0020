"""The voice chat in a real page: JupyterLab in headless Chromium with a fake microphone.

Chromium's fake capture device plays a WAV file made here with the embedded Piper voice (and
loops it); the widget's AudioWorklet turns it into 16 kHz frames sent to the kernel, whose
voice loop detects the turns, sends each utterance to ``POST /v1/asr`` and speaks the agent's
answer with the suite's embedded TTS server; the answer plays in the widget's player.

Speech recognition is the cloud double's ``POST /v1/asr`` (a canned transcript, in this test
process): the embedded server's own endpoint is not on this branch yet. The double keeps the
audio it was sent, so the test checks that each utterance reached it whole.

Each capture file needs a browser of its own (the file is a launch flag): the fixtures below
launch them, apart from the suite's shared browser. Figures (voice-to-voice, barge-in) are
printed and written to test-artifacts/browser_metrics.json, never asserted.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fish_notebook.audio import wav_bytes

from ..cloud_double import CloudDouble, Script
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
    answer plays out before the file loops) and ``barge_in`` (the question, a 6 s pause in
    which the answer starts, a second utterance over it, then 8 s of silence)."""
    folder = tmp_path_factory.mktemp("mic")
    question, rate = spoken(QUESTION)
    interruption, _ = spoken(INTERRUPTION)
    silence = bytes(2 * rate)  # one second
    files = {
        "question": question + 10 * silence,
        "barge_in": question + 6 * silence + interruption + 8 * silence,
    }
    paths = {}
    for name, pcm in files.items():
        paths[name] = folder / f"{name}.wav"
        paths[name].write_bytes(wav_bytes(pcm, rate))
    return paths


@pytest.fixture(scope="module", autouse=True)
def _timestamp_voice(tts_server: Any) -> None:
    """The voice loop asks for word timings: the server's voice with per-phoneme timing
    loads on first use (seconds on a loaded machine), here rather than in the first turn."""
    started = time.monotonic()
    tts_server.voices.default(alignment=True)
    print(f"timestamp voice loaded in {time.monotonic() - started:.1f} s")


@pytest.fixture
def cloud() -> Iterator[CloudDouble]:
    """Speech recognition for the kernel: the double's POST /v1/asr, a canned transcript."""
    transcript = {"text": QUESTION, "duration": 4.0, "segments": []}
    with CloudDouble(Script(transcript=transcript)) as double:
        yield double


def chat_cell(
    cloud: CloudDouble, answer: str, *, listen: bool = True, mode: str = "hands-free"
) -> str:
    """The cell showing the chat: its agent answers ``answer``, or about Berlin when asked."""
    return (
        "from fish_notebook.voicechat import VoiceChat\n"
        "errors = []\n"
        "def agent(messages):\n"
        f"    return {BERLIN!r} if 'Berlin' in messages[-1]['content'] else {answer!r}\n"
        f"chat = VoiceChat(agent, asr_base_url={cloud.base_url!r},\n"
        f"                 asr_api_key={cloud.script.api_key!r}, listen={listen},\n"
        f"                 mode={mode!r},\n"
        "                 on_error=errors.append)\n"
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


def asr_audio_seconds(cloud: CloudDouble) -> list[float]:
    """How long each utterance sent to speech recognition was."""
    out = []
    for record in cloud.requests:
        if record.path == "/v1/asr":
            with wave.open(io.BytesIO(record.body["audio"])) as w:
                out.append(w.getnframes() / w.getframerate())
    return out


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
    lab: Lab, playwright: Any, capture_files: dict[str, Path], cloud: CloudDouble
) -> None:
    """Fake microphone -> page -> kernel -> detector -> /v1/asr -> agent -> TTS -> page."""
    flags = [*FAKE_MIC, f"--use-file-for-fake-audio-capture={capture_files['question']}"]
    cell = chat_cell(cloud, SHORT_ANSWER)
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

        assert turn["user"] == QUESTION and turn["errors"] == []
        assert turn["answer"] == SHORT_ANSWER and turn["heard"] == SHORT_ANSWER
        assert not turn["interrupted"] and turn["session"] == "finished"
        assert stats["scheduled_seqs"] == list(range(stats["chunk_count"]))
        assert stats["position_s"] == pytest.approx(stats["audio_s"], abs=0.05)
        # The utterance reached speech recognition whole (Piper's question is 3-4 s).
        seconds = asr_audio_seconds(cloud)
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


@pytest.mark.xfail(
    reason="open (issue 13): since the page-wide queue, socket reuse and the new server landed "
    "beside the voice chat, the answer in this test ends after its first sentences (3 s) "
    "instead of playing on until the interruption; not yet explained",
    strict=False,
)
def test_talking_over_the_answer_silences_it_in_the_page(
    lab: Lab, playwright: Any, capture_files: dict[str, Path], cloud: CloudDouble
) -> None:
    """A second utterance over the answer: the page fades it out, the kernel stops it and
    keeps what was heard."""
    flags = [*FAKE_MIC, f"--use-file-for-fake-audio-capture={capture_files['barge_in']}"]
    cell = chat_cell(cloud, ANSWER)
    with chat_page(lab, playwright, flags, "voice_barge_in.ipynb", cell) as notebook:
        notebook.wait_stats("s => s.scheduled > 0", timeout_ms=120_000)
        # The question was transcribed: what comes next is the interruption.
        cloud.script.transcript = {"text": INTERRUPTION, "duration": 3.0, "segments": []}
        # Silenced in the page: nothing plays, well before the answer's end.
        stats = notebook.wait_stats("s => s.status === 'stopped' && !s.playing", timeout_ms=60_000)
        notebook.wait_kernel("len(chat.turns) >= 1 and chat.turns[0].done", True, 30)
        first = notebook.kernel_json(
            "dict(interrupted=chat.turns[0].interrupted, heard=chat.turns[0].heard,"
            " answer=chat.turns[0].answer, session=chat.turns[0].session.wait(10)"
            " and chat.turns[0].session.state, fade=chat.fades.get(id(chat.turns[0])),"
            " playhead=chat.turns[0].heard_detail.playhead,"
            " method=chat.turns[0].heard_detail.method,"
            " latencies=chat.turns[0].metrics.latencies(), messages=chat.messages())"
        )
        assert first["interrupted"] and first["session"] == "stopped"
        assert first["fade"], "the page reported its fade"
        heard, answer = first["heard"].split(), first["answer"].split()
        assert answer == ANSWER.split()
        assert 0 < len(heard) < len(answer) and answer[: len(heard)] == heard
        assert first["method"] == "words" and 0 < first["playhead"] <= stats["audio_s"]
        assert stats["position_s"] == pytest.approx(first["playhead"], abs=0.05)
        assert first["messages"][1] == {"role": "assistant", "content": first["heard"]}
        lat = first["latencies"]
        assert lat["barge_in_to_silence_s"] is not None and lat["barge_in_to_silence_s"] > 0

        # The interruption is the user's next turn, answered in a new player.
        wait_panel(notebook, "el => el.querySelector('.fishnb-chat-cut')")
        notebook.wait_kernel("len(chat.turns) >= 2 and chat.turns[1].session is not None", True)
        assert notebook.kernel_json("chat.turns[1].user") == INTERRUPTION
        # Each utterance reached speech recognition whole, the interruption from its onset.
        seconds = asr_audio_seconds(cloud)
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
    lab: Lab, playwright: Any, capture_files: dict[str, Path], cloud: CloudDouble
) -> None:
    """Push-to-talk: the microphone runs (the meter moves) but nothing reaches the kernel
    until the button is held; the release ends the turn after the last frames."""
    flags = [*FAKE_MIC, f"--use-file-for-fake-audio-capture={capture_files['question']}"]
    cell = chat_cell(cloud, SHORT_ANSWER, mode="push-to-talk")
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


def test_a_refused_microphone_shows_in_the_widget_and_in_python(
    lab: Lab, playwright: Any, cloud: CloudDouble
) -> None:
    """No permission (a fake device, but no fake consent): the widget says what to do,
    and the kernel has the MicrophoneError."""
    cell = chat_cell(cloud, SHORT_ANSWER)
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
