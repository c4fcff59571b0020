"""The player's Python half: what it sends, what it keeps, how it answers the browser.

The comm is a real ``comm.BaseComm`` that records what would go to the frontend; the browser
half is tested in tests/browser/.
"""

from __future__ import annotations

import base64
import gc
import io
import json
import re
import struct
import time
import tracemalloc
import wave
from typing import Any

import comm
import pytest
from comm.base_comm import BaseComm
from IPython.display import DisplayHandle

from fish_notebook import FlushEvent, Session
from fish_notebook.audio import wav_bytes
from fish_notebook.client import TimedWord
from fish_notebook.errors import SessionStateError, ValidationError
from fish_notebook.local import ThreadedServer
from fish_notebook.session import Playback
from fish_notebook.widget import Player, display_player, transcript_parts
from tests.cloud_double import CloudDouble
from tests.wire_server import threaded_wire_server


class RecordingComm(BaseComm):
    """A comm that keeps every message instead of sending it to a frontend."""

    def __init__(self, **kwargs: Any) -> None:
        self.messages: list[tuple[str, Any, list[bytes]]] = []
        super().__init__(**kwargs)

    def publish_msg(
        self,
        msg_type: str,
        data: Any = None,
        metadata: Any = None,
        buffers: Any = None,
        **keys: Any,
    ) -> None:
        self.messages.append((msg_type, data, [bytes(b) for b in buffers or []]))

    def custom(self) -> list[tuple[dict[str, Any], list[bytes]]]:
        """The custom messages sent (``widget.send``), as (content, buffers)."""
        return [
            (data["content"], buffers)
            for msg_type, data, buffers in self.messages
            if msg_type == "comm_msg" and data.get("method") == "custom"
        ]

    def state_updates(self) -> list[dict[str, Any]]:
        """Every trait update sent."""
        return [
            data["state"]
            for msg_type, data, _ in self.messages
            if msg_type == "comm_msg" and data.get("method") == "update"
        ]


@pytest.fixture(autouse=True)
def recording_comm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Widgets created in these tests talk to a RecordingComm."""
    monkeypatch.setattr(comm, "create_comm", lambda **kwargs: RecordingComm(**kwargs))


def comm_of(player: Player) -> RecordingComm:
    assert isinstance(player.comm, RecordingComm)
    return player.comm


def pcm(n: int, value: int = 1000) -> bytes:
    return struct.pack(f"<{n}h", *([value] * n))


def click(player: Player, content: dict[str, Any]) -> None:
    """Deliver a custom message as if the browser had sent it."""
    player._handle_custom_msg(content, [])


class FakeHandle(DisplayHandle):  # type: ignore[misc]
    """A display handle that records updates instead of publishing them."""

    def __init__(self) -> None:
        super().__init__("fake-id")
        self.updates: list[Any] = []

    def update(self, obj: Any, **kwargs: Any) -> None:
        self.updates.append(obj)


class FakeDisplay:
    """Stands in for IPython's display(); returns a FakeHandle when asked for a display_id."""

    def __init__(self) -> None:
        self.shown: list[Any] = []
        self.handles: list[FakeHandle] = []

    def __call__(self, obj: Any, display_id: bool = False) -> FakeHandle | None:
        self.shown.append(obj)
        if not display_id:
            return None
        handle = FakeHandle()
        self.handles.append(handle)
        return handle


class Controls:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.fail = fail

    def flush(self) -> None:
        self.calls.append("flush")

    def stop(self) -> None:
        self.calls.append("stop")
        if self.fail:
            raise SessionStateError("the session already ended")


