"""What every benchmark row shares: statistics, the row record, paced sources, servers.

A row holds our samples, the peer's samples (measured in the same run, interleaved with
ours so that load from elsewhere on the machine hits both alike), the ratio of the medians
and the goal. Nothing here asserts: a row that misses its goal says so in the table.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fish_notebook.local.cli import READY_PREFIX
from fish_notebook.protocol import FlushEvent
from fish_notebook.sources import llm_tokens
from fish_notebook.text import ends_sentence, sentence_ends
from tests.helpers import stop_child

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

now = time.perf_counter

# --- statistics -----------------------------------------------------------------------------


def quantile(samples: list[float], q: float) -> float:
    """Linear-interpolated quantile (q in 0..1) of a non-empty list."""
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


MAX_KEPT_SAMPLES = 60


def summary(samples: list[float]) -> dict[str, Any]:
    """Median and spread of samples; the samples themselves when there are few (else p5..p95)."""
    if not samples:
        return {"n": 0}
    out: dict[str, Any] = {
        "n": len(samples),
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "p25": quantile(samples, 0.25),
        "p75": quantile(samples, 0.75),
    }
    if len(samples) <= MAX_KEPT_SAMPLES:
        out["samples"] = list(samples)
    else:
        out["p5"] = quantile(samples, 0.05)
        out["p95"] = quantile(samples, 0.95)
    return out


# --- rows -----------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table.

    ``ours``/``peer`` are samples in ``unit``; ``ratio`` is median(ours)/median(peer) unless
    set; ``met`` is what ``check(ratio, ours_median)`` says, or None when not measured.
    """

    id: str
    title: str
    unit: str
    peer_name: str
    goal: str
    ours: list[float] = field(default_factory=list)
    peer: list[float] = field(default_factory=list)
    ratio: float | None = None
    met: bool | None = None
    scale: float = 1.0  # samples are multiplied by this for display (s -> ms: 1000)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def finish(self, check: Callable[[float | None, float | None], bool] | None) -> Row:
        """Compute the ratio (if not set) and whether the goal is met."""
        ours_median = statistics.median(self.ours) if self.ours else None
        peer_median = statistics.median(self.peer) if self.peer else None
        if self.ratio is None and ours_median is not None and peer_median:
            self.ratio = ours_median / peer_median
        if check is not None and ours_median is not None:
            # Judged on the ratio as printed (two decimals), so "1.00x" never reads "NO".
            shown = round(self.ratio, 2) if self.ratio is not None else None
            self.met = check(shown, ours_median)
        return self

    def cell(self, samples: list[float]) -> str:
        if not samples:
            return "-"
        s = summary(samples)
        fmt = _number_format(s["median"] * self.scale)
        if s["n"] == 1:
            return f"{fmt(s['median'] * self.scale)} {self.unit}"
        return (
            f"{fmt(s['median'] * self.scale)} {self.unit} "
            f"[{fmt(s['min'] * self.scale)}–{fmt(s['max'] * self.scale)}] n={s['n']}"
        )

    def to_json(self) -> dict[str, Any]:
        def scaled(samples: list[float]) -> dict[str, Any]:
            s = summary([x * self.scale for x in samples])
            return s

        return {
            "id": self.id,
            "title": self.title,
            "unit": self.unit,
            "ours": scaled(self.ours),
            "peer_name": self.peer_name,
            "peer": scaled(self.peer),
            "ratio": self.ratio,
            "goal": self.goal,
            "met": self.met,
            "note": self.note,
            "extra": self.extra,
        }


def _number_format(value: float) -> Callable[[float], str]:
    magnitude = abs(value)
    if magnitude >= 100:
        return lambda x: f"{x:.0f}"
    if magnitude >= 10:
        return lambda x: f"{x:.1f}"
    if magnitude >= 1:
        return lambda x: f"{x:.2f}"
    return lambda x: f"{x:.3f}"


def not_measured(row_id: str, title: str, goal: str, peer_name: str, why: str) -> Row:
    return Row(row_id, title, "", peer_name, goal, note=f"not measured in this run: {why}")


