"""A replay server: speaks the Fish protocol, but answers with recorded audio frames.

It measures clients, not synthesis: after the client's ``stop`` it sends frames from a
recording (the ``audio`` payloads of a real session with the embedded server), then
``finish``. What to send is read from the session's text, so any client (ours, the Fish
SDK) can ask for it through its ordinary API:

- ``blast N``: N frames as fast as the connection takes them (the client's reading speed
  sets the pace, through TCP back-pressure).
- ``paced N GAP_MS``: N frames, one every GAP_MS milliseconds, each payload's first 8 bytes
  overwritten with the send time (``CLOCK_MONOTONIC``, little-endian double). A client in
  another process on the same machine reads the same clock, so the delay from the server's
  send to the bytes reaching the caller is ``clock_gettime(CLOCK_MONOTONIC) - stamp``.

Run as ``python -m bench.replay_server FRAMES`` (FRAMES: a msgpack list of payloads). It
prints ``READY <port>`` and serves until its stdin closes.
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time
from itertools import cycle, islice
from pathlib import Path

import msgpack
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

CLOCK = time.CLOCK_MONOTONIC
FINISH = msgpack.packb({"event": "finish", "reason": "stop"})


def stamp_now() -> float:
    return time.clock_gettime(CLOCK)


def read_stamp(chunk: bytes) -> float:
    return float(struct.unpack_from("<d", chunk, 0)[0])


def packed_frame(payload: bytes) -> tuple[bytes, int]:
    """The audio event for ``payload`` and the offset of the payload inside it."""
    frame = msgpack.packb({"event": "audio", "audio": payload})
    return frame, len(frame) - len(payload)


class ReplayServer:
    def __init__(self, payloads: list[bytes]) -> None:
        if not payloads:
            raise ValueError("no frames to replay")
        self.frames = [packed_frame(p) for p in payloads]

    async def handle(self, connection: ServerConnection) -> None:
        texts: list[str] = []
        try:
            async for message in connection:
                event = msgpack.unpackb(message)
                kind = event.get("event")
                if kind == "text":
                    texts.append(event.get("text") or "")
                elif kind == "stop":
                    break
            await self.replay("".join(texts).split(), connection)
            await connection.send(FINISH)
            await connection.close()
        except ConnectionClosed:
            pass

    async def replay(self, command: list[str], connection: ServerConnection) -> None:
        if command and command[0] == "blast":
            for frame, _ in islice(cycle(self.frames), int(command[1])):
                await connection.send(frame)
        elif command and command[0] == "paced":
            count, gap = int(command[1]), float(command[2]) / 1000
            for frame, offset in islice(cycle(self.frames), count):
                data = bytearray(frame)
                struct.pack_into("<d", data, offset, stamp_now())
                await connection.send(data)
                await asyncio.sleep(gap)


async def main(frames_path: Path) -> None:
    payloads = msgpack.unpackb(frames_path.read_bytes())
    replay = ReplayServer(payloads)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    async with serve(replay.handle, "127.0.0.1", 0, max_size=None, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        print(f"READY {port}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
