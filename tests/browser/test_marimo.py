"""``speak()`` in a marimo notebook: a real marimo server, Chromium, the embedded voice.

marimo shows a cell's last expression (IPython's ``display()`` is not how output gets there),
so a notebook writes ``speak(...)`` last in a cell and the session shows as its live player.
The test writes a small marimo notebook, serves it with ``marimo edit`` and with ``marimo
run`` on a free loopback port (its own HOME and config folders, no update check, a token,
its process group ended after the test), opens it in the suite's Chromium and checks that
the player renders, that audio is scheduled, and that its Stop button stops the session: the
click travels marimo's widget message path to ``Session.stop()``, and the TTS server (in
this process, see conftest.py) sees its socket closed before the text was all sent.

marimo is a dev dependency: without it these tests fail, they do not skip.

The page may reach only the marimo server: any other request is aborted, and the test fails
if there was one (no network here, and nothing may wait on it).
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..helpers import wait_until
from .conftest import ARTIFACTS, DUMMY_KEY
from .lab import free_port
from .schedule import assert_gapless_unless_late

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

MARIMO_START_TIMEOUT = 90.0
PAGE_WAIT_MS = 60_000

SENTENCES = (
    "Hello from a marimo notebook, speaking while the words stream in. "
    "Every chunk is scheduled the moment it reaches the page. "
    "Press Stop and the session ends at once. "
)
REPEATS = 6
WORDS = len(SENTENCES.split()) * REPEATS

# A marimo notebook (its file format): the session is the last expression of its cell, so it
# is what marimo shows. The source streams a word every 50 ms, so the session is still
# streaming when the test clicks Stop.
NOTEBOOK = f"""\
import marimo

app = marimo.App()


@app.cell
def _():
    import time

    from fish_notebook import speak

    def words():
        for word in ({SENTENCES!r} * {REPEATS}).split():
            yield word + " "
            time.sleep(0.05)

    return speak, words


@app.cell
def _(speak, words):
    speak(words())
    return


if __name__ == "__main__":
    app.run()
"""

# The user config (in the isolated XDG_CONFIG_HOME): run the notebook when it is opened, and
# leave out what could reach the network or the disk beyond the test's folder.
USER_CONFIG = """\
[runtime]
auto_instantiate = true

[save]
autosave = "off"

[completion]
copilot = false

[ai]
enabled = false

[language_servers.pylsp]
enabled = false
"""


@dataclass
class Marimo:
    """A running ``marimo edit`` or ``marimo run`` server."""

    url: str
    token: str
    log: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log, for failure messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def isolated_env(base: Path, tts_url: str) -> dict[str, str]:
    """This process's environment with HOME, config, cache and state in ``base``.

    The run's mark (tests/conftest.py) is kept, so a process left behind is found.
    """
    dropped = ("FISH_API_KEY", "FISH_BASE_URL", "JUPYTER", "IPYTHON", "MARIMO", "XDG_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(dropped)}
    for name in ("HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME"):
        env[name] = str(base / name.lower())
        Path(env[name]).mkdir(parents=True, exist_ok=True)
    config = Path(env["XDG_CONFIG_HOME"]) / "marimo" / "marimo.toml"
    config.parent.mkdir(parents=True)
    config.write_text(USER_CONFIG)
    env["MARIMO_SKIP_UPDATE_CHECK"] = "1"
    env["FISH_BASE_URL"] = tts_url
    env["FISH_API_KEY"] = DUMMY_KEY
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_answering(server: Marimo) -> None:
    """Wait until the server answers its health check (bounded by MARIMO_START_TIMEOUT)."""
    deadline = time.monotonic() + MARIMO_START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            pytest.fail(f"marimo exited with {server.process.returncode}:\n{server.log_tail()}")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(f"{server.url}/health", timeout=2.0) as response,
        ):
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"marimo did not answer in {MARIMO_START_TIMEOUT} s:\n{server.log_tail()}")
        time.sleep(0.25)


def end_process_group(process: subprocess.Popen[bytes]) -> None:
    """End the server and everything it started (its kernel): they share its process group."""
    for how, timeout in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, how)
        try:
            process.wait(timeout=timeout)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # a kernel that outlived the server
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(params=["edit", "run"])
def marimo_server(request: Any, tmp_path: Path, tts_server: Any) -> Iterator[Marimo]:
    """``marimo edit`` (the notebook) or ``marimo run`` (the same as an app) of the notebook
    above, on a free loopback port, with a token."""
    mode = request.param
    folder = tmp_path / "notebooks"
    folder.mkdir()
    notebook = folder / "speak_in_marimo.py"
    notebook.write_text(NOTEBOOK)
    port, token = free_port(), secrets.token_hex(16)
    command = [
        sys.executable,
        "-m",
        "marimo",
        mode,
        str(notebook),
        "--headless",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--token-password={token}",
        "--no-sandbox",
    ]
    if mode == "edit":  # only edit checks for updates (the environment says no too)
        command.append("--skip-update-check")
    log = tmp_path / "marimo.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            env=isolated_env(tmp_path, tts_server.url),
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kernel ends with it
        )
    server = Marimo(f"http://127.0.0.1:{port}", token, log, process)
    try:
        wait_answering(server)
        yield server
    finally:
        end_process_group(process)


@dataclass
class MarimoPage:
    """The notebook in a Playwright page, the requests it was refused, its console."""

    page: Any
    refused: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def player(self) -> Any:
        """The player view (marimo puts widgets in a shadow root: CSS locators pierce it)."""
        return self.page.locator(".fishnb-player")

    def stats(self) -> dict[str, Any]:
        """The ``data-stats`` the player publishes (empty until its first update)."""
        text = self.player().first.get_attribute("data-stats", timeout=PAGE_WAIT_MS)
        return json.loads(text) if text else {}

    def wait_stats(self, predicate: Any, what: str, timeout: float = 60.0) -> dict[str, Any]:
        """Poll the stats until ``predicate(stats)`` holds; return them."""

        def matching() -> dict[str, Any] | None:
            stats = self.stats()
            return stats if stats and predicate(stats) else None

        try:
            return dict(wait_until(matching, what, timeout))
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nstats: {json.dumps(self.stats())[:2000]}\nconsole: {self.console[-10:]}"
            ) from exc


@contextlib.contextmanager
def marimo_page(browser: Any, server: Marimo) -> Iterator[MarimoPage]:
    """A fresh browser context on the notebook; only the marimo server may be reached."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    wrapper = MarimoPage(context.new_page())
    origin = urllib.parse.urlsplit(server.url).netloc

    def only_marimo(route: Any) -> None:
        if urllib.parse.urlsplit(route.request.url).netloc == origin:
            route.continue_()
        else:
            wrapper.refused.append(route.request.url)
            route.abort()

    context.route("**/*", only_marimo)
    wrapper.page.set_default_timeout(PAGE_WAIT_MS)
    wrapper.page.on("console", lambda msg: wrapper.console.append(f"{msg.type}: {msg.text}"))
    try:
        wrapper.page.goto(f"{server.url}/?access_token={server.token}")
        yield wrapper
    finally:
        with contextlib.suppress(Exception):
            context.close()


