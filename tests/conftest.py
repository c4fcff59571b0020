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
