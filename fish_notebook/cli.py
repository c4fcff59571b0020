"""The ``fish-notebook`` command: serve the embedded server, or say a text into a file.

::

    fish-notebook serve [--host H] [--port P] [--token T] [--max-sessions N] [--voices DIR]
    fish-notebook say "Hello there." -o hello.wav
    llm "Tell me a story" | fish-notebook say -o story.mp3

``serve`` is the embedded server's own command (``python -m fish_notebook.local``), under
this name. ``say`` speaks TEXT, or stdin when TEXT is missing or ``-``. Stdin is sent as it
arrives (a line the moment its newline is in, a long line in pieces as it is written), so
speech starts while the writer is still writing. It connects where the client does: ``--url``,
else ``FISH_BASE_URL``, else Fish Audio's cloud when ``FISH_API_KEY`` is set, else the
embedded server, started on demand. ``FISH_API_KEY`` is also the token a ``serve --token``
server asks for.

``say`` reports progress and timings on stderr. Exit status: 0 when everything was spoken
and saved; 1 on any failure, with one line on stderr saying why (the audio received so far
is saved all the same); 2 for bad options; 130 after Ctrl-C and 143 after SIGTERM (what was
received is saved).
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import endpoints, formats
from ._version import __version__
from .errors import FishNotebookError, ValidationError

if TYPE_CHECKING:
    from .session import Session

__all__ = ["build_parser", "main", "read_stdin_text"]

PROG = "fish-notebook"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
_MAX_ERROR_CHARS = 600  # an error line stays one readable line


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``fish-notebook`` (``serve`` takes the embedded server's options)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Realtime streaming text-to-speech over Fish Audio's protocol.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser(
        "serve",
        add_help=False,  # `fish-notebook serve --help` shows the server's own options
        help="run the embedded Fish-compatible server (see `fish-notebook serve --help`)",
    )
    say = commands.add_parser(
        "say",
        help="speak TEXT (or stdin, as it arrives) into a .wav or .mp3 file",
        description="Speak TEXT, or stdin as it arrives, into a .wav or .mp3 file. "
        "Progress and timings go to stderr.",
    )
    say.add_argument("text", nargs="?", metavar="TEXT", help="what to say (default: stdin)")
    say.add_argument("-o", "--output", required=True, metavar="FILE", help="a .wav or .mp3 file")
    say.add_argument(
        "--format",
        choices=formats.SAVABLE,
        default=None,
        help="file format when FILE has no .wav/.mp3 suffix (default wav)",
    )
    say.add_argument("--voice", metavar="ID", default=None, help="reference_id of the voice")
    say.add_argument("--speed", type=float, default=None, help="speaking rate, 0.5..2.0")
    say.add_argument("--volume", type=float, default=None, help="volume change in dB, -20..20")
    say.add_argument(
        "--latency", choices=["normal", "balanced", "low"], default=None, help="chunking"
    )
    say.add_argument("--model", default=None, help="the model header (default s2-pro)")
    say.add_argument(
        "--url",
        default=None,
        help="server base URL (http/https/ws/wss); default: FISH_BASE_URL, the cloud "
        "with FISH_API_KEY, else the embedded server",
    )
    say.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    say.add_argument("-v", "--verbose", action="store_true", help="also print library logs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status. ``argv`` excludes the program name."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["serve"]:
        # The server's command parses its own options: one definition, in fish_notebook.local.
        from .local.cli import serve_main

        return serve_main(args_list[1:], prog=f"{PROG} serve")
    args = build_parser().parse_args(args_list)
    return _say(args)


# --- say -----------------------------------------------------------------------------------


def read_stdin_text(fd: int = 0, *, chunk_size: int = 65536) -> Iterator[str]:
    """Yield the text on file descriptor ``fd`` as it arrives, until end of file.

    Each read returns what is there, so a line is yielded the moment its newline arrives
    (and a long line in pieces while it is written). UTF-8 split across reads is joined;
    invalid bytes become U+FFFD. Reads the descriptor directly: a thread blocked here holds
    no lock of ``sys.stdin``, so the process can exit while it waits.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    while True:
        data = os.read(fd, chunk_size)
        text = decoder.decode(data, final=not data)
        if text:
            yield text
        if not data:
            return


def _stdin_fd() -> int:
    try:
        return sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):  # no stdin at all (closed, or None)
        raise ValidationError("TEXT", None, "give the text to say: there is no stdin") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > _MAX_ERROR_CHARS:
        text = text[: _MAX_ERROR_CHARS - 3] + "..."
    return text


def _output_path(output: str, format: str | None) -> Path:
    """Check the output file before any speech: right suffix, existing folder, encoder there."""
    try:
        path, fmt = formats.for_path(output, default=format or "wav")
    except ValidationError as exc:
        raise ValidationError("--output", output, f"{exc.allowed} (or set --format)") from exc
    if format is not None and fmt.name != format:
        raise ValidationError("--format", format, f"contradicts the output file {output!r}")
    if not path.parent.is_dir():
        raise ValidationError("--output", output, f"its folder {str(path.parent)!r} does not exist")
    fmt.encode_stream(44100)  # MissingDependencyError now rather than after the speech
    return path


