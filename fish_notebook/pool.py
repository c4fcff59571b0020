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
  the next ``start`` arrives is replaced by the stream: it reconnects once and sends its
  frames again, and the caller never sees it.
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
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

__all__ = [
    "CLOSE_SECONDS",
    "IDLE_SECONDS",
    "MAX_IDLE",
    "MAX_IDLE_PER_KEY",
    "PoolKey",
    "SocketPool",
    "socket_pool",
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
