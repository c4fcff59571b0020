"""Warm WebSockets: the socket of a finished session, kept for the next session's ``start``.

Fish's realtime protocol lets a client run another session on a socket after ``finish``
(PROTOCOL.md, "One socket, several sessions"): the next session then skips the TCP and
WebSocket handshakes, two round trips. :class:`SocketPool` keeps those sockets, keyed by
where they go and how they were opened (URL, handshake headers, socket options), for the
next stream of *any* client of the process on the same event loop: ``speak()`` builds a
client per call, and its sessions still find the socket the last one left.

Guarantees:

- Only a socket whose session ended with ``finish`` reason ``stop`` is kept (the stream
  decides, :class:`fish_notebook.client.AsyncRealtimeStream`); a socket taken out belongs
  to one stream until it is put back.
- Bounded: at most :data:`MAX_IDLE_PER_KEY` idle sockets per key and :data:`MAX_IDLE` per
  loop (the oldest closes first); each is closed (code 1000) after ``idle_seconds``
  unused, and dropped as soon as the server closes it or the connection dies.
- A socket the pool can tell is closed is never handed out. One the server closes just as
  the next ``start`` arrives is replaced by the stream's :class:`StreamLink`: it reconnects
  once and sends its frames again, and the caller never sees it.
- Nothing outlives its loop: a task keeps the pool while it holds sockets, and when the
  loop's tasks are cancelled (``asyncio.run`` ending) it closes them.
- A key holds a digest of the headers, never the headers: no API key is kept here, and no
  repr shows one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import weakref
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

__all__ = [
    "CLOSE_SECONDS",
    "IDLE_SECONDS",
    "MAX_IDLE",
    "MAX_IDLE_PER_KEY",
    "MAX_REPLAY_BYTES",
    "PoolKey",
    "SocketPool",
    "StreamLink",
    "socket_pool",
    "usable",
]

logger = logging.getLogger("fish_notebook.pool")

#: Seconds an idle socket is kept. Shorter than the embedded server's idle timeout (60 s),
#: so the client usually closes first; keepalive pings run meanwhile.
IDLE_SECONDS = 30.0
#: Idle sockets kept per key: sessions run one after another reuse one; a second covers a
#: session that starts while another is finishing.
MAX_IDLE_PER_KEY = 2
#: Idle sockets kept per event loop, all keys together.
MAX_IDLE = 8
#: Longest wait for the closing handshake of a socket the pool retires.
CLOSE_SECONDS = 2.0
#: Most bytes of frames kept to send again when a reused socket turns out closed.
MAX_REPLAY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class PoolKey:
    """Which sockets can carry a stream: same URL, same handshake headers, same options."""

    url: str
    headers: str  # a digest of the headers, so that no credential is kept here
    options: Hashable

    @classmethod
    def of(cls, url: str, headers: Mapping[str, str], options: Hashable) -> PoolKey:
        items = sorted((name.lower(), value) for name, value in headers.items())
        digest = hashlib.sha256(json.dumps(items).encode()).hexdigest()
        return cls(url, digest, options)

    def __repr__(self) -> str:
        return f"PoolKey({self.url!r}, headers=<{self.headers[:8]}>)"


@dataclass
class _Idle:
    key: PoolKey
    ws: ClientConnection
    expires: float  # loop time


def usable(ws: ClientConnection) -> bool:
    """True while ``ws`` is open as far as this side knows."""
    return ws.state is State.OPEN and not ws.connection_lost_waiter.done()


class SocketPool:
    """The idle sockets of one event loop. Use it from that loop only."""

    def __init__(
        self,
        *,
        idle_seconds: float = IDLE_SECONDS,
        per_key: int = MAX_IDLE_PER_KEY,
        total: int = MAX_IDLE,
    ) -> None:
        self.idle_seconds = idle_seconds
        self.per_key = per_key
        self.total = total
        self.reused = 0  # sockets handed out again, since the pool was made
        self._idle: list[_Idle] = []  # oldest first
        self._retired: list[ClientConnection] = []  # to close
        self._keeper: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<SocketPool idle={len(self._idle)} reused={self.reused}>"

    def __len__(self) -> int:
        return len(self._idle)

    def holds(self, key: PoolKey) -> bool:
        """True when an idle socket for ``key`` looks open."""
        return any(entry.key == key and usable(entry.ws) for entry in self._idle)

    def take(self, key: PoolKey) -> ClientConnection | None:
        """An open idle socket for ``key`` (the most recently used), or None."""
        for entry in reversed(self._idle):
            if entry.key != key:
                continue
            self._idle.remove(entry)
            if usable(entry.ws):
                self.reused += 1
                self._poke()
                return entry.ws
        return None

    def put(self, key: PoolKey, ws: ClientConnection) -> None:
        """Keep ``ws`` (its session finished cleanly) for the next stream with ``key``."""
        if not usable(ws):
            return
        loop = asyncio.get_running_loop()
        self._idle.append(_Idle(key, ws, loop.time() + self.idle_seconds))
        same = [entry for entry in self._idle if entry.key == key]
        for entry in same[: max(0, len(same) - self.per_key)]:
            self._retire(entry)
        while len(self._idle) > self.total:
            self._retire(self._idle[0])
        if self._keeper is None:
            self._keeper = loop.create_task(self._keep(), name="fish-notebook-socket-pool")
        self._poke()

    async def aclose(self) -> None:
        """Close every idle socket now (bounded by :data:`CLOSE_SECONDS`). Safe to call twice."""
        sockets = [entry.ws for entry in self._idle] + self._retired
        self._idle, self._retired = [], []
        self._poke()
        await _close_all(sockets)

    def _retire(self, entry: _Idle) -> None:
        self._idle.remove(entry)
        self._retired.append(entry.ws)

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _keep(self) -> None:
        """Close what expires or is retired; drop what the server closed. Ends when empty."""
        loop = asyncio.get_running_loop()
        try:
            while self._idle or self._retired:
                retired, self._retired = self._retired, []
                await _close_all(retired)
                now = loop.time()
                for entry in list(self._idle):
                    if not usable(entry.ws):
                        self._idle.remove(entry)
                    elif entry.expires <= now:
                        logger.debug("closing a socket idle for %gs", self.idle_seconds)
                        self._retire(entry)
                if self._retired or not self._idle:
                    continue
                self._wake = loop.create_future()
                waiters = {self._wake, *(entry.ws.connection_lost_waiter for entry in self._idle)}
                left = min(entry.expires for entry in self._idle) - now
                await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the loop is ending: nothing may outlive it
            sockets = [entry.ws for entry in self._idle] + self._retired
            self._idle, self._retired = [], []
            await _close_all(sockets)
            raise
        finally:
            self._keeper = None
            self._wake = None


async def _close_all(sockets: list[ClientConnection]) -> None:
    """Close each socket (a normal close, bounded); drop the connection of any that hangs."""
    if not sockets:
        return
    closing = [asyncio.ensure_future(ws.close()) for ws in sockets]
    _, late = await asyncio.wait(closing, timeout=CLOSE_SECONDS)
    for task in late:
        task.cancel()
    for ws in sockets:
        if ws.transport is not None and not ws.connection_lost_waiter.done():
            ws.transport.abort()
    with contextlib.suppress(Exception):
        await asyncio.gather(*closing, return_exceptions=True)


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SocketPool] = (
    weakref.WeakKeyDictionary()
)


def socket_pool() -> SocketPool:
    """The pool of the running event loop (made on first use)."""
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = _pools[loop] = SocketPool()
    return pool


class StreamLink:
    """The socket under one stream: a warm one from the pool, or a new one.

    - :meth:`open` takes a warm socket for ``key`` (when ``reuse``) or calls ``connect``.
    - :meth:`send` sends one frame at a time. On a reused socket the frames are kept until
      the server answers (:meth:`answered`); if that socket closes before (a normal close,
      or no close frame), :meth:`recover` connects anew once and sends them again, at most
      :data:`MAX_REPLAY_BYTES` of them. The receiving side calls :meth:`recover` too.
    - :meth:`release` puts the socket back in the pool after a clean ``finish``, or closes it.

    ``connect`` makes a new socket and raises the caller's own errors; ``closed()`` says
    whether the stream was closed meanwhile (a socket made then is not kept).
    """

    def __init__(
        self,
        key: PoolKey,
        connect: Callable[[], Awaitable[ClientConnection]],
        *,
        reuse: bool,
        closed: Callable[[], bool],
    ) -> None:
        self.key = key
        self.reuse = reuse
        self.reused = False  # True when the socket is one a finished session left
        self.ws: ClientConnection | None = None
        self._connect = connect
        self._closed = closed
        self._sending = asyncio.Lock()  # one frame at a time; a reconnection goes between
        # Frames sent on a reused socket before the server answered. None: no reconnection.
        self._replay: list[bytes] | None = None
        self._replay_bytes = 0

    def __repr__(self) -> str:
        return f"<StreamLink {self.key!r} reused={self.reused} open={self.ws is not None}>"

    async def open(self) -> None:
        ws = socket_pool().take(self.key) if self.reuse else None
        if ws is not None:
            self.reused, self._replay = True, []
        self.ws = ws or await self._connect()

    async def warm(self) -> bool:
        """Open a socket for ``key`` and leave it in the pool; False when the pool holds one
        already or reuse is off."""
        pool = socket_pool()
        if not self.reuse or pool.holds(self.key):
            return False
        pool.put(self.key, await self._connect())
        return True

    async def send(self, frame: bytes) -> None:
        """Send one frame; raises ConnectionClosed when the socket closed for good."""
        async with self._sending:
            ws = self.ws
            if ws is None:
                raise ConnectionError("the stream has no socket")
            if self._replay is not None:
                self._replay_bytes += len(frame)
                if self._replay_bytes > MAX_REPLAY_BYTES:
                    self._replay = None  # too much to send again: no reconnection
                else:
                    self._replay.append(frame)
            try:
                await ws.send(frame)
            except ConnectionClosed:
                if not await self._reconnect(ws):  # the frame goes out with the replay
                    raise

    def answered(self) -> None:
        """The server answered on this socket: it is the stream's now, no reconnection."""
        self._replay = None

    async def recover(self, ws: ClientConnection) -> bool:
        """``ws`` closed under a receive: True when a new socket replaces it (see above)."""
        async with self._sending:
            return await self._reconnect(ws)

    async def _reconnect(self, ws: ClientConnection) -> bool:
        if self.ws is not ws:
            return self.ws is not None  # the other side reconnected already
        received = ws.protocol.close_rcvd
        if self._replay is None or (received is not None and received.code not in (1000, 1001)):
            return False
        frames, self._replay = self._replay, None
        logger.debug("a reused socket closed before its session began: reconnecting once")
        self.ws = None
        new = await self._connect()
        if self._closed():  # the stream was closed meanwhile: not ours to keep
            await _close_all([new])
            return False
        self.ws = new
        for frame in frames:
            await new.send(frame)
        return True

    async def release(self, clean: bool) -> None:
        """The session is over: a clean end keeps the socket for the next one."""
        ws = self.ws
        if self.reuse and clean and ws is not None and usable(ws):
            self.ws = None
            socket_pool().put(self.key, ws)

    async def close(self, timeout: float | None) -> None:
        """Close the socket, if any (bounded). Safe to call twice."""
        ws, self.ws = self.ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), timeout)
