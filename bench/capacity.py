"""Rows 5 and 6: the embedded server against raw Piper, alone and under concurrent sessions.

Row 5 is :mod:`bench.server_flush` (flush -> first audio for one short sentence, against
synthesizing that sentence in-process with the same loaded voice), run interleaved.

Row 6 runs N realtime sessions at once against one server (a child process, as the client
starts it, with room for all of them), each fed an LLM-paced answer (first token after
300 ms, 30 tokens/s, a flush after every sentence), their starts spread over one second.
A level passes when no session fails and none runs dry: a simulated player (the browser
player's rules: start 60 ms after the first chunk, each chunk right after the previous, a
chunk due less than 3 ms ahead is an underrun) is fed every session's arrivals.

The peer is the machine's bound, measured in the same run. Raw Piper (the default voice, one
onnxruntime thread, as the server runs a synthesis beside others) speaks the answer sentence
by sentence; its CPU time per second of audio is ``c``. A player asks one second of audio per
second, so N sessions ask ``N * c`` CPU seconds per second, and the machine has ``cores``:
``bound = cores / c``. The paced text itself arrives faster than it is spoken (``rate`` audio
seconds per second while the LLM writes), so keeping pace with the writer would be bounded
at ``cores / (c * rate)``; no player needs that. Figure: the largest N found passing, with
levels placed at 0.8, 1.0, 1.2 of the bound (down to 0.6, 0.4, 0.2 when 0.8 fails); goal
N >= 0.8 bound. The bound counts synthesis only: the server's own work (protocol,
resampling, encoding) and the clients (in this process, on the same cores) are the overhead
the 0.2 allows for.

Flush latency (in the detail, not judged) is from sending ``flush`` to the first audio *of
that flush*: each flush yields one piece (one sentence) and the server sends a piece's audio
in one burst, so the k-th burst of arrivals (gaps under 80 ms) belongs to the k-th flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fish_notebook.client import AsyncRealtimeClient, build_request
from fish_notebook.protocol import AudioEvent, FlushEvent

from . import server_flush
from .common import Row, apaced_at, now, quantile, schedule, sentence_tokens
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
    errors: list[str] = field(default_factory=list)
    passed: bool = False

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def measure_level(url: str, n: int, text: str, rounds: int = 1) -> Level:
    """N sessions at once, ``rounds`` times; figures pooled over every session. It passes when
    no session failed and none ran dry in the simulated player."""
    runs: list[SessionRun] = []
    errors: list[str] = []
    for _ in range(rounds):
        try:
            runs.extend(asyncio.run(concurrent_runs(url, n, text)))
        except Exception as exc:  # a session that failed (or the level timed out) fails it
            errors.append(repr(exc))
    latencies: list[float] = []
    attributed = True
    for run in runs:
        values, ok = run.flush_latencies()
        latencies.extend(values)
        attributed = attributed and ok
    rtfs = [r for r in (run.rtf() for run in runs) if r is not None]
    level = Level(
        n,
        quantile(latencies, 0.95) if latencies else float("inf"),
        quantile(latencies, 0.5) if latencies else float("inf"),
        sum(run.underruns() for run in runs),
        max(rtfs) if rtfs else float("inf"),
        attributed,
        errors,
    )
    level.passed = not errors and bool(runs) and level.underruns == 0
    return level


# --- the machine's bound -----------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _one_thread_voice() -> Any:
    """The default voice as raw Piper on one onnxruntime thread: what the server gives each
    run that shares the machine with others (engine.py's ``shared`` session)."""
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    from fish_notebook.local.engine import default_voice_files

    model, config = default_voice_files()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as engine.py
    session = onnxruntime.InferenceSession(
        str(model), sess_options=options, providers=["CPUExecutionProvider"]
    )
    settings = PiperConfig.from_dict(json.loads(config.read_text()))
    voice = PiperVoice(session=session, config=settings)
    for _ in voice.synthesize("Ready."):  # the first run pays for graph optimisation
        pass
    return voice


def piper_cpu_per_audio_second(text: str) -> float:
    """CPU seconds raw Piper spends per second of audio, ``text`` spoken sentence by sentence
    (one call each, as the server synthesizes one flush), counted as this thread's CPU time
    (one onnxruntime thread runs in the caller's), so load from elsewhere does not inflate it."""
    voice = _one_thread_voice()
    cpu = audio = 0.0
    for sentence in sentence_tokens(text):
        began = time.thread_time()
        for chunk in voice.synthesize(sentence.strip()):
            audio += len(chunk.audio_int16_bytes) / 2 / chunk.sample_rate
        cpu += time.thread_time() - began
    return cpu / audio


def text_audio_rate(text: str) -> float:
    """Seconds of audio per second of paced text while the LLM writes ``text``: the rate at
    which the answer asks for audio if the server were to keep pace with the writer."""
    voice = _one_thread_voice()
    audio = sum(
        len(chunk.audio_int16_bytes) / 2 / chunk.sample_rate for chunk in voice.synthesize(text)
    )
    due = schedule(text, 0.0, 0.3, 30.0)
    return audio / (due[-1][0] - due[0][0])


def cores() -> int:
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# --- row 6 -------------------------------------------------------------------------------------


def capacity_row(
    url: str,
    sentences: int,
    fractions: tuple[float, ...],
    lone_rounds: int = 3,
    max_sessions: int = 32,
) -> Row:
    """Sessions served with no underrun, against ``cores / synthesis CPU per audio second``.

    Levels are placed on the bound measured in this run: ``fractions`` of it upwards while
    they pass (0.8, 1.0, 1.2, ...), or, if the first fails, 0.6, 0.4, 0.2 of it down to the
    first that passes. The synthesis cost is measured once before every level (interleaved).
    """
    text = ". ".join(TEN_SENTENCES.split(". ")[:sentences]).rstrip(".") + "."
    costs = [piper_cpu_per_audio_second(text)]  # also warms the raw voice
    lone = measure_level(url, 1, text, rounds=lone_rounds)  # flush figures of a lone session
    results = [lone]

    def attempt(n: int) -> bool:
        costs.append(piper_cpu_per_audio_second(text))
        level = measure_level(url, n, text)
        results.append(level)
        return level.passed

    best = search(cores() / statistics.median(costs), fractions, attempt, max_sessions)
    if best == 0 and lone.passed:
        best = 1
    cost = statistics.median(costs)
    bound = cores() / cost
    rate = text_audio_rate(text)
    capped = any(level.n == max_sessions for level in results)
    row = Row(
        "6",
        f"server: paced sessions with no underrun, vs the {cores()}-core bound",
        "sessions",
        "bound = cores / (CPU s per audio s of raw Piper, 1 thread), this run",
        ">= 0.8x",
        ours=[float(best)],
        peer=[bound],
        note=f"raw Piper {cost:.3f} CPU s per audio s -> bound {bound:.1f} (a player asks "
        f"1 s of audio per s); keeping pace with the writer instead ({rate:.1f} audio s per s "
        f"of text) would bound it at {cores() / (cost * rate):.1f}; lone flush p95 "
        f"{lone.flush_p95 * 1000:.0f} ms; {sentences} sentences per session"
        + (f"; capped at the server's {max_sessions} sessions" if capped else ""),
    )
    row.extra = {
        "levels": [level.to_json() for level in results],
        "cpu_per_audio_s": costs,
        "text_audio_rate": rate,
        "detail": _detail(results),
    }
    return row.finish(lambda ratio, _m: ratio is not None and ratio >= 0.8)


def search(
    bound: float, fractions: tuple[float, ...], attempt: Callable[[int], bool], most: int
) -> int:
    """The largest N found passing: ``fractions`` of ``bound`` upwards while they pass, or, if
    the first fails, 0.6, 0.4, 0.2 of it down to the first that passes (0 if none does)."""

    def at(fraction: float, rounding: Callable[[float], int]) -> int:
        return max(1, min(most, rounding(fraction * bound)))

    first = at(fractions[0], math.ceil)
    if not attempt(first):
        lower = sorted({at(f, math.floor) for f in (0.6, 0.4, 0.2)} - {first}, reverse=True)
        return next((n for n in lower if n < first and attempt(n)), 0)
    best = first
    for n in sorted({at(f, math.ceil) for f in fractions[1:]}):
        if n <= best:
            continue
        if not attempt(n):
            break
        best = n
    return best


def _detail(results: list[Level]) -> list[str]:
    detail = ["  row 6 by N: N  flush p50/p95 ms  underruns  worst RTF  pass"]
    for level in results:
        flags = "" if level.attributed else " (naive flush attr.)"
        if level.errors:
            flags += f" errors: {'; '.join(level.errors)[:120]}"
        detail.append(
            f"    {level.n:3d}  {level.flush_median * 1000:6.0f} / {level.flush_p95 * 1000:6.0f}"
            f"  {level.underruns:9d}  {level.worst_rtf:9.2f}  "
            f"{'yes' if level.passed else 'no'}{flags}"
        )
    return detail
