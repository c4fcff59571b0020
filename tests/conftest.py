"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fish_notebook._local_process import STATE_FILE, read_state
from fish_notebook.local.server import LocalServer, ThreadedServer

#: Marks every process this run starts (it inherits the environment), to find leftovers.
RUN_MARK = f"FISH_NOTEBOOK_TEST_RUN={uuid.uuid4().hex}"


@pytest.fixture(scope="session", autouse=True)
def _nothing_outlives_the_suite() -> Iterator[None]:
    """The shared embedded server lives in a folder of this run (not the user's), with the
    voices' optimized copies, and when the run ends no process it started is left: the
    check fails the run and ends them."""
    name, value = RUN_MARK.split("=")
    os.environ[name] = value
    with tempfile.TemporaryDirectory(prefix="fish-notebook-state-") as folder:
        Path(folder).chmod(0o700)
        os.environ["FISH_NOTEBOOK_STATE_DIR"] = folder
        os.environ["FISH_NOTEBOOK_MODEL_CACHE"] = str(Path(folder) / "models")  # not the user's
        os.environ.setdefault("FISH_NOTEBOOK_SERVER_IDLE", "120")
        yield
        state = read_state(Path(folder) / STATE_FILE)
        shared = state.get("pid") if state else None
        leftovers = {pid: _cmdline(pid) for pid in _processes_of_this_run()}
        for pid in leftovers:  # end them all; only the shared server may be here by design
            _terminate(pid)
        deadline = time.monotonic() + 15
        while _processes_of_this_run() and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in _processes_of_this_run():
            _terminate(pid, signal.SIGKILL)
    unexpected = {pid: cmd for pid, cmd in leftovers.items() if pid != shared}
    assert not unexpected, f"processes started by the suite outlived it: {unexpected}"


def _processes_of_this_run() -> list[int]:
    """Processes other than this one whose environment carries this run's mark."""
    mark = RUN_MARK.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            marked = mark in (entry / "environ").read_bytes().split(b"\0")
            if marked and b") Z " not in (entry / "stat").read_bytes():  # zombies are gone
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


def _terminate(pid: int, how: int = signal.SIGTERM) -> None:
    try:
        os.kill(pid, how)
    except OSError:
        pass


@pytest.fixture(scope="session")
def local_server() -> Iterator[ThreadedServer]:
    """One embedded server (real Piper voice) on a free loopback port, recording every session.

    Shared by every test in the run: loading the voice once keeps the suite quick. Tests that
    read the recorder should look at the sessions they opened (``recorder.sessions[-1]``, or
    ``recorder.clear()`` first in a test that needs a clean slate).
    """
    with LocalServer(record=True, max_sessions=16).run_in_thread() as server:
        yield server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the browser suite last.

    Playwright's sync API keeps an event loop marked as running on the main thread for as
    long as its browser lives (one per suite), and asyncio tests after it would then fail
    with "asyncio.run() cannot be called from a running event loop".
    """
    items.sort(key=lambda item: "browser" in item.path.parts)
