"""``python -m fish_notebook.local`` as a child process, the way the client spawns it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from fish_notebook.local.cli import READY_PREFIX, TOKEN_ENV

COMMAND = [sys.executable, "-m", "fish_notebook.local", "--port", "0"]


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*COMMAND, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


def ready_url(process: subprocess.Popen[bytes]) -> str:
    """Read the ready line (the readline is bounded by the test timeout and a kill)."""
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    assert line.startswith(READY_PREFIX), line
    return line[len(READY_PREFIX) :].strip()


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    process = spawn("--exit-with-parent")
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(10)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def test_prints_one_ready_line_then_serves(child: subprocess.Popen[bytes]) -> None:
    """The child prints exactly one line with its URL, serves /healthz, exits on stdin EOF."""
    url = ready_url(child)
    assert url.startswith("ws://127.0.0.1:")
    port = int(url.rsplit(":", 1)[1])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
        assert response.read() == b"ok\n"
    assert child.stdin is not None and child.stdout is not None
    child.stdin.close()  # the parent "dies"
    assert child.wait(20) == 0
    assert child.stdout.read() == b""  # nothing after the ready line


def test_sigterm_stops_cleanly() -> None:
    """SIGTERM stops the server with exit status 0."""
    process = spawn()
    try:
        ready_url(process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_token_from_the_environment_is_required() -> None:
    """With the token in the environment, a request without it gets 401."""
    process = spawn(env={TOKEN_ENV: "from-env"})
    try:
        port = int(ready_url(process).rsplit(":", 1)[1])
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/voices")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        refused.value.close()
        request.add_header("Authorization", "Bearer from-env")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    finally:
        process.terminate()
        _, err = process.communicate(timeout=20)
    assert b"from-env" not in err  # the token never reaches the logs


def test_non_loopback_host_without_token_refuses_to_start() -> None:
    """--host beyond loopback with no token exits 2 with a one-line reason, binding nothing."""
    result = subprocess.run(
        [*COMMAND, "--host", "0.0.0.0"],
        capture_output=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != TOKEN_ENV},
    )
    assert result.returncode == 2
    assert result.stdout == b""
    assert b"--insecure" in result.stderr and b"--token" in result.stderr
