"""Flush latency of the embedded server against raw Piper, measured in the same run.

Raw Piper: time to synthesize "The quick brown fox jumps over the lazy dog." in-process
(one call, the voice already loaded and warm). WebSocket path: a session is open with
``start`` and the sentence sent as ``text``; the clock runs from sending ``flush`` to the
first ``audio`` event received. The server runs in this process on its own thread and loop,
or with ``--child`` as the child process the client spawns (``python -m fish_notebook.local``).
Prints the medians and the ratio (goal: <= 1.5).

Usage: python bench/server_flush.py [--repeats N] [--format pcm|wav|mp3] [--child]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import msgpack
from websockets.asyncio.client import connect

from fish_notebook.local import LocalServer
from fish_notebook.local.cli import READY_PREFIX
from fish_notebook.local.engine import VoiceLibrary

SENTENCE = "The quick brown fox jumps over the lazy dog."


def raw_piper_seconds() -> float:
    voice = VoiceLibrary().default()
    began = time.perf_counter()
    for _chunk in voice.synthesize(SENTENCE):
        break  # one sentence: the first chunk is the whole of it
    return time.perf_counter() - began


async def flush_to_first_audio_seconds(url: str, audio_format: str) -> float:
    async with connect(url + "/v1/tts/live") as ws:
        request = {"format": audio_format, "latency": "balanced"}
        await ws.send(msgpack.packb({"event": "start", "request": request}))
        await ws.send(msgpack.packb({"event": "text", "text": SENTENCE}))
        await asyncio.sleep(0.05)  # the text is buffered, nothing to speak yet
        began = time.perf_counter()
        await ws.send(msgpack.packb({"event": "flush"}))
        while True:
            event = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 30))
            if event["event"] == "audio":
                elapsed = time.perf_counter() - began
                break
        await ws.send(msgpack.packb({"event": "stop"}))
        # Drain to the session's finish: the socket then stays open for another session
        # (the server closes it only after its idle timeout), so do not wait for a close.
        while msgpack.unpackb(await asyncio.wait_for(ws.recv(), 30))["event"] != "finish":
            pass
    return elapsed


async def measure(url: str, repeats: int, audio_format: str) -> tuple[list[float], list[float]]:
    raw, wire = [], []
    raw_piper_seconds()
    await flush_to_first_audio_seconds(url, audio_format)  # warm both paths
    for _ in range(repeats):  # interleaved, so load from elsewhere hits both alike
        raw.append(raw_piper_seconds())
        wire.append(await flush_to_first_audio_seconds(url, audio_format))
    return raw, wire


@contextlib.contextmanager
def child_server() -> Iterator[str]:
    """The server as a child process, as the client starts it; yields its URL."""
    command = [sys.executable, "-m", "fish_notebook.local", "--port", "0", "--exit-with-parent"]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(f"the server did not start: {line!r}")
        yield line[len(READY_PREFIX) :].strip()
    finally:
        process.terminate()
        process.communicate(timeout=30)


@contextlib.contextmanager
def thread_server() -> Iterator[str]:
    with LocalServer().run_in_thread() as server:
        yield server.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--format", default="pcm", choices=["pcm", "wav", "mp3"])
    parser.add_argument("--child", action="store_true", help="run the server as a child process")
    args = parser.parse_args()
    with child_server() if args.child else thread_server() as url:
        raw, wire = asyncio.run(measure(url, args.repeats, args.format))
    raw_ms, wire_ms = statistics.median(raw) * 1000, statistics.median(wire) * 1000
    print(f"raw piper, one sentence        median {raw_ms:7.1f} ms  (n={len(raw)})")
    where = "child" if args.child else "thread"
    print(
        f"flush -> first audio ({args.format}, {where})  median {wire_ms:7.1f} ms  (n={len(wire)})"
    )
    print(f"ratio websocket/raw: {wire_ms / raw_ms:.2f}  (goal <= 1.5)")


if __name__ == "__main__":
    main()
