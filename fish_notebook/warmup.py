"""Warm up at ``%load_ext fish_notebook``: whatever the first speech will need, in the background.

The first ``%speak`` of a kernel used to wait for the embedded server to start (a process,
its imports, the voice) and for the player's modules to load: 2.4 to 2.8 s against 0.22 s for
the next sessions. ``%load_ext`` is the moment the user says "I will speak", so it starts, in a
daemon thread:

- the embedded server (found or started: :mod:`fish_notebook._local_process`), when that is
  where speech will go (nothing is started for the cloud or an explicit URL);
- the import of the player and its widget libraries.

``import fish_notebook`` alone does none of this: a library import stays light. Nothing here
raises: a failure is logged at DEBUG, and the first speech reports it properly.
``FISH_NOTEBOOK_WARMUP=0`` turns it off.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading

from . import endpoints
from .speaking import defaults

__all__ = ["WARMUP_ENV", "start_warmup"]

WARMUP_ENV = "FISH_NOTEBOOK_WARMUP"
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
    except Exception as exc:  # the first real speech says what is wrong, with advice
        logger.debug("warm-up did not complete: %s", exc)
