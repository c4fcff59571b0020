"""A loopback TCP proxy that adds round-trip time, as a distant cloud region would.

Every byte is delivered ``one_way`` seconds after it arrived, in each direction, in order,
with no bandwidth limit (so a burst keeps its shape). The TCP handshake itself is local, so
the proxy holds the connection's first bytes one extra round trip (``2 * one_way``) to stand
for it: a client's first response then comes two round trips after it connected, as over
a real network (SYN/SYN-ACK, then request/response). TLS is not modelled.

Runs on its own event loop in a daemon thread: ``with DelayProxy(port, 0.05) as proxy:``,
then connect to ``proxy.port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

__all__ = ["DelayProxy"]


class DelayProxy:
    """Forward 127.0.0.1:``port`` (picked on start) to 127.0.0.1:``target_port``."""

    def __init__(self, target_port: int, one_way: float = 0.05, *, handshake_rtt: bool = True):
        self.target_port = target_port
        self.one_way = one_way
        self.handshake_rtt = handshake_rtt
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> DelayProxy:
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the delay proxy did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        accepted = time.monotonic()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        hold = accepted + 2 * self.one_way if self.handshake_rtt else 0.0
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, not_before=hold),
                self._pipe(up_reader, writer, not_before=0.0),
            )
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()
            self._tasks.discard(task)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, not_before: float
    ) -> None:
        """Copy reader -> writer, each piece ``one_way`` seconds after it was read."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                delay = max(due, not_before) - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((time.monotonic() + self.one_way, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