def test_each_chunk_goes_as_one_binary_message_and_never_into_a_trait() -> None:
    """on_audio sends {kind: audio, seq, chars} with the PCM as a buffer; traits stay small."""
    player = Player(sample_rate=24000)
    player.on_text("Hello ")
    player.on_audio(pcm(2400), 0)
    player.on_text("world.")
    player.on_audio(pcm(2400, -5), 1)
    sent = comm_of(player).custom()
    assert [content for content, _ in sent] == [
        {"kind": "audio", "seq": 0, "chars": 6},
        {"kind": "audio", "seq": 1, "chars": 12},
    ]
    assert [buffers for _, buffers in sent] == [[pcm(2400)], [pcm(2400, -5)]]
    assert player.audio == pcm(2400) + pcm(2400, -5)
    assert player.chunk_count == 2
    updates = comm_of(player).state_updates()
    assert all(len(json.dumps(update)) < 200 for update in updates)
    assert not any(isinstance(v, bytes | memoryview) for u in updates for v in u.values())


def test_replay_request_answers_with_the_inventory_then_the_missing_chunks() -> None:
    """A view first learns how many chunks exist, then gets exactly the ones it asks for."""
    player = Player(sample_rate=24000)
    chunks = [pcm(100, i) for i in range(5)]
    for i, chunk in enumerate(chunks):
        player.on_audio(chunk, i)
    recording = comm_of(player)
    recording.messages.clear()

    click(player, {"kind": "replay-request"})
    click(player, {"kind": "replay-request"})
    assert [content for content, _ in recording.custom()] == [
        {"kind": "recording", "total": 5, "first": True},
        {"kind": "recording", "total": 5, "first": False},
    ]
    recording.messages.clear()
    click(player, {"kind": "replay-request", "seqs": [1, 3, 99, "x"]})
    ((content, buffers),) = recording.custom()
    assert content == {"kind": "replay", "seqs": [1, 3], "chars": [0, 0]}
    assert buffers == [chunks[1], chunks[3]]


def test_a_long_replay_is_split_into_bounded_messages() -> None:
    """Resending a long recording never builds one huge message."""
    player = Player()
    big = pcm(300_000)  # 600 kB
    for i in range(3):
        player.on_audio(big, i)
    comm_of(player).messages.clear()
    click(player, {"kind": "replay-request", "seqs": [0, 1, 2]})
    sent = comm_of(player).custom()
    assert [content["seqs"] for content, _ in sent] == [[0], [1], [2]]
    assert all(sum(map(len, buffers)) <= 1 << 20 for _, buffers in sent)


def test_flush_and_stop_clicks_drive_the_controls() -> None:
    """The buttons' messages call flush()/stop(); an error from a late click lands in `error`."""
    controls = Controls(fail=True)
    player = Player(controls=controls)
    click(player, {"kind": "flush"})
    click(player, {"kind": "stop"})
    click(player, {"kind": "unknown"})
    click(player, "not a dict")  # type: ignore[arg-type]
    assert controls.calls == ["flush", "stop"]
    assert player.error == "the session already ended"


def test_listener_calls_fill_the_small_traits() -> None:
    """Transcript keeps flush points as None; state, error and metrics are mirrored."""
    player = Player()
    player.on_text("One. ")
    player.on_flush()
    player.on_text("Two.")
    player.on_state("streaming", None)
    player.on_metrics({"ttfa_s": 0.2, "chunks": 0})
    assert player.transcript == ["One. ", None, "Two."]
    assert (player.status, player.error) == ("streaming", "")
    player.on_state("failed", "WebSocketError: the server closed the stream")
    assert (player.status, player.error) == (
        "failed",
        "WebSocketError: the server closed the stream",
    )
    assert player.metrics == {"ttfa_s": 0.2, "chunks": 0}