def test_speak_plays_in_marimo_and_its_stop_button_stops_the_session(
    marimo_server: Marimo, browser: Any, tts_server: Any, request: Any
) -> None:
    """The session shows as its player, audio is scheduled, and Stop closes the socket."""
    recorder = tts_server.recorder
    recorder.clear()
    with marimo_page(browser, marimo_server) as notebook:
        try:
            notebook.player().first.wait_for(state="visible", timeout=PAGE_WAIT_MS)
        except Exception as exc:
            raise AssertionError(
                f"no player in the page: {exc}\nconsole: {notebook.console[-10:]}\n"
                f"server log:\n{marimo_server.log_tail()}"
            ) from exc
        assert notebook.player().count() == 1  # shown once: not also by display()

        stats = notebook.wait_stats(
            lambda s: s["status"] == "streaming" and s["scheduled"] >= 2 and s["playing"],
            "audio scheduled while the session streams",
        )
        assert stats["rate"] == 44100 and stats["ctx_sample_rate"] > 0
        (record,) = wait_until(lambda: recorder.sessions, "the session at the server")
        ARTIFACTS.mkdir(exist_ok=True)
        mode = request.node.callspec.params["marimo_server"]
        notebook.page.screenshot(path=str(ARTIFACTS / f"marimo-{mode}.png"), timeout=10_000)
        assert record.closed is None

        before = notebook.stats()  # chunks that arrived before Stop must all be played
        notebook.player().first.locator('button[data-action="stop"]').click(timeout=10_000)
        wait_until(lambda: record.closed is not None, "the socket to close", timeout=20)
        stopped = notebook.wait_stats(
            lambda s: s["status"] == "stopped", "the session state 'stopped' in the player"
        )
        # Closed early: the server never finished, and not every word was sent.
        assert record.finish is None
        assert 0 < len(record.received_named("text")) < WORDS
        count = stopped["chunk_count"]
        assert stopped["chunks_received"] == count > 0
        # Every chunk that came before Stop was scheduled in order, back to back (the embedded
        # voice is far faster than real time) unless one came late; the ones still in flight
        # when Stop was pressed arrive, and are not played.
        scheduled = stopped["scheduled_seqs"]
        assert scheduled == list(range(len(scheduled)))
        assert before["chunks_received"] <= len(scheduled) <= count
        assert_gapless_unless_late(stopped)
        assert notebook.refused == []
        assert DUMMY_KEY not in notebook.page.content()
    figures = {key: stopped[key] for key in ("scheduled", "audio_s", "underruns", "max_gap")}
    figures["first_latency_ms"] = stopped["latencies_ms"][0]
    print(f"marimo {mode}: {json.dumps(figures)}")


def test_a_session_shows_as_its_player_in_marimo_and_as_its_repr_without_one() -> None:
    """marimo's formatting (``mo.as_html``, as for a cell's last expression): a session that
    ``display_player`` made a player for shows as that widget, another one as its repr."""
    import marimo as mo

    from fish_notebook.session import Session
    from fish_notebook.widget import display_player

    shown: list[Any] = []
    bare = Session("Not started.", start=False, base_url="ws://127.0.0.1:9")
    assert mo.as_html(bare).text == f"<span>{html.escape(repr(bare))}</span>"

    session = Session("Not started.", start=False, base_url="ws://127.0.0.1:9")
    player = display_player(session, fallback=None, display_fn=shown.append)
    assert shown == [player] and session.player is player
    text = mo.as_html(session).text
    assert "<marimo-anywidget" in text and player._model_id in text
