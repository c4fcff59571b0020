"""The embedded server as a process: one per user and machine, shared by every kernel.

The first process that needs speech starts it, detached, on a free loopback port, with a random
token; the server writes a state file (URL, token, pid, version) that only this user can read,
in a folder only this user can open. Later kernels (and ``fish-notebook say``) read the file and
reuse the server. The server exits on its own after ``FISH_NOTEBOOK_SERVER_IDLE`` seconds
without a session (default 900), and is started again on demand; one that died is replaced.

Never trusted blindly: a state file of another version, a pid that is gone, or a server on the
recorded port that does not prove it holds the recorded token (a request with the token answered,
one with a wrong token refused) is discarded, and a new server started. Two processes starting
at once take a file lock: one starts the server, the other waits and reuses it.

A child process, not a thread: Piper's synthesis then never competes with the kernel for the
GIL, and a crash in the engine never takes the kernel down. This module starts a command by
name; it imports nothing from ``fish_notebook.local``.

Fallback, the per-process child of the first release (it exits with its parent): when
``FISH_NOTEBOOK_SHARED_SERVER=0``, or when the state folder is not private to this user (not
ours, or open to others) or cannot be created.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib.util
import json
import os
import secrets
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn

from ._version import __version__
from .errors import ConnectError, MissingDependencyError

__all__ = [
    "LocalServerInfo",
    "ensure_local_server",
    "private_folder",
    "shared_state_dir",
    "stop_local_server",
]

READY_PREFIX = "fish-notebook-server listening on "
START_TIMEOUT = 90.0  # loading the voice takes a few seconds on a busy 2-core machine
TOKEN_ENV = "FISH_NOTEBOOK_SERVER_TOKEN"  # the server reads its token from here (not argv)
STATE_DIR_ENV = "FISH_NOTEBOOK_STATE_DIR"
SHARED_ENV = "FISH_NOTEBOOK_SHARED_SERVER"
IDLE_ENV = "FISH_NOTEBOOK_SERVER_IDLE"
DEFAULT_IDLE_EXIT = 900.0
STATE_FILE = "server.json"
_PROBE_TIMEOUT = 3.0
_STATE_POLL = 0.01  # a stat() and a small read: the first speech waits for this, not the CPU


@dataclass(frozen=True)
class LocalServerInfo:
    """Where the embedded server listens and the token it wants (never shown in a repr)."""

    url: str
    token: str | None = field(default=None, repr=False)
    pid: int | None = None
    shared: bool = False


_lock = threading.Lock()
_known: LocalServerInfo | None = None  # the shared server this process last verified
_child: subprocess.Popen[str] | None = None  # the fallback: this process's own child
_child_info: LocalServerInfo | None = None
_log_path: str | None = None


def ensure_local_server(timeout: float = START_TIMEOUT) -> LocalServerInfo:
    """The embedded server to use, started if needed (see the module docstring).

    Raises MissingDependencyError when ``fish-notebook[local]`` is not installed, and
    ConnectError (with the tail of the server's log) when it fails to start in time.
    """
    global _known
    with _lock:
        if _known is not None and _pid_alive(_known.pid):
            return _known
        if importlib.util.find_spec("piper") is None:
            raise MissingDependencyError("piper-tts", "local", "The embedded offline voice")
        folder = shared_state_dir()
        if folder is None:
            return _ensure_child(timeout)
        _known = _shared_server(folder, timeout)
        return _known


def shared_state_dir() -> Path | None:
    """The private folder of the shared server's state, or None to use a per-process child."""
    if os.environ.get(SHARED_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    given = os.environ.get(STATE_DIR_ENV)
    if given:
        folder = Path(given)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        folder = Path(os.environ["XDG_RUNTIME_DIR"]) / "fish-notebook"
    else:
        folder = Path.home() / ".cache" / "fish-notebook"
    return private_folder(folder)


def private_folder(folder: Path) -> Path | None:
    """``folder``, made if missing (mode 0700), when it is this user's alone; else None."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError:
        return None
    private = info.st_uid == os.getuid() and not info.st_mode & (stat.S_IRWXG | stat.S_IRWXO)
    return folder if private else None


# --- the shared server ---------------------------------------------------------------------


def _shared_server(folder: Path, timeout: float) -> LocalServerInfo:
    """Reuse the recorded server if it proves itself; otherwise start one. Under a file lock,
    so two processes starting at once end with one server."""
    deadline = time.monotonic() + timeout
    with _file_lock(folder / "server.lock", deadline):
        found = _verified(folder / STATE_FILE)
        if found is not None:
            return found
        return _start_shared(folder, deadline)


@contextlib.contextmanager
def _file_lock(path: Path, deadline: float) -> Any:
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConnectError(
                        f"another process held {path} for too long while starting the embedded "
                        "server; retry, or set FISH_NOTEBOOK_SHARED_SERVER=0"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(handle)  # closing releases the lock


def read_state(path: Path) -> dict[str, Any] | None:
    """The state file's fields, or None if it is missing, unreadable or not ours."""
    try:
        info = path.stat()
        if info.st_uid != os.getuid() or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            return None
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _verified(path: Path) -> LocalServerInfo | None:
    """The recorded server, if it is alive, of our version, and proves it holds the token."""
    state = read_state(path)
    if state is None:
        return None
    url, token, pid = state.get("url"), state.get("token"), state.get("pid")
    if not (isinstance(url, str) and isinstance(token, str) and isinstance(pid, int)):
        return None
    if state.get("version") != __version__ or not _pid_alive(pid) or not _proves(url, token):
        _terminate_stale(pid, state)
        return None
    return LocalServerInfo(url, token, pid, shared=True)


def _proves(url: str, token: str) -> bool:
    """True when the server at ``url`` answers a request with ``token`` and refuses a wrong one
    (a foreign process on a recycled port, or another server, does not)."""
    probe = url.replace("ws://", "http://", 1).rstrip("/") + "/v1/voices"
    return _status(probe, token) == 200 and _status(probe, token + "-wrong") == 401


def _status(url: str, token: str) -> int | None:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=_PROBE_TIMEOUT) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def _terminate_stale(pid: int, state: dict[str, Any]) -> None:
    """A recorded server that failed the checks but still runs our command: end it, so it
    does not idle on with its port (a foreign pid is left alone)."""
    if state.get("version") is None or not _pid_alive(pid):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"fish_notebook.local" in cmdline:
        with contextlib.suppress(OSError):
            os.kill(pid, 15)


def _start_shared(folder: Path, deadline: float) -> LocalServerInfo:
    state_path = folder / STATE_FILE
    with contextlib.suppress(OSError):
        state_path.unlink()
    token = secrets.token_urlsafe(32)
    log = _new_log()
    idle = os.environ.get(IDLE_ENV) or str(DEFAULT_IDLE_EXIT)
    process = subprocess.Popen(
        [*_server_command(), "--state-file", str(state_path), "--idle-exit", idle],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env={**os.environ, TOKEN_ENV: token, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # detached: it outlives this process, until its idle exit
    )
    log.close()
    while time.monotonic() < deadline:
        state = read_state(state_path)
        if state is not None and state.get("pid") == process.pid:
            return LocalServerInfo(str(state["url"]), token, process.pid, shared=True)
        if process.poll() is not None:
            break
        time.sleep(_STATE_POLL)
    _give_up(process)


# --- the per-process child (fallback) ------------------------------------------------------


def _ensure_child(timeout: float) -> LocalServerInfo:
    global _child, _child_info
    if _child is not None and _child.poll() is None and _child_info is not None:
        return _child_info
    log = _new_log()
    process = subprocess.Popen(
        [*_server_command(), "--exit-with-parent"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    url = _read_ready_line(process, timeout)
    _child, _child_info = process, LocalServerInfo(url, None, process.pid)
    return _child_info


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
    _give_up(process)


# --- shared helpers --------------------------------------------------------------------------


def _server_command() -> list[str]:
    return [sys.executable, "-m", "fish_notebook.local", "--host", "127.0.0.1", "--port", "0"]


def _new_log() -> IO[bytes]:
    global _log_path
    log = tempfile.NamedTemporaryFile(prefix="fish-notebook-server-", suffix=".log", delete=False)
    _log_path = log.name
    return log


def _give_up(process: subprocess.Popen[Any]) -> NoReturn:
    timed_out = process.poll() is None
    process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(3.0)
    why = "was not ready in time" if timed_out else "exited"
    raise ConnectError(f"the embedded local server {why}; its log ends with:\n{_log_tail()}")


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path(f"/proc/{pid}/stat").exists() or _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def _log_tail(lines: int = 15) -> str:
    if not _log_path:
        return "(no log)"
    try:
        with open(_log_path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:]).rstrip() or "(empty log)"
    except OSError:
        return "(log unreadable)"


def stop_local_server() -> None:
    """Stop this process's own child server, if any (the shared server stops on its own when
    idle). Safe to call twice."""
    global _child, _child_info, _known
    with _lock:
        process, _child, _child_info, _known = _child, None, None, None
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
