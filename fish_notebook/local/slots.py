"""Core slots for synthesis: at most one voice-model run per core, the most urgent first.

Piper spends nearly all its time in one onnxruntime run per sentence. When several
sessions synthesize at once on a small machine, free-for-all threads only share the cores:
every sentence finishes late, and a listener who is about to run out of audio waits as long
as one who has seconds of it queued. :class:`SynthesisSlots` lets at most ``size`` runs go
at once and hands a freed slot to the waiter with the earliest *deadline*. A streaming
session's deadline is the moment the audio it already sent runs out at the listener (a
session with nothing sent yet: now), so this is earliest-deadline-first scheduling: every
session stays ahead of its playback for as long as the machine can keep up at all.

Guarantees:

- At most ``size`` callers hold a slot at once.
- A free slot goes to the waiting caller with the smallest deadline; equal deadlines are
  served in arrival order.
- A waiter whose ``cancelled()`` turns true gives up within :data:`POLL_SECONDS`, raising
  :class:`SynthesisCancelled`, and takes no slot.
- :meth:`SynthesisSlots.slot` tells the caller whether it runs *alone* (no other holder and
  nobody waiting when it got the slot): such a run may use more than one thread.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import threading
from collections.abc import Callable, Iterator

from .._checks import check_number

__all__ = ["POLL_SECONDS", "SynthesisCancelled", "SynthesisSlots", "usable_cores"]

#: How often a waiter checks its ``cancelled`` callback.
POLL_SECONDS = 0.1


class SynthesisCancelled(Exception):
    """A caller's ``cancelled()`` said yes while it waited for a slot."""


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class SynthesisSlots:
    """``size`` slots handed out earliest deadline first. Thread-safe.

    Use as ``with slots.slot(deadline, cancelled) as alone: run()``; deadlines are
    :func:`time.monotonic` seconds.
    """

    def __init__(self, size: int) -> None:
        check_number("size", size, 1, integer=True)
        self.size = size
        self._changed = threading.Condition()
        self._running = 0
        self._waiting: list[tuple[float, int]] = []  # a heap of (deadline, arrival)
        self._arrivals = itertools.count()

    def __repr__(self) -> str:
        return f"SynthesisSlots(size={self.size}, running={self._running}, waiting={self.waiting})"

    @property
    def running(self) -> int:
        """Slots held now."""
        return self._running

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot now."""
        return len(self._waiting)

    @contextlib.contextmanager
    def slot(self, deadline: float, cancelled: Callable[[], bool] | None = None) -> Iterator[bool]:
        """Hold a slot for the ``with`` block; yields True when the caller runs alone.

        Raises SynthesisCancelled (holding nothing) if ``cancelled()`` says yes meanwhile.
        """
        alone = self._acquire(deadline, cancelled)
        try:
            yield alone
        finally:
            self._release()

    def _acquire(self, deadline: float, cancelled: Callable[[], bool] | None) -> bool:
        entry = (deadline, next(self._arrivals))
        with self._changed:
            heapq.heappush(self._waiting, entry)
            try:
                while self._running >= self.size or self._waiting[0] != entry:
                    if cancelled is not None and cancelled():
                        raise SynthesisCancelled
                    self._changed.wait(POLL_SECONDS)
            except BaseException:
                self._waiting.remove(entry)
                heapq.heapify(self._waiting)
                self._changed.notify_all()  # the next in line may be free to go now
                raise
            heapq.heappop(self._waiting)
            self._running += 1
            if self._waiting and self._running < self.size:
                self._changed.notify_all()  # another slot is free: the new head may take it
            return self._running == 1 and not self._waiting

    def _release(self) -> None:
        with self._changed:
            self._running -= 1
            self._changed.notify_all()
