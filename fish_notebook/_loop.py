"""One process-wide asyncio loop in a daemon thread, for work that must not live on the kernel's.

The IPython kernel's own loop starves while a cell blocks (KERNEL.md), and sync code cannot wait
on it (deadlock). So streaming runs here instead: the sync client, sessions and the player's audio
all use this loop. Started lazily, stopped at interpreter exit. :func:`run_sync` waits on it
for one coroutine; :func:`iterate_in_background` hands a sync caller the items of an async
iterator that runs on it.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["background_loop", "in_background_loop", "iterate_in_background", "run_sync"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The shared loop, started on first use. Safe to call from any thread."""
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed() or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=run, name="fish-notebook-io", daemon=True)
            thread.start()
            ready.wait(5.0)
            _loop, _thread = loop, thread
        return _loop


def in_background_loop() -> bool:
    """True when called from the background loop's own thread."""
    return _thread is not None and threading.current_thread() is _thread


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the background loop and block until it is done.

    Never call this from the background loop's own thread (it would wait on itself); that is
    refused with RuntimeError. A KeyboardInterrupt while waiting cancels the coroutine, waits
    briefly for it to unwind, then propagates.
    """
    if in_background_loop():
        coro.close()
        raise RuntimeError("run_sync() called from the fish-notebook IO thread itself")
    future = asyncio.run_coroutine_threadsafe(coro, background_loop())
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise
    except KeyboardInterrupt:
        future.cancel()
        try:
            future.result(5.0)
        except BaseException:
            pass
        raise


class _Raised:
    """Carries an exception from the background loop to the iterating thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()
_WINDOW = 64  # items the loop may run ahead of the consumer
_CREDIT_BATCH = 16  # items consumed before the loop is woken to produce more


def iterate_in_background(agen: AsyncIterator[T]) -> Iterator[T]:
    """Drive an async iterator on the background loop and yield its items in this thread.

    One task on the loop pushes items into a thread-safe queue, at most ``_WINDOW`` ahead;
    the consumer gives credit back in batches. That costs one thread wake-up per batch
    rather than a task and a round trip per item. Closing this generator (or Ctrl-C while
    it waits) cancels the task, which closes ``agen``. Exceptions from ``agen`` are raised
    here, as they are.
    """
    loop = background_loop()
    items: queue.SimpleQueue[Any] = queue.SimpleQueue()
    window: list[asyncio.Semaphore] = []  # created on the loop, by _pump
    finished = threading.Event()  # set once agen is closed, whatever the ending

    def give_credit() -> None:
        for _ in range(_CREDIT_BATCH):
            window[0].release()

    future = asyncio.run_coroutine_threadsafe(_pump(agen, items, window, finished), loop)
    future.add_done_callback(lambda _: finished.set())  # also when cancelled before it ran
    consumed = 0
    try:
        while True:
            try:
                item = items.get(timeout=0.5)  # a bounded wait keeps Ctrl-C responsive
            except queue.Empty:
                if future.done() and items.empty():
                    future.result()  # surfaces a cancellation or a bug in _pump
                    return
                continue
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.error
            consumed += 1
            if consumed % _CREDIT_BATCH == 0:
                loop.call_soon_threadsafe(give_credit)
            yield item
    finally:
        if not finished.is_set():
            future.cancel()  # cancels the task; its finally closes agen
            finished.wait(10.0)


async def _pump(
    agen: AsyncIterator[Any],
    items: queue.SimpleQueue[Any],
    window: list[asyncio.Semaphore],
    finished: threading.Event,
) -> None:
    """Move ``agen``'s items into ``items``, then ``_DONE`` or the exception, within the window."""
    credit = asyncio.Semaphore(_WINDOW)
    window.append(credit)
    try:
        async for item in agen:
            await credit.acquire()
            items.put(item)
    except Exception as exc:
        items.put(_Raised(exc))
    else:
        items.put(_DONE)
    finally:
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
        finished.set()


def _shutdown() -> None:
    loop, thread = _loop, _thread
    if loop is None or loop.is_closed():
        return

    async def cancel_all() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=2.0) if tasks else None

    try:
        asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(3.0)
    except Exception:
        pass
    loop.call_soon_threadsafe(loop.stop)
    if thread is not None:
        thread.join(2.0)


atexit.register(_shutdown)
