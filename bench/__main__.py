"""``python -m bench``: run every benchmark row, print the table, save it as JSON.

``--quick`` runs fewer repeats and skips the sync-face rows, the what-if rows and the
profiles (a few minutes); the full run takes ten minutes or more. ``--rows 1,4`` runs a
subset (``1``-``9``, ``mp3``). Results go to ``bench/results/<timestamp>.json`` and
``latest.json`` (plus ``latest.md``, the table as Markdown, and the profiles as
``<timestamp>.profile-rowN.txt``); quick runs write ``<timestamp>-quick.json``,
``latest-quick.json`` and ``latest-quick.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .common import (
    RESULTS_DIR,
    Row,
    child_server,
    code_state,
    machine,
    markdown_table,
    table_lines,
)


@dataclass(frozen=True)
class Plan:
    ttfa_repeats: int
    sync_faces: bool
    what_if: bool
    notebook_repeats: int
    frame_repeats: int
    frames: int
    paced_frames: int
    flush_repeats: int
    capacity_fractions: tuple[float, ...]  # row 6: levels as fractions of the bound
    sentences: int
    lone_rounds: int
    mp3_seconds: float
    what_if_repeats: int
    profiles: bool
    kernel_rounds: int


FULL = Plan(
    ttfa_repeats=5,
    sync_faces=True,
    what_if=True,
    notebook_repeats=3,
    frame_repeats=3,
    frames=5000,
    paced_frames=300,
    flush_repeats=9,
    capacity_fractions=(0.8, 1.0, 1.2),
    sentences=4,
    lone_rounds=3,
    mp3_seconds=30.0,
    what_if_repeats=5,
    profiles=True,
    kernel_rounds=3,
)
QUICK = Plan(
    ttfa_repeats=2,
    sync_faces=False,
    what_if=False,
    notebook_repeats=1,
    frame_repeats=1,
    frames=2000,
    paced_frames=150,
    flush_repeats=3,
    capacity_fractions=(0.8, 1.0),
    sentences=2,
    lone_rounds=2,
    mp3_seconds=5.0,
    what_if_repeats=0,
    profiles=False,
    kernel_rounds=1,
)

SERVER_SESSIONS = 32  # room on the shared child server (row 6 never asks for more)

ALL_ROWS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "mp3")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no profiles")
    parser.add_argument("--rows", default=",".join(ALL_ROWS), help="comma list, e.g. 1,4")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiles")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    wanted = set(args.rows.split(","))
    started = time.perf_counter()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    rows: list[Row] = []
    timings: dict[str, float] = {}

    def run(label: str, fn: Callable[[], list[Row]]) -> None:
        began = time.perf_counter()
        print(f"[bench] {label} ...", file=sys.stderr, flush=True)
        try:
            rows.extend(fn())
        except Exception as exc:  # one broken row must not hide the others
            traceback.print_exc()
            rows.append(Row(label.split()[1], label, "", "", "", note=f"FAILED: {exc!r}"))
        timings[label] = time.perf_counter() - began
        print(f"[bench] {label}: {timings[label]:.1f} s", file=sys.stderr, flush=True)

    info = machine()
    code = code_state()
    payloads: list[bytes] = []
    from . import capacity, frames, latency, memory
    from .proxy import DelayProxy

    needs_server = wanted & {"1", "2", "3", "4", "6", "7"}
    with child_server(SERVER_SESSIONS) if needs_server else _nothing() as server:
        if "1" in wanted:
            run(
                "row 1 (TTFA, direct)",
                lambda: latency.ttfa_rows(
                    "1",
                    "direct",
                    server.url,
                    plan.ttfa_repeats,
                    sync=plan.sync_faces,
                    goal=0.6,
                    sync_goal=1.0,
                ),
            )
        port = int(server.url.rsplit(":", 1)[1]) if server else 0
        with DelayProxy(port, 0.05) if "2" in wanted else _nothing() as proxy:
            proxy_url = f"ws://127.0.0.1:{proxy.port}" if proxy else None
            if proxy_url is not None:
                run(
                    "row 2 (TTFA, 100 ms RTT proxy)",
                    lambda: latency.ttfa_rows(
                        "2",
                        "+100 ms RTT",
                        proxy_url,
                        plan.ttfa_repeats,
                        sync=plan.sync_faces,
                        goal=0.6,
                        sync_goal=0.8,
                        warm="1" not in wanted,  # row 1 warmed both clients already
                    ),
                )
            if "3" in wanted:
                run(
                    "row 3 (first sound in notebook)",
                    lambda: [latency.notebook_row(server.url, plan.notebook_repeats)],
                )
            if plan.what_if and "1" in wanted:
                run(
                    "row 1v (what-if: a change measured before it is made)",
                    lambda: what_if_rows(server.url, plan),
                )
        if wanted & {"4", "7"}:
            payloads[:] = asyncio.run(frames.record_payloads(server.url))
            with frames.replay_server(payloads) as replay:
                if "4" in wanted:
                    run(
                        "row 4 (client cost per frame)",
                        lambda: frames.frame_rows(
                            replay, plan.frame_repeats, plan.frames, plan.paced_frames
                        ),
                    )
                if "7" in wanted:
                    run(
                        "row 7 (memory)",
                        lambda: memory.memory_rows(replay, server.url, server.pid, args.quick),
                    )
        if "6" in wanted:
            run(
                "row 6 (concurrent sessions against the machine's bound)",
                lambda: [
                    capacity.capacity_row(
                        server.url,
                        plan.sentences,
                        plan.capacity_fractions,
                        plan.lone_rounds,
                        max_sessions=SERVER_SESSIONS,
                    )
                ],
            )
    if "5" in wanted:
        run("row 5 (server flush vs raw Piper)", lambda: [capacity.flush_row(plan.flush_repeats)])
    if "8" in wanted:
        run("row 8 (browser)", browser_rows)
    if "9" in wanted:
        from . import kernels

        run(
            "row 9 (real kernels: first cell, memory)",
            lambda: kernels.kernel_rows(plan.kernel_rounds),
        )
    if "mp3" in wanted:
        run("row mp3 (decode)", lambda: mp3_rows(plan.mp3_seconds, 1 if args.quick else 3))

    rows.sort(key=lambda row: _order(row.id))
    lines = table_lines(rows)
    for row in rows:
        lines.extend(row.extra.get("detail", []))
    print()
    print("\n".join(lines))
    elapsed = time.perf_counter() - started
    print(f"\n{len(rows)} rows in {elapsed:.0f} s ({'quick' if args.quick else 'full'} run)")

    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "timestamp": stamp,
        "quick": args.quick,
        "machine": info,
        "code": code,
        "elapsed_s": elapsed,
        "row_seconds": timings,
        "load_average_at_end": os.getloadavg(),
        "rows": [row.to_json() for row in rows],
    }
    text = json.dumps(result, indent=1, default=float) + "\n"
    # Quick runs never replace the full run's latest.* (the README's Performance table).
    suffix = "-quick" if args.quick else ""
    (args.out / f"{stamp}{suffix}.json").write_text(text)
    (args.out / f"latest{suffix}.json").write_text(text)
    (args.out / f"latest{suffix}.md").write_text(
        f"Benchmark {stamp} ({'quick' if args.quick else 'full'}), {info['cpu']}, "
        f"{info['cores']} cores, Python {info['python']}, code at {code['commit']}"
        + (" with uncommitted package changes" if code["uncommitted"] else "")
        + "\n\n"
        + markdown_table(rows)
    )
    print(f"saved {args.out / f'{stamp}{suffix}.json'}")

    if plan.profiles and not args.no_profile:
        write_profiles(args.out, stamp, wanted, payloads)
    return 0


def write_profiles(out: Path, stamp: str, wanted: set[str], payloads: list[bytes]) -> None:
    """Profiles of rows 1, 4 and 5 beside the results (each section in a fresh process)."""
    import msgpack

    from .profiles import profile_row

    with tempfile.TemporaryDirectory() as folder:
        frames_file = Path(folder) / "frames.msgpack"
        frames_file.write_bytes(msgpack.packb(payloads))
        for row_id in ("1", "4", "5"):
            if row_id not in wanted or (row_id == "4" and not payloads):
                continue
            target = out / f"{stamp}.profile-row{row_id}.txt"
            print(f"[bench] profiling row {row_id} ...", file=sys.stderr, flush=True)
            try:
                profile_row(row_id, target, frames_file)
                shutil.copyfile(target, out / f"latest.profile-row{row_id}.txt")
                print(f"saved {target}")
            except Exception as exc:
                print(f"profile of row {row_id} failed: {exc!r}", file=sys.stderr)


def _order(row_id: str) -> tuple[int, str]:
    digits = "".join(ch for ch in row_id if ch.isdigit())
    if not digits or not row_id[0].isdigit():
        return (99, row_id)
    return (int(digits), row_id.replace("w", "z"))


class _nothing:
    def __enter__(self) -> Any:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


def what_if_rows(url: str, plan: Plan) -> list[Row]:
    """Row 1a again with a change not made, to measure it before making it.

    ``min0``: the request asks for ``min_chunk_length=0`` (what a server that does not hold
    back a short first sentence would do; the local voice speaks sentence by sentence anyway).
    The earlier what-if of a client that flushes its first complete sentence is now what the
    client does by default (``early_flush``), so rows 1a, 2a and 3 measure it.
    """
    from . import latency
    from .common import interleave

    direct = interleave(
        {
            "min0": lambda: latency.ours_async(url, min_chunk_length=0).ttfa,
            "sdk": lambda: latency.sdk_async("http" + url[2:]).ttfa,
        },
        plan.what_if_repeats,
    )
    return [
        Row(
            "1v",
            "what-if 1a: request min_chunk_length=0 (server-side preview)",
            "ms",
            "Fish SDK AsyncFishAudio (as row 1a)",
            "info",
            ours=direct["min0"],
            peer=direct["sdk"],
            scale=1000,
        ).finish(None)
    ]


BROWSER_METRICS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser_metrics.json"


def browser_rows() -> list[Row]:
    """Row 8: what the browser suite measured, if it left its figures."""
    from .common import not_measured

    title = "browser: first chunk reaching the page -> its scheduled start"
    if not BROWSER_METRICS.is_file():
        return [
            not_measured(
                "8", title, "<= 50 ms; 0 underruns", "", "no test-artifacts/browser_metrics.json"
            )
        ]
    data = json.loads(BROWSER_METRICS.read_text())
    latencies = [float(x) for x in data.get("arrival_to_start_ms", [])]
    start = Row("8a", title, "ms", "", "<= 50 ms", ours=latencies).finish(
        lambda _r, median: median is not None and median <= 50
    )
    underruns = [float(data.get("underruns_1x", 0)), float(data.get("underruns_2x", 0))]
    runs = Row(
        "8b",
        "browser: underruns at 1x and 2x arrival speed (max of the two)",
        "underruns",
        "",
        "0",
        ours=[max(underruns)],
        note=f"underruns 1x={underruns[0]:.0f}, 2x={underruns[1]:.0f} (from the browser suite)",
    ).finish(lambda _r, median: median == 0)
    return [start, runs]


def mp3_rows(seconds: float, repeats: int) -> list[Row]:
    """Kernel-side MP3 decoding, from bench/mp3_decode.py (another helper's bench), as a row.

    The Fish SDK's default stream (44.1 kHz, 128 kbit/s) fed in 4 KiB chunks to
    ``Mp3StreamDecoder``, against miniaudio decoding the whole file at once.
    """
    from .common import not_measured

    title = "kernel mp3 decode speed, 44.1k/128k in 4 KiB chunks"
    try:
        from fish_notebook.mp3 import Mp3StreamDecoder, encode_mp3

        from . import mp3_decode as m
    except ImportError as exc:
        return [not_measured("mp3", title, "info", "", f"cannot import it: {exc}")]
    rate = 44100
    pcm = m.test_signal(seconds, rate)
    mp3 = encode_mp3(pcm, rate, bitrate=128)
    ends = m.mp3_frame_ends(mp3)
    audio_s = sum(n for _, n in ends) / rate

    def available(fed: int) -> float:
        return sum(n for end, n in ends if end <= fed) / rate

    runs = [
        m.run_decoder(
            "mp3",
            "4 KiB",
            lambda: Mp3StreamDecoder(rate),
            m.chunked(mp3, 4096),
            audio_s,
            rate,
            available,
        )
        for _ in range(repeats)
    ]
    whole = [m.whole_file_speed(mp3, rate, audio_s) for _ in range(repeats)]
    feed_ms = [x for run in runs for x in run.feed_ms]
    row = Row(
        "mp3",
        title,
        "x realtime",
        "miniaudio.decode of the whole file (not streaming)",
        "info",
        ours=[run.speed for run in runs],
        peer=whole,
        note=f"median feed() {statistics.median(feed_ms):.3f} ms per 4 KiB chunk "
        f"(256 ms of audio); bench/mp3_decode.py has the full table",
    ).finish(None)
    return [row]


if __name__ == "__main__":
    raise SystemExit(main())
