"""Row 12: first sound in the page, in JupyterLab in Chromium.

One notebook, one kernel, one page; its kernel speaks through the shared child server
(``FISH_BASE_URL``). A setup cell defines an LLM-paced token source of the ten-sentence
answer (row 3's: first token 300 ms after the cell starts, then 30 tokens/s, anchored at the
cell's start so both variants get the same schedule whenever they pull). Then, interleaved:

- ours: ``speak(tokens)``, the notebook's player (the page-wide queue's default policy);
- peer: the Fish SDK's recipe, ``play(client.tts.stream_websocket(tokens), notebook=True)``,
  which joins the whole mp3 stream, then ``display(Audio(..., autoplay=True))``.

Both clocks are the page's ``performance.now()``. Start: just before the page asks
JupyterLab to run the cell (``notebook:run-cell``; the execute request leaves at once).
Stop, ours: the first ``AudioBufferSourceNode.start(when)`` after that (the player schedules
every chunk so), at the moment the sample sounds: the call's time plus ``when`` minus the
context's ``currentTime``. Peer: the first ``playing`` event of an ``<audio>`` element. Both
are seen by an init script in the page, no change to the package. Each variant runs once
before the measured runs (the widget's code loading, the kernel's first imports and
connections are not counted). Between runs the kernel stops our session and closes its
player (it leaves the page's queue), the page pauses every ``<audio>``, and the outputs are
cleared, so nothing plays when the next run starts. Goal <= 0.15x.

The browser harness is the browser suite's (``tests/browser/conftest.py``: ``NotebookPage``,
the Chromium flags with autoplay allowed); the Lab server is started by
``tests/browser/lab.py``, as that suite's ``lab`` fixture starts it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import Row, interleave
from .latency import SDK_KEY, TEN_SENTENCES

GOAL = 0.15
RUN_TIMEOUT = 120.0  # seconds one run may take to make a sound

#: Seen in the page from its first script on: every buffer start and every <audio> playing.
INIT_SCRIPT = """
(() => {
  const seen = (window.__benchSound = { starts: [], playing: [] });
  const start = AudioBufferSourceNode.prototype.start;
  AudioBufferSourceNode.prototype.start = function (when, ...rest) {
    const now = performance.now();
    const ctx = this.context;
    const lead = Math.max(0, ((when || 0) - ctx.currentTime) * 1000);
    seen.starts.push({ at: now, sound: now + lead, state: ctx.state });
    return start.call(this, when, ...rest);
  };
  document.addEventListener("playing", () => seen.playing.push(performance.now()), true);
})();
"""

SETUP = '''
import time
from fish_notebook import speak
from fish_notebook.sources import llm_tokens
from fishaudio import FishAudio
from fishaudio.utils import play

_TEXT = {text!r}
_sdk = FishAudio(api_key={key!r}, base_url={http_url!r})
_s = None

def _tokens(t0, first=0.3, rate=30.0):
    """The answer as an LLM writes it: token i at t0 + first + i / rate."""
    for i, token in enumerate(llm_tokens(_TEXT)):
        delay = t0 + first + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield token
'''
OURS = "_s = speak(_tokens(time.perf_counter()))"
SDK = "play(_sdk.tts.stream_websocket(_tokens(time.perf_counter())), notebook=True)"
QUIET = """
if _s is not None:
    _s.stop()
    try:
        _s.wait(30)
    except Exception:
        pass  # a session that failed has stopped all the same
    if _s.player is not None:
        _s.player.close()
    _s = None
