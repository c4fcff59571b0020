"""The player end to end: real sessions, the embedded TTS server, JupyterLab, Chromium.

The TTS server runs in this test process (conftest.py), so the tests check on the server
side what the page's buttons did: a flush event, a closed socket.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import pytest

from ..helpers import wait_until as wait_for
from .conftest import ARTIFACTS, DUMMY_KEY, REPO, NotebookPage
from .schedule import assert_gapless_unless_late

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

THREE_SENTENCES = (
    "Hello from the embedded voice, speaking in your notebook. "
    "Every chunk plays the moment it lands in the page. "
    "And this third sentence ends the demonstration."
)

DONE = (
    "s => ['finished', 'stopped', 'failed'].includes(s.status) && s.chunk_count > 0"
    " && s.scheduled_seqs.length === s.chunk_count && !s.playing"
)


def test_three_sentences_play_through_a_blocking_cell_reload_and_fallback(
    notebook: NotebookPage, tts_server: Any
) -> None:
    """A session's chunks all play gaplessly while a cell sleeps; the page reloads, replays,
    and the saved notebook has the static audio and no key."""
    tts_server.recorder.clear()
    notebook.open(
        "session_three.ipynb",
        [
            "import time\n"
            "from fish_notebook.session import Session\n"
            "from fish_notebook.widget import display_player\n"
            f"s = Session({THREE_SENTENCES!r})\n"
            "p = display_player(s)",
            "sleep_from = time.time()\ntime.sleep(5)\nsleep_to = time.time()",
        ],
    )
    notebook.run_all()
    notebook.wait_stats("s => s.playing && s.position_s > 2", timeout_ms=60_000)
    notebook.screenshot("player-page.png")

    stats = notebook.wait_stats(DONE, timeout_ms=60_000)
    notebook.wait_cells_done()
    assert notebook.cell_errors() == []
    count = stats["chunk_count"]
    assert stats["status"] == "finished"
    assert stats["seqs_received"] == list(range(count))
    assert stats["scheduled_seqs"] == list(range(count))
    # The embedded server synthesizes far faster than real time: back to back, unless the
    # machine stalled a chunk past its time (then one counted underrun, and on).
    assert_gapless_unless_late(stats)
    assert stats["ctx_time"] >= stats["starts"][-1]

    # Audio reached the page and was scheduled while the second cell blocked.
    window = notebook.kernel_json("[sleep_from * 1000, sleep_to * 1000]")
    assert any(window[0] <= t <= window[1] for t in stats["arrivals_ms"])

    # The page got exactly what the server sent.
    kernel = notebook.kernel_json("[s.state, len(s.chunks), len(s.audio)]")
    assert kernel[:2] == ["finished", count]
    notebook.wait_kernel("p.stats['scheduled_seqs']", list(range(count)))
    closed = wait_for(
        lambda: [r for r in tts_server.recorder.sessions if r.closed is not None],
        "a closed session",
    )
    (record,) = closed
    assert len(record.audio) == kernel[2]
    rate = notebook.kernel_json("s.sample_rate")
    assert stats["audio_s"] == pytest.approx(kernel[2] / 2 / rate, abs=1e-3)

    # The static fallback: present, hidden while the live player runs, saved with the notebook.
    fallback = notebook.page.locator(".fishnb-fallback audio")
    assert fallback.count() == 1 and fallback.is_hidden()
    assert notebook.kernel_json("__import__('os').environ['FISH_API_KEY']") == DUMMY_KEY
    notebook.save()
    saved = (notebook.lab.root / "session_three.ipynb").read_text()
    assert "data:audio/wav;base64," in saved
    assert DUMMY_KEY not in saved
    assert DUMMY_KEY not in notebook.page.content()

    # A reload shows the recorded session again (no autoplay) and Replay plays all of it.
    notebook.reload()
    after = notebook.wait_stats(f"s => s.replays >= 1 && s.chunks_received === {count}")
    assert after["scheduled_seqs"] == []
    notebook.click("replay")
    replayed = notebook.wait_stats(f"s => s.scheduled_seqs.length === {count} && s.playing")
    assert replayed["scheduled_seqs"] == list(range(count))
    assert set(replayed["gaps"]) == {0}

    figures = {
        "session_first_chunk_arrival_to_start_ms": stats["latencies_ms"][0],
        "session_latencies_ms_max": max(stats["latencies_ms"]),
        "session_underruns": stats["underruns"],
        "session_chunks": count,
        "session_audio_s": stats["audio_s"],
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "player-session-figures.json").write_text(json.dumps(figures, indent=2))
    print("player session figures:", json.dumps(figures))


SLOW_SOURCE = """\
import threading, time
from fish_notebook.session import Session
from fish_notebook.widget import display_player

gate = threading.Event()
OPENING = "Streaming speech straight from a language model, token by token"
SENTENCES = (
    "Each sentence is spoken as soon as it is complete. "
    "The player schedules every chunk back to back, so playback never clicks. "
    "Press Flush to speak whatever is buffered right now. "
)

def tokens():
    # No sentence end yet: the server keeps this buffered until a flush.
    for word in OPENING.split():
        yield word + " "
    gate.wait(60)
    for word in (SENTENCES * 4).split():
        yield word + " "
        time.sleep(0.06)

s = Session(tokens())
p = display_player(s)
"""
OPENING_WORDS = 10


def test_flush_and_stop_reach_the_server(notebook: NotebookPage, tts_server: Any) -> None:
    """Flush makes the server speak its buffer before more text; Stop closes the socket."""
    recorder = tts_server.recorder
    recorder.clear()
    notebook.open("session_controls.ipynb", [SLOW_SOURCE])
    notebook.run_all()
    record = wait_for(lambda: recorder.sessions, "the session to reach the server")[0]
    wait_for(
        lambda: len(record.received_named("text")) >= OPENING_WORDS, "the first words", timeout=30
    )
    assert record.sent_named("audio") == []  # buffered: no sentence end yet

    notebook.wait_stats("s => s.status === 'streaming'")
    notebook.click("flush")
    flush = wait_for(lambda: record.received_named("flush"), "a flush at the server")[0]
    audio = wait_for(lambda: record.sent_named("audio"), "audio for the flushed text")
    # The buffered text was spoken before any more text was sent (the source waits on gate).
    assert audio[0].time > flush.time
    assert all(frame.time < flush.time for frame in record.received_named("text"))
    notebook.wait_stats("s => s.chunks_received >= 1")
    assert notebook.page.locator(".fishnb-player .fishnb-flush").count() >= 1

    notebook.kernel("gate.set()")
    wait_for(lambda: len(record.received_named("text")) >= 40, "more text after the gate")
    notebook.wait_stats("s => s.status === 'streaming' && s.chunks_received >= 3 && s.playing")
    shot = notebook.screenshot("player.png", index=0)
    if os.environ.get("FISH_NOTEBOOK_UPDATE_DOCS"):  # refresh the README's picture
        shutil.copyfile(shot, REPO / "docs" / "player.png")
    notebook.click("stop")
    wait_for(lambda: record.closed is not None, "the socket to close")
    state = notebook.kernel_json("[s.wait(10) and s.state, len(s.audio) > 0, p.status]")
    assert state == ["stopped", True, "stopped"]
    stats = notebook.wait_stats("s => s.status === 'stopped'")
    assert stats["chunks_received"] == notebook.kernel_json("len(s.chunks)")
