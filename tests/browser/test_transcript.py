"""The transcript in a real page: revised words replace the old ones, cues show as cues,
speakers in their colours, skipped markup greyed; the highlight never lands on a cue.

A player fed by hand in the kernel gets text with delivery cues, speaker tags and a piece of
skipped markup, then audio, then words in time the way a server revises them (a partial
snapshot with "bi", then "big" from index 1 on). The test reads the page's DOM.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import NotebookPage

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

SETUP = """
import math, struct
from IPython.display import display
from fish_notebook.widget import Player
from fish_notebook.timeline import TimedWord as W

RATE = 8000

def tone(seconds, hz=330):
    n = int(RATE * seconds)
    wave = (int(6000 * math.sin(2 * math.pi * hz * i / RATE)) for i in range(n))
    return struct.pack(f"<{n}h", *wave)

p = Player(sample_rate=RATE)
display(p)
"""

TEXT = """
p.on_state("streaming", None)
p.on_text("<|speaker:0|>Hello [hap")
p.on_text("py] big ")
p.on_skipped("**")
p.on_text("world. (excited) <|speaker:1|>Hi [break] there.")
p.on_flush()
"""

AUDIO_AND_PARTIAL_WORDS = """
for i in range(5):
    p.on_audio(tone(1.0, 300 + 40 * i), i)
