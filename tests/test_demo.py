"""``make demo`` (scripts/demo.py): a quiet offline JupyterLab that leaves nothing behind.

The script runs for real, as ``make demo`` runs it, with Jupyter's folders in a temporary
directory: it prints its URL, its JupyterLab has the news toast's setting off, and SIGTERM or
SIGHUP stops the script and every process it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = [pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[1]
NEWS_SETTINGS = "@jupyterlab/apputils-extension:notification"
START_TIMEOUT = 150.0


class Demo:
    """scripts/demo.py running in its own process; its output is read by a thread."""

    def __init__(self, home: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "FISH_"))}
        for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
            env[name] = str(home / name.lower())
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "demo.py")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.children: list[psutil.Process] = []  # noted once it runs, cleaned up whatever happens
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def url(self) -> str:
        """The URL the demo prints once its JupyterLab answers."""
        while True:
            try:
                line = self.lines.get(timeout=START_TIMEOUT)
            except queue.Empty:
                pytest.fail(f"no URL within {START_TIMEOUT} s:\n{''.join(self.output)}")
            self.output.append(line)
            found = re.search(r"(http://127\.0\.0\.1:\d+)/lab/tree/\S+\?token=(\w+)", line)
            if found:
                self.children = psutil.Process(self.process.pid).children(recursive=True)
                return found.group(0)
            if self.process.poll() is not None:
                pytest.fail(f"the demo exited with {self.process.returncode}: {self.output}")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    running = Demo(tmp_path)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait(10)
        for child in running.children:  # a failed test must not leave a JupyterLab running
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def settings_of(url: str, plugin: str) -> dict[str, Any]:
    """A plugin's settings as JupyterLab's settings API gives them to the page."""
    found = re.match(r"(http://[^/]+)/.*\?token=(\w+)", url)
    assert found is not None
    base, token = found.groups()
    request = urllib.request.Request(
        f"{base}/lab/api/settings/{plugin}", headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=20) as reply:
        settings: dict[str, Any] = json.loads(reply.read())
    return settings


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_demo_is_quiet_and_a_signal_leaves_no_process_behind(
    demo: Demo, stop: signal.Signals
) -> None:
    """No news toast (fetchNews defaults to "false" there); SIGTERM/SIGHUP stop every child."""
    url = demo.url()
    news = settings_of(url, NEWS_SETTINGS)["schema"]["properties"]
    assert news["fetchNews"]["default"] == "false"  # "none" is what shows the toast
    assert news["checkForUpdates"]["default"] is False

    children = demo.children
    assert any("jupyterlab" in " ".join(child.cmdline()) for child in children)
    demo.process.send_signal(stop)
    assert demo.process.wait(60) == 0
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert alive == []
    assert len(gone) == len(children)
    rest = "".join(demo.output) + "".join(iter_queue(demo.lines))
    assert "stopping JupyterLab" in rest


def iter_queue(lines: queue.Queue[str]) -> Iterator[str]:
    while True:
        try:
            yield lines.get(timeout=5)
        except queue.Empty:
            return
