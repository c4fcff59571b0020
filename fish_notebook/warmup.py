"""Warm up at ``%load_ext fish_notebook``: whatever the first speech will need, in the background.

The first ``%speak`` of a kernel used to wait for the embedded server to start (a process,
its imports, the voice) and for the player's modules to load: 2.4 to 2.8 s against 0.22 s for
the next sessions. ``%load_ext`` is the moment the user says "I will speak", so it starts, in a
daemon thread, before even the magics are imported:

- the embedded server (found or started: :mod:`fish_notebook._local_process`), when that is
  where speech will go (nothing is started for the cloud or an explicit URL); first, since
  it takes longest;
- the import of the player and its widget libraries;
- one WebSocket to where speech will go, kept warm in the socket pool
  (:mod:`fish_notebook.pool`) so that the first ``speak()`` skips the handshakes: opened
  once the embedded server is ready, with the headers ``speak()`` will send (it idles out
  after the pool's idle time if no speech comes).

``import fish_notebook`` alone does none of this: a library import stays light. Nothing here
raises: a failure is logged at DEBUG, and the first speech reports it properly.
``FISH_NOTEBOOK_WARMUP=0`` turns it off. One warm-up runs at a time.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading

from . import _loop, endpoints

__all__ = ["UNTOUCHED_DEFAULTS", "WARMUP_ENV", "start_warmup"]

WARMUP_ENV = "FISH_NOTEBOOK_WARMUP"
#: Longest wait for the warm socket's handshake.
SOCKET_TIMEOUT = 10.0
#: The url and backend of the kernel's speaking defaults before anything changed them.
UNTOUCHED_DEFAULTS: tuple[str | None, str] = (None, "auto")
logger = logging.getLogger("fish_notebook.warmup")

_lock = threading.Lock()
_running: threading.Thread | None = None


def start_warmup() -> threading.Thread | None:
    """Start warming up in a daemon thread and return it (None when turned off); while one
    runs, return that one."""
    global _running
    if os.environ.get(WARMUP_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    with _lock:
        if _running is None or not _running.is_alive():
            _running = threading.Thread(target=_warm, name="fish-notebook-warmup", daemon=True)
            _running.start()
        return _running


def _warm() -> None:
    try:
        url, backend = _defaults()
        if endpoints.plan(url, None, backend) is None:
            endpoints.resolve(url, None, backend)  # starts or finds the server
        importlib.import_module("fish_notebook.widget")
        _warm_socket()  # last: an unreachable server costs its connect timeout, nothing else
    except Exception as exc:  # the first real speech says what is wrong, with advice
        logger.debug("warm-up did not complete: %s", exc)


def _defaults() -> tuple[str | None, str]:
    """The kernel's url and backend defaults, without importing :mod:`.speaking` (0.15 s that
    would delay the server's start): until it is imported, nobody has changed them."""
    speaking = sys.modules.get("fish_notebook.speaking")
    defaults = getattr(speaking, "defaults", None)  # None too while it is being imported
    if defaults is None:
        return UNTOUCHED_DEFAULTS
    return defaults.url, defaults.backend


def _warm_socket() -> None:
    """One socket in the pool of the loop that ``speak()``'s sessions run on."""
    from .speaking import make_client

    try:
        _loop.run_sync(make_client().warm(), SOCKET_TIMEOUT)
    except Exception as exc:  # the import of the player still goes ahead
        logger.debug("no warm socket: %s", exc)
