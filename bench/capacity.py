"""Rows 5 and 6: the embedded server against raw Piper, alone and under concurrent sessions.

Row 5 is :mod:`bench.server_flush` (flush -> first audio for one short sentence, against
synthesizing that sentence in-process with the same loaded voice), run interleaved.

Row 6 runs N realtime sessions at once against one server (a child process, as the client
starts it, with room for all of them), each fed an LLM-paced answer (first token after
300 ms, 30 tokens/s, a flush after every sentence), their starts spread over one second.
A session passes when

- it stays faster than real time: a simulated player (the browser player's rules: start
  60 ms after the first chunk, each chunk right after the previous, a chunk due less than
  3 ms ahead is an underrun) never runs dry, and
- its flush latencies are fine: the p95 over all sessions' flushes is at most 2x the p95
  of a lone session measured in the same run.

Flush latency is from sending ``flush`` to the first audio *of that flush*: each flush
yields one piece (one sentence) and the server sends a piece's audio in one burst, so the
k-th burst of arrivals (gaps under 80 ms) belongs to the k-th flush.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from fish_notebook.client import AsyncRealtimeClient, build_request
from fish_notebook.protocol import AudioEvent, FlushEvent

from . import server_flush
from .common import Row, apaced_at, now, quantile
from .latency import TEN_SENTENCES

JITTER_S = 0.06  # player.js: audio queued before the first chunk starts
LATE_MARGIN_S = 0.003  # player.js: a chunk due less than this far ahead is late
BURST_GAP_S = 0.08

# --- row 5 -----------------------------------------------------------------------------------


def flush_row(repeats: int) -> Row:
    with server_flush.thread_server() as url:
        raw, wire = asyncio.run(server_flush.measure(url, repeats, "pcm"))
    row = Row(
        "5",
        "server: flush -> first audio, short sentence (pcm)",
        "ms",
        "raw Piper synthesis of the same sentence, in-process",
        "<= 1.5x",
        ours=wire,
        peer=raw,
        scale=1000,
    )
    return row.finish(lambda ratio, _m: ratio is not None and ratio <= 1.5)


# --- row 6 -----------------------------------------------------------------------------------


@dataclass
class SessionRun:
    flushes: list[float] = field(default_factory=list)
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (time, bytes)
    first_text: float | None = None
    sample_rate: int = 44100

    def bursts(self) -> list[float]:
        starts: list[float] = []
        last = None
        for t, _ in self.arrivals:
            if last is None or t - last > BURST_GAP_S:
                starts.append(t)
            last = t
        return starts

    def flush_latencies(self) -> tuple[list[float], bool]:
        """Per-flush latency, and whether bursts matched flushes one to one."""
        bursts = self.bursts()
        if len(bursts) == len(self.flushes):
            return [b - f for b, f in zip(bursts, self.flushes, strict=True)], True
        # Fallback: the first arrival after each flush (under-estimates under load).
        out = []
        for f in self.flushes:
            after = [t for t, _ in self.arrivals if t >= f]
            if after:
                out.append(after[0] - f)
        return out, False

    def underruns(self) -> int:
        count, end = 0, None
        for t, size in self.arrivals:
            duration = size / 2 / self.sample_rate
            if end is None:
                start = t + JITTER_S
            elif end < t + LATE_MARGIN_S:
                count += 1
                start = t + JITTER_S
            else:
                start = end
            end = start + duration
        return count

    def rtf(self) -> float | None:
        audio_s = sum(size for _, size in self.arrivals) / 2 / self.sample_rate
        if not self.arrivals or self.first_text is None or audio_s == 0:
            return None
        return (self.arrivals[-1][0] - self.first_text) / audio_s


async def one_session(url: str, text: str, delay: float) -> SessionRun:
    await asyncio.sleep(delay)
    run = SessionRun()
    client = AsyncRealtimeClient(base_url=url)

    def on_sent(event: Any) -> None:
        t = now()
        if isinstance(event, FlushEvent):
            run.flushes.append(t)
        elif run.first_text is None:
            run.first_text = t

    source = apaced_at(text, now(), flush=True)
    request = build_request(format="pcm")
    run.sample_rate = request.effective_sample_rate
    async with client.stream_events(source, request=request, on_sent=on_sent) as events:
        async for event in events:
            if isinstance(event, AudioEvent):
                run.arrivals.append((now(), len(event.audio)))
    return run


async def concurrent_runs(url: str, n: int, text: str) -> list[SessionRun]:
    offsets = [(i * 0.618) % 1.0 for i in range(n)]
    return list(
        await asyncio.wait_for(
            asyncio.gather(*(one_session(url, text, o) for o in offsets)), 120 + 10 * n
        )
    )


@dataclass
class Level:
    n: int
    flush_p95: float
    flush_median: float
    underruns: int
    worst_rtf: float
    attributed: bool
    passed: bool = False

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def measure_level(url: str, n: int, text: str, rounds: int = 1) -> Level:
    """N sessions at once, ``rounds`` times; figures pooled over every session."""
    runs = [run for _ in range(rounds) for run in asyncio.run(concurrent_runs(url, n, text))]
    latencies: list[float] = []
    attributed = True
    for run in runs:
        values, ok = run.flush_latencies()
        latencies.extend(values)
        attributed = attributed and ok
    rtfs = [r for r in (run.rtf() for run in runs) if r is not None]
    return Level(
        n,
        quantile(latencies, 0.95),
        quantile(latencies, 0.5),
        sum(run.underruns() for run in runs),
        max(rtfs) if rtfs else float("inf"),
        attributed,
    )


def concurrency_row(
    url: str, levels: list[int], sentences: int, must_try: int, lone_rounds: int = 3
) -> Row:
    """Max N that passes; tries ``levels`` in order, stops at a failure past ``must_try``."""
    text = ". ".join(TEN_SENTENCES.split(". ")[:sentences]).rstrip(".") + "."
    lone = measure_level(url, 1, text, rounds=lone_rounds)  # the bound the others are held to
    lone.passed = lone.underruns == 0
    results = [lone]
    best = 1 if lone.passed else 0
    for n in levels:
        if n == 1:
            continue
        level = measure_level(url, n, text)
        level.passed = level.underruns == 0 and level.flush_p95 <= 2 * lone.flush_p95
        results.append(level)
        if level.passed and best == n_before(levels, n):
            best = n
        if not level.passed and n >= must_try:
            break
    detail = ["  row 6 by N: N  flush p50/p95 ms  underruns  worst RTF  pass"]
    for level in results:
        detail.append(
            f"    {level.n:3d}  {level.flush_median * 1000:6.0f} / {level.flush_p95 * 1000:6.0f}"
            f"  {level.underruns:9d}  {level.worst_rtf:9.2f}  "
            f"{'yes' if level.passed else 'no'}{'' if level.attributed else ' (naive flush attr.)'}"
        )
    row = Row(
        "6",
        f"server: concurrent paced sessions on {_cores()} cores (max N passing)",
        "sessions",
        "the same server with one session (flush p95 bound = 2x lone)",
        ">= 8",
        ours=[float(best)],
        peer=[1.0],
        ratio=None,
        note=f"lone session flush p95 {lone.flush_p95 * 1000:.0f} ms; "
        f"{sentences} sentences per session; see 'row 6 by N'",
    )
    row.extra = {"levels": [level.to_json() for level in results], "detail": detail}
    return row.finish(lambda _r, median: median is not None and median >= 8)


def n_before(levels: list[int], n: int) -> int:
    """The level tried before ``n`` (1 for the first)."""
    index = levels.index(n)
    return levels[index - 1] if index > 0 else 1


def _cores() -> int:
    import os

    return os.cpu_count() or 1
