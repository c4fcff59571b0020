"""The embedded server's defaults are the safe ones, and its logs keep credentials out.

Loopback bind; beyond loopback only with a token (or an explicit, logged ``--insecure``);
bounded frames (compressed ones too) and buffered text; idle sessions closed, busy ones
not; and at DEBUG, where the server logs every request header, no ``Authorization`` value
(the server's token or a key a client sent by mistake) reaches a log line.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_wire import (
    FLUSH,
    LIVE,
    STOP,
    handshake,
    next_event,
    read_all,
    session,
    start,
    text,
    ws_frame,
)
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from fish_notebook._net import REDACTED, RedactingLogger
from fish_notebook.local import LocalServer, ThreadedServer
from fish_notebook.local.chunker import MAX_PIECE
from fish_notebook.local.cli import READY_PREFIX, TOKEN_ENV, build_parser, serve_main

TOKEN = "tok-3f9c2e71-server"
CLIENT_KEY = "sk-live-5d1a08bb-client"  # a cloud key sent to the local server by mistake


# --- what you get without asking ----------------------------------------------------------------


def test_defaults_are_the_safe_ones() -> None:
    """Loopback, no more than 8 sessions, 8 MiB frames, 200,000 characters, 60 s idle."""
    server = LocalServer()
    assert (server.host, server.max_sessions) == ("127.0.0.1", 8)
    assert (server.max_frame_size, server.max_text, server.idle_timeout) == (8 << 20, 200_000, 60)
    args = build_parser().parse_args([])
    assert (args.host, args.token, args.insecure, args.idle_timeout) == (
        "127.0.0.1",
        None,
        False,
        60.0,
    )


def listening_addresses(port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Addresses with a socket listening on ``port``, from /proc/net/tcp and tcp6."""
    found: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
    for table in ("tcp", "tcp6"):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.append(ipaddress.ip_address(raw))
    return found


def outward_address() -> str | None:
    """This machine's address on its default route, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routing only
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if ipaddress.ip_address(address).is_loopback else address


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net/tcp")
def test_default_bind_is_loopback_only() -> None:
    """A default server listens on loopback only; this machine's outward address refuses."""
    with LocalServer().run_in_thread() as server:
        addresses = listening_addresses(server.port)
        assert addresses and all(a.is_loopback for a in addresses), addresses
        outward = outward_address()
        if outward is not None:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((outward, server.port), timeout=5).close()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.1", "example.org"])