def interleave(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each variant ``repeats`` times, rotating the order every round."""
    names = list(variants)
    results: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(variants[name]())
    return results


# --- table ----------------------------------------------------------------------------------


def table_lines(rows: list[Row]) -> list[str]:
    header = ["#", "figure", "ours", "peer", "ratio", "goal", "met"]
    body = []
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
        met = {True: "yes", False: "NO", None: "-"}[row.met]
        body.append(
            [row.id, row.title, row.cell(row.ours), row.cell(row.peer), ratio, row.goal, met]
        )
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    peers = sorted({f"{row.id}: {row.peer_name}" for row in rows if row.peer_name})
    notes = [f"  {row.id}: {row.note}" for row in rows if row.note]
    lines.append("")
    if peers:
        lines.append("peers: " + "; ".join(peers))
    if notes:
        lines.append("notes:")
        lines.extend(notes)
    return lines


def markdown_table(rows: list[Row]) -> str:
    out = ["| # | figure | ours | peer | ratio | goal | met |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
        met = {True: "yes", False: "**no**", None: "-"}[row.met]
        ours = row.cell(row.ours) if row.ours else row.note or "-"
        out.append(
            f"| {row.id} | {row.title} | {ours} | {row.cell(row.peer)} | {ratio} | "
            f"{row.goal} | {met} |"
        )
    return "\n".join(out) + "\n"


def machine() -> dict[str, Any]:
    """What the figures came from."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    versions = {}
    for name in ("websockets", "msgpack", "onnxruntime", "piper-tts", "fish-audio-sdk", "httpx-ws"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[name] = version(name)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": load,
        "versions": versions,
    }


def code_state() -> dict[str, Any]:
    """The commit measured, and package files changed but not committed at the time."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=10, check=True
        ).stdout.rstrip("\n")

    try:
        return {
            "commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted": git("status", "--porcelain", "--", "fish_notebook").splitlines(),
        }
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "uncommitted": []}


# --- tokenization styles ----------------------------------------------------------------------
# How a caller may cut an answer into the pieces it hands the client. Each joins back to the
# text exactly; the schedule below releases every piece when an LLM writing at a fixed pace
# has produced its last visible character, so the styles differ only in where they cut.


def trailing_space_tokens(text: str) -> list[str]:
    """Words with the space *after* them, punctuation attached: the Fish cookbook's style,
    ``["The ", "first ", "move. ", ...]``."""
    return re.findall(r"^\s+|\S+\s*", text)


def sentence_tokens(text: str) -> list[str]:
    """One token per sentence (its trailing whitespace included), as a caller that buffers
    the LLM's output into sentences hands them over."""
    pieces: list[str] = []
    start = 0
    for end in sentence_ends(text):
        while end < len(text) and text[end].isspace():
            end += 1
        if end > start:
            pieces.append(text[start:end])
            start = end
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def char_chunk_tokens(text: str, sizes: tuple[int, ...] = (3, 4, 5)) -> list[str]:
    """Pieces of 3, 4, 5, 3, ... characters with no regard for words or sentences."""
    pieces: list[str] = []
    start = 0
    for size in itertools.cycle(sizes):
        if start >= len(text):
            return pieces
        pieces.append(text[start : start + size])
        start += size
    return pieces  # unreachable: cycle() never ends


Tokenizer = Callable[[str], list[str]]

#: The tokenization styles of rows 1 and 2, by name (``lead`` is fish_notebook's llm_tokens).
TOKENIZERS: dict[str, Tokenizer] = {
    "lead": llm_tokens,
    "trail": trailing_space_tokens,
    "sentence": sentence_tokens,
    "chars": char_chunk_tokens,
}


# --- paced token streams anchored at the caller's start --------------------------------------
# fish_notebook.sources.paced starts its clock at its first next(); the SDK pulls the source
# only after its handshake, so that would hand the SDK a later clock. These start at ``t0``,
# the moment the caller began: the LLM started thinking then, whatever the client does.


def schedule(
    text: str, t0: float, first: float, rate: float, tokenizer: Tokenizer = llm_tokens
) -> list[tuple[float, str]]:
    """``(due, token)`` for every token ``tokenizer`` cuts from ``text``.

    The pace is an LLM writing ``llm_tokens(text)``: its i-th token at ``t0 + first + i / rate``.
    A token of any style is due when that LLM has written the token's last visible character
    (trailing whitespace is not waited for), so with ``llm_tokens`` itself the i-th token is
    due at exactly that time, and a sentence-per-token caller gets each sentence the moment
    it is complete.
    """
    tokens = tokenizer(text)
    if "".join(tokens) != text:
        raise ValueError(f"{tokenizer.__name__} does not join back to the text")
    ends = list(itertools.accumulate(len(t) for t in llm_tokens(text)))
    out, position = [], 0
    for token in tokens:
        visible_end = position + len(token.rstrip())
        position += len(token)
        index = min(bisect.bisect_left(ends, visible_end), len(ends) - 1)
        out.append((t0 + first + index / rate, token))
    return out


def paced_at(
    text: str,
    t0: float,
    *,
    first: float = 0.3,
    rate: float = 30.0,
    flush: bool = False,
    tokenizer: Tokenizer = llm_tokens,
) -> Iterator[Any]:
    """Tokens of ``text`` (cut by ``tokenizer``) due as :func:`schedule` says, sleeping in
    the caller.

    ``flush``: a FlushEvent after every sentence-ending token.
    """
    for due, token in schedule(text, t0, first, rate, tokenizer):
        delay = due - now()
        if delay > 0:
            time.sleep(delay)
        yield token
        if flush and ends_sentence(token):
            yield FlushEvent()


async def apaced_at(
    text: str,
    t0: float,
    *,
    first: float = 0.3,
    rate: float = 30.0,
    flush: bool = False,
    tokenizer: Tokenizer = llm_tokens,
) -> AsyncIterator[Any]:
    """The async twin of :func:`paced_at`."""
    for due, token in schedule(text, t0, first, rate, tokenizer):
        delay = due - now()
        if delay > 0:
            await asyncio.sleep(delay)
        yield token
        if flush and ends_sentence(token):
            yield FlushEvent()


# --- the embedded server as a child process (as the client itself starts it) ----------------


@dataclass
class ChildServer:
    url: str
    process: subprocess.Popen[bytes]

    @property
    def http_url(self) -> str:
        return "http" + self.url[2:]

    @property
    def pid(self) -> int:
        return self.process.pid


@contextlib.contextmanager
def child_server(max_sessions: int = 32, timeout: float = 60.0) -> Iterator[ChildServer]:
    """``python -m fish_notebook.local`` on a free loopback port; stopped on exit."""
    command = [
        sys.executable,
        "-m",
        "fish_notebook.local",
        "--port",
        "0",
        "--exit-with-parent",
        "--max-sessions",
        str(max_sessions),
        "--log-level",
        "ERROR",
    ]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        line = read_line(process, timeout)
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(f"the local server did not start: {line!r}")
        yield ChildServer(line[len(READY_PREFIX) :].strip(), process)
    finally:
        stop_child(process)


def read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The child's first stdout line, bounded by ``timeout``."""
    result: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        result.append(process.stdout.readline().decode())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not result:
        process.kill()
        raise RuntimeError(f"{process.args!r} printed nothing within {timeout} s")
    return result[0]


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Polls a process's RSS every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.peak = max(self.peak, rss_bytes(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
