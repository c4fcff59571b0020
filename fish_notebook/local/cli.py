"""``python -m fish_notebook.local``: run the embedded server from a shell or as a child.

When the server is ready (voice loaded, socket bound) it prints exactly one line to stdout::

    fish-notebook-server listening on ws://127.0.0.1:PORT

and flushes it; a parent that spawned it with ``--port 0`` reads the port from there.
Everything else (logs, warnings, errors) goes to stderr. ``--exit-with-parent`` makes it
exit when its stdin reaches end of file, so a child never outlives the process that
spawned it with a pipe as stdin. SIGINT and SIGTERM stop it cleanly.

Exit status: 0 after a clean stop, 2 for bad options (a one-line message on stderr),
1 if the server could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from .._net import is_loopback
from .._version import __version__
from ..errors import FishNotebookError, ValidationError
from .server import LocalServer

__all__ = ["READY_PREFIX", "TOKEN_ENV", "build_parser", "serve_main"]

#: What the ready line starts with; the URL follows.
READY_PREFIX = "fish-notebook-server listening on "
#: Environment variable read for the token when ``--token`` is not given (keeps it out of ps).
TOKEN_ENV = "FISH_NOTEBOOK_SERVER_TOKEN"

logger = logging.getLogger("fish_notebook.local")


def build_parser(prog: str = "python -m fish_notebook.local") -> argparse.ArgumentParser:
    """The options of the server command (shared with ``fish-notebook serve``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve Fish Audio's realtime TTS protocol (/v1/tts/live) with a local "
        "Piper voice.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    parser.add_argument(
        "--token",
        default=None,
        help=f"require 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV} if set)",
    )
    parser.add_argument(
        "--max-sessions", type=int, default=8, help="sessions served at once (default 8)"
    )
    parser.add_argument(
        "--voices", metavar="DIR", default=None, help="folder of extra Piper voices (*.onnx)"
    )
    parser.add_argument(
        "--idle-timeout", type=float, default=60.0, help="close sessions idle this long (s)"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without --token (anyone reaching it can use it)",
    )
    parser.add_argument(
        "--exit-with-parent", action="store_true", help="exit when stdin reaches end of file"
    )
    parser.add_argument(
        "--idle-exit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit after this long with no session (default: never)",
    )
    parser.add_argument(
        "--state-file",
        default=None,
        metavar="PATH",
        help="once ready, write url, token, pid and version there (mode 0600), for other "
        "processes to find and reuse this server; removed again at exit",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level on stderr (default INFO)",
    )
    return parser


def serve_main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run the server until stopped; return the exit status. ``argv`` excludes the program."""
    parser = build_parser(prog) if prog else build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s"
    )
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and token is None and not args.insecure:
        print(
            f"error: refusing to serve on {args.host} without a token: anyone who can "
            "reach it could use it. Pass --token (or set "
            f"{TOKEN_ENV}), or --insecure if you mean it.",
            file=sys.stderr,
        )
        return 2
    try:
        server = LocalServer(
            args.host,
            args.port,
            token=token,
            max_sessions=args.max_sessions,
            voices_dir=args.voices,
            idle_timeout=args.idle_timeout,
            allow_insecure=args.insecure,
        )
    except ValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(server, args, token))
    except (OSError, FishNotebookError) as exc:
        print(f"error: the server could not start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


async def _serve(server: LocalServer, args: argparse.Namespace, token: str | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # not on this platform / thread
            pass
    async with server:
        sys.stdout.write(f"{READY_PREFIX}{server.url}\n")
        sys.stdout.flush()
        state = Path(args.state_file) if args.state_file else None
        if state is not None:
            _write_state(state, server.url, token)
        if args.exit_with_parent:
            _watch_stdin(loop, stop)
        watcher = None
        if args.idle_exit is not None:
            watcher = asyncio.create_task(_exit_when_idle(server, args.idle_exit, stop))
        try:
            await stop.wait()
        finally:
            if watcher is not None:
                watcher.cancel()
            if state is not None:
                _remove_state(state)
        logger.info("stopping")


async def _exit_when_idle(server: LocalServer, seconds: float, stop: asyncio.Event) -> None:
    """Set ``stop`` once no session has run for ``seconds`` (checked every second or less)."""
    idle_since = time.monotonic()
    while True:
        await asyncio.sleep(min(1.0, max(0.05, seconds / 4)))
        if server.active_sessions:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= seconds:
            logger.info("no session for %.0f s: exiting", seconds)
            stop.set()
            return


def _write_state(path: Path, url: str, token: str | None) -> None:
    """Write the state atomically, readable by this user only."""
    state = {"url": url, "token": token, "pid": os.getpid(), "version": __version__}
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    handle = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(state, out)
    os.replace(partial, path)


def _remove_state(path: Path) -> None:
    """Remove the state file if it still describes this process."""
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set ``stop`` when stdin reaches EOF (the parent closed its end, or died)."""

    def wait_for_eof() -> None:
        try:
            while sys.stdin.buffer.read(65536):
                pass
        except (OSError, ValueError):
            pass
        try:
            loop.call_soon_threadsafe(stop.set)
        except RuntimeError:  # the loop already closed
            pass

    threading.Thread(target=wait_for_eof, name="stdin-eof-watch", daemon=True).start()
