"""Core slots for synthesis: bounded holders, earliest deadline first, cancellable waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from fish_notebook.errors import ValidationError
from fish_notebook.local.slots import SynthesisCancelled, SynthesisSlots, usable_cores

BOUND = 10.0  # seconds any wait in these tests may take


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + BOUND
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def hold(slots: SynthesisSlots, release: threading.Event, alone: list[bool]) -> threading.Thread:
    """A thread that takes a slot (deadline 0) and keeps it until ``release`` is set."""

    def run() -> None:
        with slots.slot(0.0) as was_alone:
            alone.append(was_alone)
            release.wait(BOUND)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_size_must_be_a_positive_int() -> None:
    """size 0, a float or a bool is refused."""
    for size in (0, 1.5, True):
        with pytest.raises(ValidationError):
            SynthesisSlots(size)  # type: ignore[arg-type]


def test_usable_cores_is_positive() -> None:
    """The process may run on at least one core."""
    assert usable_cores() >= 1


def test_free_slot_goes_to_the_earliest_deadline() -> None:
    """Waiters queued with deadlines 5, 1, 3 get the slot in the order 1, 3, 5."""
    slots = SynthesisSlots(1)
    release, alone = threading.Event(), list[bool]()
    holder = hold(slots, release, alone)
    wait_until(lambda: slots.running == 1)
    order: list[float] = []

    def wait_for_slot(deadline: float) -> None:
        with slots.slot(deadline):
            order.append(deadline)

    waiters: list[threading.Thread] = []
    for deadline in (5.0, 1.0, 3.0):
        thread = threading.Thread(target=wait_for_slot, args=(deadline,), daemon=True)
        thread.start()
        waiters.append(thread)
        queued = len(waiters)
        wait_until(lambda: slots.waiting == queued)  # noqa: B023 (called at once)
    release.set()
    for thread in (holder, *waiters):
        thread.join(BOUND)
    assert order == [1.0, 3.0, 5.0]
    assert slots.running == 0 and slots.waiting == 0


def test_never_more_holders_than_slots() -> None:
    """Eight threads through two slots: at most two inside at once, all get through."""
    slots = SynthesisSlots(2)
    inside, most, passed = 0, 0, 0
    lock = threading.Lock()

    def work(index: int) -> None:
        nonlocal inside, most, passed
        with slots.slot(float(index)):
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.01)
            with lock:
                inside -= 1
                passed += 1

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND)
    assert passed == 8
    assert most == 2


def test_alone_only_without_company() -> None:
    """The first holder runs alone; one that joins it, or has someone waiting, does not."""
    slots = SynthesisSlots(2)
    release, alone = threading.Event(), list[bool]()
    first = hold(slots, release, alone)
    wait_until(lambda: slots.running == 1)
    second = hold(slots, release, alone)
    wait_until(lambda: slots.running == 2)
    release.set()
    first.join(BOUND)
    second.join(BOUND)
    assert alone == [True, False]
    with slots.slot(0.0) as later:
        assert later is True  # everyone left: alone again


def test_cancelled_waiter_gives_up_and_holds_nothing() -> None:
    """A waiter whose cancelled() turns true raises SynthesisCancelled; the next one goes."""
    slots = SynthesisSlots(1)
    release, alone = threading.Event(), list[bool]()
    holder = hold(slots, release, alone)
    wait_until(lambda: slots.running == 1)
    stop = threading.Event()
    outcome: list[object] = []

    def cancellable() -> None:
        try:
            with slots.slot(0.5, stop.is_set):
                outcome.append("ran")
        except SynthesisCancelled as exc:
            outcome.append(exc)

    thread = threading.Thread(target=cancellable, daemon=True)
    thread.start()
    wait_until(lambda: slots.waiting == 1)
    stop.set()
    thread.join(BOUND)
    assert len(outcome) == 1 and isinstance(outcome[0], SynthesisCancelled)
    assert slots.waiting == 0 and slots.running == 1
    release.set()
    holder.join(BOUND)
    assert slots.running == 0


def test_a_slot_is_freed_when_the_block_raises() -> None:
    """An exception inside the block still gives the slot back."""
    slots = SynthesisSlots(1)
    with pytest.raises(RuntimeError), slots.slot(0.0):
        raise RuntimeError("boom")
    assert slots.running == 0
