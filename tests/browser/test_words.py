"""Words in time in a real page: the word being heard lights up, in step with the audio clock.

A timestamped session (``Session(..., timestamps=True)``) speaks from the embedded server.
While it plays, the test samples, in the animation frame right after the player drew, which
word is highlighted, the AudioContext clock reading that drawing used (``data-clock``) and
the clock now. It maps each reading to the recording's timeline itself, from where the page
scheduled each chunk (``stats.starts``) and the chunk lengths the kernel recorded:
t = S_k / rate + (currentTime - start_k) for the chunk k playing. The highlighted word must be
the one whose [start, end) holds the drawn t; how far the clock moved on by the time of the
sample (at most a frame, unless the machine stalls) is reported, not asserted.
"""

from __future__ import annotations

import bisect
import json
from typing import Any

import pytest

from .conftest import ARTIFACTS, NotebookPage
from .schedule import assert_gapless_unless_late

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

TEXT = (
    "Every word lights up while you hear it. Click any word, and the player jumps straight to it."
)

DONE = (
    "s => s.status === 'finished' && s.chunk_count > 0"
    " && s.scheduled_seqs.length === s.chunk_count && !s.playing"
)

# Runs in the page: every ~`every` ms, in the animation frame right after the player drew,
# note the highlighted word and the audio clock, until playback ends (or `limit` ms pass).
SAMPLER = """async ([every, limit]) => {
    const root = document.querySelector(".fishnb-player");
    const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
    const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
    const samples = [];
    const began = performance.now();
    let played = false;
    while (performance.now() - began < limit) {
        await pause(every);
        await frame();
        const current = root.querySelector(".fishnb-current");
        const clock = root.fishnbClock();
        const text = root.querySelector(".fishnb-text");
        const stats = JSON.parse(root.dataset.stats || "{}");
        samples.push({
            word: current ? Number(current.dataset.w) : -1,
            drawn: Number(text.dataset.word ?? -1),
            drawn_at: Number(text.dataset.clock),
            ...clock,
        });
        played = played || stats.playing;
        if (played && !stats.playing) break;
    }
    return samples;
}"""


def timeline_position(ctx_time: float, starts: list[float], lengths: list[int], rate: int) -> float:
    """Where ``ctx_time`` is in the recording, from where each chunk was scheduled."""
    k = bisect.bisect_right(starts, ctx_time) - 1
    if k < 0:
        return 0.0  # before the first chunk starts: the player stands at 0
    into = min(ctx_time - starts[k], lengths[k] / rate)  # past the last chunk: its end
    return sum(lengths[:k]) / rate + into


def word_at(t: float, words: list[list[Any]]) -> int:
    """The index of the word whose [start, end) holds ``t``, or -1 between words."""
    for i, (_, start, end) in enumerate(words):
        if start <= t < end:
            return i
    return -1


def sync_error(t: float, shown: int, words: list[list[Any]]) -> float:
    """Seconds between ``t`` and the interval of what is shown (0 when they agree)."""
    expected = word_at(t, words)
    if shown == expected:
        return 0.0
    if shown >= 0:  # a word is lit: how far t is outside it
        _, start, end = words[shown]
        return max(start - t, t - end, 0.0) or 1e-9  # t == end: just past it
    _, start, end = words[expected]  # nothing lit while a word is heard
    return min(t - start, end - t)


def test_the_word_being_heard_lights_up_and_a_click_plays_from_a_word(
    notebook: NotebookPage,
) -> None:
    """The highlighted word follows the audio clock word by word; clicking a word seeks there."""
    notebook.open(
        "words.ipynb",
        [
            "from fish_notebook.session import Session\n"
            "from fish_notebook.widget import display_player\n"
            f"s = Session({TEXT!r}, timestamps=True)\n"
            "p = display_player(s)",
        ],
    )
    notebook.run_all()
    notebook.wait_stats("s => s.chunks_received > 0")
    samples = notebook.page.evaluate(SAMPLER, [90, 30_000])
    stats = notebook.wait_stats(DONE, timeout_ms=60_000)
    assert notebook.cell_errors() == []

    count = stats["chunk_count"]
    rate, lengths, words = notebook.kernel_json(
        "[s.sample_rate, [len(c) // 2 for c in s.chunks], [list(w) for w in s.words]]"
    )
    assert len(lengths) == count and len(words) >= 15
    assert notebook.kernel_json("[list(w) for w in p.words]") == words
    assert stats["scheduled_seqs"] == list(range(count))
    assert_gapless_unless_late(stats)
    offsets = [sum(lengths[:k]) for k in range(count)]
    starts = stats["starts"][:count]

    # The page shows every word of the timeline as its own span, in order.
    spans = notebook.page.locator(".fishnb-player .fishnb-word")
    assert spans.count() == len(words)
    assert [w.strip() for w in spans.all_inner_texts()] == [w[0] for w in words]

    # Each sample: the clock maps to a moment of the timeline; the word lit is the word heard.
    end = starts[-1] + lengths[-1] / rate
    playing = [s for s in samples if starts[0] <= s["drawn_at"] and s["ctx_time"] < end]
    assert len(playing) >= 20, samples
    errors = []
    for sample in playing:
        now = timeline_position(sample["ctx_time"], starts, lengths, rate)
        assert sample["position_s"] == pytest.approx(now, abs=1e-5)  # the player maps it alike
        drawn = timeline_position(sample["drawn_at"], starts, lengths, rate)
        assert sample["word"] == sample["drawn"] == word_at(drawn, words), sample
        assert sample["ctx_time"] >= sample["drawn_at"]
        errors.append(sync_error(now, sample["word"], words))
    shown = [s["word"] for s in playing if s["word"] >= 0]
    assert shown == sorted(shown), "words light up in order"
    assert len(set(shown)) >= 6, "the highlight moves from word to word"
    assert max(shown) >= len(words) - 4

    # After the end, a click on a word plays from its start.
    target = len(words) // 2
    clock = notebook.page.evaluate(
        """(i) => {
            const root = document.querySelector(".fishnb-player");
            root.querySelector(`.fishnb-word[data-w="${i}"]`).click();
            return root.fishnbClock();
        }""",
        target,
    )
    assert clock["position_s"] == pytest.approx(words[target][1], abs=1.5 / rate)
    notebook.page.wait_for_function(
        f"""() => {{
            const lit = document.querySelector(".fishnb-player .fishnb-current");
            return lit && Number(lit.dataset.w) > {target};
        }}""",
        timeout=20_000,
    )
    notebook.screenshot("player-words.png", index=0)
    first = bisect.bisect_right(offsets, round(words[target][1] * rate)) - 1
    again = notebook.wait_stats(f"s => s.scheduled_seqs.length === {2 * count - first}")
    assert again["scheduled_seqs"][count:] == list(range(first, count))
    assert set(again["gaps"][count:]) == {0}

    figures = {
        "words": len(words),
        "samples": len(playing),
        # The lit word against the clock at the moment of sampling (0 = the same word).
        "word_sync_error_ms_max": round(max(errors) * 1000, 3),
        "samples_off_by_clock_moving_on": sum(1 for e in errors if e > 0),
        "clock_moved_since_drawing_ms_max": round(
            max(s["ctx_time"] - s["drawn_at"] for s in playing) * 1000, 3
        ),
        "samples_between_words": sum(1 for s in playing if s["word"] < 0),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "player-words-figures.json").write_text(json.dumps(figures, indent=2))
    print("word sync figures:", json.dumps(figures))
