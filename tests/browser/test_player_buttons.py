"""The player's buttons, as its table (controls.js) declares them, in a real page.

Their order, tooltips and labels, and when each can be clicked through a session's life:
nothing before audio or a session, Flush and Stop while a session is under way, Play, Replay
and WAV once there is audio. "Under way" and "final" come from the vocabulary Python sends
(the widget's ``vocab`` trait), so changing that trait changes the buttons.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest

from .conftest import NotebookPage

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

SETUP = """\
import struct
from fish_notebook.widget import display_player

class Clicks:
    def __init__(self):
        self.seen = []
    def flush(self):
        self.seen.append("flush")
    def stop(self):
        self.seen.append("stop")

clicks = Clicks()
p = display_player(sample_rate=8000, controls=clicks, fallback=None)
tone = struct.pack("<800h", *([3000, -3000] * 400))  # 0.1 s
"""

# The table, as the page must show it: one row per button, in order (a new button adds one).
TABLE = [
    ("play", "Play / Pause"),
    ("replay", "Play again from the start"),
    ("flush", "Speak the buffered text now"),
    ("stop", "End the session"),
    ("download", "Save as WAV"),
]
WITH_AUDIO = {"play", "replay", "download"}
DURING_SESSION = {"flush", "stop"}

BUTTONS_JS = """() => Array.from(
    document.querySelectorAll(".fishnb-player button[data-action]"),
    (b) => ({action: b.dataset.action, title: b.title, enabled: !b.disabled,
             text: b.textContent, label: b.getAttribute("aria-label")}))"""


def buttons(notebook: NotebookPage) -> list[dict[str, Any]]:
    """The player's buttons as the page shows them, in order."""
    return list(notebook.page.evaluate(BUTTONS_JS))


def wait_enabled(notebook: NotebookPage, enabled: set[str], play_label: str | None = None) -> None:
    """Wait until exactly the buttons ``enabled`` can be clicked (and Play says ``play_label``)."""
    try:
        notebook.page.wait_for_function(
            f"""([enabled, label]) => {{
                const rows = ({BUTTONS_JS})();
                return rows.length > 0
                    && rows.every((r) => r.enabled === enabled.includes(r.action))
                    && (label === null || rows[0].label === label);
            }}""",
            arg=[sorted(enabled), play_label],
            timeout=15_000,
        )
    except Exception as exc:
        rows: Any = None
        with contextlib.suppress(Exception):
            rows = buttons(notebook)
        raise AssertionError(
            f"expected {sorted(enabled)} enabled, Play {play_label!r}: {json.dumps(rows)}"
        ) from exc


def active_pill(notebook: NotebookPage) -> bool:
    """Whether the status pill shows a session under way."""
    pill = notebook.page.locator(".fishnb-player .fishnb-state")
    return pill.get_attribute("data-active") is not None


def test_buttons_follow_the_table_the_session_and_python_s_vocabulary(
    notebook: NotebookPage,
) -> None:
    """Each button is enabled exactly when its entry says; Play shows Pause while sounding;
    a click on the waveform plays from there."""
    notebook.open("buttons.ipynb", [SETUP])
    notebook.run_all()
    notebook.wait_cells_done()
    assert notebook.cell_errors() == []

    # Before any session or audio: the whole table, in order, none clickable.
    wait_enabled(notebook, set(), play_label="Play")
    rows = buttons(notebook)
    assert [(r["action"], r["title"]) for r in rows] == TABLE
    assert [r["text"] for r in rows] == ["▶", "Replay", "Flush", "Stop", "WAV"]

    # A session under way, no audio yet: only Flush and Stop.
    notebook.kernel("p.on_state('connecting', None)")
    wait_enabled(notebook, DURING_SESSION)
    assert active_pill(notebook)

    # Audio playing: everything, and the main button pauses.
    notebook.kernel("p.on_state('streaming', None)\nfor _ in range(40): p.on_audio(tone)")
    wait_enabled(notebook, DURING_SESSION | WITH_AUDIO, play_label="Pause")
    assert buttons(notebook)[0]["text"] == "❚❚"
    notebook.click("play")
    wait_enabled(notebook, DURING_SESSION | WITH_AUDIO, play_label="Play")
    assert buttons(notebook)[0]["text"] == "▶"
    notebook.click("play")
    wait_enabled(notebook, DURING_SESSION | WITH_AUDIO, play_label="Pause")
    notebook.click("flush")
    notebook.wait_kernel("clicks.seen", ["flush"])

    # The page reads "final" from Python's vocabulary: call "streaming" final, and Flush and
    # Stop go; give the vocabulary back, and they return.
    notebook.kernel(
        "original = dict(p.vocab)\n"
        "p.vocab = {**original, 'final_states': [*original['final_states'], 'streaming']}"
    )
    wait_enabled(notebook, WITH_AUDIO)
    assert not active_pill(notebook)
    notebook.kernel("p.vocab = original")
    wait_enabled(notebook, DURING_SESSION | WITH_AUDIO)

    # The session ended: the recording can still be played and saved.
    notebook.kernel("p.on_state('finished', None)")
    wait_enabled(notebook, WITH_AUDIO)
    assert not active_pill(notebook)
    assert notebook.kernel_json("clicks.seen") == ["flush"]

    # A click on the middle of the waveform of the whole recording (4 s) plays from 2 s.
    clock = notebook.page.evaluate(
        """() => {
            const root = document.querySelector(".fishnb-player");
            const canvas = root.querySelector("canvas");
            const rect = canvas.getBoundingClientRect();
            const x = rect.left + rect.width / 2;
            canvas.dispatchEvent(new MouseEvent("click", {bubbles: true, clientX: x}));
            return root.fishnbClock();
        }"""
    )
    assert clock["position_s"] == pytest.approx(2.0, abs=1 / 8000)