"""
CELLS = {"ours": 1, "sdk": 2}  # cell indices in the notebook (0 is the setup)


@contextlib.contextmanager
def lab_server(fish_url: str) -> Iterator[Any]:
    """JupyterLab on a free loopback port, isolated in a temporary folder, its kernels
    speaking through ``fish_url`` (started as the browser suite's ``lab`` fixture starts it)."""
    from tests.browser.lab import running_lab

    env = {"FISH_BASE_URL": fish_url, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    with (
        tempfile.TemporaryDirectory(prefix="bench-lab-") as folder,
        running_lab(Path(folder), env) as lab,
    ):
        yield lab


def run_cell(notebook: Any, variant: str) -> float:
    """Run the variant's cell; seconds from the run request to its first sound."""
    page = notebook.page
    began = page.evaluate(
        """(index) => {
            const w = window.jupyterapp.shell.currentWidget;
            w.content.activeCellIndex = index;
            const t = performance.now();
            window.jupyterapp.commands.execute("notebook:run-cell");
            return t;
        }""",
        CELLS[variant],
    )
    kind = "starts" if variant == "ours" else "playing"
    sound = page.wait_for_function(
        """([kind, began]) => {
            const hits = window.__benchSound[kind]
                .map((x) => (typeof x === "number" ? x : x.sound))
                .filter((t) => t >= began);
            return hits.length ? Math.min(...hits) : false;
        }""",
        arg=[kind, began],
        timeout=RUN_TIMEOUT * 1000,
    ).json_value()
    page.wait_for_function(
        """(index) => {
            const w = window.jupyterapp.shell.currentWidget;
            const cell = w.content.model.cells.get(index);
            return w.sessionContext.session.kernel.status === "idle"
                && cell.executionCount !== null;
        }""",
        arg=CELLS[variant],
        timeout=RUN_TIMEOUT * 1000,
    )
    quiet(notebook)
    return (float(sound) - float(began)) / 1000


def quiet(notebook: Any) -> None:
    """Nothing sounds, nothing waits in the page's queue: the next run starts from silence."""
    notebook.kernel(QUIET, timeout_ms=60_000)
    notebook.page.evaluate("() => document.querySelectorAll('audio').forEach((a) => a.pause())")
    notebook.command("notebook:clear-all-cell-outputs")  # and their execution counts
    cleared = notebook.page.evaluate(
        """() => Array.from(window.jupyterapp.shell.currentWidget.content.model.cells)
            .every((c) => c.type !== "code" || c.executionCount === null)"""
    )
    if not cleared:
        raise RuntimeError("clearing the outputs left an execution count")


def suspended_starts(notebook: Any) -> int:
    """Buffer starts the page made while its AudioContext was not running (then the sound
    waited for it: the figure would be early)."""
    return int(
        notebook.page.evaluate(
            "() => window.__benchSound.starts.filter((s) => s.state !== 'running').length"
        )
    )


def page_first_sound_row(url: str, repeats: int) -> Row:
    """Row 12 on the shared child server at ``url`` (module docstring)."""
    from playwright.sync_api import sync_playwright

    from tests.browser.conftest import CHROMIUM_FLAGS, NotebookPage, launch

    http_url = "http" + url[2:]
    setup = SETUP.format(text=TEN_SENTENCES, key=SDK_KEY, http_url=http_url)
    with lab_server(url) as lab, sync_playwright() as playwright:
        browser = launch(playwright, CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 900})
            context.add_init_script(INIT_SCRIPT)
            page = context.new_page()
            page.set_default_timeout(60_000)
            notebook = NotebookPage(lab, page)
            notebook.open("bench_first_sound.ipynb", [setup, OURS, SDK])
            notebook.kernel(setup, timeout_ms=120_000)
            for variant in CELLS:  # warm: the widget's code, imports, connections
                run_cell(notebook, variant)
            samples = interleave(
                {variant: functools.partial(run_cell, notebook, variant) for variant in CELLS},
                repeats,
            )
            early = suspended_starts(notebook)
        finally:
            browser.close()
    note = (
        "page clock, from the run request to the first sample sounding (ours) / the "
        "<audio> element's playing event (peer); one warm run each first"
    )
    if early:
        note += f"; {early} buffer starts while the AudioContext was not running"
    row = Row(
        "12",
        "first sound in the page, 10-sentence answer (JupyterLab, Chromium)",
        "ms",
        "Fish SDK play(stream_websocket(...), notebook=True): <audio> playing, same page",
        f"<= {GOAL}x",
        ours=samples["ours"],
        peer=samples["sdk"],
        scale=1000,
        note=note,
    )
    return row.finish(lambda ratio, _m: ratio is not None and ratio <= GOAL)
