"""A real JupyterLab in headless Chromium, with the embedded TTS server in this process.

One Lab server, one browser and one TTS server serve the whole browser suite (starting them
is most of the cost); each test opens its own notebook, which gets its own kernel, and shuts
its kernels down afterwards.

- The TTS server (``LocalServer(record=True)``) runs on a thread of the *test* process, so a
  test can see what reached it (flush events, closed sockets). The kernels find it through
  ``FISH_BASE_URL`` in the Lab server's environment.
- ``FISH_API_KEY`` is set to a dummy value so a test can check that it never reaches the page
  or the saved notebook.
- Lab runs with isolated config/data/runtime/IPython folders in a temporary directory and
  user settings that avoid the two pop-ups that block a fresh Lab (kernel choice, news); it is
  started as lab.py says, which the bench's page row uses too.
- Chromium is Debian's (``shutil.which("chromium")``), driven by Playwright's Python package;
  Playwright's own browser download cannot work offline.

Every wait in the page is bounded (``wait_for_function`` timeouts, or a promise raced against
a timer), and every test has a hard time limit (``pytest.mark.timeout``).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .lab import Lab, LabStartError, running_lab

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
DUMMY_KEY = "fishnb-dummy-key-" + secrets.token_hex(8)
DEFAULT_WAIT_MS = 30_000

# Chromium flags measured to work here (BROWSER.md). --autoplay-policy=no-user-gesture-required
# lets an AudioContext created without a click start "running". In a real notebook the user's
# Shift+Enter is that gesture; a test must not depend on one, so the player never needs a click
# and the tests never click before checking that audio runs. Measured with Chromium 156 and
# Playwright 1.65: headless Chromium already runs an AudioContext without any gesture (even with
# --autoplay-policy=user-gesture-required), and Playwright's page.evaluate counts as a gesture
# anyway, so the "click Play to allow audio" path cannot be exercised here; the flag states the
# requirement explicitly and keeps the suite valid in headful runs.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--autoplay-policy=no-user-gesture-required",
]


@pytest.fixture(scope="session")
def tts_server() -> Iterator[Any]:
    """The embedded TTS server, recording every session, on a thread of this process."""
    local = pytest.importorskip("fish_notebook.local")
    with local.LocalServer(record=True).run_in_thread() as threaded:
        yield threaded.server


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory, tts_server: Any) -> Iterator[Lab]:
    """A JupyterLab on a free loopback port, isolated in a temporary directory (lab.py)."""
    env = {"FISH_BASE_URL": tts_server.url, "FISH_API_KEY": DUMMY_KEY, "PYTHONUNBUFFERED": "1"}
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_lab(tmp_path_factory.mktemp("lab"), env))
        except LabStartError as exc:
            pytest.fail(str(exc))
        yield server


@pytest.fixture(scope="session")
def playwright() -> Iterator[Any]:
    """Playwright, with Debian's Chromium found on PATH."""
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (make system installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        yield playwright


def launch(playwright: Any, flags: list[str]) -> Any:
    """Start headless Debian Chromium with ``flags``."""
    return playwright.chromium.launch(
        executable_path=shutil.which("chromium"), headless=True, args=flags, timeout=60_000
    )


@pytest.fixture(scope="session")
def browser(playwright: Any) -> Iterator[Any]:
    """Headless Chromium with the flags above (audio may start without a click)."""
    browser = launch(playwright, CHROMIUM_FLAGS)
    try:
        yield browser
    finally:
        browser.close()


@dataclass
class NotebookPage:
    """A Playwright page showing one notebook in Lab, with helpers to drive it."""

    lab: Lab
    page: Any
    name: str = ""
    console: list[str] = field(default_factory=list)

    # -- opening and running -----------------------------------------------------------------

    def open(self, name: str, cells: list[str], *, ui: str = "lab") -> NotebookPage:
        """Write the notebook ``name`` with ``cells``, open it and wait for its kernel.

        ``ui`` is ``"lab"`` (JupyterLab) or ``"notebook"`` (Notebook 7, same server).
        """
        self.lab.write_notebook(name, cells)
        self.name = name
        token = self.lab.token
        if ui == "notebook":
            self.page.goto(f"{self.lab.url}/notebooks/{name}?token={token}")
        else:
            self.page.goto(f"{self.lab.url}/lab/tree/{name}?reset&token={token}")
        self.wait_ready()
        return self

    def wait_ready(self, timeout_ms: int = 60_000) -> None:
        """Wait until the notebook is loaded and its kernel is idle."""
        self.page.wait_for_function(
            """() => {
                const app = window.jupyterapp;
                const w = app && app.shell && app.shell.currentWidget;
                if (!w || !w.context || !w.sessionContext || !w.content) return false;
                const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
                return w.context.isReady && w.sessionContext.isReady && !!kernel
                    && kernel.connectionStatus === "connected" && kernel.status === "idle";
            }""",
            timeout=timeout_ms,
        )

    def command(
        self, name: str, args: dict[str, Any] | None = None, timeout_ms: int = 20_000
    ) -> Any:
        """Run a Lab command, raced against a timer; returns its result."""
        return self.page.evaluate(
            """async ([name, args, ms]) => {
                const timer = new Promise((_, reject) =>
                    setTimeout(() => reject(new Error(`command ${name} timed out`)), ms));
                return await Promise.race([window.jupyterapp.commands.execute(name, args), timer]);
            }""",
            [name, args or {}, timeout_ms],
        )

    def run_all(self) -> None:
        """Queue every cell for execution (retried: the first call can come too early)."""
        for _ in range(20):
            if self.command("notebook:run-all-cells") is True:
                return
            time.sleep(0.25)
        raise AssertionError("notebook:run-all-cells never returned true")

    def wait_cells_done(self, timeout_ms: int = 60_000) -> None:
        """Wait until every code cell has run (has an execution count) and the kernel is idle."""
        self.page.wait_for_function(
            """() => {
                const w = window.jupyterapp.shell.currentWidget;
                const kernel = w.sessionContext.session.kernel;
                const cells = Array.from(w.content.model.cells);
                return kernel.status === "idle"
                    && cells.every(c => c.type !== "code" || c.executionCount !== null);
            }""",
            timeout=timeout_ms,
        )

    def cell_errors(self) -> list[str]:
        """Error outputs of every cell, as ``ename: evalue``."""
        return list(
            self.page.evaluate(
                """() => {
                    const out = [];
                    const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
                    for (const cell of cells) {
                        if (cell.type !== "code") continue;
                        for (const o of cell.outputs.toJSON())
                            if (o.output_type === "error") out.push(`${o.ename}: ${o.evalue}`);
                    }
                    return out;
                }"""
            )
        )

    def kernel(self, code: str, timeout_ms: int = 20_000) -> str:
        """Run ``code`` in the notebook's kernel (outside any cell) and return its stdout."""
        result = self.page.evaluate(
            """async ([code, ms]) => {
                const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
                let out = "", error = null;
                const future = kernel.requestExecute({ code, store_history: false });
                future.onIOPub = (msg) => {
                    if (msg.header.msg_type === "stream") out += msg.content.text;
                    if (msg.header.msg_type === "error")
                        error = `${msg.content.ename}: ${msg.content.evalue}`;
                };
                const timer = new Promise((_, reject) =>
                    setTimeout(() => reject(new Error("kernel request timed out")), ms));
                await Promise.race([future.done, timer]);
                return { out, error };
            }""",
            [code, timeout_ms],
        )
        if result["error"]:
            raise AssertionError(f"kernel code failed: {result['error']}\n{code}")
        return str(result["out"])

    def kernel_json(self, expression: str, timeout_ms: int = 20_000) -> Any:
        """Evaluate a Python expression in the kernel and return it through JSON."""
        out = self.kernel(f"import json as _j; print(_j.dumps({expression}))", timeout_ms)
        return json.loads(out)

    def wait_kernel(self, expression: str, expected: Any, timeout: float = 15.0) -> None:
        """Poll a Python expression in the kernel until it equals ``expected`` (JSON-wise)."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.kernel_json(expression)
            if value == expected:
                return
            time.sleep(0.25)
        raise AssertionError(f"{expression} is {value!r}, expected {expected!r}")

    def save(self) -> None:
        """Save the notebook to disk."""
        self.command("docmanager:save")
        self.page.wait_for_function(
            "() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=20_000
        )

    def reload(self) -> None:
        """Reload the page and wait until the notebook and its (same) kernel are ready."""
        self.page.reload()
        self.wait_ready()

    # -- the player --------------------------------------------------------------------------

    def players(self) -> Any:
        """A locator for every player view in the page."""
        return self.page.locator(".fishnb-player")

    def stats(self, index: int = 0) -> dict[str, Any]:
        """The ``data-stats`` a player view publishes (empty until its first update)."""
        text = self.players().nth(index).get_attribute("data-stats", timeout=DEFAULT_WAIT_MS)
        return json.loads(text) if text else {}

    def wait_stats(
        self, predicate: str, index: int = 0, timeout_ms: int = DEFAULT_WAIT_MS
    ) -> dict[str, Any]:
        """Wait until ``predicate`` (a JS function of the stats object) is true; return the stats.

        On timeout the failure shows the last stats and any cell errors.
        """
        try:
            self.page.wait_for_function(
                """([index, source]) => {
                    const el = document.querySelectorAll(".fishnb-player")[index];
                    if (!el || !el.dataset.stats) return false;
                    return !!(0, eval)(source)(JSON.parse(el.dataset.stats));
                }""",
                arg=[index, predicate],
                timeout=timeout_ms,
            )
        except Exception as exc:
            last = {}
            with contextlib.suppress(Exception):
                last = self.stats(index)
            raise AssertionError(
                f"player {index}: {predicate} not true within {timeout_ms} ms: {exc}\n"
                f"stats: {json.dumps(last)[:2000]}\ncell errors: {self.cell_errors()}\n"
                f"console: {self.console[-10:]}"
            ) from exc
        return self.stats(index)

    def click(self, action: str, index: int = 0) -> None:
        """Click a player button (play, replay, flush, stop, download)."""
        self.players().nth(index).locator(f'button[data-action="{action}"]').click(timeout=10_000)

    def screenshot(self, name: str, index: int | None = None) -> Path:
        """Save a screenshot (of one player, or of the page) to test-artifacts/."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        target = self.page if index is None else self.players().nth(index)
        target.screenshot(path=str(path), timeout=10_000)
        return path


def write_metrics(name: str, values: dict[str, Any]) -> Path:
    """Merge ``values`` into test-artifacts/``name`` (a JSON object), so tests can share a file.

    ``browser_metrics.json`` is read by the bench suite (bench/README.md, row 8).
    """
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    data: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(path.read_text())
        if isinstance(loaded, dict):
            data = loaded
    data.update(values)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


@contextlib.contextmanager
def notebook_page(lab: Lab, browser: Any) -> Iterator[NotebookPage]:
    """A fresh browser context and page on the Lab server; kernels are shut down after."""
    context = browser.new_context(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(DEFAULT_WAIT_MS)
    wrapper = NotebookPage(lab, page)
    page.on("console", lambda msg: wrapper.console.append(f"{msg.type}: {msg.text}"))
    try:
        yield wrapper
    finally:
        with contextlib.suppress(Exception):
            context.close()
        lab.shutdown_kernels()


@pytest.fixture
def notebook(lab: Lab, browser: Any) -> Iterator[NotebookPage]:
    """A notebook page in the shared browser (audio may start without a click)."""
    with notebook_page(lab, browser) as page:
        yield page