class _Terminated(KeyboardInterrupt):
    """SIGTERM, taken like Ctrl-C: the session stops and saves what it has."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated


class _Progress:
    """Session listener that tells stderr how the speech is going. Called on the IO thread."""

    def __init__(self, stream: IO[str], *, quiet: bool) -> None:
        self.stream = stream
        self.quiet = quiet
        self.live = not quiet and stream.isatty()
        self._first_audio = False
        self._lock = threading.Lock()

    def say(self, line: str) -> None:
        if self.quiet:
            return
        with self._lock:
            prefix = "\r\033[K" if self.live else ""
            self.stream.write(f"{prefix}{line}\n")
            self.stream.flush()

    def on_text(self, text: str) -> None:
        pass

    def on_flush(self) -> None:
        pass

    def on_audio(self, pcm: bytes, seq: int) -> None:
        pass

    def on_state(self, state: str, error: str | None) -> None:
        pass

    def on_metrics(self, metrics: dict[str, Any]) -> None:
        if not self._first_audio and metrics.get("ttfa_s") is not None:
            self._first_audio = True
            self.say(f"first audio after {metrics['ttfa_s']:.2f} s")
        if self.live and metrics["state"] == "streaming":
            with self._lock:
                self.stream.write(
                    f"\r\033[K{metrics['audio_s']:.1f} s of audio, {metrics['chunks']} chunks"
                )
                self.stream.flush()


def _summary(session: Session, path: Path | None) -> str:
    m = session.metrics
    where = f"{path}" if path is not None else "(not saved)"
    parts = [f"{m['audio_s']:.2f} s of audio in {where}"]
    if m["ttfa_s"] is not None:
        parts.append(f"time to first audio {m['ttfa_s']:.2f} s")
    if m["rtf"] is not None:
        parts.append(f"real-time factor {m['rtf']:.2f} ({1 / m['rtf']:.1f}x real time)")
    return ", ".join(parts)


def _say(args: argparse.Namespace) -> int:
    progress = _Progress(sys.stderr, quiet=args.quiet)

    def fail(exc: BaseException, status: int, session: Session | None = None) -> int:
        kept = ""
        if session is not None and session.saved_path is not None:
            kept = f" (kept {session.duration:.2f} s of audio in {session.saved_path})"
        clear = "\r\033[K" if progress.live else ""  # over a live progress line
        sys.stderr.write(f"{clear}error: {_one_line(exc)}{kept}\n")
        sys.stderr.flush()
        return status

    from_stdin = args.text is None or args.text == "-"
    try:
        path = _output_path(args.output, args.format)
        from .session import Session

        source: Any = read_stdin_text(_stdin_fd()) if from_stdin else args.text
        session = Session(
            source,
            base_url=args.url,
            model=args.model,
            save=path,
            reference_id=args.voice,
            speed=args.speed,
            volume=args.volume,
            latency=args.latency,
            start=False,
        )
        where = endpoints.describe(args.url, os.environ.get("FISH_API_KEY") or None)
    except ValidationError as exc:
        return fail(exc, EXIT_USAGE)
    except FishNotebookError as exc:
        return fail(exc, EXIT_FAILED)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED

    what = "stdin as it arrives" if from_stdin else f"{len(args.text)} characters"
    progress.say(f"speaking {what} via {where} into {path}")
    if from_stdin and sys.stdin.isatty() and not args.quiet:
        progress.say("reading text from the terminal; end it with Ctrl-D")
    session.add_listener(progress)
    # Library logs would break the one-line error promise; --verbose asks for them.
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.CRITICAL + 1,
        stream=sys.stderr,
        format="%(name)s: %(message)s",
    )
    return _run_to_the_end(session, progress, fail)


def _run_to_the_end(
    session: Session, progress: _Progress, fail: Callable[[BaseException, int, Session], int]
) -> int:
    """Speak until the end (Ctrl-C and SIGTERM stop it; the audio so far is saved)."""
    previous_sigterm: Any = None
    with contextlib.suppress(ValueError):  # not the main thread: no handler, no matter
        previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        session.start()
        session.wait()
    except KeyboardInterrupt as exc:
        # wait() stopped the session and it saved what came; say so, and exit like a shell.
        progress.say(f"interrupted: {_summary(session, session.saved_path)}")
        return EXIT_TERMINATED if isinstance(exc, _Terminated) else EXIT_INTERRUPTED
    except Exception as exc:
        return fail(exc, EXIT_FAILED, session)
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    for message in session.logs:
        progress.say(f"server: {message}")
    if session.duration == 0:
        progress.say("no audio came back: was the text empty?")
    progress.say(f"saved {_summary(session, session.saved_path)}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
