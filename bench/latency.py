"""Rows 1-3: time to first audio for an LLM-paced token stream, ours against the Fish SDK.

Every run starts its clock when the caller starts iterating (both clients connect inside
that window) and feeds a token stream anchored to that same moment: an LLM writing its first
token after 300 ms, then 30 tokens/s, no explicit flush (the server speaks each sentence once
it is complete). Rows 1 and 2 cut that answer four ways (``common.TOKENIZERS``: leading-space
LLM tokens, trailing-space words, one token per sentence, 3-5 characters with no regard for
words), each piece released when the LLM has written its last visible character. Both
clients talk to the same embedded server (a child process, as our client starts it), ask for
the same format (``pcm``) and run to the end of the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, cast

from fishaudio import AsyncFishAudio, FishAudio
from fishaudio.utils import play as sdk_play

from fish_notebook.client import AsyncRealtimeClient, RealtimeClient
from fish_notebook.session import Session
from fish_notebook.sources import llm_tokens

from .common import TOKENIZERS, Row, Tokenizer, apaced_at, interleave, now, paced_at

#: A short LLM answer: the first sentence alone is under the server's 50-character minimum,
#: so the first piece spoken is the first two sentences, as with a real model's "Sure. ...".
ANSWER = "Sure. Streaming speech starts talking while the model is still writing its answer. Here."

TEN_SENTENCES = (
    "Here is the short version. "
    "A realtime voice reads the answer while the model is still writing it. "
    "Each sentence goes to the speech server as soon as it is complete. "
    "The server turns it into audio in a fraction of its spoken length. "
    "The audio comes back in small chunks over the same connection. "
    "The notebook player schedules each chunk right after the previous one. "
    "So the listener hears the first sentence almost at once. "
    "Meanwhile the rest of the answer keeps arriving in the background. "
    "Nothing waits for the whole answer to be finished. "
    "That is the whole trick."
)

SDK_KEY = "bench-not-a-key"  # the local server has no token; the SDK insists on some key


@dataclass
class Run:
    ttfa: float
    total: float
    audio_bytes: int


# --- one run per client face -----------------------------------------------------------------


def ours_async(
    url: str, text: str = ANSWER, tokenizer: Tokenizer = llm_tokens, **options: Any
) -> Run:
    """``options`` (request fields) are for the what-if runs."""

    async def run() -> Run:
        client = AsyncRealtimeClient(base_url=url)
        first, size = None, 0
        t0 = now()
        tokens = apaced_at(text, t0, tokenizer=tokenizer)
        chunks = client.stream_websocket(tokens, format="pcm", **options)
        stream = cast(AsyncGenerator[bytes, None], chunks)  # an async generator: closable
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                if first is None:
                    first = now()
                size += len(chunk)
        assert first is not None, "no audio"
        return Run(first - t0, now() - t0, size)

    return asyncio.run(run())


def sdk_async(http_url: str, text: str = ANSWER, tokenizer: Tokenizer = llm_tokens) -> Run:
    async def run() -> Run:
        client = AsyncFishAudio(api_key=SDK_KEY, base_url=http_url)
        first, size = None, 0
        t0 = now()
        stream = client.tts.stream_websocket(apaced_at(text, t0, tokenizer=tokenizer), format="pcm")
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                if first is None:
                    first = now()
                size += len(chunk)
        assert first is not None, "no audio"
        result = Run(first - t0, now() - t0, size)
        await client.close()
        return result

    return asyncio.run(run())


def ours_sync(url: str, text: str = ANSWER, tokenizer: Tokenizer = llm_tokens) -> Run:
    client = RealtimeClient(base_url=url)
    first, size = None, 0
    t0 = now()
    for chunk in client.stream_websocket(paced_at(text, t0, tokenizer=tokenizer), format="pcm"):
        if first is None:
            first = now()
        size += len(chunk)
    assert first is not None, "no audio"
    return Run(first - t0, now() - t0, size)


def sdk_sync(http_url: str, text: str = ANSWER, tokenizer: Tokenizer = llm_tokens) -> Run:
    client = FishAudio(api_key=SDK_KEY, base_url=http_url)
    first, size = None, 0
    t0 = now()
    tokens = paced_at(text, t0, tokenizer=tokenizer)
    for chunk in client.tts.stream_websocket(tokens, format="pcm"):
        if first is None:
            first = now()
        size += len(chunk)
    assert first is not None, "no audio"
    client.close()
    return Run(first - t0, now() - t0, size)


# --- rows 1 and 2 ----------------------------------------------------------------------------

#: Row letter of each tokenization style (async faces); ``b`` is the sync face of ``lead``.
STYLE_LETTERS = {"lead": "a", "trail": "c", "sentence": "d", "chars": "e"}
STYLE_TITLES = {
    "lead": "leading-space tokens",
    "trail": "trailing-space tokens",
    "sentence": "one token per sentence",
    "chars": "3-5 chars per token",
}


def ttfa_rows(
    row_id: str,
    where: str,
    url: str,
    repeats: int,
    *,
    sync: bool,
    goal: float,
    sync_goal: float,
    warm: bool = True,
    styles: tuple[str, ...] = tuple(STYLE_LETTERS),
) -> list[Row]:
    """TTFA, ours vs the SDK, for every tokenization style (async faces) and the sync faces
    (``lead`` tokens) when ``sync``; every variant interleaved with every other."""
    http_url = "http" + url[2:]
    runs: dict[str, list[Run]] = {}

    def timed(name: str, fn: Any, target: str, style: str) -> Any:
        def call() -> float:
            run = fn(target, ANSWER, TOKENIZERS[style])
            runs.setdefault(name, []).append(run)
            return float(run.ttfa)

        return call

    # (row letter, face, style, our variant, the SDK's variant, goal)
    faces: list[tuple[str, str, str, str, str, float]] = []
    variants = {}
    for style in styles:
        variants[f"ours_{style}"] = timed(f"ours_{style}", ours_async, url, style)
        variants[f"sdk_{style}"] = timed(f"sdk_{style}", sdk_async, http_url, style)
        faces.append((STYLE_LETTERS[style], "async", style, f"ours_{style}", f"sdk_{style}", goal))
    if sync:
        variants["ours_sync"] = timed("ours_sync", ours_sync, url, "lead")
        variants["sdk_sync"] = timed("sdk_sync", sdk_sync, http_url, "lead")
        faces.append(("b", "sync", "lead", "ours_sync", "sdk_sync", sync_goal))
    # One unmeasured run each: imports, first connections, the server's caches.
    for fn in variants.values() if warm else ():
        fn()
    for name in runs:
        runs[name].clear()
    samples = interleave(variants, repeats)
    rows = []
    for letter, face, style, ours_name, sdk_name, row_goal in faces:
        sdk_face = "AsyncFishAudio" if face == "async" else "FishAudio"
        row = Row(
            f"{row_id}{letter}",
            f"TTFA, {STYLE_TITLES[style]}, {where} ({face})",
            "ms",
            f"Fish SDK {sdk_face}.tts.stream_websocket, same tokens",
            f"<= {row_goal:.1f}x",
            ours=samples[ours_name],
            peer=samples[sdk_name],
            scale=1000,
        )
        row.extra = {
            "style": style,
            "ours_total_s": [r.total for r in runs[ours_name]],
            "peer_total_s": [r.total for r in runs[sdk_name]],
            "ours_audio_bytes": [r.audio_bytes for r in runs[ours_name]],
            "peer_audio_bytes": [r.audio_bytes for r in runs[sdk_name]],
        }
        rows.append(row.finish(functools.partial(_at_most, row_goal)))
    return rows


def _at_most(goal: float, ratio: float | None, _median: float | None) -> bool:
    return ratio is not None and ratio <= goal


# --- row 3: first sound in the notebook ------------------------------------------------------


class _FirstAudio:
    """A session listener that notes when the first audio reaches it (as the player would)."""

    def __init__(self) -> None:
        self.at: float | None = None
        self.arrived = threading.Event()

    def on_audio(self, pcm: bytes, seq: int) -> None:
        if self.at is None:
            self.at = now()
            self.arrived.set()

    def on_text(self, text: str) -> None: ...
    def on_flush(self) -> None: ...
    def on_state(self, state: str, error: str | None) -> None:
        if state in ("failed", "stopped", "finished"):
            self.arrived.set()

    def on_metrics(self, metrics: dict[str, Any]) -> None: ...


def session_first_sound(url: str, **options: Any) -> float:
    """Ours: a Session on the paced ten-sentence answer; its first chunk reaching a listener."""
    listener = _FirstAudio()
    t0 = now()
    tokens = paced_at(TEN_SENTENCES, t0)
    session = Session(tokens, base_url=url, start=False, **options)
    session.add_listener(listener)
    session.start()
    listener.arrived.wait(60)
    session.stop()
    session.wait(30)
    if listener.at is None:
        raise RuntimeError(f"the session produced no audio: {session.error!r}")
    return listener.at - t0


def sdk_notebook_play(http_url: str) -> float:
    """The SDK's recipe: ``play(client.tts.stream_websocket(...), notebook=True)``."""
    client = FishAudio(api_key=SDK_KEY, base_url=http_url)
    t0 = now()
    with contextlib.redirect_stdout(io.StringIO()):  # display() outside a kernel prints
        sdk_play(client.tts.stream_websocket(paced_at(TEN_SENTENCES, t0)), notebook=True)
    elapsed = now() - t0
    client.close()
    return elapsed


def notebook_row(url: str, repeats: int) -> Row:
    http_url = "http" + url[2:]
    session_first_sound(url)  # warm the background loop and the connection path
    samples = interleave(
        {"ours": lambda: session_first_sound(url), "sdk": lambda: sdk_notebook_play(http_url)},
        repeats,
    )
    row = Row(
        "3",
        "first sound in notebook, 10-sentence answer (kernel side)",
        "ms",
        "Fish SDK play(stream_websocket(...), notebook=True) (mp3, waits for the whole stream)",
        "<= 0.2x",
        ours=samples["ours"],
        peer=samples["sdk"],
        scale=1000,
        note="kernel side only: the chunk reaching the player widget vs the SDK's play() "
        "returning; the page side is row 8",
    )
    return row.finish(lambda ratio, _m: ratio is not None and ratio <= 0.2)
