"""``fish_notebook.play()`` in a real page: the official Fish SDK's own stream, played live.

The kernel runs the recipe people already have (``FishAudio(...).tts.stream_websocket``
against the embedded server, mp3 by default) and hands its output to ``play()``: the kernel
decodes the mp3 as it arrives and the page schedules each chunk as it lands. A second cell
plays a WAV stream whose header (44.1 kHz) contradicts the rate ``play()`` was given, and
the page must play it at the header's rate.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from .conftest import ARTIFACTS, NotebookPage
from .schedule import assert_gapless_unless_late

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

TEXT = (
    "This stream comes from the official Fish SDK. "
    "Its mp3 is decoded in the kernel while it arrives. "
    "And every chunk plays as soon as it lands."
)
SHORT = "A wave file knows its own rate."

DONE = (
    "s => s.status === 'finished' && s.chunk_count > 0"
    " && s.scheduled_seqs.length === s.chunk_count && !s.playing"
)


def test_the_sdk_stream_plays_while_it_arrives_and_whole(
    notebook: NotebookPage, tts_server: Any
) -> None:
    """Every decoded chunk is scheduled on arrival, back to back; the page has all the PCM."""
    notebook.open(
        "play.ipynb",
        [
            "from fishaudio import FishAudio\n"
            "import fish_notebook\n"
            f"client = FishAudio(api_key='x', base_url={tts_server.http_url!r})\n"
            f"mp3 = fish_notebook.play(client.tts.stream_websocket(iter([{TEXT!r}])))",
            f"stream = client.tts.stream_websocket(iter([{SHORT!r}]), format='wav')\n"
            "wav = fish_notebook.play(stream, format='wav', sample_rate=16000)",
        ],
    )
    notebook.run_all()
    mp3 = notebook.wait_stats(DONE, index=0, timeout_ms=60_000)
    wav = notebook.wait_stats(DONE, index=1, timeout_ms=60_000)
    notebook.wait_cells_done()
    assert notebook.cell_errors() == []

    for stats, name in ((mp3, "mp3"), (wav, "wav")):
        state, chunks, rate, samples = notebook.kernel_json(
            f"[{name}.state, len({name}.chunks), {name}.sample_rate, len({name}.audio) // 2]"
        )
        assert state == "finished" and chunks == stats["chunk_count"] > 1
        count = stats["chunk_count"]
        assert stats["seqs_received"] == list(range(count))
        assert stats["scheduled_seqs"] == list(range(count))
        # Each chunk was scheduled by the live path, the moment it arrived (a replay records
        # no arrival latency), exactly where the previous one ends unless it came late.
        assert len(stats["latencies_ms"]) == count
        assert_gapless_unless_late(stats)
        # The page played what the kernel decoded, at the stream's own rate.
        assert (stats["samples"], stats["rate"], stats["ctx_sample_rate"]) == (
            samples,
            rate,
            rate,
        )
    # The WAV header's rate won over the rate play() was told.
    assert wav["rate"] == 44100

    # The first chunk was set to play before the last one arrived: playback while arriving.
    assert mp3["arrivals_ms"][0] + mp3["latencies_ms"][0] < mp3["arrivals_ms"][-1]

    # Sample for sample: the page's recording (its WAV download) is what Python decoded.
    with notebook.page.expect_download(timeout=10_000) as download_info:
        notebook.click("download", index=0)
    data = download_info.value.path().read_bytes()
    assert data[:4] == b"RIFF" and len(data) == 44 + 2 * mp3["samples"]
    digest = notebook.kernel_json("__import__('hashlib').sha256(mp3.audio).hexdigest()")
    assert hashlib.sha256(data[44:]).hexdigest() == digest

    figures = {
        "mp3_chunks": mp3["chunk_count"],
        "mp3_audio_s": mp3["audio_s"],
        "mp3_first_chunk_arrival_to_start_ms": mp3["latencies_ms"][0],
        "mp3_arrival_span_ms": round(mp3["arrivals_ms"][-1] - mp3["arrivals_ms"][0], 1),
        "wav_rate": wav["rate"],
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "player-play-figures.json").write_text(json.dumps(figures, indent=2))
    print("play figures:", json.dumps(figures))
