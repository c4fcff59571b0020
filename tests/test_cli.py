"""The ``fish-notebook`` command, run as a real process against a real embedded server."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from fish_notebook import __version__, formats
from fish_notebook.audio import pcm_rms
from fish_notebook.cli import main, read_stdin_text
from fish_notebook.local.cli import READY_PREFIX
from fish_notebook.local.recorder import SessionRecord
from fish_notebook.local.server import LocalServer, ThreadedServer
from fish_notebook.protocol import TextEvent

WAIT = 60.0  # bound on every wait for a process or the server (a busy 2-core machine)
# Over min_chunk_length (50 characters): the server speaks it without waiting for more text.
SENTENCE = b"This whole sentence is spoken while the standard input stays open.\n"


def command() -> list[str]:
    """The installed console script, or the module when the script is not on disk."""
    script = Path(sys.executable).with_name("fish-notebook")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fish_notebook.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the variables that pick a server, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("FISH_API_KEY", "FISH_BASE_URL")}
    return {**env, **extra}


def run(*args: str, stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command(), *args],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        env=clean_env(**env),
        timeout=WAIT,
    )


def spawn(*args: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*command(), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(**env),
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test spawned; killed (if still running) and reaped after it."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(WAIT)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


class Lines:
    """The lines a process writes to a pipe, read in a thread so waits can be bounded."""

    def __init__(self, pipe: object) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []

        def pump() -> None:
            for raw in iter(pipe.readline, b""):  # type: ignore[attr-defined]
                self._queue.put(raw.decode(errors="replace").rstrip("\n"))
            self._queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(self, text: str, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"{text!r} never came; saw {self.seen}")
            self.seen.append(line)
            if text in line:
                return line

    def rest(self, timeout: float = WAIT) -> list[str]:
        """Every line until the pipe closes."""
        deadline = time.monotonic() + timeout
        while (line := self._queue.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            self.seen.append(line)
        return self.seen


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as reader:
        return reader.getnframes() / reader.getframerate()


def wav_pcm(path: Path) -> bytes:
    with wave.open(str(path)) as reader:
        return reader.readframes(reader.getnframes())


def session_with(server: ThreadedServer, marker: str, timeout: float = WAIT) -> SessionRecord:
    """The server's session whose text so far contains ``marker`` (waits for it)."""
    assert server.recorder is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in server.recorder.sessions:
            if marker in received_text(record):
                return record
        time.sleep(0.02)
    raise AssertionError(f"no session received {marker!r} within {timeout}s")


def received_text(record: SessionRecord) -> str:
    return "".join(
        f.event.text for f in record.received_named("text") if isinstance(f.event, TextEvent)
    )


def dead_url() -> str:
    """A loopback URL where nothing listens (a port just bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def own_server() -> Iterator[ThreadedServer]:
    """A recording server of this test's own, for tests that take it away mid-stream."""
    with LocalServer(record=True).run_in_thread() as server:
        yield server


# --- basics ------------------------------------------------------------------------------


def test_version() -> None:
    """--version prints the package version and exits 0."""
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"fish-notebook {__version__}"


def test_no_command_is_a_usage_error() -> None:
    """Without a command it prints usage and exits 2."""
    result = run()
    assert result.returncode == 2
    assert "usage: fish-notebook" in result.stderr


def test_read_stdin_text_yields_each_line_as_it_arrives() -> None:
    """A line comes out as soon as it is written, before end of file; split UTF-8 is joined."""
    read_fd, write_fd = os.pipe()
    try:
        pieces = read_stdin_text(read_fd)
        os.write(write_fd, b"one\n")
        assert next(pieces) == "one\n"  # the writer is still open: no waiting for EOF
        os.write(write_fd, b"caf\xc3")
        assert next(pieces) == "caf"
        os.write(write_fd, b"\xa9 two\n")
        assert next(pieces) == "\u00e9 two\n"
        os.close(write_fd)
        write_fd = -1
        assert list(pieces) == []
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


# --- say -----------------------------------------------------------------------------------


def test_say_text_to_wav(local_server: ThreadedServer, tmp_path: Path) -> None:
    """say TEXT writes the speech to a WAV and reports first audio and real-time factor."""
    marker = f"Marker{uuid.uuid4().hex[:6]}"
    out = tmp_path / "hello.wav"
    text = f"Hello there, {marker}. This sentence comes from the command line."
    result = run("say", text, "-o", str(out), "--url", local_server.url, "--speed", "1.2")
    assert result.returncode == 0, result.stderr
    assert "first audio after" in result.stderr
    assert "real-time factor" in result.stderr
    assert not error_lines(result.stderr)
    assert wav_seconds(out) > 1.0
    assert pcm_rms(wav_pcm(out)) > 300  # speech, not silence
    record = session_with(local_server, marker)
    assert received_text(record) == text
    assert record.received_named("start")[0].event.request.format == "pcm"  # type: ignore[union-attr]


def test_say_to_mp3_follows_fish_base_url(local_server: ThreadedServer, tmp_path: Path) -> None:
    """With no --url, FISH_BASE_URL decides; a .mp3 output is a decodable MP3."""
    out = tmp_path / "hello.mp3"
    result = run("say", "An MP3 file, please.", "-o", str(out), FISH_BASE_URL=local_server.http_url)
    assert result.returncode == 0, result.stderr
    assert "via FISH_BASE_URL http://127.0.0.1" in result.stderr
    decoder = formats.get("mp3").decode_stream(22050)
    pcm = decoder.feed(out.read_bytes()) + decoder.finish()
    assert len(pcm) / 2 / 22050 > 0.5
    assert pcm_rms(pcm) > 300


