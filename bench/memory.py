"""Row 7: memory, in the kernel per minute of recorded audio and on the server per session.

Kernel (7a, 7b): a Session receives about a minute of pcm from the replay server (so no
synthesis runs in this process), with the player widget attached as in a notebook (its
comm goes nowhere outside a kernel; the end-of-session ``<audio>`` fallback is built as
in a notebook). ``tracemalloc`` counts every Python allocation made after a baseline:
*held* is what is still allocated once the session ended (the session, the widget and
their recordings alive), *peak* the highest point on the way. Both are divided by the size
of the 16-bit PCM received: 1.0x would be one copy of the audio.

Server (7c), two ways:

- the figure: the embedded server in this process (after one warm-up sentence),
  ``tracemalloc`` peak above the baseline while K sessions speak at once, divided by K
  (Python and numpy allocations: text buffers, PCM in flight, resampling, frames);
- the note: the server as a child process, its resident set size sampled every 10 ms;
  after one warm-up round of K concurrent sessions (which grows onnxruntime's arenas to
  that load once and for all), (peak RSS during the K sessions - idle RSS before them) / K.
  onnxruntime allocates outside Python, which only this sees.

Both are compared with the PCM size of one session's audio.
"""

from __future__ import annotations

import asyncio
import gc
import math
import time
import tracemalloc
from typing import Any

import msgpack
from IPython.display import DisplayHandle
from websockets.asyncio.client import connect

from fish_notebook.local import LocalServer
from fish_notebook.session import Session
from fish_notebook.widget import display_player

from .common import Row, RssSampler, rss_bytes
from .frames import Replay
from .latency import TEN_SENTENCES

MIB = 1024 * 1024


class _Handle(DisplayHandle):
    def update(self, obj: Any, **kwargs: Any) -> None:
        """A kernel would serialise ``obj`` to the frontend and keep nothing."""


def _display(obj: Any, display_id: bool = False, **kwargs: Any) -> Any:
    return _Handle() if display_id else None


def kernel_memory(replay: Replay, seconds: float = 60.0) -> dict[str, float]:
    frames = math.ceil(seconds * 44100 * 2 / replay.mean_frame_bytes)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        session = Session(f"blast {frames}", base_url=replay.url, start=False)
        player = display_player(session, display_fn=_display, fallback="mp3")  # as speak()
        session.start()
        session.wait(120)
        time.sleep(0.2)  # the fallback output is built on the IO thread after the end
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
        pcm = session.metrics["bytes"]
        duration = session.duration
        del player
    finally:
        tracemalloc.stop()
    return {
        "pcm_bytes": pcm,
        "audio_s": duration,
        "held_bytes": current - base,
        "peak_bytes": peak - base,
    }


async def _speak(url: str, text: str) -> int:
    """One plain session speaking ``text``; the PCM bytes received."""
    received = 0
    async with connect(url + "/v1/tts/live", max_size=None) as ws:
        await ws.send(msgpack.packb({"event": "start", "request": {"format": "pcm"}}))
        await ws.send(msgpack.packb({"event": "text", "text": text}))
        await ws.send(msgpack.packb({"event": "stop"}))
        async for message in ws:
            event = msgpack.unpackb(message)
            if event.get("event") == "audio":
                received += len(event["audio"])
    return received


def server_memory_rss(url: str, pid: int, sessions: int, text: str) -> dict[str, Any]:
    """Child server: (peak RSS during ``sessions`` concurrent sessions - idle RSS) / sessions."""

    async def round_() -> list[int]:
        return list(await asyncio.gather(*(_speak(url, text) for _ in range(sessions))))

    asyncio.run(round_())  # warm-up: onnxruntime's arenas grow to this load once
    time.sleep(0.3)
    samples = []
    for _ in range(5):
        samples.append(rss_bytes(pid))
        time.sleep(0.02)
    idle = min(samples)
    with RssSampler(pid) as sampler:
        sizes = asyncio.run(round_())
    return {
        "sessions": sessions,
        "idle_rss_bytes": idle,
        "peak_rss_bytes": sampler.peak,
        "per_session_bytes": max(0, sampler.peak - idle) / sessions,
        "pcm_bytes_per_session": sum(sizes) / len(sizes),
    }


def server_memory_traced(sessions: int, text: str) -> dict[str, Any]:
    """In-process server: tracemalloc peak above baseline during the sessions / sessions.

    Counts Python and numpy allocations of the server's loop and synthesis threads (and the
    small test clients); onnxruntime's own arenas are not Python allocations (see the RSS
    figure for those).
    """
    with LocalServer().run_in_thread() as server:

        async def round_() -> list[int]:
            return list(await asyncio.gather(*(_speak(server.url, text) for _ in range(sessions))))

        asyncio.run(_speak(server.url, "Warm up."))
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            sizes = asyncio.run(round_())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return {
        "sessions": sessions,
        "per_session_bytes": (peak - base) / sessions,
        "pcm_bytes_per_session": sum(sizes) / len(sizes),
    }


def memory_rows(replay: Replay, server_url: str, server_pid: int, quick: bool) -> list[Row]:
    kernel = kernel_memory(replay, 30.0 if quick else 60.0)
    minutes = kernel["audio_s"] / 60
    pcm_per_min = kernel["pcm_bytes"] / minutes / MIB
    rows = [
        Row(
            "7a",
            "kernel memory held per minute of audio (Session + player)",
            "MiB/min",
            "16-bit PCM size of that audio",
            "<= 1.5x",
            ours=[kernel["held_bytes"] / minutes / MIB],
            peer=[pcm_per_min],
        ).finish(lambda ratio, _m: ratio is not None and ratio <= 1.5),
        Row(
            "7b",
            "kernel memory peak per minute of audio (Session + player)",
            "MiB/min",
            "16-bit PCM size of that audio",
            "<= 1.5x",
            ours=[kernel["peak_bytes"] / minutes / MIB],
            peer=[pcm_per_min],
            note="peak includes the end-of-session <audio> fallback (MP3 + base64, as speak())",
        ).finish(lambda ratio, _m: ratio is not None and ratio <= 1.5),
    ]
    rows[0].extra = kernel
    sentences, sessions = (2, 2) if quick else (4, 4)
    text = ". ".join(TEN_SENTENCES.split(". ")[:sentences]).rstrip(".") + "."
    traced = server_memory_traced(sessions, text)
    rss = None if quick else server_memory_rss(server_url, server_pid, sessions, text)
    row = Row(
        "7c",
        f"server memory per session, peak ({sessions} concurrent, tracemalloc)",
        "MiB",
        "16-bit PCM size of one session's audio",
        "<= 1.5x",
        ours=[traced["per_session_bytes"] / MIB],
        peer=[traced["pcm_bytes_per_session"] / MIB],
        note="child-process RSS not measured in quick runs"
        if rss is None
        else f"child-process RSS: +{rss['per_session_bytes'] / MIB:.1f} MiB per session "
        f"above idle {rss['idle_rss_bytes'] / MIB:.0f} MiB, after one warm-up round",
    ).finish(lambda ratio, _m: ratio is not None and ratio <= 1.5)
    row.extra = {"tracemalloc": traced, "rss": rss}
    rows.append(row)
    return rows