def test_display_player_publishes_a_static_audio_fallback_once_at_the_end() -> None:
    """The fallback output becomes an <audio> with the whole recording as a WAV data URI."""
    shown = FakeDisplay()
    player = display_player(sample_rate=16000, display_fn=shown)
    assert shown.shown[0] is player
    (handle,) = shown.handles
    assert player.player_id in shown.shown[1].data
    player.on_state("streaming", None)
    player.on_audio(pcm(1600, 7), 0)
    player.on_audio(pcm(800, 9), 1)
    assert handle.updates == []
    player.on_state("finished", None)
    player.on_state("finished", None)
    (update,) = handle.updates
    html = update.data
    assert f'data-fishnb-player="{player.player_id}"' in html
    assert "<audio controls" in html
    match = re.search(r'src="data:audio/wav;base64,([^"]+)"', html)
    assert match is not None
    with wave.open(io.BytesIO(base64.b64decode(match.group(1)))) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)
        assert wav.readframes(wav.getnframes()) == pcm(1600, 7) + pcm(800, 9)


def test_a_session_that_ends_without_audio_leaves_the_placeholder_alone() -> None:
    """No audio, no <audio> element."""
    shown = FakeDisplay()
    player = display_player(display_fn=shown)
    player.on_state("failed", "ConnectError: refused")
    assert shown.handles[0].updates == []


def test_the_player_follows_a_real_session_and_replays_what_it_missed() -> None:
    """Attached mid-stream or after the end, the player holds the session's whole recording."""
    with threaded_wire_server() as server:
        session = Session(["Hello ", "there.", FlushEvent(), " Bye."], base_url=server.base_url)
        live = Player(session)
        session.wait(20)
        late = Player(session)
    for player in (live, late):
        assert player.audio == session.audio
        assert player.sample_rate == session.sample_rate
        assert player.transcript == ["Hello ", "there.", None, " Bye."]
        assert player.status == "finished"
        seqs = [
            content["seq"] for content, _ in comm_of(player).custom() if content["kind"] == "audio"
        ]
        assert seqs == list(range(len(session.chunks)))
    with pytest.raises(SessionStateError):
        live.attach(session)
    live.close()
    late.detach()
    late.detach()


def test_widget_state_never_holds_the_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing the player syncs to the page contains the key the session used."""
    key = "sk-fishnb-secret-0123456789"
    monkeypatch.setenv("FISH_API_KEY", key)
    with threaded_wire_server() as server:
        session = Session("Hello there.", base_url=server.base_url, api_key=key)
        player = Player(session)
        session.wait(20)
    assert session.audio
    everything = json.dumps(player.get_state(), default=str) + repr(comm_of(player).messages)
    assert key not in everything


def test_streamed_text_reaches_the_transcript_in_few_updates() -> None:
    """A thousand tokens cost a handful of transcript updates, and none is lost."""
    player = Player()
    tokens = [f"t{i} " for i in range(1000)]
    for token in tokens:
        player.on_text(token)
    deadline = time.monotonic() + 5
    while player.transcript != tokens and time.monotonic() < deadline:
        time.sleep(0.02)
    assert player.transcript == tokens
    updates = [u for u in comm_of(player).state_updates() if "transcript" in u]
    assert len(updates) < 100


def test_the_fallback_can_be_a_small_mp3_and_refuses_unknown_formats() -> None:
    """fallback="mp3" embeds audio/mpeg; an unknown format is refused up front."""
    pytest.importorskip("lameenc")
    shown = FakeDisplay()
    player = display_player(sample_rate=24000, fallback="mp3", display_fn=shown)
    player.on_audio(pcm(24000, 3000), 0)
    player.on_state("finished", None)
    (update,) = shown.handles[0].updates
    match = re.search(r'src="data:audio/mpeg;base64,([^"]+)"', update.data)
    assert match is not None
    mp3 = base64.b64decode(match.group(1))
    assert mp3[:3] == b"ID3" or (mp3[0] == 0xFF and mp3[1] & 0xE0 == 0xE0)
    assert len(mp3) < len(pcm(24000)) // 4
    with pytest.raises(ValidationError):
        display_player(fallback="ogg", display_fn=FakeDisplay())


def test_viewers_without_widgets_see_a_readable_placeholder() -> None:
    """The widget output's text/plain names the player instead of an object address."""
    player = Player(sample_rate=8000)
    player.on_audio(pcm(8000), 0)
    data, _ = player._repr_mimebundle_()
    assert data["text/plain"] == "fish-notebook player (live when the notebook runs)"
    assert "application/vnd.jupyter.widget-view+json" in data
    assert repr(player) == "<Player idle audio=1.00s chunks=1>"


