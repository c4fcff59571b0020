"""The voice chat's kernel side with real parts: the page's messages (as the widget sends
them) drive a real voice loop (Silero detector, speech recognition through the cloud
double's ``POST /v1/asr`` with a canned transcript, the embedded server's voice), and what
the kernel sends back to the page is read from a recording comm. The page itself is tested
in tests/browser/test_voicechat.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import comm
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from fish_notebook.agents import EchoAgent
from fish_notebook.audio import wav_bytes
from fish_notebook.converse import ConverseMagics, agent_from_code
from fish_notebook.errors import AuthenticationError, MicrophoneError
from fish_notebook.local.engine import VoiceLibrary
from fish_notebook.local.server import ThreadedServer
from fish_notebook.voicechat import (
    PUSH_TO_TALK,
    MicrophonePanel,
    VoiceChat,
    microphone_error,
    turn_summary,
)
from fish_notebook.voiceloop import FRAME_BYTES, microphone_pcm
from fish_notebook.widget import Player
from tests.cloud_double import CloudDouble, Script
from tests.helpers import wait_until
from tests.test_voiceloop import LONG_ANSWER, QUESTION, slow_agent, words
from tests.test_widget import RecordingComm

SILENCE = bytes(FRAME_BYTES)


@pytest.fixture(autouse=True)
def recording_comm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Widgets made here talk to a RecordingComm: what would reach the page is kept."""
    monkeypatch.setattr(comm, "create_comm", lambda **kwargs: RecordingComm(**kwargs))


