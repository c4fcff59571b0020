"""A raw WebSocket + MessagePack client for testing the embedded server, and audio readers."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from fish_notebook.audio import WavStreamParser

LIVE = "/v1/tts/live"
SENTENCE = "The quick brown fox jumps over the lazy dog."


def frame(event: str, **fields: Any) -> bytes:
    """One client frame."""
    return msgpack.packb({"event": event, **fields}, use_bin_type=True)


def start(**request: Any) -> bytes:
    """A start frame with the given request fields."""
    return frame("start", request=request)


def text(value: str) -> bytes:
    return frame("text", text=value)


FLUSH = frame("flush")
STOP = frame("stop")


@dataclass
class Outcome:
    """Everything a client got back from one session."""

    events: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None

    @property
    def audio(self) -> bytes:
        return b"".join(e["audio"] for e in self.events if e["event"] == "audio")

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name]

    @property
    def finish(self) -> dict[str, Any] | None:
        finishes = self.named("finish")
        return finishes[-1] if finishes else None

    @property
    def logs(self) -> list[str]:
        return [e["message"] for e in self.named("log")]


async def read_all(ws: ClientConnection, timeout: float = 60.0) -> Outcome:
    """Read frames until the server closes, or until ``finish`` reason ``stop`` (the server
    keeps the socket open for another session: this client then closes it, code 1000).
    Every frame must be binary MessagePack."""
    outcome = Outcome()

    async def loop() -> None:
        try:
            async for message in ws:
                assert isinstance(message, bytes), f"server sent a text frame: {message!r}"
                event = msgpack.unpackb(message, raw=False)
                assert isinstance(event, dict) and isinstance(event.get("event"), str)
                outcome.events.append(event)
                if event == {"event": "finish", "reason": "stop"}:
                    await ws.close()
                    return
        except ConnectionClosed:
            pass

    await asyncio.wait_for(loop(), timeout)
    outcome.close_code = ws.close_code
    return outcome


async def read_session(ws: ClientConnection, timeout: float = 60.0) -> Outcome:
    """Read one session's events, up to its ``finish`` (or the close), leaving the socket
    open for the next session."""
    outcome = Outcome()

    async def loop() -> None:
        try:
            while True:
                event = await next_event(ws, timeout)
                outcome.events.append(event)
                if event["event"] in ("finish", "error"):
                    return
        except ConnectionClosed:
            outcome.close_code = ws.close_code

    await asyncio.wait_for(loop(), timeout)
    return outcome


async def session(
    url: str,
    frames: Sequence[bytes | str],
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Outcome:
    """Open a session, send every frame in one burst, read until the server closes or the
    session finishes (then close)."""
    async with connect(url + LIVE, additional_headers=headers, open_timeout=10) as ws:
        for item in frames:
            await ws.send(item)
        return await read_all(ws, timeout)


async def next_event(ws: ClientConnection, timeout: float = 30.0) -> dict[str, Any]:
    """The next event from the server, decoded."""
    message = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(message, bytes)
    event: dict[str, Any] = msgpack.unpackb(message, raw=False)
    return event


# --- below websockets: raw bytes for a plain TCP socket ---


def handshake(host: str, port: int, path: str = LIVE) -> bytes:
    """A WebSocket opening handshake for ``path``, as raw bytes."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True) -> bytes:
    """One WebSocket frame as a client would put it on the wire (masked unless told)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    size, mask_bit = len(payload), 0x80 if masked else 0
    if size < 126:
        head += bytes([mask_bit | size])
    elif size < 65536:
        head += bytes([mask_bit | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([mask_bit | 127]) + size.to_bytes(8, "big")
    if masked:
        key = b"\x37\xfa\x21\x3d"
        head += key
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload


# --- reading audio --------------------------------------------------------------------------


@dataclass
class Wav:
    sample_rate: int
    channels: int
    bits: int
    riff_size: int
    data_size: int
    pcm: bytes


def parse_wav(stream: bytes) -> Wav:
    """Parse a streamed WAV: header fields and the PCM after it."""
    parser = WavStreamParser()
    pcm = parser.feed(stream) + parser.finish()
    (riff_size,) = struct.unpack_from("<I", stream, 4)
    (data_size,) = struct.unpack_from("<I", stream, 40)
    assert parser.sample_rate and parser.channels and parser.bits_per_sample
    return Wav(
        parser.sample_rate, parser.channels, parser.bits_per_sample, riff_size, data_size, pcm
    )


_MP3_BITRATES = {
    1: [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320],  # MPEG-1 layer III
    2: [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],  # MPEG-2/2.5 layer III
}
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


@dataclass
class Mp3Frames:
    count: int
    sample_rate: int
    bitrates: set[int]
    samples: int

    @property
    def duration(self) -> float:
        return self.samples / self.sample_rate


def parse_mp3(stream: bytes) -> Mp3Frames:
    """Walk an MP3 stream frame by frame; fail on anything that is not a frame."""
    pos, count, samples, rates, bitrates = 0, 0, 0, set(), set()
    while pos + 4 <= len(stream):
        header = int.from_bytes(stream[pos : pos + 4], "big")
        assert header >> 21 == 0x7FF, f"no MP3 frame sync at byte {pos} of {len(stream)}"
        version = (header >> 19) & 3
        assert (header >> 17) & 3 == 1, "not layer III"
        bitrate = _MP3_BITRATES[1 if version == 3 else 2][(header >> 12) & 15]
        rate = _MP3_RATES[version][(header >> 10) & 3]
        padding = (header >> 9) & 1
        per_frame = 1152 if version == 3 else 576
        size = (per_frame // 8 * bitrate * 1000) // rate + padding
        rates.add(rate)
        bitrates.add(bitrate)
        count += 1
        samples += per_frame
        pos += size
    assert pos == len(stream), f"MP3 stream ends inside a frame ({pos} != {len(stream)})"
    assert len(rates) == 1, rates
    return Mp3Frames(count, rates.pop(), bitrates, samples)


def rms(pcm: bytes) -> float:
    import numpy

    samples = numpy.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype("float64")
    return float(numpy.sqrt(numpy.mean(samples**2))) if len(samples) else 0.0
