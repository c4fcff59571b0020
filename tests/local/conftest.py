"""Fixtures for the embedded server's tests: one shared recording server on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fish_notebook.local import LocalServer, ThreadedServer


@pytest.fixture(scope="session")
def local_server() -> Iterator[ThreadedServer]:
    """A recording server with default limits, shared by every test (Piper loads once)."""
    with LocalServer(record=True).run_in_thread() as server:
        yield server
