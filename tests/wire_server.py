"""A small real WebSocket server on loopback that records every frame and can misbehave.

It stands in for the Fish cloud, which cannot run here. By default it behaves like a
well-mannered server: for every flush or the stop it answers one ``audio`` event holding
``bytes_per_char`` bytes of PCM per character buffered, then ``finish`` after ``stop``.
A ``behaviour`` changes that, to test every failure path of the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

BEHAVIOURS = (
    "normal",
    "finish_error",  # finish reason=error after the first audio
    "error_event",  # an error event (concurrency limit) right after start
    "close_midstream",  # close with a close frame after the first audio
    "drop_midstream",  # end the TCP connection (no close frame) after the first audio
    "garbage",  # send bytes that are not msgpack
    "non_map",  # send a msgpack list
    "unknown_event",  # send an unknown event before each audio
    "stall_after_handshake",  # never answer anything
    "stall_midstream",  # one audio, then silence
    "reject_401",
    "reject_403",
    "reject_429",
    "reject_500",
    "slow_accept",  # wait `delay` seconds before accepting the handshake
)


@dataclass
class Recorded:
    """What one connection sent: path, headers and every frame (raw and decoded)."""

    path: str
    headers: Headers
    frames: list[bytes | str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class WireServer:
    """``async with WireServer() as server:`` then connect to ``server.base_url``."""

    def __init__(
        self,
        behaviour: str = "normal",
        *,
        bytes_per_char: int = 200,
        delay: float = 0.0,
        record: bool = True,
    ):
        assert behaviour in BEHAVIOURS, behaviour
        self.behaviour = behaviour
        self.bytes_per_char = bytes_per_char
        self.delay = delay
        self.record = record  # False: count connections only (for leak tests)
        self.connections: list[Recorded] = []
        self.connection_count = 0
        self._server: Any = None

    @property
    def port(self) -> int:
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> WireServer:
        self._server = await serve(
            self._handler, "127.0.0.1", 0, process_request=self._process_request, compression=None
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        if self.behaviour.startswith("reject_"):
            status = int(self.behaviour.split("_")[1])
            return connection.respond(status, f"refused with {status}\n")
        if self.behaviour == "slow_accept":
            await asyncio.sleep(self.delay)
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        record = Recorded(ws.request.path, ws.request.headers)
        self.connection_count += 1
        if self.record:
            self.connections.append(record)
        buffered = 0
        audio_sent = 0
        try:
            async for frame in ws:
                if self.record:
                    record.frames.append(frame)
                    record.times.append(time.monotonic())
                event = (
                    msgpack.unpackb(frame)
                    if isinstance(frame, bytes)
                    else {"event": "<text frame>"}
                )
                if self.record:
                    record.events.append(event)
                name = event.get("event")
                if name == "start" and self.behaviour == "error_event":
                    await ws.send(
                        msgpack.packb(
                            {
                                "event": "error",
                                "error": "Concurrency limit exceeded",
                                "max_concurrency": 1,
                            }
                        )
                    )
                    continue
                if self.behaviour == "drop_midstream" and audio_sent:
                    # Read everything the client still sends, then end TCP with no close frame.
                    # Closing with unread data would make the kernel answer with an RST, and an
                    # RST discards what the client has not read yet: the audio under test.
                    if name == "stop":
                        ws.transport.close()
                        return
                    continue
                if self.behaviour == "stall_after_handshake" or (
                    self.behaviour == "stall_midstream" and audio_sent
                ):
                    continue
                if name == "text":
                    buffered += len(event["text"])
                elif name in ("flush", "stop") and buffered:
                    await self._send_audio(ws, buffered)
                    audio_sent += 1
                    buffered = 0
                    if await self._misbehave_after_audio(ws):
                        return
                if name == "stop":
                    await ws.send(msgpack.packb({"event": "finish", "reason": "stop"}))
                    await ws.close()
                    return
        except ConnectionClosed:
            pass
        finally:
            record.closed.set()

    async def _send_audio(self, ws: ServerConnection, chars: int) -> None:
        if self.behaviour == "unknown_event":
            await ws.send(msgpack.packb({"event": "progress", "chars": chars}))
        if self.behaviour == "garbage":
            await ws.send(b"\xc1\xc1 not msgpack")
            return
        if self.behaviour == "non_map":
            await ws.send(msgpack.packb([1, 2, 3]))
            return
        pcm = bytes(range(256)) * (chars * self.bytes_per_char // 256 + 1)
        await ws.send(
            msgpack.packb({"event": "audio", "audio": pcm[: chars * self.bytes_per_char]})
        )

    async def _misbehave_after_audio(self, ws: ServerConnection) -> bool:
        if self.behaviour == "finish_error":
            await ws.send(
                msgpack.packb({"event": "finish", "reason": "error", "message": "model crashed"})
            )
            await ws.close()
            return True
        if self.behaviour == "close_midstream":
            await ws.close(1011, "internal error")
            return True
        return False

    async def wait_closed_connections(self, timeout: float = 5.0) -> None:
        """Wait until every recorded connection has closed on the server side."""
        await asyncio.wait_for(
            asyncio.gather(*(c.closed.wait() for c in self.connections)), timeout
        )


@contextlib.asynccontextmanager
async def wire_server(behaviour: str = "normal", **kwargs: Any) -> AsyncIterator[WireServer]:
    async with WireServer(behaviour, **kwargs) as server:
        yield server


@contextlib.contextmanager
def threaded_wire_server(behaviour: str = "normal", **kwargs: Any) -> Iterator[WireServer]:
    """The same server on its own loop in a thread, for tests that block (``session.wait()``)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="wire-server", daemon=True)
    thread.start()
    server = WireServer(behaviour, **kwargs)
    asyncio.run_coroutine_threadsafe(server.__aenter__(), loop).result(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
