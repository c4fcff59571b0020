"""Hooks for three rows that wait on parts still being built. None is in the table (nor in
``ALL_ROWS``) until it measures something real; each docstring says what it needs and how it
would be wired in. The two that can run today do (``python -c`` them by hand to try them).
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

from fish_notebook.client import AsyncRealtimeClient, build_request

from .common import Row, apaced_at, now
from .latency import TEN_SENTENCES

READY_TEXT = "Hello there."

# --- socket reuse through the proxy ------------------------------------------------------------


def socket_reuse_row(proxy_url: str, repeats: int) -> Row:
    """Next session on a warm client against a fresh connection, through the 100 ms RTT proxy.

    Ours: one ``AsyncRealtimeClient`` that already finished a session starts the next one;
    peer: a new client (TCP handshake, then the WebSocket upgrade, each one round trip
    through ``DelayProxy``), interleaved. The text is ready at once (``"Hello there."``, a
    str): no LLM think time hides the handshake, as it does in row 2. Clock: from the call to
    the first audio bytes. A client that reuses its connection saves two round trips (~200
    ms of ~450 ms): suggested goal <= 0.7x.

    Needs: the client keeping its WebSocket open between streams (connection reuse, being
    built). Until then both variants connect afresh and the ratio is ~1.0x: nothing to show.
    Wire-in: in ``__main__``, inside the ``DelayProxy`` block, as row ``2f``
    (``run("row 2f (socket reuse)", lambda: [pending.socket_reuse_row(proxy_url, n)])``).
    """
    warm, fresh = asyncio.run(_reuse_samples(proxy_url, repeats))
    row = Row(
        "2f",
        "TTFA, next session on a warm client, +100 ms RTT (ready text)",
        "ms",
        "a fresh client (new connection) on the same text",
        "<= 0.7x",
        ours=warm,
        peer=fresh,
        scale=1000,
    )
    return row.finish(lambda ratio, _m: ratio is not None and ratio <= 0.7)


async def _reuse_samples(url: str, repeats: int) -> tuple[list[float], list[float]]:
    warm_client = AsyncRealtimeClient(base_url=url)
    warm: list[float] = []
    fresh: list[float] = []
    try:
        await _ready_text_ttfa(warm_client)  # its first session opens the connection
        for round_ in range(repeats):
            for kind in ("warm", "fresh") if round_ % 2 == 0 else ("fresh", "warm"):
                if kind == "warm":
                    warm.append(await _ready_text_ttfa(warm_client))
                    continue
                client = AsyncRealtimeClient(base_url=url)
                try:
                    fresh.append(await _ready_text_ttfa(client))
                finally:
                    await client.aclose()
    finally:
        await warm_client.aclose()
    return warm, fresh


async def _ready_text_ttfa(client: AsyncRealtimeClient) -> float:
    began = now()
    first: float | None = None
    async for _chunk in client.stream_websocket(READY_TEXT, format="pcm"):  # to its end
        if first is None:
            first = now()
    if first is None:
        raise RuntimeError("no audio")
    return first - began


# --- word error rate of the streamed audio -----------------------------------------------------

WHISPER_MODEL_ENV = "BENCH_WHISPER_MODEL"


def wer_guard_row(server_url: str, model_dir: str | os.PathLike[str] | None = None) -> Row:
    """A quality guard: the word error rate of what streaming speaks, against raw Piper's.

    Ours: the ten-sentence answer as LLM-paced tokens through ``AsyncRealtimeClient`` (early
    flush, the server cutting the text where it does), the streamed pcm joined. Peer: raw
    Piper speaking the whole text in-process with the same voice. Both are transcribed by
    faster-whisper (greedy, English, CPU, int8) at 16 kHz; WER against the text, words
    lowercased without punctuation. Goal: ours <= peer + 2 points (cutting text into pieces
    must not cost intelligibility).

    Needs: a small Whisper model in CTranslate2 form on disk, shipped by a package or made by
    the project (runs never download weights): pass ``model_dir`` or set
    ``BENCH_WHISPER_MODEL``; and faster-whisper declared in the ``dev`` extra (it is installed
    in the shared venv, not declared). Wire-in: a row ``11`` after row 5, when the model
    folder exists.
    """
    folder = model_dir or os.environ.get(WHISPER_MODEL_ENV)
    if not folder or not Path(folder).is_dir():
        raise RuntimeError(
            f"the WER guard needs a CTranslate2 Whisper model folder ({WHISPER_MODEL_ENV}); "
            "runs never download weights"
        )
    from faster_whisper import WhisperModel

    model = WhisperModel(str(folder), device="cpu", compute_type="int8", local_files_only=True)
    streamed_pcm, streamed_rate = asyncio.run(_streamed_pcm(server_url, TEN_SENTENCES))
    raw_pcm, raw_rate = _raw_piper_pcm(TEN_SENTENCES)
    ours = word_error_rate(TEN_SENTENCES, _transcribe(model, streamed_pcm, streamed_rate))
    peer = word_error_rate(TEN_SENTENCES, _transcribe(model, raw_pcm, raw_rate))
    row = Row(
        "11",
        "word error rate, streamed answer (faster-whisper)",
        "%",
        "raw Piper speaking the whole text, same voice",
        "<= peer + 2",
        ours=[ours * 100],
        peer=[peer * 100],
    )
    return row.finish(lambda _r, median: median is not None and median <= peer * 100 + 2)


async def _streamed_pcm(url: str, text: str) -> tuple[bytes, int]:
    client = AsyncRealtimeClient(base_url=url)
    rate = build_request(format="pcm").effective_sample_rate
    parts: list[bytes] = []
    try:
        tokens = apaced_at(text, now())
        async for chunk in client.stream_websocket(tokens, format="pcm"):  # to its end
            parts.append(chunk)
    finally:
        await client.aclose()
    return b"".join(parts), rate


def _raw_piper_pcm(text: str) -> tuple[bytes, int]:
    from fish_notebook.local.engine import VoiceLibrary

    voice = VoiceLibrary().default()
    return b"".join(chunk.pcm for chunk in voice.synthesize(text)), voice.sample_rate


def _transcribe(model: Any, pcm: bytes, rate: int) -> str:
    import numpy as np
    import soxr

    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    audio = soxr.resample(samples, rate, 16000)
    segments, _info = model.transcribe(audio, language="en", beam_size=1)
    return " ".join(segment.text for segment in segments)


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance / reference words (lowercase, punctuation dropped)."""

    def words(text: str) -> list[str]:
        return re.findall(r"[a-z0-9']+", text.lower())

    ref, hyp = words(reference), words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        current = [i]
        for j, other in enumerate(hyp, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other))
            )
        previous = current
    return previous[-1] / max(1, len(ref))