@pytest.fixture(scope="module")
def question_pcm(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The question spoken by Piper, as the page's microphone sends it (16 kHz mono)."""
    chunks = list(VoiceLibrary().default().synthesize(QUESTION))
    pcm = b"".join(chunk.pcm for chunk in chunks)
    path = tmp_path_factory.mktemp("chat") / "question.wav"
    path.write_bytes(wav_bytes(pcm, chunks[0].sample_rate))
    return microphone_pcm(path)


@pytest.fixture
def cloud() -> Iterator[CloudDouble]:
    transcript = {"text": QUESTION, "duration": 4.0, "segments": []}
    with CloudDouble(Script(transcript=transcript)) as double:
        yield double


@pytest.fixture
def make_chat(cloud: CloudDouble, local_server: ThreadedServer) -> Iterator[Callable[..., Any]]:
    chats: list[VoiceChat] = []

    def make(agent: Any = None, **options: Any) -> VoiceChat:
        options.setdefault("asr_api_key", cloud.script.api_key)
        chat = VoiceChat(
            agent or EchoAgent(), base_url=local_server.url, asr_base_url=cloud.base_url, **options
        )
        chats.append(chat)
        return chat

    yield make
    for chat in chats:
        chat.close()


def page_says(widget: Any, content: dict[str, Any], buffers: list[bytes] | None = None) -> None:
    """Deliver a message as the page would send it."""
    widget._handle_custom_msg(content, [memoryview(b) for b in buffers or []])


class Page:
    """Stands for the widget's page: sends microphone frames, reads what the kernel sent."""

    def __init__(self, chat: VoiceChat) -> None:
        self.chat = chat
        self.seq = 0
        page_says(chat.panel, {"kind": "page"})

    def speak(self, pcm: bytes, silence_s: float = 0.0, batch: int = 1) -> None:
        """Send ``pcm`` and ``silence_s`` of silence in 20 ms frames, ``batch`` a message."""
        pcm = pcm + SILENCE * round(silence_s * 50)
        step = FRAME_BYTES * batch
        for at in range(0, len(pcm), step):
            frames = -(-len(pcm[at : at + step]) // FRAME_BYTES)
            content = {"kind": "mic", "seq": self.seq, "frames": frames}
            page_says(self.chat.panel, content, [pcm[at : at + step]])
            self.seq += frames

    def player(self) -> Player:
        children = self.chat.answer_box.children
        assert len(children) == 1 and isinstance(children[0], Player)
        return children[0]

    def received(self, player: Player) -> list[dict[str, Any]]:
        assert isinstance(player.comm, RecordingComm)
        return [content for content, _ in player.comm.custom()]


def test_frames_from_the_page_make_a_turn_answered_in_the_widgets_player(
    make_chat: Callable[..., VoiceChat], question_pcm: bytes
) -> None:
    chat = make_chat()
    page = Page(chat)
    assert chat.loop.wait_for_page  # a page is there: answers last until it played them
    page.speak(question_pcm, silence_s=1.0, batch=3)  # frames batched as a busy page does
    turn = wait_until(lambda: chat.turns and chat.turns[-1].session, "the answer", timeout=60)
    turn = chat.turns[-1]
    player = page.player()
    assert player.recording is turn.session.recording  # the answer's own player
    assert chat.frames == page.seq and chat.lost_frames == 0

    page_says(player, {"kind": "first-sample", "ahead_ms": 30})
    assert turn.metrics.first_sample is not None
    assert turn.metrics.voice_to_voice_s is not None and turn.metrics.voice_to_voice_s > 0
    turn.session.wait(60)
    assert not turn.done  # the page has not played it yet
    page_says(player, {"kind": "ended"})
    wait_until(lambda: turn.done, "the turn to end")
    assert turn.user == QUESTION and turn.heard == turn.answer and not turn.interrupted
    wait_until(lambda: chat.panel.turns and chat.panel.turns[-1]["done"], "the turns drawn")
    drawn = chat.panel.turns[-1]
    assert drawn == turn_summary(turn)
    assert drawn["user"] == QUESTION and drawn["heard"] == turn.answer
    assert [label for label, _ in drawn["metrics"]][:1] == ["voice-to-voice"]
    assert chat.panel.state == "listening" and chat.state == "listening"


def test_talking_over_the_answer_fades_it_in_the_page_and_keeps_what_was_heard(
    make_chat: Callable[..., VoiceChat], question_pcm: bytes
) -> None:
    ended: dict[str, Any] = {}
    chat = make_chat(slow_agent("sync", ended))
    page = Page(chat)
    page.speak(question_pcm, silence_s=1.0)
    first = wait_until(lambda: chat.turns and chat.turns[-1], "the first turn", timeout=60)
    session = wait_until(lambda: first.session, "the answer's session", timeout=30)
    wait_until(lambda: len(session.words) >= 6, "the answer's first words", timeout=60)
    player = page.player()
    assert {"kind": "fade"} not in page.received(player)

    page.speak(question_pcm[: 16_000 * 2])  # a second of speech over the answer
    assert {"kind": "fade"} in page.received(player)  # the page is asked to silence it
    assert not first.interrupted
    page_says(player, {"kind": "stopped", "playhead": 1.0, "fade_ms": 12, "took_ms": 0.4})
    ended["release"].set()
    assert first.interrupted and first.done
    assert ended["closed"].wait(15) and not ended.get("finished")
    session.wait(15)
    assert session.state == "stopped"
    assert first.heard_detail is not None and first.heard_detail.playhead == 1.0
    heard = words(first.heard)
    assert 0 < len(heard) < len(words(LONG_ANSWER)) and words(LONG_ANSWER)[: len(heard)] == heard
    assert first.metrics.barge_in_s is not None and first.metrics.barge_in_s > 0
    assert chat.fades[id(first)] == {"fade_ms": 12.0, "took_ms": 0.4}
    drawn = wait_until(lambda: chat.panel.turns and chat.panel.turns[0]["interrupted"], "cut")
    assert drawn and chat.panel.turns[0]["heard"] == first.heard
    assert chat.panel.turns[0]["unheard"].split() == words(first.answer)[len(heard) :]
    assert chat.messages()[1] == {"role": "assistant", "content": first.heard}


def test_a_late_report_from_the_page_never_cuts_a_newer_answer(
    make_chat: Callable[..., VoiceChat], question_pcm: bytes
) -> None:
    chat = make_chat()
    page = Page(chat)
    chat.loop.wait_for_page = False
    page.speak(question_pcm, silence_s=1.0)
    chat.loop.wait(90)
    (turn,) = chat.turns
    old_player = page.player()
    page_says(old_player, {"kind": "stopped", "playhead": 0.2})  # long after its end
    assert not turn.interrupted and turn.heard == turn.answer
    page.seq += 5  # five frames the page numbered never came
    page.speak(SILENCE * 2)
    assert chat.lost_frames == 5 and chat.frames == page.seq - 5


def test_push_to_talk_sends_a_turn_when_the_button_is_released(
    make_chat: Callable[..., VoiceChat], question_pcm: bytes
) -> None:
    chat = make_chat(mode=PUSH_TO_TALK)
    page = Page(chat)
    chat.loop.wait_for_page = False
    page_says(chat.panel, {"kind": "talk", "down": True})
    page.speak(question_pcm)  # no silence after it: the release ends the turn
    assert chat.turns == [] and chat.state == "user_speaking"
    page_says(chat.panel, {"kind": "talk", "down": False})
    chat.loop.wait(90)
    (turn,) = chat.turns
    assert turn.user == QUESTION and turn.done and not turn.interrupted


@pytest.mark.parametrize(
    ("name", "reason", "advice"),
    [
        ("NotAllowedError", "denied", "Allow microphone access"),
        ("NotFoundError", "no-device", "No microphone was found"),
        ("NotReadableError", "busy", "another program"),
        ("InsecureContext", "insecure", "https://"),
        ("NotSupportedError", "unsupported", "recent Chrome"),
        ("Ended", "ended", "unplugged"),
        ("WeirdError", "failed", "The microphone failed"),
    ],
)
def test_the_browsers_errors_say_what_to_do(name: str, reason: str, advice: str) -> None:
    error = microphone_error(name, "details")
    assert isinstance(error, MicrophoneError) and error.reason == reason and error.name == name
    assert advice in str(error) and f"{name}: details" in str(error)


def test_a_refused_microphone_is_an_error_in_the_widget_and_in_python(
    make_chat: Callable[..., VoiceChat],
) -> None:
    seen: list[BaseException] = []
    chat = make_chat(on_error=seen.append, listen=True)
    assert chat.panel.listen  # the page is asked to start the microphone
    page_says(chat.panel, {"kind": "mic-error", "name": "NotAllowedError", "message": "denied"})
    assert isinstance(chat.error, MicrophoneError) and chat.error.reason == "denied"
    assert seen == [chat.error]
    assert "Allow microphone access" in chat.panel.error
    # Once the page has the microphone, the error goes.
    page_says(chat.panel, {"kind": "mic-started", "rate": 48000, "label": "mic", "settings": {}})
    assert chat.error is None and chat.panel.error == ""
    assert chat.microphone["rate"] == 48000


def test_a_failed_turn_is_shown_and_given_to_on_error(
    make_chat: Callable[..., VoiceChat], question_pcm: bytes, tmp_path: Any
) -> None:
    seen: list[BaseException] = []
    chat = make_chat(on_error=seen.append, asr_api_key="wrong-key")
    path = tmp_path / "question.wav"
    path.write_bytes(wav_bytes(question_pcm, 16_000))
    turn = chat.hear(path)
    assert turn is not None and isinstance(turn.error, AuthenticationError)
    assert seen == [turn.error]
    (drawn,) = chat.panel.turns
    assert drawn["error"] == str(turn.error) and drawn["user"] == ""
    chat.hear(path)  # a second failure is reported once too
    assert len(seen) == 2


def test_the_panel_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        MicrophonePanel(mode="telepathy")


# --- %%converse -------------------------------------------------------------------------


@pytest.fixture
def shell(
    monkeypatch: pytest.MonkeyPatch, cloud: CloudDouble, local_server: ThreadedServer
) -> Iterator[InteractiveShell]:
    """A real IPython shell with the extension loaded, speaking through the embedded server."""
    monkeypatch.setenv("FISH_BASE_URL", local_server.url)
    for name in ("FISH_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "fish_notebook")
    yield ip
    ip.run_line_magic("unload_ext", "fish_notebook")
    assert "converse" not in ip.magics_manager.magics["cell"]


def converse(shell: InteractiveShell, line: str, body: str = "") -> VoiceChat:
    if body:
        shell.run_cell_magic("converse", f"-o chat {line}", body)
    else:
        shell.run_line_magic("converse", f"-o chat {line}")
    chat = shell.user_ns["chat"]
    assert isinstance(chat, VoiceChat)
    return chat


def test_converse_takes_the_body_as_the_system_prompt(shell: InteractiveShell) -> None:
    chat = converse(shell, "--push-to-talk --min-barge-in 0.6", "Answer in one short sentence.")
    assert chat.messages() == [{"role": "system", "content": "Answer in one short sentence."}]
    assert chat.mode == PUSH_TO_TALK and chat.loop._machine.min_barge_in_s == 0.6
    assert isinstance(chat.loop.agent, EchoAgent)  # no LLM configured: the echo agent
    again = converse(shell, "")
    assert again is not chat and chat.loop._closed  # the magic's previous chat was closed


def test_converse_takes_an_agent_from_an_expression_or_from_code(shell: InteractiveShell) -> None:
    shell.user_ns["shout"] = lambda messages: messages[-1]["content"].upper()
    assert converse(shell, "--agent shout").loop.agent is shell.user_ns["shout"]
    code = "def polite(messages):\n    return 'Certainly.'\npolite"
    agent = converse(shell, "--code", code).loop.agent
    assert agent([{"role": "user", "content": "hi"}]) == "Certainly."
    chat = converse(shell, "--code", "agent = lambda messages: 'Yes.'")
    assert chat.loop.agent([]) == "Yes."


def test_converse_says_what_is_wrong(shell: InteractiveShell) -> None:
    with pytest.raises(UsageError, match="one of --llm, --agent and --code"):
        shell.run_cell_magic("converse", "--llm --code", "x")
    with pytest.raises(UsageError, match="--llm"):  # no key, no URL
        shell.run_cell_magic("converse", "--llm", "Be brief.")
    with pytest.raises(UsageError, match="not callable"):
        shell.run_line_magic("converse", "--agent 42")
    with pytest.raises(UsageError, match="set `agent`"):
        agent_from_code("x = 1", {})
    assert isinstance(shell.magics_manager.registry["ConverseMagics"], ConverseMagics)
