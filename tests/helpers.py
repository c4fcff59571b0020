"""Small helpers shared by test modules."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from fish_notebook import _loop
from fish_notebook.pool import socket_pool
from fish_notebook.timeline import TimedWord

#: Every field of the ``request`` map of a ``start`` event, as PROTOCOL.md lists them.
REQUEST_FIELDS = frozenset(
    {
        "text", "chunk_length", "format", "sample_rate", "mp3_bitrate", "opus_bitrate",
        "references", "reference_id", "normalize", "latency", "prosody", "top_p", "temperature",
        "max_new_tokens", "repetition_penalty", "min_chunk_length",
        "condition_on_previous_chunks", "early_stop_threshold",
    }
)  # fmt: skip


def wait_until(
    condition: Callable[[], Any], what: str, timeout: float = 20.0, interval: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something truthy, and return that.

    Fails the test with "timed out ... waiting for {what}" after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class RecordingListener:
    """A session listener that writes down every call, in order (it has no ``on_words``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    def on_text(self, text: str) -> None:
        self.calls.append(("text", text))

    def on_flush(self) -> None:
        self.calls.append(("flush", None))

    def on_audio(self, pcm: bytes, seq: int) -> None:
        self.calls.append(("audio", (seq, len(pcm))))

    def on_state(self, state: str, error: str | None) -> None:
        self.calls.append(("state", state))

    def on_metrics(self, metrics: dict[str, Any]) -> None:
        self.calls.append(("metrics", metrics))

    def of(self, kind: str) -> list[Any]:
        return [value for name, value in self.calls if name == kind]


class WordListener(RecordingListener):
    """A listener that also hears of words (``("words", (start, words))``) and skipped markup."""

    def on_words(self, words: list[TimedWord], start: int) -> None:
        self.calls.append(("words", (start, list(words))))

    def on_skipped(self, text: str) -> None:
        self.calls.append(("skipped", text))

    def words(self) -> list[TimedWord]:
        """The words as its ``on_words`` calls leave them: each replaces from its start."""
        out: list[TimedWord] = []
        for start, words in self.of("words"):
            assert 0 <= start <= len(out), f"words from {start} leave a hole after {len(out)}"
            out[start:] = words
        return out


def close_warm_sockets() -> None:
    """Close the warm sockets of fish-notebook's background loop (left by earlier tests),
    so that a test counting that loop's tasks sees only its own."""

    async def close() -> None:
        await socket_pool().aclose()

    _loop.run_sync(close(), 10)


def spoken_words(text: str) -> list[str]:
    """``text``'s words, lower case, without punctuation: what speech recognition is held to."""
    return re.findall(r"[a-z0-9']+", text.lower())


def word_errors(reference: str, heard: str) -> int:
    """Word-level edit distance between ``reference`` and ``heard`` (:func:`spoken_words`)."""
    ref, hyp = spoken_words(reference), spoken_words(heard)
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        previous, row = row, [i]
        for j, other in enumerate(hyp, 1):
            row.append(min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (word != other)))
    return row[-1]


def stop_child(process: subprocess.Popen[Any], grace: float = 20.0) -> None:
    """End a child process: SIGTERM, ``grace`` seconds to exit (its pipes drained), then
    SIGKILL. Never leaves it running, never waits without a bound."""
    if process.poll() is None:
        process.terminate()
    try:
        process.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate(timeout=10)
