"""Profiles of rows 1, 4 and 5: where the time goes, every Python thread included.

Each section runs in a fresh child process (``python -m bench.profiles SECTION OUT``) so
the profiler is installed before any thread starts: ``threading.setprofile`` gives every
new thread (the client's IO loop, the server's loop, its synthesis pool) its own
``cProfile.Profile``; they are merged at the end. The measured rows never run under the
profiler. Paths are shortened (``site-packages/``, ``stdlib/``, repo-relative). Waiting
shows up too: ``epoll.poll`` and lock ``acquire`` are threads with nothing to do.

Row 1: our async and sync clients on the paced answer, against the embedded server (a
child process, not profiled: row 5 profiles the server). Row 4: our async client, sync
client and Session on replayed frames (one profile each). Row 5: the embedded server
in-process (its loop and synthesis threads) answering flushes of the short sentence.
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import REPO_DIR

TOP = 40


class AllThreads:
    """cProfile for the calling thread and every thread started while it is on."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def _hook(self, frame: Any, event: str, arg: Any) -> None:
        profile = cProfile.Profile()
        with self._lock:
            self.profiles.append(profile)
        profile.enable()  # replaces this hook for the rest of the thread's life

    def __enter__(self) -> AllThreads:
        threading.setprofile(self._hook)
        self._main = cProfile.Profile()
        self.profiles.append(self._main)
        self._main.enable()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._main.disable()
        threading.setprofile(None)

    def report(self, title: str) -> str:
        stream = io.StringIO()
        stats = pstats.Stats(self.profiles[0], stream=stream)
        for profile in self.profiles[1:]:
            stats.add(profile)
        stream.write(f"=== {title} ({len(self.profiles)} threads profiled)\n\n")
        stream.write("--- by own time (tottime)\n")
        stats.sort_stats("tottime").print_stats(TOP)
        stream.write("--- by cumulative time\n")
        stats.sort_stats("cumulative").print_stats(TOP)
        return shorten(stream.getvalue())


def shorten(text: str) -> str:
    paths = sysconfig.get_paths()
    for key, label in (("purelib", "site-packages"), ("platlib", "site-packages")):
        text = text.replace(paths[key] + "/", label + "/")
    text = text.replace(paths["stdlib"] + "/", "stdlib/")
    return text.replace(str(REPO_DIR) + "/", "")


def profiled(title: str, work: Callable[[], Any]) -> str:
    with AllThreads() as profiler:
        work()
    return profiler.report(title)


# --- the profiled workloads ------------------------------------------------------------------
# One section per child process: a thread started before the profiler (the client's
# background loop is started once per process) would be missed. Warm-up runs happen inside
# the profile for the same reason; they are small next to the measured work.


def _ttfa_section(face: str) -> str:
    from . import latency
    from .common import child_server

    run = latency.ours_async if face == "async" else latency.ours_sync
    with child_server() as server:
        return profiled(
            f"row 1, our {face} client, paced answer x4 (the first is the warm-up)",
            lambda: [run(server.url) for _ in range(4)],
        )


def _frames_section(face: str, frames_file: Path, frames: int = 3000) -> str:
    import msgpack

    from . import frames as frames_module

    payloads = msgpack.unpackb(frames_file.read_bytes())
    run = {
        "async": frames_module.ours_async,
        "sync": frames_module.ours_sync,
        "session": frames_module.ours_session,
    }[face]
    with frames_module.replay_server(payloads) as replay:
        return profiled(
            f"row 4, our {face} face, {frames} replayed frames (after a 50-frame warm-up)",
            lambda: (run(replay.url, "blast 50"), run(replay.url, f"blast {frames}")),
        )


def _flush_section(repeats: int = 5) -> str:
    from fish_notebook.local.engine import VoiceLibrary

    from . import server_flush

    VoiceLibrary().default()  # load the voice before profiling: it is cached per process

    def work() -> None:
        with server_flush.thread_server() as url:
            asyncio.run(server_flush.measure(url, repeats, "pcm"))

    return profiled(
        f"row 5, embedded server in-process, {repeats} flushes (+1 warm-up) interleaved "
        "with raw Piper synthesis",
        work,
    )


SECTIONS: dict[str, list[str]] = {
    "1": ["1-async", "1-sync"],
    "4": ["4-async", "4-sync", "4-session"],
    "5": ["5"],
}


def section(name: str, frames_file: Path | None) -> str:
    row, _, face = name.partition("-")
    if row == "1":
        return _ttfa_section(face)
    if row == "4":
        if frames_file is None:
            raise ValueError("row 4 profiles need the recorded frames file")
        return _frames_section(face, frames_file)
    return _flush_section()


def profile_row(row: str, out: Path, frames_file: Path | None = None) -> None:
    """Profile every section of ``row``, each in a fresh interpreter; one report in ``out``."""
    parts = []
    for name in SECTIONS[row]:
        target = out.with_suffix(f".{name}.tmp")
        command = [sys.executable, "-m", "bench.profiles", name, str(target)]
        if frames_file is not None:
            command.append(str(frames_file))
        subprocess.run(command, cwd=REPO_DIR, check=True, timeout=300, stdout=subprocess.DEVNULL)
        parts.append(target.read_text())
        target.unlink()
    out.write_text(__doc__ + "\n\n" + "\n\n".join(parts))


if __name__ == "__main__":
    frames_arg = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    Path(sys.argv[2]).write_text(section(sys.argv[1], frames_arg))
