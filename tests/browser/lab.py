"""A real JupyterLab server for the browser suite (its ``lab`` fixture) and for the bench's
page row (bench/page.py), started one way for both.

Lab runs on a free loopback port with isolated config/data/runtime/IPython folders and user
settings that avoid the two pop-ups that block a fresh Lab (kernel choice, news). This module
needs no pytest, so the bench can use it outside a test run.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from ..helpers import stop_child

LAB_START_TIMEOUT = 90.0

# User settings (in the isolated JUPYTER_CONFIG_DIR): start the kernel without asking, and
# never fetch news or check for updates (no network here, and the pop-up blocks clicks).
USER_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"autoStartDefaultKernel": True},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


class LabStartError(RuntimeError):
    """JupyterLab exited, or did not answer in time; the message ends with its log."""


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Lab:
    """A running JupyterLab server: where it is and how to talk to its REST API."""

    url: str
    token: str
    root: Path
    log: Path
    process: subprocess.Popen[bytes]

    def api(self, method: str, path: str, timeout: float = 10.0) -> Any:
        """Call the REST API; returns the decoded JSON body (None when empty)."""
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def write_notebook(self, name: str, cells: list[str]) -> Path:
        """Write ``name`` (an .ipynb in the server's root) with one code cell per string."""
        nb = nbformat.v4.new_notebook(
            cells=[nbformat.v4.new_code_cell(source) for source in cells],
            metadata={"kernelspec": KERNELSPEC},
        )
        path = self.root / name
        nbformat.write(nb, path)
        return path

    def shutdown_kernels(self) -> None:
        """Shut down every kernel (each test's notebook started one)."""
        with contextlib.suppress(OSError, urllib.error.URLError):
            for session in self.api("GET", "/api/sessions") or []:
                self.api("DELETE", f"/api/sessions/{session['id']}")

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log, for failure messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


@contextlib.contextmanager
def running_lab(base: Path, env: Mapping[str, str]) -> Iterator[Lab]:
    """JupyterLab isolated in the folder ``base``: notebooks in ``base/notebooks``, its log in
    ``base/lab.log``, its Jupyter and IPython folders beside them (with ``USER_SETTINGS``).

    Its environment is this process's without the JUPYTER*, IPYTHON* and FISH_* variables
    (FISH_NOTEBOOK_* stay: the run's leftover-process mark, its state folder), plus ``env``.
    Waits up to ``LAB_START_TIMEOUT`` for the REST API to answer (LabStartError if it exits
    or does not); afterwards shuts its kernels down and stops it.
    """
    root = base / "notebooks"
    root.mkdir()
    child_env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("JUPYTER", "IPYTHON", "FISH_")) or key.startswith("FISH_NOTEBOOK_")
    }
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        child_env[name] = str(base / name.lower())
    child_env.update(env)
    settings = base / "jupyter_config_dir" / "lab" / "user-settings"
    for relative, values in USER_SETTINGS.items():
        path = settings / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))

    port = free_port()
    token = secrets.token_hex(16)
    log = base / "lab.log"
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        "--ServerApp.password=",
        "--ServerApp.allow_root=True",  # Jupyter refuses to run as root without it
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp, to drive the page
        "--JupyterNotebookApp.expose_app_in_browser=True",  # the same in Notebook 7
        f"--ServerApp.root_dir={root}",
    ]
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            command, env=child_env, cwd=root, stdout=log_file, stderr=subprocess.STDOUT
        )
    server = Lab(f"http://127.0.0.1:{port}", token, root, log, process)
    try:
        _wait_until_up(server)
        yield server
    finally:
        server.shutdown_kernels()
        stop_child(process)


def _wait_until_up(server: Lab) -> None:
    """Poll the REST API until it answers, at most ``LAB_START_TIMEOUT`` seconds."""
    deadline = time.monotonic() + LAB_START_TIMEOUT
    while True:
        if server.process.poll() is not None:
            code = server.process.returncode
            raise LabStartError(f"JupyterLab exited with {code}:\n{server.log_tail()}")
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            server.api("GET", "/api/status", timeout=2.0)
            return
        if time.monotonic() > deadline:
            raise LabStartError(
                f"JupyterLab did not answer in {LAB_START_TIMEOUT} s:\n{server.log_tail()}"
            )
        time.sleep(0.25)
