"""The page's queue in a real page: one voice at a time, in the order the sessions started.

Sessions speak from the embedded TTS server without ``--wait``, so cells run on while their
audio plays. What the page did is read from each player's ``data-stats``: ``queue`` holds its
place (``id``, ``order``, ``after``: the player it followed, ``queued``: it showed "queued")
and its queued run on the Web Audio clock (``clock``: one id per AudioContext,
``first_start`` and ``last_end`` in seconds on it; ``cut_at`` and ``planned_end`` when an
interrupt cut it). Players at one sample rate share one AudioContext, so their schedules are
compared on one clock, exactly. The tests assert order and overlap facts only, never times.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from typing import Any

import pytest

from fish_notebook.errors import ValidationError
from fish_notebook.widget import Player

from .conftest import ARTIFACTS, NotebookPage

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

# Finished, every chunk scheduled, nothing playing, and out of the queue for `reason`.
DONE = (
    "s => s.status === 'finished' && s.chunk_count > 0 && s.scheduled >= s.chunk_count"
    " && !s.playing && s.queue.state === 'out' && s.queue.reason === {reason!r}"
)

# Records every text each player's status pill shows, from before the cells run.
PILL_RECORDER = """() => {
    const logs = new Map();
    window.fishnbPills = logs;
    const note = () => {
        for (const el of document.querySelectorAll(".fishnb-player .fishnb-state")) {
            const list = logs.get(el) || [];
            const text = el.textContent;
            if (text && list[list.length - 1] !== text) list.push(text);
            logs.set(el, list);
        }
    };
    new MutationObserver(note).observe(document.body,
        {subtree: true, childList: true, characterData: true});
}"""
PILLS = """() => Array.from(document.querySelectorAll(".fishnb-player .fishnb-state"),
    (el) => window.fishnbPills.get(el) || [])"""

LONG = (
    "This long answer keeps talking for a good while, sentence after sentence. "
    "It describes the weather, the sea, and the boats that sail across the bay. "
    "It goes on about the harbour, the gulls and the evening light on the water. "
    "Nobody should have to hear the end of it, because another cell interrupts."
)
SHORT = "Sorry to interrupt: this is more important."


def on_cell(notebook: NotebookPage, index: int, command: str) -> None:
    """Run a Lab notebook command on one cell (``notebook:run-cell``: the others wait)."""
    notebook.page.evaluate(
        "(i) => { window.jupyterapp.shell.currentWidget.content.activeCellIndex = i; }", index
    )
    notebook.command(command)


def run_cell(notebook: NotebookPage, index: int) -> None:
    on_cell(notebook, index, "notebook:run-cell")


def queue_of(stats: dict[str, Any]) -> dict[str, Any]:
    return dict(stats["queue"])


def record_pills(notebook: NotebookPage) -> None:
    notebook.page.evaluate(PILL_RECORDER)


def pills(notebook: NotebookPage) -> list[list[str]]:
    return [list(log) for log in notebook.page.evaluate(PILLS)]


def test_run_all_plays_three_cells_in_start_order_without_overlap(
    notebook: NotebookPage,
) -> None:
    """Three cells speak without waiting: the page plays them one after the other, in the
    order they started, each later one "queued" until the one before has ended."""
    notebook.open(
        "queue_three.ipynb",
        [
            # Each long enough (several seconds) that the next cell starts while it plays,
            # even on a loaded machine.
            'from fish_notebook import speak\ns1 = speak("First cell speaks this sentence. '
            'It goes on for a while, so that the others must wait. Then it ends.")',
            's2 = speak("Second cell speaks right after the first one. It also takes a few '
            'seconds, so that the third one waits too. Then it ends.")',
            's3 = speak("Third cell speaks last, once the second is done.")',
        ],
    )
    record_pills(notebook)
    notebook.run_all()
    stats = [
        notebook.wait_stats(DONE.format(reason="ended"), index=i, timeout_ms=90_000)
        for i in range(3)
    ]
    notebook.wait_cells_done()
    assert notebook.cell_errors() == []
    queues = [queue_of(s) for s in stats]
    assert [q["policy"] for q in queues] == ["queue"] * 3
    # The kernel's creation order is the queue's order, and the cells' order.
    assert queues[0]["order"] < queues[1]["order"] < queues[2]["order"]
    # One sample rate, one AudioContext: every schedule below is on the same clock.
    assert queues[0]["clock"] > 0 and len({q["clock"] for q in queues}) == 1

    # The published end of each run is where its last scheduled chunk ends.
    last_lengths, rate = notebook.kernel_json(
        "[[len(s.chunks[-1]) // 2 for s in (s1, s2, s3)], s1.sample_rate]"
    )
    for s, q, last in zip(stats, queues, last_lengths, strict=True):
        count = s["chunk_count"]
        run = s["starts"][-count:]
        assert s["scheduled_seqs"][-count:] == list(range(count))
        assert q["first_start"] == run[0]
        assert q["last_end"] == pytest.approx(run[-1] + last / rate, abs=2e-6)
        assert all(gap >= 0 for gap in s["gaps"]), "a run never overlaps itself"

    # In start order, one after the other, never overlapping on the shared clock.
    assert not queues[0]["queued"] and queues[0]["position"] == 0 and queues[0]["after"] == 0
    for before, after in itertools.pairwise(queues):
        assert after["first_start"] >= before["last_end"]
        assert after["after"] == before["id"]
        assert after["queued"] and after["position"] >= 1

    # What the status pills showed: the later ones said "queued" before they played.
    shown = pills(notebook)
    assert len(shown) == 3, shown
    assert "queued" not in shown[0], shown
    for log in shown[1:]:
        assert "queued" in log, shown
        assert log[-1] == "finished", shown
    assert shown[0][-1] == "finished", shown

    figures = {
        "handover_gaps_ms": [
            round((b["first_start"] - a["last_end"]) * 1000, 3)
            for a, b in itertools.pairwise(queues)
        ],
        "waits_ms": [q["wait_ms"] for q in queues],
        "first_chunk_arrival_to_start_ms": [s["latencies_ms"][0] for s in stats],
        "underruns": [s["underruns"] for s in stats],
        "pills": shown,
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "queue-figures.json").write_text(json.dumps(figures, indent=2))
    print("queue figures:", json.dumps(figures))


INTERRUPT_CELLS = [
    "from fish_notebook.session import Session\n"
    "from fish_notebook.widget import display_player\n"
    f"first = Session({LONG!r}, start=False)\n"
    "p1 = display_player(first)\n"
    "first.start()",
    f"second = Session({SHORT!r}, start=False)\n"
    "p2 = display_player(second, playback={'policy': 'interrupt'})\n"
    "second.start()",
]


def test_interrupt_cuts_what_plays_and_speaks_at_once(notebook: NotebookPage) -> None:
    """A session set to interrupt fades out the one playing and starts where the fade ends,
    long before the first would have ended."""
    notebook.open("queue_interrupt.ipynb", INTERRUPT_CELLS)
    run_cell(notebook, 0)
    notebook.wait_stats("s => s.playing && s.position_s > 0.5", index=0, timeout_ms=60_000)
    run_cell(notebook, 1)
    second = notebook.wait_stats(DONE.format(reason="ended"), index=1, timeout_ms=60_000)
    first = notebook.wait_stats(
        "s => s.queue.reason === 'interrupted' && !s.playing", index=0, timeout_ms=10_000
    )
    notebook.wait_cells_done()
    assert notebook.cell_errors() == []
    cut, by = queue_of(first), queue_of(second)
    assert notebook.kernel_json("p2.playback['policy']") == by["policy"] == "interrupt"
    assert cut["cut_by"] == by["id"] and cut["clock"] == by["clock"] > 0
    # The first run was cut while it played: its sound ends (faded) after the cut and before
    # its scheduled end.
    assert cut["first_start"] <= cut["cut_at"] <= cut["last_end"] < cut["planned_end"]
    # The second starts once the fade has ended (no overlap), before the first would have
    # ended (at once), without waiting in the queue.
    assert cut["last_end"] <= by["first_start"] < cut["planned_end"]
    assert not by["queued"] and by["after"] == 0
    # Part of the first was never heard.
    assert first["position_s"] < first["audio_s"]
    print(
        "interrupt figures:",
        json.dumps(
            {
                "cut_to_second_start_ms": round((by["first_start"] - cut["cut_at"]) * 1000, 3),
                "audio_cut_s": round(cut["planned_end"] - cut["last_end"], 3),
            }
        ),
    )


OVERLAP_CELLS = [
    "from fish_notebook.session import Session\n"
    "from fish_notebook.widget import display_player\n"
    f"one = Session({LONG!r}, start=False)\n"
    "p1 = display_player(one, playback={'policy': 'overlap'})\n"
    "one.start()",
    f"two = Session({LONG!r}, start=False)\n"
    "p2 = display_player(two, playback={'policy': 'overlap'})\n"
    "two.start()",
]


def test_overlap_sessions_play_at_the_same_time(notebook: NotebookPage) -> None:
    """Two overlap sessions wait for nobody: their schedules overlap on the shared clock."""
    notebook.open("queue_overlap.ipynb", OVERLAP_CELLS)
    notebook.run_all()
    done = DONE.format(reason="")
    one, two = (notebook.wait_stats(done, index=i, timeout_ms=90_000) for i in range(2))
    notebook.wait_cells_done()
    assert notebook.cell_errors() == []
    a, b = queue_of(one), queue_of(two)
    assert a["policy"] == b["policy"] == "overlap"
    assert a["clock"] == b["clock"] > 0
    # Each began before the other ended: the two runs overlap in time.
    assert a["first_start"] < b["last_end"] and b["first_start"] < a["last_end"]
    assert not a["queued"] and not b["queued"]
    for stats in (one, two):
        assert stats["scheduled_seqs"] == list(range(stats["chunk_count"]))


CLEARED_CELLS = [
    "from fish_notebook.session import Session\n"
    "from fish_notebook.widget import display_player\n"
    f"one = Session({LONG!r})\n"
    "p1 = display_player(one)",
    f"two = Session({SHORT!r})\np2 = display_player(two)",
]


def test_a_cleared_output_lets_go_and_the_next_voice_speaks_at_once(
    notebook: NotebookPage,
) -> None:
    """Clearing a speaking cell's output silences its player (no view left) and hands the
    page's voice to the one queued behind it, long before the first would have ended; the
    cleared player stays out, though its session goes on sending audio."""
    notebook.open("queue_cleared.ipynb", CLEARED_CELLS)
    run_cell(notebook, 0)
    notebook.wait_stats("s => s.playing && s.position_s > 0.5", index=0, timeout_ms=60_000)
    run_cell(notebook, 1)
    notebook.wait_stats("s => s.queue.queued", index=1, timeout_ms=30_000)
    before = notebook.stats(index=0)
    on_cell(notebook, 0, "notebook:clear-cell-output")
    # The second player is now the page's only one.
    second = notebook.wait_stats(DONE.format(reason="ended"), index=0, timeout_ms=60_000)
    # (A cleared cell has no execution count: wait_cells_done would wait for it forever.)
    notebook.wait_kernel("one.state", "finished", 60)
    assert notebook.cell_errors() == []
    assert notebook.page.locator(".fishnb-player").count() == 1
    first, by = queue_of(before), queue_of(second)
    assert first["state"] == "holder" and by["queued"] and by["clock"] == first["clock"] > 0
    # The first's whole answer would have played until `would_end` on the shared clock; the
    # second began before that: the cleared player let go of the page's voice.
    seconds = notebook.kernel_json("len(one.audio) / 2 / one.sample_rate")
    would_end = first["first_start"] + seconds
    assert by["first_start"] < would_end
    # Audio that came after the clear was received, kept, and neither queued nor played: the
    # first player is out and silent, having played part of its answer.
    notebook.wait_kernel("p1.stats['chunks_received'] == len(one.chunks)", True)
    cleared = notebook.kernel_json("p1.stats")
    assert (cleared["queue"]["state"], cleared["queue"]["reason"]) == ("out", "orphaned")
    assert cleared["queue"]["id"] == first["id"] and not cleared["playing"]
    assert before["position_s"] <= cleared["position_s"] < seconds


def test_an_unknown_policy_is_refused_in_python() -> None:
    """The playback trait takes only the page's policies; setting the policy keeps the order."""
    player = Player(sample_rate=8000)
    order = player.playback["order"]
    assert player.playback == {"policy": "queue", "order": order}
    player.playback = {"policy": "interrupt"}
    assert player.playback == {"policy": "interrupt", "order": order}
    with pytest.raises(ValidationError):
        player.playback = {"policy": "shout"}
    with pytest.raises(ValidationError):
        player.playback = {"policy": "queue", "volume": 2}
    assert player.playback == {"policy": "interrupt", "order": order}
    assert Player(sample_rate=8000).playback["order"] > order
    with contextlib.suppress(Exception):
        player.close()