def test_words_go_right_after_their_audio_with_their_index() -> None:
    """on_words sends {kind: words, from, words} at once; `from` counts the words before."""
    player = Player(sample_rate=24000)
    player.on_audio(pcm(2400), 0)
    player.on_words([TimedWord("Hello", 0.02, 0.3), TimedWord("there.", 0.33, 0.7)])
    player.on_audio(pcm(2400), 1)
    player.on_words([TimedWord("Bye", 0.75, 0.9)])
    player.on_words([])
    sent = [content for content, _ in comm_of(player).custom()]
    assert sent == [
        {"kind": "audio", "seq": 0, "chars": 0},
        {"kind": "words", "from": 0, "words": [["Hello", 0.02, 0.3], ["there.", 0.33, 0.7]]},
        {"kind": "audio", "seq": 1, "chars": 0},
        {"kind": "words", "from": 2, "words": [["Bye", 0.75, 0.9]]},
    ]
    assert player.words == [("Hello", 0.02, 0.3), ("there.", 0.33, 0.7), ("Bye", 0.75, 0.9)]
    assert "words" not in player.get_state()  # never a growing trait


def test_the_inventory_carries_every_word_so_far() -> None:
    """A view that missed live words gets them all with the chunk count."""
    player = Player(sample_rate=24000)
    player.on_audio(pcm(100), 0)
    click(player, {"kind": "replay-request"})
    player.on_words([TimedWord("One", 0.0, 0.1), TimedWord("two", 0.15, 0.3)])
    comm_of(player).messages.clear()
    click(player, {"kind": "replay-request"})
    assert [content for content, _ in comm_of(player).custom()] == [
        {
            "kind": "recording",
            "total": 1,
            "first": False,
            "words": [["One", 0.0, 0.1], ["two", 0.15, 0.3]],
        }
    ]


def test_a_timestamped_session_gives_the_player_its_words(local_server: ThreadedServer) -> None:
    """Attached live or after the end, the player holds the session's words, each sent once."""
    session = Session("Hello there. Words in time.", base_url=local_server.url, timestamps=True)
    live = Player(session)
    session.wait(120)
    late = Player(session)
    assert len(session.words) >= 5
    for player in (live, late):
        assert player.words == session.words
        assert page_words(player) == [list(w) for w in session.words]
    (late_words,) = [c for c, _ in comm_of(late).custom() if c["kind"] == "words"]
    assert late_words["from"] == 0


def page_words(player: Player) -> list[list[Any]]:
    """The words a page holds after the player's words messages, each replacing from its
    ``from`` (as receiving.js does); a ``from`` past the end would leave a hole."""
    words: list[list[Any]] = []
    for content, _ in comm_of(player).custom():
        if content["kind"] == "words":
            assert 0 <= content["from"] <= len(words), content
            words[content["from"] :] = content["words"]
    return words


def test_revised_words_go_with_the_index_they_replace_from() -> None:
    """on_words(words, start) replaces from ``start`` (recorded, then sent with ``from``);
    without ``start`` the words follow the ones so far; a shorter revision is sent too."""
    player = Player(sample_rate=8000)
    player.on_audio(pcm(800), 0)
    one, two, too = (
        TimedWord("One", 0.0, 0.1),
        TimedWord("two", 0.1, 0.2),
        TimedWord("too", 0.1, 0.25),
    )
    player.on_words([one, two])
    player.on_words([too], 1)
    player.on_words([], 1)
    sent = [c for c, _ in comm_of(player).custom() if c["kind"] == "words"]
    assert sent == [
        {"kind": "words", "from": 0, "words": [["One", 0.0, 0.1], ["two", 0.1, 0.2]]},
        {"kind": "words", "from": 1, "words": [["too", 0.1, 0.25]]},
        {"kind": "words", "from": 1, "words": []},
    ]
    assert player.words == [one] and page_words(player) == [["One", 0.0, 0.1]]


