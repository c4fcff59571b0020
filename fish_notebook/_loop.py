"""One process-wide asyncio loop in a daemon thread, for work that must not live on the kernel's.

The IPython kernel's own loop starves while a cell blocks (KERNEL.md), and sync code cannot wait
on it (deadlock). So streaming runs here instead: the sync client, sessions and the player's audio
all use this loop. Started lazily, stopped at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["background_loop", "in_background_loop", "run_sync"]

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