RUN_ALL_IN = """async ([paths, ms]) => {
    const app = window.jupyterapp;
    const widgets = Array.from(app.shell.widgets("main"));
    for (const path of paths) {
        const w = widgets.find((x) => x.context && x.context.path === path);
        if (!w) throw new Error(`${path} is not open`);
        app.shell.activateById(w.id);
        const began = performance.now();
        while (app.shell.currentWidget !== w) {  // the shell follows focus a moment later
            if (performance.now() - began > ms) throw new Error(`${path} never became current`);
            await new Promise((resolve) => setTimeout(resolve, 50));
        }
        const timer = new Promise((_, reject) =>
            setTimeout(() => reject(new Error(`running ${path} timed out`)), ms));
        await Promise.race([app.commands.execute("notebook:run-all-cells"), timer]);
    }
}"""


def test_two_notebooks_with_two_kernels_share_the_page_s_queue(notebook: NotebookPage) -> None:
    """Notebooks open side by side in one page, each with its own kernel (and its own copy of
    the player's code): the second one's speech waits for the first one's to end."""
    notebook.lab.write_notebook(
        "queue_right.ipynb",
        ['from fish_notebook import speak\nright = speak("The right notebook speaks second.")'],
    )
    notebook.open(
        "queue_left.ipynb",
        [
            "from fish_notebook import speak\n"
            'left = speak("The left notebook speaks first. It takes a moment to finish.")'
        ],
    )
    notebook.command("docmanager:open", {"path": "queue_right.ipynb"})
    notebook.wait_ready()
    kernels = notebook.lab.api("GET", "/api/sessions")
    assert len({s["kernel"]["id"] for s in kernels}) == 2
    notebook.page.evaluate(RUN_ALL_IN, [["queue_left.ipynb", "queue_right.ipynb"], 20_000])
    done = DONE.format(reason="ended")
    both = [notebook.wait_stats(done, index=i, timeout_ms=90_000) for i in range(2)]
    first, second = sorted((queue_of(s) for s in both), key=lambda q: q["order"])
    assert first["clock"] == second["clock"] > 0
    assert second["first_start"] >= first["last_end"]
    assert second["after"] == first["id"] and second["queued"] and not first["queued"]