# --- first sound in the page -------------------------------------------------------------------


def page_first_sound_row() -> Row:
    """First sound in the browser: ``%speak``'s player against the SDK's notebook recipe.

    Ours: a cell ``%speak`` of the paced ten-sentence answer in JupyterLab in Chromium; the
    clock from the page's execute of the cell to the player scheduling its first buffer on
    the AudioContext. Peer: a cell ``play(client.tts.stream_websocket(tokens), notebook=True)``
    (the Fish SDK's recipe; it joins the whole stream before ``display(Audio(...,
    autoplay=True))``), the clock to the ``<audio>`` element's ``playing`` event. Same page,
    same kernel, same server, interleaved; both on the page's ``performance.now()``.
    Suggested goal <= 0.2x, as row 3 (which stops at the kernel side).

    Needs: (1) the browser harness of ``tests/browser`` (``Lab``, ``NotebookPage``) usable
    outside pytest (today it is fixtures in ``tests/browser/conftest.py``), (2) a page-side
    time of the first scheduled start in the player's published stats (``data-stats`` has
    per-chunk latencies, not an absolute first-start time on the page clock), (3) the cell's
    execute time on that clock (JupyterLab's ``executionScheduled`` signal, read by an init
    script), and Chromium's autoplay allowed (``--autoplay-policy=no-user-gesture-required``)
    so the ``<audio>`` element starts on its own. Wire-in: next to row 8.
    """
    raise NotImplementedError(
        "page_first_sound_row needs the browser harness outside pytest and page-clock "
        "timestamps of the first start (see its docstring)"
    )
