#!/usr/bin/env python3
"""``make demo``: JupyterLab on loopback with notebooks/01_quickstart.ipynb, offline.

Starts JupyterLab on 127.0.0.1 (a free port unless ``--port``) with a fresh random token,
waits until it answers, and prints the URL to open, token included. It does not open a
browser unless ``--browser`` is given (the machine may be headless): open the URL yourself,
through ``ssh -L PORT:127.0.0.1:PORT host`` when the machine is remote. Nothing is fetched
from the network: the notebooks use the embedded voice, started on demand by the kernel.
Ctrl-C stops the server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lab_command(port: int, token: str, *, browser: bool) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={NOTEBOOKS}",
        # Offline: never ask the network whether a newer JupyterLab exists.
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if not browser:
        command.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--ServerApp.allow_root=True")  # Jupyter refuses root without it
    return command


def wait_ready(process: subprocess.Popen[bytes], base: str, token: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"JupyterLab exited with {process.returncode}; see {log}")
        status = f"{base}/api/status?token={token}"
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(status, timeout=2) as reply,
        ):
            if reply.status == 200:
                return
        time.sleep(0.25)
    process.terminate()
    raise SystemExit(f"JupyterLab did not answer within {START_TIMEOUT:.0f} s; see {log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port to use (default: a free one)")
    parser.add_argument(
        "--notebook", default="01_quickstart.ipynb", help="notebook to open (in notebooks/)"
    )
    parser.add_argument("--browser", action="store_true", help="also open a browser here")
    args = parser.parse_args(argv)
    if not (NOTEBOOKS / args.notebook).is_file():
        parser.error(f"no notebook {args.notebook!r} in {NOTEBOOKS}")

    port = args.port or free_port()
    token = secrets.token_hex(24)
    base = f"http://127.0.0.1:{port}"
    log = Path(tempfile.gettempdir()) / f"fish-notebook-demo-{port}.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            lab_command(port, token, browser=args.browser),
            cwd=NOTEBOOKS,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(process, base, token, log)
        url = f"{base}/lab/tree/{args.notebook}?token={token}"
        print(
            "\nfish-notebook demo: JupyterLab is running (offline, embedded voice).\n"
            "Open this URL in your browser:\n\n"
            f"    {url}\n\n"
            f"On a remote machine, first: ssh -L {port}:127.0.0.1:{port} <this host>\n"
            f"JupyterLab log: {log}\n"
            "Press Ctrl-C to stop.",
            flush=True,
        )
        process.wait()
    except KeyboardInterrupt:
        print("\nstopping JupyterLab...", flush=True)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
