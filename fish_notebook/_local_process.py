"""Start the embedded server as a child process, once per process, on a free loopback port.

A child process, not a thread: Piper's synthesis then never competes with the kernel for the
GIL, and a crash in the engine never takes the kernel down. The child is started with
``--exit-with-parent`` (it quits when its stdin closes), and terminated at interpreter exit.

This module starts a command by name; it imports nothing from ``fish_notebook.local``.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import subprocess
import sys
import tempfile
import threading
import time

from .errors import ConnectError, MissingDependencyError

__all__ = ["ensure_local_server", "stop_local_server"]

READY_PREFIX = "fish-notebook-server listening on "
START_TIMEOUT = 90.0  # loading the voice takes a few seconds on a busy 2-core machine

_lock = threading.Lock()
_process: subprocess.Popen[str] | None = None
_url: str | None = None
_log_path: str | None = None


def ensure_local_server(timeout: float = START_TIMEOUT) -> str:
    """Base URL (``ws://127.0.0.1:PORT``) of this process's embedded server, starting it if needed.

    Raises MissingDependencyError when ``fish-notebook[local]`` is not installed, and
    ConnectError (with the tail of the server's log) when it fails to start in time.
    """
    global _process, _url, _log_path
    with _lock:
        if _process is not None and _process.poll() is None and _url is not None:
            return _url
        if importlib.util.find_spec("piper") is None:
            raise MissingDependencyError("piper-tts", "local", "The embedded offline voice")
        log = tempfile.NamedTemporaryFile(
            prefix="fish-notebook-server-", suffix=".log", delete=False
        )
        _log_path = log.name
        cmd = [
            sys.executable,
            "-m",
            "fish_notebook.local",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--exit-with-parent",
        ]
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        url = _read_ready_line(process, timeout)
        _process, _url = process, url
        return url


def _read_ready_line(process: subprocess.Popen[str], timeout: float) -> str:
    found: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(READY_PREFIX):
                found.append(line[len(READY_PREFIX) :].strip())
                return

    reader = threading.Thread(target=read, name="fish-notebook-server-ready", daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while reader.is_alive() and time.monotonic() < deadline and process.poll() is None:
        reader.join(0.05)
    if found:
        return found[0]
    process.kill()
    why = "exited" if process.poll() is not None else f"was not ready within {timeout:.0f} s"
    raise ConnectError(f"the embedded local server {why}; its log ends with:\n{_log_tail()}")


def _log_tail(lines: int = 15) -> str:
    if not _log_path:
        return "(no log)"
    try:
        with open(_log_path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:]).rstrip() or "(empty log)"
    except OSError:
        return "(log unreadable)"


def stop_local_server() -> None:
    """Stop the child server if running. Safe to call twice."""
    global _process, _url
    with _lock:
        process, _process, _url = _process, None, None
    if process is None or process.poll() is not None:
        return
    try:
        if process.stdin:
            process.stdin.close()  # --exit-with-parent: this alone makes it quit
        process.wait(3.0)
    except (OSError, subprocess.TimeoutExpired):
        process.kill()
        process.wait(3.0)


atexit.register(stop_local_server)
