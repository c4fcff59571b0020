"""Warm up at ``%load_ext fish_notebook``: whatever the first speech will need, in the background.

The first ``%speak`` of a kernel used to wait for the embedded server to start (a process,
its imports, the voice) and for the player's modules to load: 2.4 to 2.8 s against 0.22 s for
the next sessions. ``%load_ext`` is the moment the user says "I will speak", so it starts, in a
daemon thread:

- the embedded server (found or started: :mod:`fish_notebook._local_process`), when that is
  where speech will go (nothing is started for the cloud or an explicit URL);
- the import of the player and its widget libraries;
- one WebSocket to where speech will go, kept warm in the socket pool
  (:mod:`fish_notebook.pool`) so that the first ``speak()`` skips the handshakes: opened
  once the embedded server is ready, with the headers ``speak()`` will send (it idles out
  after the pool's idle time if no speech comes).

``import fish_notebook`` alone does none of this: a library import stays light. Nothing here
raises: a failure is logged at DEBUG, and the first speech reports it properly.
``FISH_NOTEBOOK_WARMUP=0`` turns it off.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading

from . import _loop, endpoints
from .speaking import defaults, make_client

__all__ = ["WARMUP_ENV", "start_warmup"]

WARMUP_ENV = "FISH_NOTEBOOK_WARMUP"
#: Longest wait for the warm socket's handshake.
SOCKET_TIMEOUT = 10.0
logger = logging.getLogger("fish_notebook.warmup")


def start_warmup() -> threading.Thread | None:
    """Start warming up in a daemon thread and return it (None when turned off)."""
    if os.environ.get(WARMUP_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    thread = threading.Thread(target=_warm, name="fish-notebook-warmup", daemon=True)
    thread.start()
    return thread


def _warm() -> None:
    try:
        if endpoints.plan(defaults.url, None, defaults.backend) is None:
            endpoints.resolve(defaults.url, None, defaults.backend)  # starts or finds the server
        importlib.import_module("fish_notebook.widget")
        _warm_socket()  # last: an unreachable server costs its connect timeout, nothing else
    except Exception as exc:  # the first real speech says what is wrong, with advice
        logger.debug("warm-up did not complete: %s", exc)


def _warm_socket() -> None:
    """One socket in the pool of the loop that ``speak()``'s sessions run on."""
    try:
        _loop.run_sync(make_client().warm(), SOCKET_TIMEOUT)
    except Exception as exc:  # the import of the player still goes ahead
        logger.debug("no warm socket: %s", exc)
