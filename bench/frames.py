"""Row 4: what the client costs per audio frame, ours against the Fish SDK.

A replay server (:mod:`bench.replay_server`, a child process, so it has its own core and
interpreter) sends recorded ``audio`` frames of a real embedded-server session:

- throughput: ``blast N`` frames as fast as the client reads them; frames/s is
  ``(N - 1) / (last arrival - first arrival)``, so the handshake is not counted;
- latency: ``paced N GAP`` frames stamped with the server's send time; the delay is from
  that stamp to the moment the bytes reach the caller's loop body (``bytes-out``). It
  includes the loopback socket, frame parsing, msgpack, and for the sync faces the hop
  from the IO thread to the caller's thread.

Faces: our async client, our sync client, our Session (the notebook path: decoding,
recording, listeners), and the SDK's async and sync clients, all asking for ``pcm``.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from fishaudio import AsyncFishAudio, FishAudio
from websockets.asyncio.client import connect

from fish_notebook.client import AsyncRealtimeClient, RealtimeClient
from fish_notebook.session import Session

from .common import REPO_DIR, Row, quantile, read_line, stop_child
from .latency import SDK_KEY, TEN_SENTENCES
from .replay_server import CLOCK, read_stamp


def clock() -> float:
    return time.clock_gettime(CLOCK)


# --- the recording and the replay server -----------------------------------------------------


async def record_payloads(url: str, text: str = TEN_SENTENCES) -> list[bytes]:
    """The ``audio`` payloads of one real pcm session with the embedded server."""
    payloads: list[bytes] = []
    async with connect(url + "/v1/tts/live", max_size=None) as ws:
        await ws.send(msgpack.packb({"event": "start", "request": {"format": "pcm"}}))
        await ws.send(msgpack.packb({"event": "text", "text": text}))
        await ws.send(msgpack.packb({"event": "stop"}))
        async for message in ws:
            event = msgpack.unpackb(message)
            if event.get("event") == "audio":
                payloads.append(event["audio"])
            elif event.get("event") == "finish":
                break
    return payloads


@dataclass
class Replay:
    url: str
    payloads: list[bytes]

    @property
    def http_url(self) -> str:
        return "http" + self.url[2:]

    @property
    def mean_frame_bytes(self) -> float:
        return statistics.mean(len(p) for p in self.payloads)


@contextlib.contextmanager
def replay_server(payloads: list[bytes]) -> Iterator[Replay]:
    with tempfile.TemporaryDirectory() as folder:
        frames = Path(folder) / "frames.msgpack"
        frames.write_bytes(msgpack.packb(payloads))
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.replay_server", str(frames)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=REPO_DIR,
        )
        try:
            line = read_line(process, 30)
            if not line.startswith("READY "):
                raise RuntimeError(f"the replay server did not start: {line!r}")
            yield Replay(f"ws://127.0.0.1:{int(line.split()[1])}", payloads)
        finally:
            stop_child(process)


# --- one run per face ------------------------------------------------------------------------


@dataclass
class Arrivals:
    """When each chunk reached the caller (perf clock) and, for paced runs, its delay."""

    times: list[float] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    nbytes: int = 0

    def note(self, chunk: bytes, stamped: bool) -> None:
        t = clock()
        self.times.append(t)
        self.nbytes += len(chunk)
        if stamped:
            self.delays.append(t - read_stamp(chunk))

    @property
    def frames_per_s(self) -> float:
        if len(self.times) < 2:
            return 0.0
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


def ours_async(url: str, command: str) -> Arrivals:
    stamped = command.startswith("paced")

    async def run() -> Arrivals:
        out = Arrivals()
        stream = AsyncRealtimeClient(base_url=url).stream_websocket(command, format="pcm")
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                out.note(chunk, stamped)
        return out

    return asyncio.run(run())


def sdk_async(http_url: str, command: str) -> Arrivals:
    stamped = command.startswith("paced")

    async def text() -> Any:
        yield command

    async def run() -> Arrivals:
        out = Arrivals()
        client = AsyncFishAudio(api_key=SDK_KEY, base_url=http_url)
        stream = client.tts.stream_websocket(text(), format="pcm")
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                out.note(chunk, stamped)
        await client.close()
        return out

    return asyncio.run(run())


def ours_sync(url: str, command: str) -> Arrivals:
    stamped = command.startswith("paced")
    out = Arrivals()
    for chunk in RealtimeClient(base_url=url).stream_websocket(command, format="pcm"):
        out.note(chunk, stamped)
    return out


def sdk_sync(http_url: str, command: str) -> Arrivals:
    stamped = command.startswith("paced")
    out = Arrivals()
    client = FishAudio(api_key=SDK_KEY, base_url=http_url)
    for chunk in client.tts.stream_websocket([command], format="pcm"):
        out.note(chunk, stamped)
    client.close()
    return out


class _Collect:
    """A session listener noting each chunk (the player widget sits where this does)."""

    def __init__(self, stamped: bool) -> None:
        self.out = Arrivals()
        self.stamped = stamped
        self.done = threading.Event()

    def on_audio(self, pcm: bytes, seq: int) -> None:
        self.out.note(pcm, self.stamped)

    def on_state(self, state: str, error: str | None) -> None:
        if state in ("finished", "failed", "stopped"):
            self.done.set()

    def on_text(self, text: str) -> None: ...
    def on_flush(self) -> None: ...
    def on_metrics(self, metrics: dict[str, Any]) -> None: ...


def ours_session(url: str, command: str) -> Arrivals:
    listener = _Collect(command.startswith("paced"))
    session = Session(command, base_url=url, start=False)
    session.add_listener(listener)
    session.start()
    session.wait(120)
    return listener.out


# --- the row ---------------------------------------------------------------------------------

Face = Callable[[str, str], Arrivals]


def frame_rows(replay: Replay, repeats: int, frames: int, paced: int) -> list[Row]:
    """Rows 4a-4f against a running replay server (see :func:`replay_server`)."""
    faces: dict[str, tuple[Face, str]] = {
        "ours_async": (ours_async, replay.url),
        "sdk_async": (sdk_async, replay.http_url),
        "ours_sync": (ours_sync, replay.url),
        "sdk_sync": (sdk_sync, replay.http_url),
        "ours_session": (ours_session, replay.url),
    }
    blast = f"blast {frames}"
    pace = f"paced {paced} 2"
    for fn, url in faces.values():  # warm-up, unmeasured
        fn(url, "blast 50")
    throughput: dict[str, list[float]] = {name: [] for name in faces}
    delays: dict[str, list[float]] = {name: [] for name in faces}
    names = list(faces)
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            fn, url = faces[name]
            run = fn(url, blast)
            if len(run.times) != frames:
                raise RuntimeError(f"{name}: {len(run.times)} of {frames} frames arrived")
            throughput[name].append(run.frames_per_s)
            delays[name].extend(fn(url, pace).delays)
    frame_kib = replay.mean_frame_bytes / 1024
    rows = []
    for sub, face, peer, peer_name in (
        ("a", "ours_async", "sdk_async", "Fish SDK AsyncFishAudio"),
        ("b", "ours_sync", "sdk_sync", "Fish SDK FishAudio (sync)"),
        ("c", "ours_session", "sdk_sync", "Fish SDK FishAudio (sync)"),
    ):
        label = {"a": "async client", "b": "sync client", "c": "Session (notebook path)"}[sub]
        rows.append(
            Row(
                f"4{sub}",
                f"frames/s, replayed {frame_kib:.0f} KiB pcm frames, {label}",
                "fr/s",
                peer_name,
                ">= 1.0x",
                ours=throughput[face],
                peer=throughput[peer],
            ).finish(lambda ratio, _m: ratio is not None and ratio >= 1.0)
        )
    for sub, face, peer, peer_name in (
        ("d", "ours_async", "sdk_async", "Fish SDK AsyncFishAudio"),
        ("e", "ours_sync", "sdk_sync", "Fish SDK FishAudio (sync)"),
        ("f", "ours_session", "sdk_sync", "Fish SDK FishAudio (sync)"),
    ):
        label = {"d": "async client", "e": "sync client", "f": "Session"}[sub]
        row = Row(
            f"4{sub}",
            f"frame in -> bytes out, median, {label}",
            "ms",
            peer_name,
            "<= 1 ms",
            ours=delays[face],
            peer=delays[peer],
            scale=1000,
        )
        row.extra = {
            "ours_p95_ms": _p95_ms(delays[face]),
            "peer_p95_ms": _p95_ms(delays[peer]),
        }
        rows.append(row.finish(lambda _r, median: median is not None and median <= 0.001))
    rows[0].extra = {"frames_per_run": frames, "mean_frame_bytes": replay.mean_frame_bytes}
    return rows


def _p95_ms(samples: list[float]) -> float | None:
    return quantile(samples, 0.95) * 1000 if samples else None
