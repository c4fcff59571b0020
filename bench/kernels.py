"""Rows 9a-9c: what a user meets in real kernels (jupyter_client), with the shared server.

Every round starts from nothing: a private ``FISH_NOTEBOOK_STATE_DIR`` of its own (so no
server from elsewhere is found), no ``FISH_*`` variable (no ``FISH_BASE_URL``: the kernels find
or start the shared embedded server themselves, as a user's do), and at the end the kernels
are shut down and the server they started is ended by the pid in its state file. The voice's
optimized copy (``FISH_NOTEBOOK_MODEL_CACHE``, made by a user's first start ever) is kept in
a folder of the bench's own: a first round with one kernel starts with it empty (the first
start after installing, in 9a's note), the rounds measured find the copy, as a user's do.

- 9a: a fresh kernel runs ``%load_ext fish_notebook``, waits one second (the user reading),
  then ``%speak -o _bench_s Hello there.``; the clock runs from that cell's execute request to
  the first audio leaving the kernel for the page: the player widget's first binary comm
  message (one per audio chunk), as this client receives it. Peer: the same cell again in a
  warm kernel (after the first session ended).
- 9b: more kernels started while the first is open (the second reuses the shared server, as
  do the others): the same cold first cell. Peer: the warm cells.
- 9c: RSS of the shared server plus what each kernel grew by from its start (bare, before
  ``%load_ext``) to after speaking once, with 1, 3 and 5 kernels; five against one. The kernel
  itself is there without fish-notebook; what fish-notebook adds per kernel is what grows.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import REPO_DIR, Row, now, rss_bytes

MIB = 1024 * 1024
CELL = "%speak -o _bench_s Hello there."
READING_PAUSE_S = 1.0
STATE_FILE = "server.json"  # written by the shared server in FISH_NOTEBOOK_STATE_DIR


class BenchKernel:
    """One kernel started by jupyter_client, and the few things the rows ask of it."""

    def __init__(self, env: dict[str, str], cwd: Path, timeout: float = 120.0) -> None:
        import jupyter_client

        self.manager = jupyter_client.KernelManager(kernel_name="python3")
        # The kernel's stderr (ipykernel's startup warnings) would interleave with the table.
        self.manager.start_kernel(env=env, cwd=str(cwd), stderr=subprocess.DEVNULL)
        self.client = self.manager.client()
        self.client.start_channels()
        try:
            self.client.wait_for_ready(timeout=timeout)
        except BaseException:
            self.close()
            raise
        self.bare_rss = rss_bytes(self.pid)

    @property
    def pid(self) -> int:
        pid = getattr(self.manager.provisioner, "pid", None)
        if not isinstance(pid, int):
            raise RuntimeError("jupyter_client did not say the kernel's pid")
        return pid

    def run(self, code: str, timeout: float = 120.0) -> str:
        """Execute ``code``; its stdout. Raises RuntimeError when the cell raised."""
        out: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                out.append(msg["content"]["text"])

        reply = self.client.execute_interactive(
            code, timeout=timeout, output_hook=hook, allow_stdin=False
        )
        content = reply["content"]
        if content["status"] != "ok":
            raise RuntimeError(f"{code!r} failed: {content.get('ename')}: {content.get('evalue')}")
        return "".join(out)

    def first_audio(self, code: str, timeout: float = 120.0) -> float:
        """Seconds from sending ``code`` to the first comm message carrying binary buffers
        (the player widget's first audio chunk), once the cell itself finished without error."""
        self.drain()
        began = now()
        msg_id = self.client.execute(code, allow_stdin=False)
        first: float | None = None
        idle = False
        error: str | None = None
        while first is None or not idle:
            remaining = began + timeout - now()
            if remaining <= 0:
                raise TimeoutError(f"{code!r}: no audio within {timeout:.0f} s")
            try:
                msg = self.client.get_iopub_msg(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            arrived = now()
            kind, mine = msg["msg_type"], msg["parent_header"].get("msg_id") == msg_id
            if kind == "comm_msg" and msg.get("buffers") and first is None:
                first = arrived
            elif kind == "error" and mine:
                error = f"{msg['content']['ename']}: {msg['content']['evalue']}"
            elif kind == "status" and mine and msg["content"]["execution_state"] == "idle":
                idle = True
                if error is not None:
                    raise RuntimeError(f"{code!r} failed: {error}")
        return first - began

    def session_metrics(self, name: str = "_bench_s") -> dict[str, Any]:
        """Wait for the session in ``name`` to end; its metrics."""
        out = self.run(f"{name}.wait(60); import json as _j; print(_j.dumps({name}.metrics))")
        metrics: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return metrics

    def drain(self) -> None:
        """Forget iopub messages left from earlier cells (late comm messages of a session)."""
        with contextlib.suppress(queue.Empty):
            while True:
                self.client.get_iopub_msg(timeout=0.2)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.stop_channels()
        with contextlib.suppress(Exception):
            self.manager.shutdown_kernel(now=True)


def kernel_env(state_dir: Path, voice_cache: Path | None = None) -> dict[str, str]:
    """This process's environment without any FISH_*/LLM setting, with a private state
    folder (the kernels share one server there, and find no other) and, when given, a
    folder for the voice's optimized copy."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("FISH_", "OPENAI_", "ANTHROPIC_"))
    }
    env["FISH_NOTEBOOK_STATE_DIR"] = str(state_dir)
    if voice_cache is not None:
        env["FISH_NOTEBOOK_MODEL_CACHE"] = str(voice_cache)
    env["FISH_NOTEBOOK_SERVER_IDLE"] = "300"  # a server this round leaks ends on its own
    paths = [str(REPO_DIR), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))  # the code measured
    return env


def shared_server_pid(state_dir: Path) -> int | None:
    """The pid of the shared server recorded in ``state_dir``, if any."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        pid = json.loads((state_dir / STATE_FILE).read_text())["pid"]
        if isinstance(pid, int):
            return pid
    return None


def stop_shared_server(state_dir: Path, timeout: float = 15.0) -> None:
    """End the server these kernels started (by the pid in its state file, and only if that
    pid runs ``fish_notebook.local``)."""
    pid = shared_server_pid(state_dir)
    if pid is None:
        return
    try:
        if b"fish_notebook.local" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.1)
    if _running(pid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
    except (OSError, IndexError):
        return False
    return state != "Z"


# --- one round ---------------------------------------------------------------------------------


@dataclass
class Round:
    cold_first: float = 0.0  # 9a: the first kernel's first cell
    cold_others: list[float] = field(default_factory=list)  # 9b: kernels started beside it
    warm: list[float] = field(default_factory=list)  # the same cell, second time
    ttfa_in_kernel: list[float] = field(default_factory=list)  # session metrics ttfa_s
    memory: dict[int, dict[str, Any]] = field(default_factory=dict)  # by kernel count
    shared: bool = True  # the kernels found one shared server


def one_round(counts: tuple[int, ...], workdir: Path, voice_cache: Path | None = None) -> Round:
    """Kernels one after another in a fresh state folder: 9a and 9b cells, 9c snapshots."""
    state_dir = Path(tempfile.mkdtemp(prefix="state-", dir=workdir))  # mode 0700
    env = kernel_env(state_dir, voice_cache)
    kernels: list[BenchKernel] = []
    result = Round()
    try:
        while len(kernels) < max(counts):
            kernel = BenchKernel(env, workdir)
            kernels.append(kernel)
            kernel.run("%load_ext fish_notebook")
            time.sleep(READING_PAUSE_S)
            cold = kernel.first_audio(CELL)
            result.ttfa_in_kernel.append(kernel.session_metrics()["ttfa_s"])
            if len(kernels) == 1:
                result.cold_first = cold
            else:
                result.cold_others.append(cold)
            if len(kernels) <= 2:
                result.warm.append(kernel.first_audio(CELL))
                result.ttfa_in_kernel.append(kernel.session_metrics()["ttfa_s"])
            if len(kernels) in counts:
                result.memory[len(kernels)] = snapshot(state_dir, kernels)
        result.shared = shared_server_pid(state_dir) is not None
    finally:
        for kernel in kernels:
            kernel.close()
        stop_shared_server(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)
    return result


def snapshot(state_dir: Path, kernels: list[BenchKernel]) -> dict[str, Any]:
    """RSS of the shared server and of every kernel (now, and bare at its start)."""
    pid = shared_server_pid(state_dir)
    server = rss_bytes(pid) if pid is not None else 0
    now_rss = [kernel.rss() for kernel in kernels]
    grown = [max(0, rss - kernel.bare_rss) for rss, kernel in zip(now_rss, kernels, strict=True)]
    return {
        "server_rss": server,
        "kernel_rss": now_rss,
        "kernel_bare_rss": [kernel.bare_rss for kernel in kernels],
        "ours_bytes": server + sum(grown),  # the server + what each kernel grew by
        "total_bytes": server + sum(now_rss),
    }


# --- rows --------------------------------------------------------------------------------------


def kernel_rows(rounds: int, counts: tuple[int, ...] = (1, 3, 5)) -> list[Row]:
    """Rows 9a-9c over ``rounds`` rounds (each from a fresh state folder and server)."""
    with tempfile.TemporaryDirectory(prefix="fish-nb-bench-") as folder:
        voice_cache = Path(folder) / "voice-cache"  # empty: nothing optimized yet
        first_ever = one_round((1,), Path(folder), voice_cache)
        results = [one_round(counts, Path(folder), voice_cache) for _ in range(rounds)]
    warm = [x for r in results for x in r.warm]
    ttfa = [x for r in results for x in r.ttfa_in_kernel if x is not None]
    shared = all(r.shared for r in results)
    where = "" if shared else " (NO shared server found: the kernels used per-process children)"
    common_note = (
        f"execute request -> first audio comm message; in-kernel first text -> first audio "
        f"median {sorted(ttfa)[len(ttfa) // 2] * 1000:.0f} ms"
        if ttfa
        else ""
    ) + where
    first_note = (
        f"; the first start after installing (no optimized voice copy yet): "
        f"{first_ever.cold_first * 1000:.0f} ms, warm {first_ever.warm[0] * 1000:.0f} ms"
    )
    cold = Row(
        "9a",
        "first %speak cell, fresh kernel (execute -> first audio out)",
        "ms",
        "the same cell again, warm kernel",
        "<= 1.5x",
        ours=[r.cold_first for r in results],
        peer=warm,
        scale=1000,
        note=common_note + first_note,
    ).finish(lambda ratio, _m: ratio is not None and ratio <= 1.5)
    beside = Row(
        "9b",
        "first %speak cell, kernel started beside an open one",
        "ms",
        "the same cell again, warm kernel",
        "<= 1.2x",
        ours=[x for r in results for x in r.cold_others],
        peer=warm,
        scale=1000,
        note=f"kernels 2-{max(counts)} of each round, the shared server already running",
    ).finish(lambda ratio, _m: ratio is not None and ratio <= 1.2)
    return [cold, beside, memory_row(results, counts)]


def memory_row(results: list[Round], counts: tuple[int, ...]) -> Row:
    def median_of(n: int, key: str) -> float:
        values = sorted(r.memory[n][key] for r in results)
        return float(values[len(values) // 2])

    low, high = min(counts), max(counts)
    detail = ["  row 9c by kernels: N  server MiB  per kernel grew MiB  ours MiB  with kernels MiB"]
    for n in counts:
        grown = [
            rss - bare
            for r in results
            for rss, bare in zip(
                r.memory[n]["kernel_rss"], r.memory[n]["kernel_bare_rss"], strict=True
            )
        ]
        detail.append(
            f"    {n:3d}  {median_of(n, 'server_rss') / MIB:10.0f}  "
            f"{sum(grown) / len(grown) / MIB:19.1f}  {median_of(n, 'ours_bytes') / MIB:8.0f}  "
            f"{median_of(n, 'total_bytes') / MIB:16.0f}"
        )
    kernels_rss = [x for r in results for x in r.memory[high]["kernel_rss"]]
    bare_rss = [x for r in results for x in r.memory[high]["kernel_bare_rss"]]
    row = Row(
        "9c",
        f"memory: shared server + {high} kernels that spoke (fish-notebook's part)",
        "MiB",
        f"the same with {low} kernel",
        "<= 1.3x",
        ours=[r.memory[high]["ours_bytes"] / MIB for r in results],
        peer=[r.memory[low]["ours_bytes"] / MIB for r in results],
        note=f"server RSS {median_of(high, 'server_rss') / MIB:.0f} MiB; a kernel "
        f"{sum(bare_rss) / len(bare_rss) / MIB:.0f} MiB bare, "
        f"{sum(kernels_rss) / len(kernels_rss) / MIB:.0f} MiB after speaking once; "
        f"counted: the server + each kernel's growth; see 'row 9c by kernels'",
    )
    row.extra = {"rounds": [r.memory for r in results], "detail": detail}
    return row.finish(lambda ratio, _m: ratio is not None and ratio <= 1.3)
