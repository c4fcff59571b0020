#!/usr/bin/env python3
"""``make demo``: JupyterLab on loopback with notebooks/01_quickstart.ipynb, offline.

Starts JupyterLab on 127.0.0.1 (a free port unless ``--port``) with a fresh random token,
waits until it answers, and prints the URL to open, token included. It does not open a
browser unless ``--browser`` is given (the machine may be headless): open the URL yourself,
through ``ssh -L PORT:127.0.0.1:PORT host`` when the machine is remote. Nothing is fetched
from the network: the notebooks use the embedded voice, started on demand by the kernel, and
this JupyterLab neither fetches news nor asks whether to (its news setting defaults to off
through a settings overrides file of its own, so your other JupyterLabs are unchanged).
Ctrl-C, SIGTERM or SIGHUP (a closed terminal) stops the server and its kernels.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
START_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP) if hasattr(signal, "SIGHUP") else (signal.SIGTERM,)
# JupyterLab setting defaults for the demo's server only: no "get notified about official
# Jupyter news?" toast, no news or update check (the demo is offline).
SETTING_DEFAULTS = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}
}


class Stop(Exception):
    """A signal asked the demo to stop."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


@contextlib.contextmanager
def demo_config_path() -> Iterator[dict[str, str]]:
    """The environment for the demo's JupyterLab: an extra Jupyter config directory whose
    ``labconfig/default_setting_overrides.json`` holds :data:`SETTING_DEFAULTS` (settings you
    chose yourself still win), removed when the demo ends."""
    with tempfile.TemporaryDirectory(prefix="fish-notebook-demo-") as config:
        labconfig = Path(config) / "labconfig"
        labconfig.mkdir()
        (labconfig / "default_setting_overrides.json").write_text(json.dumps(SETTING_DEFAULTS))
        env = dict(os.environ)
        paths = [config, *filter(None, env.get("JUPYTER_CONFIG_PATH", "").split(os.pathsep))]
        env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(paths)
        yield env


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
        # Offline: never ask the network whether a newer JupyterLab exists, or for news.
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.news_url=None",
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


def run_lab(port: int, notebook: str, env: dict[str, str], *, browser: bool) -> None:
    """Run JupyterLab until it exits or the demo is stopped; never leave it running."""
    token = secrets.token_hex(24)
    base = f"http://127.0.0.1:{port}"
    log = Path(tempfile.gettempdir()) / f"fish-notebook-demo-{port}.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            lab_command(port, token, browser=browser),
            cwd=NOTEBOOKS,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(process, base, token, log)
        url = f"{base}/lab/tree/{notebook}?token={token}"
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
    except (KeyboardInterrupt, Stop):
        print("\nstopping JupyterLab...", flush=True)
    finally:
        for signum in (signal.SIGINT, *STOP_SIGNALS):
            signal.signal(signum, signal.SIG_IGN)  # a second signal must not cut the cleanup
        stop_lab(process)


def stop_lab(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (JupyterLab then shuts its kernels down), SIGKILL if it does not end in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


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
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop)  # SIGTERM, SIGHUP: clean up as Ctrl-C does
    with demo_config_path() as env:
        run_lab(port, args.notebook, env, browser=args.browser)
    return 0


if __name__ == "__main__":
    sys.exit(main())