def test_a_cloud_session_gives_the_page_each_word_once() -> None:
    """Against Fish's documented shape (cumulative snapshots per chunk_seq), the words the
    page holds, live or from the inventory, are the session's: none repeated."""
    with CloudDouble() as cloud:
        text = "One two three. Four five six seven, eight nine ten."
        session = Session(
            text,
            api_key=cloud.script.api_key,
            base_url=cloud.base_url,
            timestamps=True,
            start=False,
        )
        live = Player(session)
        session.start().wait(60)
        click(live, {"kind": "replay-request"})
    words = [list(w) for w in session.words]
    assert [w[0] for w in words] == text.split()
    assert page_words(live) == words
    (inventory,) = [c for c, _ in comm_of(live).custom() if c["kind"] == "recording"]
    assert inventory["words"] == words


def test_the_transcript_goes_cut_into_words_cues_speakers_and_skipped_markup() -> None:
    """Cues, pauses and speaker tags become parts of their own (found across pieces),
    skipped markup stays in its place, and text without cues goes as it came."""
    player = Player(sample_rate=8000)
    for piece in ["<|speaker:0|>So [hap", "py] we go", " (excited) "]:
        player.on_text(piece)
    player.on_skipped("**")
    player.on_text("now [break] <|speaker:1|>(like this) ok.")
    player.on_flush()
    assert player.transcript == [
        {"speaker": "<|speaker:0|>", "n": 0},
        "So ",
        {"cue": "[happy]"},
        " we go",
        " ",
        {"cue": "(excited)"},
        " ",
        {"skipped": "**"},
        "now ",
        {"break": "[break]"},
        " ",
        {"speaker": "<|speaker:1|>", "n": 1},
        "(like this) ok.",
        None,
    ]
    assert player.recording.text == [
        "<|speaker:0|>So [hap",
        "py] we go",
        " (excited) ",
        "now [break] <|speaker:1|>(like this) ok.",
        None,
    ]
    assert transcript_parts(["Hello ", "there.", None, " Bye."]) == [
        "Hello ",
        "there.",
        None,
        " Bye.",
    ]


def test_the_player_takes_the_rate_a_wav_header_gives_before_the_first_chunk() -> None:
    """A WAV stream at 16 kHz played as if 24 kHz: the page hears 16 kHz before any audio."""
    samples = pcm(8000, 300)
    stream = [wav_bytes(samples, 16000)[:30], wav_bytes(samples, 16000)[30:]]
    playback = Playback(iter(stream), format="wav", sample_rate=24000, start=False)
    player = Player(playback)
    assert player.sample_rate == 24000
    playback.start().wait(20)
    assert (playback.sample_rate, player.sample_rate) == (16000, 16000)
    assert player.audio == samples
    messages = comm_of(player).messages
    rate_at = next(
        i
        for i, (kind, data, _) in enumerate(messages)
        if kind == "comm_msg" and data.get("state", {}).get("sample_rate") == 16000
    )
    audio_at = next(
        i
        for i, (kind, data, _) in enumerate(messages)
        if kind == "comm_msg" and data.get("content", {}).get("kind") == "audio"
    )
    assert rate_at < audio_at


def test_text_waiting_for_its_transcript_update_goes_out_before_its_words() -> None:
    """The page finds words in the transcript, so the text they come from is sent first."""
    player = Player(sample_rate=24000)
    player.on_text("Hello ")
    player.on_text("there.")  # within TRANSCRIPT_INTERVAL: waits for a timer
    player.on_audio(pcm(2400), 0)
    player.on_words([TimedWord("Hello", 0.0, 0.2), TimedWord("there.", 0.25, 0.5)])
    messages = comm_of(player).messages
    text_at = next(
        i
        for i, (_, data, _) in enumerate(messages)
        if data.get("state", {}).get("transcript") == ["Hello ", "there."]
    )
    words_at = next(
        i
        for i, (_, data, _) in enumerate(messages)
        if data.get("content", {}).get("kind") == "words"
    )
    assert text_at < words_at


