"""One embedded server per user and machine, shared by every process (fish_notebook._local_process).

Each test has its own private state folder, so the servers here are the test's own; every one
is ended when the test ends.
"""

from __future__ import annotations

import http.server
import json
import os
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fish_notebook import RealtimeClient, _local_process
from fish_notebook._local_process import (
    STATE_FILE,
    LocalServerInfo,
    ensure_local_server,
    read_state,
)

from .helpers import wait_until

ENSURE = (
    "from fish_notebook._local_process import ensure_local_server as e; "
    "i = e(); print(i.url, i.pid, flush=True)"
)


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private state folder for this test; its servers are ended afterwards."""
    folder = tmp_path / "state"
    folder.mkdir(mode=0o700)
    monkeypatch.setenv("FISH_NOTEBOOK_STATE_DIR", str(folder))
    monkeypatch.setenv("FISH_NOTEBOOK_SERVER_IDLE", "120")
    monkeypatch.delenv("FISH_NOTEBOOK_SHARED_SERVER", raising=False)
    monkeypatch.setattr(_local_process, "_known", None)
    yield folder
    state = read_state(folder / STATE_FILE)
    if state is not None:
        _end(state["pid"])


def _end(pid: int) -> None:
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    wait_until(lambda: not _local_process._pid_alive(pid), "the server to exit on SIGTERM", 15)


def _ensure_in_subprocess(count: int) -> list[tuple[str, int]]:
    processes = [
        subprocess.Popen([sys.executable, "-c", ENSURE], stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    found = []
    for process in processes:
        out, _ = process.communicate(timeout=180)
        assert process.returncode == 0
        url, pid = out.split()
        found.append((url, int(pid)))
    return found


def test_two_processes_racing_end_with_one_server(state_dir: Path) -> None:
    """Three processes asking at once get the same server; the state file names it."""
    found = _ensure_in_subprocess(3)
    assert len(set(found)) == 1
    state = read_state(state_dir / STATE_FILE)
    assert state is not None and (state["url"], state["pid"]) == found[0]
    assert (state_dir / STATE_FILE).stat().st_mode & 0o077 == 0  # this user only
    assert _local_process._pid_alive(found[0][1])  # it outlives the processes that asked


def test_speech_goes_through_the_shared_server_with_its_token(state_dir: Path) -> None:
    """A client with no configuration speaks through it, sending the server's token."""
    info = ensure_local_server()
    assert info.shared and info.token and info.token not in repr(info)
    with RealtimeClient() as client:
        audio = b"".join(client.stream_websocket("Shared.", format="pcm"))
    assert len(audio) > 10_000
    assert _local_process._status(info.url.replace("ws", "http") + "/v1/voices", "") == 401


def test_a_dead_server_is_replaced(state_dir: Path) -> None:
    """A server that died is started anew on the next request."""
    first = ensure_local_server()
    _end(first.pid or 0)
    second = ensure_local_server()
    assert second.pid != first.pid and _local_process._pid_alive(second.pid)


def test_a_stale_token_or_version_is_not_trusted(state_dir: Path) -> None:
    """A state file whose token or version does not match is refused and a new server starts;
    the old server (our command) is ended rather than left to idle."""
    first = ensure_local_server()
    path = state_dir / STATE_FILE
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "token": "stale"}))
    _local_process._known = None
    second = ensure_local_server()
    assert second.pid != first.pid
    wait_until(lambda: not _local_process._pid_alive(first.pid), "the stale server to end", 15)
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "version": "0.0.0-other"}))
    _local_process._known = None
    third = ensure_local_server()
    assert third.pid not in (first.pid, second.pid)


class _Anything(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"voices": []}')

    def log_message(self, *args: object) -> None:
        pass


def test_a_foreign_process_on_the_recorded_port_is_refused(state_dir: Path) -> None:
    """A process that answers everything on the recorded port (a recycled port) is not taken
    for the server, and is left alone."""
    with socketserver.TCPServer(("127.0.0.1", 0), _Anything) as foreign:
        threading.Thread(target=foreign.serve_forever, daemon=True).start()
        port = foreign.server_address[1]
        path = state_dir / STATE_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(
                {"url": f"ws://127.0.0.1:{port}", "token": "t", "pid": os.getpid(),
                 "version": _local_process.__version__},
                out,
            )  # fmt: skip
        info = ensure_local_server()
        assert info.url != f"ws://127.0.0.1:{port}"
        foreign.shutdown()


def test_the_server_exits_when_idle(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no session for the idle period, the server exits and removes its state file."""
    monkeypatch.setenv("FISH_NOTEBOOK_SERVER_IDLE", "1")
    info = ensure_local_server()
    assert isinstance(info, LocalServerInfo)
    wait_until(lambda: not _local_process._pid_alive(info.pid), "the idle server to exit", 60)
    assert not (state_dir / STATE_FILE).exists()


def test_no_shared_server_when_asked_or_folder_not_private(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FISH_NOTEBOOK_SHARED_SERVER=0 or a folder open to others: a per-process child."""
    monkeypatch.setenv("FISH_NOTEBOOK_SHARED_SERVER", "0")
    assert _local_process.shared_state_dir() is None
    monkeypatch.delenv("FISH_NOTEBOOK_SHARED_SERVER")
    state_dir.chmod(0o755)
    assert _local_process.shared_state_dir() is None
    state_dir.chmod(0o700)
    assert _local_process.shared_state_dir() == state_dir


def test_load_ext_warms_the_shared_server_and_a_second_kernel_reuses_it(
    state_dir: Path,
) -> None:
    """%load_ext starts the embedded server in the background before any speech; a second
    kernel finds the same one; neither kernel needs FISH_BASE_URL."""
    import jupyter_client

    env = {k: v for k, v in os.environ.items() if k not in ("FISH_BASE_URL", "FISH_API_KEY")}
    kernels = []
    try:
        for _ in range(2):
            manager = jupyter_client.KernelManager(kernel_name="python3")
            manager.start_kernel(env=env)
            client = manager.client()
            client.start_channels()
            client.wait_for_ready(timeout=60)
            kernels.append((manager, client))
            reply = client.execute_interactive("%load_ext fish_notebook", timeout=60)
            assert reply["content"]["status"] == "ok"
            state = wait_until(
                lambda: read_state(state_dir / STATE_FILE), "the warm-up to start the server", 90
            )
        pid = state["pid"]
        _, second = kernels[1]
        lines: list[str] = []

        def collect(message: dict[str, object]) -> None:
            content = message.get("content")
            if message.get("msg_type") == "stream" and isinstance(content, dict):
                lines.append(str(content.get("text")))

        code = "from fish_notebook._local_process import ensure_local_server as e; print(e().pid)"
        second.execute_interactive(code, timeout=60, output_hook=collect)
        assert int("".join(lines).strip()) == pid
    finally:
        for manager, client in kernels:
            client.stop_channels()
            manager.shutdown_kernel(now=True)
