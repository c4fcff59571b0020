"""SpeakPanel in a real JupyterLab page: keystrokes become speech, Flush and Stop act at once,
and two panels keep their audio apart.

The TTS server runs in this test process (conftest.py), so what the page's typing and buttons
did is checked where it lands: text events, a flush event, a socket closed early.
"""

from __future__ import annotations

from typing import Any

import pytest

from ..helpers import wait_until as wait_for
from .conftest import NotebookPage

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]


def texts(record: Any) -> list[str]:
    return [frame.event.text for frame in record.received_named("text")]


def type_in(notebook: NotebookPage, panel: int, text: str) -> None:
    """Click into panel ``panel``'s text area and type like a person."""
    area = notebook.page.locator(".fishnb-panel-text textarea").nth(panel)
    area.click(timeout=10_000)
    area.press_sequentially(text, delay=25, timeout=30_000)


def button(notebook: NotebookPage, panel: int, name: str) -> Any:
    return notebook.page.locator(f".fishnb-panel button.fishnb-panel-{name}").nth(panel)


def test_typing_speaks_and_flush_and_stop_act_at_once(
    notebook: NotebookPage, tts_server: Any
) -> None:
    """Words go out as they are typed; Flush speaks a half-typed word now; Stop cuts it off."""
    recorder = tts_server.recorder
    recorder.clear()
    notebook.open(
        "panel_typing.ipynb", ["from fish_notebook import SpeakPanel\npanel = SpeakPanel()\npanel"]
    )
    notebook.run_all()
    notebook.wait_cells_done()
    notebook.page.locator(".fishnb-panel-text textarea").wait_for(timeout=30_000)
    wait_for(lambda: notebook.kernel_json("panel.voices_ready.is_set()"), "the voice list")

    type_in(notebook, 0, "Typing in the browser speaks each word. Half")
    record = wait_for(lambda: recorder.sessions, "a session at the server")[0]
    wait_for(lambda: "word." in texts(record), "the typed words at the server")
    assert "Half" not in "".join(texts(record))  # still being typed
    # The client's early flush: the first sentence is spoken as soon as it has ended.
    early = wait_for(lambda: record.received_named("flush"), "the early flush")[0]
    audio = wait_for(lambda: record.sent_named("audio"), "audio for the first sentence")
    assert audio[0].time > early.time

    button(notebook, 0, "flush").click(timeout=10_000)
    flushes = wait_for(
        lambda: record.received_named("flush")[1:], "the Flush button's flush at the server"
    )
    assert texts(record)[-1] == "Half"  # the half-typed word went out just before it
    assert all(frame.time < flushes[0].time for frame in record.received_named("text"))
    stats = notebook.wait_stats("s => s.chunks_received >= 1 && s.scheduled >= 1")
    assert stats["status"] == "streaming"

    type_in(notebook, 0, " and now a long tail of words that keeps going and going on")
    wait_for(lambda: "going " in texts(record), "the tail at the server")
    button(notebook, 0, "stop").click(timeout=10_000)
    wait_for(lambda: record.closed is not None, "the socket to close")
    assert "stop" not in [frame.name for frame in record.received]  # cut, not drained
    state = notebook.kernel_json("[panel.sessions[0].wait(10).state, len(panel.sessions)]")
    assert state == ["stopped", 1]
    notebook.wait_stats("s => s.status === 'stopped'")
    assert notebook.cell_errors() == []


def test_two_panels_do_not_mix_their_audio(notebook: NotebookPage, tts_server: Any) -> None:
    """Two panels typed into in turn: two sessions, each with only its own words and audio."""
    recorder = tts_server.recorder
    recorder.clear()
    notebook.open(
        "panel_pair.ipynb",
        [
            "from fish_notebook import SpeakPanel\nleft = SpeakPanel()\nleft",
            "right = SpeakPanel(latency='low')\nright",
        ],
    )
    notebook.run_all()
    notebook.wait_cells_done()
    notebook.page.locator(".fishnb-panel-text textarea").nth(1).wait_for(timeout=30_000)

    type_in(notebook, 0, "Left panel speaks first. ")
    type_in(notebook, 1, "Right panel answers. ")
    type_in(notebook, 0, "Left again.")
    button(notebook, 0, "speak").click(timeout=10_000)
    button(notebook, 1, "speak").click(timeout=10_000)

    closed = wait_for(
        lambda: (
            [r for r in recorder.sessions if r.closed is not None][:2]
            if len([r for r in recorder.sessions if r.closed is not None]) >= 2
            else None
        ),
        "both sessions to finish",
        timeout=40,
    )
    by_text = {"".join(texts(r)).split()[0]: r for r in closed}
    assert "".join(texts(by_text["Left"])) == "Left panel speaks first. Left again."
    assert "".join(texts(by_text["Right"])) == "Right panel answers. "
    assert by_text["Right"].received[0].event.request.latency == "low"

    kernel = notebook.kernel_json(
        "[[s.wait(10).state, len(s.chunks)] for s in (left.sessions[0], right.sessions[0])]"
    )
    assert kernel[0][0] == kernel[1][0] == "finished"
    for index, (_, chunks) in enumerate(kernel):
        stats = notebook.wait_stats(
            f"s => s.status === 'finished' && s.chunks_received === {chunks}", index=index
        )
        assert stats["seqs_received"] == list(range(chunks))
    left_audio, right_audio = (len(by_text[name].audio) for name in ("Left", "Right"))
    assert notebook.kernel_json("[len(left.player.audio), len(right.player.audio)]") == [
        left_audio,
        right_audio,
    ]
    assert notebook.cell_errors() == []
