"""A :class:`~.server.LocalServer` on a private event loop in a daemon thread.

For synchronous code and tests that have no event loop of their own (a notebook kernel's
loop is busy running cells): ``with LocalServer().run_in_thread() as server:``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .recorder import Recorder

if TYPE_CHECKING:
    from .server import LocalServer

__all__ = ["ThreadedServer"]


class ThreadedServer:
    """A :class:`LocalServer` running on a private event loop in a daemon thread.

    ``with LocalServer().run_in_thread() as server:`` starts it (bounded by ``timeout``)
    and stops it on exit. For synchronous tests and code that has no event loop of its own.
    """

    def __init__(self, server: LocalServer, *, timeout: float = 60.0) -> None:
        self.server = server
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return f"ThreadedServer({self.server!r})"

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def http_url(self) -> str:
        return self.server.http_url

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def recorder(self) -> Recorder | None:
        return self.server.recorder

    def start(self) -> ThreadedServer:
        """Start the thread and wait until the server listens. Raises what start raised."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="fish-notebook-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.timeout):
            raise TimeoutError(f"the local server did not start within {self.timeout}s")
        if self._error is not None:
            raise self._error
        return self

    def close(self) -> None:
        """Stop the server and its thread. Safe to call twice."""
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass
        if thread is not None:
            thread.join(self.timeout)

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` on the server's loop and return its result (bounded)."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(_call(function), self._loop)
        return future.result(self.timeout)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.close()


async def _call(function: Callable[[], Any]) -> Any:
    return function()