def test_cli_refuses_a_non_loopback_host_without_a_token(
    host: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit status 2, one line naming the host and both ways out, nothing on stdout."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert serve_main(["--host", host, "--port", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and f"refusing to serve on {host} " in err
    assert "--token" in err and "--insecure" in err


def test_cli_insecure_serves_beyond_loopback_with_a_warning() -> None:
    """--host 0.0.0.0 --insecure starts, serves, and says on stderr that anyone can use it."""
    child = subprocess.Popen(
        [sys.executable, "-m", "fish_notebook.local", "--host", "0.0.0.0", "--port", "0",
         "--insecure", "--exit-with-parent"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != TOKEN_ENV},
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdin is not None
        line = child.stdout.readline().decode()
        assert line.startswith(READY_PREFIX + "ws://0.0.0.0:"), line
        port = int(line.rsplit(":", 1)[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            assert answer.read() == b"ok\n"
        child.stdin.close()
        assert child.wait(30) == 0
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(30)
        assert child.stdout is not None and child.stderr is not None
        err = child.stderr.read()  # the child has exited: bounded
        child.stdout.close()
        child.stderr.close()
    assert b"serving on 0.0.0.0 with no token: anyone who can reach it can use it" in err


async def test_library_warns_beyond_loopback_only_without_a_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """LocalServer(allow_insecure=True) on 0.0.0.0 logs a warning; with a token it does not."""
    with caplog.at_level(logging.WARNING, logger="fish_notebook.local"):
        async with LocalServer("0.0.0.0", allow_insecure=True):
            pass
        warned = [r.getMessage() for r in caplog.records if "no token" in r.getMessage()]
        caplog.clear()
        async with LocalServer("0.0.0.0", token=TOKEN), LocalServer():
            pass
        quiet = [r.getMessage() for r in caplog.records if "no token" in r.getMessage()]
    assert warned == ["serving on 0.0.0.0 with no token: anyone who can reach it can use it"]
    assert quiet == []


# --- limits at their defaults -------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_server() -> Iterator[ThreadedServer]:
    with LocalServer(record=True).run_in_thread() as server:
        yield server


async def test_a_frame_over_8_mib_closes_with_1009(default_server: ThreadedServer) -> None:
    """One byte over the default max_frame_size: close code 1009, nothing spoken."""
    out = await session(default_server.url, [start(), b"\0" * ((8 << 20) + 1)])
    assert (out.close_code, out.events) == (1009, [])


async def test_a_compressed_frame_inflating_past_the_limit_closes_with_1009(
    default_server: ThreadedServer,
) -> None:
    """A 9 MiB frame that deflates to a few KiB (a zip bomb) is refused by its inflated size."""
    async with connect(default_server.url + LIVE, compression="deflate") as ws:
        assert ws.protocol.extensions, "permessage-deflate was not negotiated"
        await ws.send(start())
        await ws.send(b"\0" * (9 << 20))
        out = await read_all(ws, timeout=60)
    assert (out.close_code, out.events) == (1009, [])


async def test_text_over_200000_characters_ends_the_session(
    default_server: ThreadedServer,
) -> None:
    """200,001 characters waiting: finish reason=error naming the limit, nothing spoken."""
    out = await session(default_server.url, [start(), text("a " * 100_000 + "b"), STOP])
    assert out.finish is not None and out.finish["reason"] == "error"
    assert "more than 200000 characters" in out.finish["message"]
    assert out.audio == b""


async def test_a_giant_word_goes_to_the_voice_in_bounded_pieces(
    default_server: ThreadedServer,
) -> None:
    """20,000 characters without a space reach the voice at most MAX_PIECE at a time (in
    one go Piper would need minutes, uncancellable), and leaving stops the rest."""
    assert default_server.recorder is not None
    default_server.recorder.clear()
    word = "abcdefghij" * 2_000
    async with connect(default_server.url + LIVE) as ws:
        for item in (start(format="pcm"), text(word), FLUSH):
            await ws.send(item)
        assert (await next_event(ws, timeout=60))["event"] == "audio"
    record = await default_server.recorder.await_for(timeout=30)
    assert record.spoken and all(len(piece) <= MAX_PIECE for piece in record.spoken)
    assert word.startswith("".join(record.spoken))
    assert len(record.spoken) < len(word) // MAX_PIECE  # the client left: the rest was dropped


# --- idle sessions --------------------------------------------------------------------------------

IDLE = 0.5
BUSY_TEXT = " ".join(f"Sentence {n} is here to keep the voice busy for a while." for n in range(6))


@pytest.fixture(scope="module")
def impatient_server() -> Iterator[ThreadedServer]:
    with LocalServer(record=True, idle_timeout=IDLE).run_in_thread() as server:
        yield server


@pytest.mark.parametrize("frames", [[], [start()]], ids=["before start", "after start"])
async def test_a_silent_client_is_closed(
    impatient_server: ThreadedServer, frames: list[bytes]
) -> None:
    """Nothing sent for idle_timeout: finish reason=error saying so, then a normal close."""
    out = await session(impatient_server.url, frames, timeout=30)
    assert out.finish is not None and out.finish["reason"] == "error"
    assert "idle" in out.finish["message"] and out.close_code == 1000


async def test_a_busy_session_is_not_idle(impatient_server: ThreadedServer) -> None:
    """A client silent while the voice speaks for far longer than idle_timeout gets all of it;
    only then is it closed as idle."""
    assert impatient_server.recorder is not None
    impatient_server.recorder.clear()
    async with connect(impatient_server.url + LIVE) as ws:
        for item in (start(format="pcm"), text(BUSY_TEXT), FLUSH):
            await ws.send(item)
        first = await next_event(ws)
        out = await read_all(ws, timeout=120)
    record = await impatient_server.recorder.await_for(timeout=30)
    assert first["event"] == "audio"
    assert " ".join(record.spoken).split() == BUSY_TEXT.split()  # every word was spoken
    seconds = (len(out.audio) + len(first["audio"])) / 2 / 44100
    assert seconds > 10 * IDLE
    assert out.finish is not None and "idle" in out.finish["message"]


STUCK_TEXT = " ".join(
    f"Sentence {n} piles up audio for a client that reads none." for n in range(8)
)


async def test_a_client_that_stops_reading_is_dropped(
    impatient_server: ThreadedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that reads nothing while its audio piles up (socket buffers full) loses the
    connection after idle_timeout, and its session slot is freed: it cannot hold it forever."""
    assert impatient_server.recorder is not None
    impatient_server.recorder.clear()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
        sock.settimeout(10)
        sock.connect(("127.0.0.1", impatient_server.port))
        sock.sendall(handshake("127.0.0.1", impatient_server.port))
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(1)  # exactly the handshake answer, no audio
        request = start(format="pcm", sample_rate=192000)  # 384 KB of audio a second
        sock.sendall(b"".join(ws_frame(2, f) for f in (request, text(STUCK_TEXT), STOP)))
        record = await impatient_server.recorder.await_for(timeout=120)
    assert answer.startswith(b"HTTP/1.1 101")
    assert record.close_code == 1006 and record.finish is None  # dropped, not finished
    assert record.audio and "read nothing for 0.5s while audio waited" in caplog.text
    assert impatient_server.server.active_sessions == 0


# --- no credentials in the logs -------------------------------------------------------------------


def server_side(records: list[logging.LogRecord]) -> list[str]:
    """Every message logged, except the test's own raw client (it logs what it sends)."""
    return [r.getMessage() for r in records if r.name != "websockets.client"]


async def test_debug_logs_never_show_the_token_or_a_client_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At DEBUG, with the right token, a wrong key and no key: no credential in any line."""
    with caplog.at_level(logging.DEBUG):
        async with LocalServer(token=TOKEN) as server:
            right = {"Authorization": f"Bearer {TOKEN}"}
            out = await session(server.url, [start(format="pcm"), text("Hi."), STOP], headers=right)
            for wrong in ({"Authorization": f"Bearer {CLIENT_KEY}"}, {"Authorization": TOKEN}):
                with pytest.raises(InvalidStatus):
                    await session(server.url, [start()], headers=wrong)
            request = urllib.request.Request(server.http_url + "/v1/voices", headers=right)
            await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=10).close())
    logged = server_side(caplog.records)
    assert out.finish == {"event": "finish", "reason": "stop"}
    assert f"< Authorization: {REDACTED}" in logged  # the header lines were logged, redacted
    assert not [line for line in logged if TOKEN in line or CLIENT_KEY in line]


def test_debug_logs_of_the_cli_never_show_the_token() -> None:
    """The CLI at --log-level DEBUG, token from the environment: stderr has no credential."""
    env = {**os.environ, TOKEN_ENV: TOKEN}
    child = subprocess.Popen(
        [sys.executable, "-m", "fish_notebook.local", "--port", "0", "--log-level", "DEBUG"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert child.stdout is not None
        url = child.stdout.readline().decode()[len(READY_PREFIX) :].strip()

        async def visit() -> None:
            right = {"Authorization": f"Bearer {TOKEN}"}
            await session(url, [start(format="pcm"), text("Hi."), STOP], headers=right)
            with pytest.raises(InvalidStatus):
                await session(url, [start()], headers={"Authorization": f"Bearer {CLIENT_KEY}"})

        asyncio.run(visit())
    finally:
        child.terminate()
        _, err = child.communicate(timeout=30)
    assert f"< Authorization: {REDACTED}".encode() in err
    assert TOKEN.encode() not in err and CLIENT_KEY.encode() not in err


def test_redacting_logger_hides_credentials_everywhere(caplog: pytest.LogCaptureFixture) -> None:
    """Header values, Bearer/Basic credentials and the secret are replaced; the rest stays."""
    log = RedactingLogger(logging.getLogger("test.redacting"), TOKEN)
    with caplog.at_level(logging.DEBUG, logger="test.redacting"):
        log.debug("< %s: %s", "Cookie", "session=abc")
        log.info("header was Bearer %s and basic %s", CLIENT_KEY, "dXNlcjpwYXNz")
        log.warning(f"the token {TOKEN} leaked into a message")
        log.debug("< %s: %s", "Host", "127.0.0.1")
    assert [r.getMessage() for r in caplog.records] == [
        f"< Cookie: {REDACTED}",
        f"header was Bearer {REDACTED} and basic {REDACTED}",
        f"the token {REDACTED} leaked into a message",
        "< Host: 127.0.0.1",
    ]
    assert TOKEN not in repr(log)