p.on_words([W("Hello", 0.0, 0.8), W("bi", 0.9, 1.3)])
"""

REVISED_WORDS = """
p.on_words([W("big", 0.9, 1.7), W("world.", 1.8, 2.6)], 1)
p.on_words([W("Hi", 2.8, 3.6), W("there.", 3.7, 4.5)], 3)
p.on_state("finished", None)
"""

# Runs in the page: what the transcript shows.
READ = """() => {
    const text = document.querySelector(".fishnb-player .fishnb-text");
    const all = (sel) => Array.from(text.querySelectorAll(sel));
    const colour = (el) => getComputedStyle(el).color;
    return {
        timed: text.classList.contains("fishnb-timed"),
        content: text.textContent,
        words: all(".fishnb-word").map((s) => [Number(s.dataset.w), s.textContent]),
        wordSpeakers: all(".fishnb-word").map((s) => s.dataset.speaker ?? null),
        wordColours: all(".fishnb-word").map(colour),
        cues: all(".fishnb-cue").map((s) => [s.textContent, s.classList.contains("fishnb-break")]),
        cueIsWord: all(".fishnb-cue").some(
            (s) => s.closest(".fishnb-word") || s.querySelector(".fishnb-word")),
        skipped: all(".fishnb-skipped").map((s) => s.textContent),
        skippedOpacity: all(".fishnb-skipped").map((s) => Number(getComputedStyle(s).opacity)),
        speakerText: all("[data-speaker]").map((s) => [s.dataset.speaker, s.textContent]),
    };
}"""

# Runs in the page: every ~`every` ms for `limit` ms, which spans are lit as the word heard.
SAMPLE_LIT = """async ([every, limit]) => {
    const text = document.querySelector(".fishnb-player .fishnb-text");
    const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
    const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
    const samples = [];
    const began = performance.now();
    while (performance.now() - began < limit) {
        await pause(every);
        await frame();
        samples.push({
            lit: Array.from(text.querySelectorAll(".fishnb-current")).map(
                (s) => [s.dataset.w ?? null, s.textContent, s.className]),
            cueLit: text.querySelectorAll(".fishnb-cue.fishnb-current, .fishnb-cue.fishnb-spoken,"
                + " .fishnb-skipped.fishnb-current").length,
        });
    }
    return samples;
}"""


def read(notebook: NotebookPage) -> dict[str, Any]:
    return dict(notebook.page.evaluate(READ))


def wait_words(notebook: NotebookPage, texts: list[str]) -> None:
    """Wait until the page shows exactly ``texts`` as words in time."""
    try:
        notebook.page.wait_for_function(
            """(want) => {
                const spans = document.querySelectorAll(".fishnb-player .fishnb-word");
                return JSON.stringify(Array.from(spans).map((s) => s.textContent)) === want;
            }""",
            arg=json.dumps(texts, separators=(",", ":")),
            timeout=20_000,
        )
    except Exception as exc:
        raise AssertionError(
            f"the page never showed {texts}: {exc}\n{read(notebook)}\n{notebook.console[-10:]}"
        ) from exc


def test_revised_words_replace_and_cues_speakers_and_skipped_markup_show_as_such(
    notebook: NotebookPage,
) -> None:
    """Estimate mode, then words in time: cues are tags (never words), speaker tags never
    show but colour their words, skipped markup is greyed, and a revised word takes the old
    one's place (one span, lit alone) instead of being added after it."""
    notebook.open("transcript.ipynb", [SETUP])
    notebook.run_all()
    notebook.wait_cells_done()
    notebook.page.wait_for_selector(".fishnb-player .fishnb-text", state="attached")
    assert notebook.cell_errors() == []

    # Text only: the spoken part is estimated; cues, speakers and skipped markup already show.
    notebook.kernel(TEXT)
    notebook.page.wait_for_function(
        "() => document.querySelectorAll('.fishnb-player .fishnb-cue').length === 3",
        timeout=20_000,
    )
    before = read(notebook)
    assert not before["timed"] and before["words"] == []
    assert before["cues"] == [["[happy]", False], ["(excited)", False], ["[break]", True]]
    assert before["skipped"] == ["**"]
    assert "<|speaker" not in before["content"] and "|>" not in before["content"]
    speakers = {}
    for speaker, text in before["speakerText"]:
        speakers.setdefault(speaker, "")
        speakers[speaker] += text
    assert "Hello" in speakers["0"] and "world." in speakers["0"] and "Hi" not in speakers["0"]
    assert "Hi" in speakers["1"] and "there." in speakers["1"]

    # Words in time, as a server sends them: a partial snapshot, then the revision.
    notebook.kernel(AUDIO_AND_PARTIAL_WORDS)
    wait_words(notebook, ["Hello", "bi"])
    notebook.kernel(REVISED_WORDS)
    words = ["Hello", "big", "world.", "Hi", "there."]
    wait_words(notebook, words)
    after = read(notebook)
    assert after["timed"]
    assert after["words"] == [[i, w] for i, w in enumerate(words)]  # "bi" is gone, not kept
    assert after["cues"] == before["cues"] and not after["cueIsWord"]
    assert after["skipped"] == ["**"] and all(o < 1 for o in after["skippedOpacity"])
    assert "<|speaker" not in after["content"]
    assert after["wordSpeakers"] == ["0", "0", "0", "1", "1"]
    colours = after["wordColours"]
    assert colours[0] == colours[1] == colours[2] != colours[3] == colours[4]
    assert notebook.kernel_json("[list(w) for w in p.words]") == [
        ["Hello", 0.0, 0.8],
        ["big", 0.9, 1.7],
        ["world.", 1.8, 2.6],
        ["Hi", 2.8, 3.6],
        ["there.", 3.7, 4.5],
    ]

    # Play from the revised word: one span lit at a time, never a cue, "big" lit once.
    notebook.wait_stats("s => s.chunks_received === 5")
    notebook.page.evaluate(
        """() => document.querySelector('.fishnb-player .fishnb-word[data-w="1"]').click()"""
    )
    samples = notebook.page.evaluate(SAMPLE_LIT, [60, 4000])
    assert all(len(s["lit"]) <= 1 for s in samples), samples
    assert all(s["cueLit"] == 0 for s in samples), samples
    lit = [s["lit"][0] for s in samples if s["lit"]]
    assert all(text in words and "[" not in text for _, text, _ in lit), lit
    assert ["1", "big"] in [[w, text] for w, text, _ in lit], lit
    order = [int(w) for w, _, _ in lit]
    assert order == sorted(order) and min(order) >= 1, order
    notebook.screenshot("player-transcript-parts.png", index=0)
