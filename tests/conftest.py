"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fish_notebook.local.server import LocalServer, ThreadedServer


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
