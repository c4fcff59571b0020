"""Optimized copies of voice models, so that a server start skips onnxruntime's graph optimization.

Creating an onnxruntime session for a Piper voice is mostly graph optimization: measured on
2 busy cores, about 0.7 s of CPU from the voice's file against 0.3 s from a copy that
onnxruntime optimized before; the copy runs as fast (a short sentence 95 ms of CPU, a long
one 520 ms, either way). So the first session of a model saves its optimized graph here, and
later sessions (the next server start, the one-thread session beside the two-thread one) load
that copy with optimization off. A timed voice's copy holds its alignment output too, so it
loads without ``onnx`` or Piper's patch.

The copy is optimized at ``ORT_ENABLE_EXTENDED``: ``ORT_ENABLE_ALL`` adds layout changes for
the CPU it ran on, and a home folder can be shared by machines with other CPUs.

Safe when stale or broken: a copy is keyed by the source file (path, size, modification time),
the variant (plain or with alignment), the CPU architecture and onnxruntime's version, so a
changed voice or an upgraded onnxruntime never loads an old copy (older copies of the same
source are removed when a new one is written). A copy is written to a temporary name and
renamed into place, so a reader never sees half of one; a copy that fails to load anyway is
deleted and rebuilt from the source. Any failure to write only costs the speed-up.

The folder: ``FISH_NOTEBOOK_MODEL_CACHE`` if set (``0``/``off`` turns the cache off), else
``$XDG_CACHE_HOME/fish-notebook/models`` or ``~/.cache/fish-notebook/models``; it must be this
user's alone (as the shared server's state folder), or there is no cache. Not the state
folder: that one may live in ``$XDG_RUNTIME_DIR``, in memory and emptied at logout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._local_process import private_folder

__all__ = ["CACHE_ENV", "cache_folder", "open_session"]

CACHE_ENV = "FISH_NOTEBOOK_MODEL_CACHE"
#: Bump when the way copies are made changes: older copies are then never used.
_FORMAT = 1
#: A temporary file this old is left from a writer that died: removed.
_STALE_TEMP_SECONDS = 3600.0

logger = logging.getLogger(__name__)


def cache_folder() -> Path | None:
    """The private folder of optimized copies, or None when there is no cache."""
    given = os.environ.get(CACHE_ENV, "").strip()
    if given.lower() in ("0", "false", "no", "off"):
        return None
    if given:
        found = private_folder(Path(given))
        if found is None:
            logger.warning("%s=%s is not a folder of this user's alone: no cache", CACHE_ENV, given)
        return found
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    folder = Path(base) / "fish-notebook" / "models"
    # Made first here, "fish-notebook" must be private too: it may be the state folder.
    with contextlib.suppress(OSError):
        folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return private_folder(folder)


def open_session(source: Path, variant: str, graph: Callable[[], str | bytes], options: Any) -> Any:
    """An onnxruntime ``InferenceSession`` of ``source`` on the CPU.

    ``variant`` names what ``graph()`` makes of ``source`` (its path, or a changed model's
    bytes), called only when no valid copy is cached. ``options`` is a fresh
    ``SessionOptions`` with the threads set; this sets its optimization level and where the
    optimized copy goes.
    """
    import onnxruntime

    folder = cache_folder()
    if folder is None:
        return _session(graph(), options)
    copy = folder / _copy_name(source, variant, onnxruntime.__version__)
    if copy.is_file():
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return _session(str(copy), options)
        except Exception as exc:  # any broken copy: rebuilt from the source below
            logger.warning("optimized copy %s did not load (%s): rebuilding it", copy, exc)
            with contextlib.suppress(OSError):
                copy.unlink()
    return _build_copy(copy, graph(), options)


def _build_copy(copy: Path, model: str | bytes, options: Any) -> Any:
    """A session of ``model`` optimized now, its optimized graph saved as ``copy``."""
    import onnxruntime

    temporary = copy.with_name(f".{copy.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(temporary)
    try:
        session = _session(model, options)
    except Exception as exc:  # could not write the copy (disk full, read-only): no cache
        logger.warning("could not save an optimized copy of the voice (%s)", exc)
        with contextlib.suppress(OSError):
            temporary.unlink()
        options.optimized_model_filepath = ""
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        return _session(model, options)
    try:
        os.chmod(temporary, 0o600)
        os.replace(temporary, copy)
    except OSError as exc:
        logger.warning("could not keep the optimized copy %s (%s)", copy, exc)
        with contextlib.suppress(OSError):
            temporary.unlink()
        return session
    _remove_older(copy)
    return session


def _session(model: str | bytes, options: Any) -> Any:
    import onnxruntime

    return onnxruntime.InferenceSession(
        model, sess_options=options, providers=["CPUExecutionProvider"]
    )


def _copy_name(source: Path, variant: str, runtime_version: str) -> str:
    """``STEM.WHERE.VARIANT.KEY.onnx``: WHERE hashes the source's path, KEY everything that
    makes a copy stale."""
    path = str(source.resolve())
    info = source.stat()
    key = [path, info.st_size, info.st_mtime_ns, variant, platform.machine(), runtime_version]
    digest = hashlib.sha256(json.dumps([_FORMAT, *key]).encode()).hexdigest()[:20]
    where = hashlib.sha256(path.encode()).hexdigest()[:8]
    return f"{source.stem}.{where}.{variant}.{digest}.onnx"


def _remove_older(copy: Path) -> None:
    """Remove the other copies of the same source and variant, and dead writers' leftovers."""
    prefix = copy.name[: copy.name.rfind(".", 0, copy.name.rfind("."))]  # without .KEY.onnx
    for other in copy.parent.glob(f"{_glob_escape(prefix)}.*.onnx"):
        if other != copy:
            with contextlib.suppress(OSError):
                other.unlink()
    now = time.time()
    for left in copy.parent.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if now - left.stat().st_mtime > _STALE_TEMP_SECONDS:
                left.unlink()


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)