class DiscardingComm(BaseComm):
    """A comm that sends nothing and keeps nothing, like one whose frontend is gone."""

    def publish_msg(self, msg_type: str, *args: Any, **kwargs: Any) -> None:
        pass


def test_the_player_reads_the_sessions_recording_so_the_kernel_holds_the_pcm_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An attached player keeps no copy: it plays the session's recording, and after a
    3.2 MB stream the kernel holds about 3.2 MB (one copy), not two."""
    monkeypatch.setattr(comm, "create_comm", lambda **kwargs: DiscardingComm(**kwargs))
    Playback([pcm(100)], format="pcm").wait(20)  # start the loop and reader threads first
    chunk_samples, chunks = 16_000, 100
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        stream = (pcm(chunk_samples, i) for i in range(chunks))
        playback = Playback(stream, format="pcm", sample_rate=16000, start=False)
        player = Player(playback)
        playback.start().wait(20)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    size = chunks * chunk_samples * 2
    assert player.recording is playback.recording
    assert player.audio == playback.audio and len(playback.audio) == size
    assert player.chunk_count == chunks
    assert size <= held < 1.25 * size, f"held {held / size:.2f}x the PCM"


def test_a_player_fed_by_hand_records_into_its_own_recording() -> None:
    """No session: the player keeps what it is given (text, audio, words, rate) itself, and
    refuses to follow a session afterwards (the page already has its chunks); so does a
    player that followed one."""
    player = Player(sample_rate=8000)
    player.on_text("Hi ")
    player.on_flush()
    player.on_audio(pcm(800), 7)
    player.on_audio(b"", 8)  # no samples: nothing recorded, nothing sent
    player.on_words([TimedWord("Hi", 0.0, 0.1)])
    player.sample_rate = 16000
    recording = player.recording
    assert (recording.text, recording.chunks, recording.words) == (
        ["Hi ", None],
        [pcm(800)],
        [("Hi", 0.0, 0.1)],
    )
    assert recording.sample_rate == 16000 and recording.chunk(0).chars == 3
    session = Session("Hello.", base_url="ws://127.0.0.1:9", start=False)  # never started
    with pytest.raises(SessionStateError, match="by hand"):
        player.attach(session)
    follower = Player(session)
    follower.detach()
    with pytest.raises(SessionStateError, match="already follows"):
        follower.attach(session)  # its views hold that session's chunks


def test_stop_from_the_page_keeps_where_the_listener_was(local_server: ThreadedServer) -> None:
    """The page's Stop carries the playhead: the session keeps it, so session.heard ends
    there."""
    from fish_notebook.session import Session

    session = Session(iter(["A long enough sentence ", "to still be going. "] * 20),
                      base_url=local_server.url)  # fmt: skip
    player = Player(session)
    try:
        player._handle_message(player, {"kind": "stop", "playhead": 0.5}, [])
        session.wait(30)
        assert session.state == "stopped" and session.playhead == 0.5
        assert session.heard.playhead <= 0.5
    finally:
        player.close()


def test_each_joined_module_declares_each_top_level_name_once() -> None:
    """The player's and the voice chat's JS files are joined into one module scope: a name
    declared in two files is a SyntaxError that stops the whole widget in the page."""
    import re
    from collections import Counter

    from fish_notebook.voicechat import MicrophonePanel
    from fish_notebook.widget import Player

    for widget in (Player, MicrophonePanel):
        source = str(widget._esm)
        declared = Counter(
            re.findall(r"^(?:const|let|var|function|class)\s+([A-Za-z_$][\w$]*)", source, re.M)
        )
        assert [name for name, count in declared.items() if count > 1] == [], widget.__name__
