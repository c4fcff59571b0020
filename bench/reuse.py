"""Row 2f: the next session on a warm client against a fresh connection, +100 ms RTT.

Ours: one ``AsyncRealtimeClient`` that already finished a session starts the next one, on
the socket that session left in the pool (another ``start`` on the same socket, as Fish
allows). Peer: a client with ``reuse_sockets=False``, which opens a new connection for its
session: a TCP handshake, then the WebSocket upgrade, each one round trip through
``DelayProxy``. Interleaved, the order rotating. The text is ready at once (``"Hello
there."``, a str): no LLM think time hides the handshake, as it does in rows 1 and 2. Clock:
from the call to the first audio bytes. Reuse saves two round trips (~200 ms of ~450 ms):
goal <= 0.7x.
"""

from __future__ import annotations

import asyncio

from fish_notebook.client import AsyncRealtimeClient

from .common import Row, now

__all__ = ["READY_TEXT", "socket_reuse_row"]

READY_TEXT = "Hello there."


def socket_reuse_row(proxy_url: str, repeats: int) -> Row:
    """Row 2f (module docstring)."""
    warm, fresh = asyncio.run(_reuse_samples(proxy_url, repeats))
    row = Row(
        "2f",
        "TTFA, next session on a warm client, +100 ms RTT (ready text)",
        "ms",
        "a new connection for the session (reuse_sockets=False), same text",
        "<= 0.7x",
        ours=warm,
        peer=fresh,
        scale=1000,
    )
    return row.finish(lambda ratio, _m: ratio is not None and ratio <= 0.7)


async def _reuse_samples(url: str, repeats: int) -> tuple[list[float], list[float]]:
    warm_client = AsyncRealtimeClient(base_url=url)
    fresh_client = AsyncRealtimeClient(base_url=url, reuse_sockets=False)
    warm: list[float] = []
    fresh: list[float] = []
    await _ready_text_ttfa(warm_client)  # its first session opens the socket it then reuses
    for round_ in range(repeats):
        for kind in ("warm", "fresh") if round_ % 2 == 0 else ("fresh", "warm"):
            if kind == "warm":
                warm.append(await _ready_text_ttfa(warm_client))
            else:
                fresh.append(await _ready_text_ttfa(fresh_client))
    return warm, fresh


async def _ready_text_ttfa(client: AsyncRealtimeClient) -> float:
    began = now()
    first: float | None = None
    async for _chunk in client.stream_websocket(READY_TEXT, format="pcm"):  # to its end
        if first is None:
            first = now()
    if first is None:
        raise RuntimeError("no audio")
    return first - began
