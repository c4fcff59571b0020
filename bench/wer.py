"""Rows 11a-11c: a quality guard, the word error rate of what fish-notebook speaks.

Five fixed texts are spoken by the shared child server through three of our paths, and by
raw Piper in process (the same default voice, the whole text in one call: nothing cut):

- 11a the client: ``AsyncRealtimeClient.stream_websocket`` on LLM-paced tokens (first
  token after 300 ms, then 30/s; the early flush and the server cut the text where they do);
- 11b a ``Session`` on the same paced tokens (the notebook path; its recording's audio);
- 11c the command line: ``fish-notebook say TEXT -o FILE.wav --url ...`` in a child process.

Every result is transcribed in process by Whisper tiny.en (the packaged weights,
``Transcriber()``, greedy, English); the word error rate is word-level edit distance over
the reference words, lowercased with punctuation dropped, pooled over the texts (total
errors / total words). Per text, the four variants run back to back, the order rotating.
Goal: each path within 2 points of raw Piper: cutting text into pieces, streaming and
saving must not cost intelligibility. Piper samples its prosody at random, so raw Piper's
own rate moves a little from run to run; full runs make two passes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fish_notebook.audio import wav_bytes
from fish_notebook.client import AsyncRealtimeClient, build_request
from fish_notebook.session import Session
from tests.helpers import spoken_words, word_errors

from .common import Row, apaced_at, now, paced_at

#: Plain words (no numbers: Whisper writes "3" where the text says "three").
TEXTS = (
    "Sure. Streaming speech starts talking while the model is still writing its answer. Here.",
    "The weather today is mild and clear. Later in the evening a light rain may fall over "
    "the hills.",
    "Please open the window before the meeting starts. The room gets warm very quickly in "
    "the afternoon.",
    "She bought fresh bread, green apples and a small jar of honey at the market.",
    "If you can hear this sentence clearly, the voice is working as it should. Thank you "
    "for listening.",
)
POINTS = 2.0  # the goal: at most this many points of WER above raw Piper's
CLI_TIMEOUT = 120.0

Speaker = Callable[[str], bytes]  # text -> a WAV file


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word errors / reference words."""
    return word_errors(reference, hypothesis) / max(1, len(spoken_words(reference)))


# --- the four ways to speak a text -------------------------------------------------------------


def through_client(url: str) -> Speaker:
    rate = build_request(format="pcm").effective_sample_rate

    async def stream(text: str) -> bytes:
        client = AsyncRealtimeClient(base_url=url)
        parts: list[bytes] = []
        try:
            async for chunk in client.stream_websocket(apaced_at(text, now()), format="pcm"):
                parts.append(chunk)
        finally:
            await client.aclose()
        return b"".join(parts)

    return lambda text: wav_bytes(asyncio.run(stream(text)), rate)


def through_session(url: str) -> Speaker:
    def speak(text: str) -> bytes:
        session = Session(paced_at(text, now()), base_url=url)
        session.wait(CLI_TIMEOUT)
        if session.error is not None:
            raise RuntimeError(f"the session failed: {session.error!r}")
        return wav_bytes(session.audio, session.sample_rate)

    return speak


def through_cli(url: str) -> Speaker:
    code = "import sys; from fish_notebook.cli import main; sys.exit(main(sys.argv[1:]))"

    def speak(text: str) -> bytes:
        with tempfile.TemporaryDirectory() as folder:
            target = Path(folder) / "said.wav"
            command = [sys.executable, "-c", code, "say", text, "-o", str(target), "-q"]
            done = subprocess.run(
                [*command, "--url", url],
                capture_output=True,
                text=True,
                timeout=CLI_TIMEOUT,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            )
            if done.returncode != 0:
                raise RuntimeError(f"fish-notebook say failed: {done.stderr.strip()[-300:]}")
            return target.read_bytes()

    return speak


def raw_piper(text: str) -> bytes:
    from fish_notebook.local.engine import VoiceLibrary

    voice = VoiceLibrary().default()
    return wav_bytes(b"".join(chunk.pcm for chunk in voice.synthesize(text)), voice.sample_rate)


# --- the rows ------------------------------------------------------------------------------------


def wer_rows(url: str, passes: int) -> list[Row]:
    from fish_notebook.local.asr import Transcriber

    transcriber = Transcriber()
    speakers: dict[str, Speaker] = {
        "client": through_client(url),
        "session": through_session(url),
        "cli": through_cli(url),
        "raw": raw_piper,
    }
    names = list(speakers)
    total = sum(len(spoken_words(text)) for text in TEXTS)
    errors: dict[str, list[int]] = {name: [] for name in names}  # one total per pass
    heard: dict[str, list[str]] = {name: [] for name in names}
    for pass_ in range(passes):
        counts = dict.fromkeys(names, 0)
        for i, text in enumerate(TEXTS):
            shift = (pass_ * len(TEXTS) + i) % len(names)
            for name in names[shift:] + names[:shift]:
                said = transcriber.transcribe(speakers[name](text), "en", False)["text"]
                counts[name] += word_errors(text, said)
                heard[name].append(said.strip())
        for name in names:
            errors[name].append(counts[name])
    rates = {name: [100 * e / total for e in errors[name]] for name in names}
    return [_row(sub, name, title, rates, heard, total) for sub, name, title in _ROWS]


_ROWS = (
    ("a", "client", "AsyncRealtimeClient, LLM-paced tokens"),
    ("b", "session", "Session (the notebook path), LLM-paced tokens"),
    ("c", "cli", "fish-notebook say TEXT -o FILE.wav"),
)


def _row(
    sub: str,
    name: str,
    title: str,
    rates: dict[str, list[float]],
    heard: dict[str, list[str]],
    total: int,
) -> Row:
    import statistics

    peer = statistics.median(rates["raw"])
    misheard = [
        said
        for text, said in zip(TEXTS * len(rates[name]), heard[name], strict=True)
        if word_errors(text, said)
    ]
    note = f"{len(TEXTS)} texts, {total} words, Whisper tiny.en in process"
    if misheard:
        note += f"; misheard: {misheard[0]!r}" + (
            f" (+{len(misheard) - 1} more)" if len(misheard) > 1 else ""
        )
    row = Row(
        f"11{sub}",
        f"word error rate: {title}",
        "%",
        "raw Piper in process, the whole text in one call (same voice, same texts)",
        f"<= peer + {POINTS:.0f}",
        ours=rates[name],
        peer=rates["raw"],
        note=note,
        extra={"heard": heard[name], "raw_heard": heard["raw"], "texts": list(TEXTS)},
    )
    return row.finish(lambda _r, m: m is not None and m <= peer + POINTS)


__all__: list[Any] = ["TEXTS", "wer_rows", "word_error_rate"]
