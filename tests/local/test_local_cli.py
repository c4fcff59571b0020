"""``python -m fish_notebook.local`` as a child process, the way the client spawns it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fish_notebook.client import RealtimeClient
from fish_notebook.local.cli import READY_PREFIX, TOKEN_ENV
from fish_notebook.protocol import AudioEvent

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


def test_a_timed_session_first_thing_gets_its_word_times(tmp_path: Path) -> None:
    """The server is ready once its plain voice is (the timed voice and the one-thread
    session come later): a first session asking for word timestamps, and a plain one after
    it, are served all the same (an empty voice cache: nothing was optimized before)."""
    cache = tmp_path / "models"
    process = spawn("--exit-with-parent", env={"FISH_NOTEBOOK_MODEL_CACHE": str(cache)})
    try:
        url = ready_url(process)
        with RealtimeClient(base_url=url) as client:
            events = list(client.stream_websocket("Hello there.", format="pcm", timestamps=True))
            plain = b"".join(client.stream_websocket("Hello there.", format="pcm"))
        assert events and all(isinstance(e, AudioEvent) for e in events)
        assert events[-1].content == "Hello there."
        words = [s.text for e in events if e.alignment for s in e.alignment.segments]
        assert words[-2:] == ["Hello", "there."]
        assert len(plain) > 22050  # over half a second of 16-bit audio
        assert sorted(p.name.split(".")[2] for p in cache.glob("*.onnx")) == ["aligned", "plain"]
    finally:
        process.kill()
        process.communicate(timeout=20)


def test_a_voice_folder_that_is_not_there_is_a_bad_option(tmp_path: Path) -> None:
    """--voices naming no folder exits 2 with a one-line message, before loading anything."""
    result = subprocess.run(
        [*COMMAND, "--voices", str(tmp_path / "missing")], capture_output=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stdout == b""
    assert result.stderr.startswith(b"error: ") and b"voices_dir" in result.stderr