def test_say_streams_stdin_line_by_line(
    local_server: ThreadedServer, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """Each stdin line reaches the server while stdin is still open, as its own text event."""
    out = tmp_path / "stream.wav"
    process = spawn("say", "-o", str(out), "--url", local_server.url)
    processes.append(process)
    assert process.stdin is not None and process.stderr is not None
    stderr = Lines(process.stderr)
    lines = [f"Line {word}{uuid.uuid4().hex[:6]} arrives." for word in ("one", "two", "three")]
    record = None
    for line in lines:
        process.stdin.write(line.encode() + b"\n")
        process.stdin.flush()
        # The next line is written only once the server has this one: really streamed.
        record = session_with(local_server, line)
    process.stdin.close()
    assert process.wait(WAIT) == 0, stderr.rest()
    assert record is not None
    texts = [f.event for f in record.received_named("text") if isinstance(f.event, TextEvent)]
    assert len(texts) >= 3
    assert "".join(t.text for t in texts) == "".join(line + "\n" for line in lines)
    assert wav_seconds(out) > 2.0
    assert not error_lines("\n".join(stderr.rest()))


def test_say_dead_url_fails_in_one_line(tmp_path: Path) -> None:
    """Nothing listening: exit 1, one error line saying what to do, no traceback."""
    out = tmp_path / "none.wav"
    result = run("say", "Hello.", "-o", str(out), "--url", dead_url())
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert "cannot connect" in line and "fish-notebook serve" in line
    assert len(result.stderr.splitlines()) <= 2  # the "speaking ..." line and the error
    assert wav_seconds(out) == 0.0  # the (empty) audio so far is still saved


def test_say_refused_token_fails_in_one_line(tmp_path: Path) -> None:
    """A server that refuses the key: exit 1, one line, and the key is not in it."""
    with LocalServer(token="the-right-token").run_in_thread() as server:
        result = run(
            "say", "Hello.", "-o", str(tmp_path / "x.wav"), "--url", server.url,
            FISH_API_KEY="a-wrong-token",
        )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert "401" in line or "refused" in line.lower()
    assert "a-wrong-token" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "x.ogg"], "must end in .wav or .mp3"),
        (["-o", "x.wav", "--format", "mp3"], "contradicts"),
        (["-o", "no/such/folder/x.wav"], "does not exist"),
        (["-o", "x.wav", "--speed", "9"], "speed"),
        (["-o", "x.wav", "--url", "ftp://example"], "base_url"),
    ],
)
def test_say_bad_options_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    """Bad options are one error line and exit status 2, before anything is spoken."""
    result = subprocess.run(
        [*command(), "say", "Hi.", *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp_path,
        timeout=WAIT,
    )
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    assert message in line
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())


def test_say_keeps_partial_audio_when_the_server_goes_away(
    own_server: ThreadedServer, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """The server stops mid-stream: exit 1, one error line, the audio so far is in the file."""
    out = tmp_path / "partial.wav"
    process = spawn("say", "-o", str(out), "--url", own_server.url)
    processes.append(process)
    assert process.stdin is not None and process.stderr is not None
    stderr = Lines(process.stderr)
    process.stdin.write(SENTENCE)
    process.stdin.flush()
    stderr.wait_for("first audio after")  # the client has audio; stdin stays open
    own_server.close()
    assert process.wait(WAIT) == 1
    lines = stderr.rest()
    assert len([line for line in lines if line.startswith("error:")]) == 1, lines
    assert not any("Traceback" in line for line in lines)
    assert "kept" in lines[-1] and str(out) in lines[-1]
    assert wav_seconds(out) > 0.0  # at least the first chunk


def test_say_ctrl_c_saves_what_came_and_exits_130(
    local_server: ThreadedServer, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """SIGINT mid-stream stops cleanly: exit 130, no traceback, the audio so far saved."""
    out = tmp_path / "interrupted.wav"
    process = spawn("say", "-o", str(out), "--url", local_server.url)
    processes.append(process)
    assert process.stdin is not None and process.stderr is not None
    stderr = Lines(process.stderr)
    process.stdin.write(SENTENCE)
    process.stdin.flush()
    stderr.wait_for("first audio after")
    process.send_signal(signal.SIGINT)
    assert process.wait(WAIT) == 130
    lines = stderr.rest()
    assert any(line.startswith("interrupted:") for line in lines), lines
    assert not any("Traceback" in line for line in lines)
    assert wav_seconds(out) > 0.0  # at least the first chunk


def test_main_in_process_reports_bad_options() -> None:
    """main() returns the exit status instead of exiting: 2 for a bad output name."""
    assert main(["say", "Hi.", "-o", "x.flac"]) == 2


# --- serve -----------------------------------------------------------------------------------


def test_serve_prints_ready_line_and_serves(processes: list[subprocess.Popen[bytes]]) -> None:
    """serve --port 0 prints the ready line with its URL, answers /healthz, stops on SIGTERM."""
    process = spawn("serve", "--port", "0")
    processes.append(process)
    assert process.stdout is not None
    line = Lines(process.stdout).wait_for(READY_PREFIX)
    url = line[len(READY_PREFIX) :].strip()
    assert url.startswith("ws://127.0.0.1:")
    with urllib.request.urlopen("http" + url[2:] + "/healthz", timeout=WAIT) as response:
        assert response.read() == b"ok\n"
    process.terminate()
    assert process.wait(WAIT) == 0


def test_serve_help_is_the_server_help() -> None:
    """serve --help shows the embedded server's own options under the fish-notebook name."""
    result = run("serve", "--help")
    assert result.returncode == 0
    assert "fish-notebook serve" in result.stdout
    assert "--max-sessions" in result.stdout and "--voices" in result.stdout
