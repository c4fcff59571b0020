"""Judging a player's schedule against when its chunks reached the page.

The player schedules each chunk where the one before it ends; when that moment has passed
as the chunk arrives, it counts an underrun and starts it a jitter buffer later. Whether a
chunk came in time is the sender's doing (a kernel thread, a real session), and a loaded
machine can stall it; what the player owes is to be gapless whenever the chunks came in time,
and to count an underrun where one did not. These helpers check exactly that, from the page's
own figures: `arrivals_ms` (wall clock), and `starts`/`gaps` (the audio clock), mapped onto
the wall clock through the run's first sample (`queue.first_start`, `queue.first_start_ms`).
"""

from __future__ import annotations

import json
from typing import Any

#: How far from its due time a chunk must arrive to be judged on time, or late: the page
#: reads its audio clock in steps of its output buffer, maps it onto the wall clock once per
#: run, and schedules a chunk a little after it arrives.
MARGIN_MS = 30.0


def arrivals_against_schedule(stats: dict[str, Any]) -> tuple[set[int], set[int]]:
    """The scheduled chunks (by position in `scheduled_seqs`) that arrived well before, and
    well after, they were due: the moment the chunk before them ended."""
    queue = stats["queue"]
    first, first_ms = queue["first_start"], queue["first_start_ms"]
    arrived = dict(zip(stats["seqs_received"], stats["arrivals_ms"], strict=False))
    on_time, late = set(), set()
    for k in range(1, len(stats["scheduled_seqs"])):
        due_ms = first_ms + (stats["starts"][k] - stats["gaps"][k] - first) * 1000
        at = arrived[stats["scheduled_seqs"][k]]
        if at < due_ms - MARGIN_MS:
            on_time.add(k)
        elif at > due_ms + MARGIN_MS:
            late.add(k)
    return on_time, late


def assert_gapless_unless_late(stats: dict[str, Any]) -> set[int]:
    """Back to back wherever a chunk came in time; an underrun, counted, wherever one came
    late; never an overlap. Returns the chunks that came late (empty on a quiet machine)."""
    gaps = stats["gaps"]
    assert all(gap >= 0 for gap in gaps), "scheduled buffers must never overlap"
    assert stats["queue"]["first_start"] == stats["starts"][0], "one run, from its first chunk"
    underran = {k for k, gap in enumerate(gaps) if gap > 0}
    assert len(underran) == stats["underruns"], "a gap only ever comes with a counted underrun"
    on_time, late = arrivals_against_schedule(stats)
    figures = json.dumps(stats)
    assert not on_time & underran, f"chunks {sorted(on_time & underran)} came in time: {figures}"
    assert late <= underran, f"chunks {sorted(late - underran)} came late, uncounted: {figures}"
    return late
