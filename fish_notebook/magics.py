"""``%load_ext fish_notebook``: the ``%%speak`` and ``%speak`` magics, and ``%speak_config``.

``%%speak [options]`` speaks its cell body, which is one of:

- **text** (the default): ``{name}`` and ``{expression}`` are replaced from the user namespace
  as IPython does for ``!`` commands (``{{`` and ``}}`` for literal braces). A line holding only
  ``--`` is a flush point: the server speaks what it has at that moment. The text goes out
  word by word, line by line, as a typing user's would.
- **a generator** (``--gen``, or detected when the body is Python that yields, or that ends
  with an expression giving a sync or async iterable, such as ``paced("...")``): the yielded
  items are the tokens; ``FlushEvent()`` and ``TextEvent`` work inside a yielding body
  without an import. The code runs in the user namespace (a yielding body as a generator
  function, so its own assignments stay local). ``--text`` turns detection off.
- **an LLM prompt** (``--llm``): sent to an OpenAI-compatible chat endpoint with streaming on;
  the answer is spoken while it is written (see :func:`fish_notebook.speaking.chat_stream`).

``%speak [options] some text`` is the one-line form. ``%speak_config`` shows and sets the
kernel's defaults. The cell returns at once and the audio plays while later cells run, unless
``--wait``: then it blocks until the audio is complete (for nbclient or papermill runs).
While a cell blocks, the kernel queues widget clicks (a player's Stop acts only once the cell
ends): the kernel's interrupt button (Ctrl-C) is the way to stop during ``--wait``; it closes
the socket and keeps the audio so far.
"""

from __future__ import annotations

import ast
import itertools
import linecache
import os
import re
import shlex
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.utils.text import FullEvalFormatter

from . import hints, warmup
from .errors import ValidationError
from .protocol import DEFAULT_MODEL, LATENCY_MODES, FlushEvent, TextEvent
from .speaking import DEFAULT_LLM_MODEL, chat_stream, defaults, describe_backend, speak

__all__ = [
    "FLUSH_MARKER",
    "SpeakMagics",
    "describe_defaults",
    "load_ipython_extension",
    "typed_tokens",
    "unload_ipython_extension",
]

#: A line holding only this inserts a flush point in a text body.
FLUSH_MARKER = "--"

_cell_numbers = itertools.count(1)
_MISSING = object()


def typed_tokens(text: str) -> list[str | FlushEvent]:
    """Split a text body the way a typing user sends it: word by word, line by line.

    Each word keeps the whitespace that follows it (the line break too), so joining the
    strings gives the text back without the ``--`` marker lines, which become FlushEvents.
    """
    items: list[str | FlushEvent] = []
    for line in text.splitlines():
        if line.strip() == FLUSH_MARKER:
            items.append(FlushEvent())
            continue
        words = re.findall(r"\S+\s*", line + "\n")
        if not words:  # a blank line: keep the paragraph break
            if items and isinstance(items[-1], str):
                items[-1] += "\n"
            continue
        words[0] = line[: len(line) - len(line.lstrip())] + words[0]
        items.extend(words)
    return items


# --- Python bodies ----------------------------------------------------------------------------


def _top_level(tree: ast.AST) -> list[ast.AST]:
    """Every node of the module's own scope (not inside a nested def, lambda or class)."""
    found: list[ast.AST] = []
    todo = list(ast.iter_child_nodes(tree))
    while todo:
        node = todo.pop()
        found.append(node)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(node))
    return found


def _yields(tree: ast.AST) -> bool:
    return any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in _top_level(tree))


def _awaits(tree: ast.AST) -> bool:
    return any(isinstance(n, (ast.Await, ast.AsyncFor, ast.AsyncWith)) for n in _top_level(tree))


def _resolvable(node: ast.expr, namespace: dict[str, Any]) -> bool:
    """True when the root name of ``a.b.c`` exists in the namespace or the builtins."""
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    if not isinstance(node, ast.Name):
        return False
    builtins = namespace.get("__builtins__")
    names = builtins if isinstance(builtins, dict) else vars(builtins) if builtins else {}
    return node.id in namespace or node.id in names


def _is_stream(value: Any) -> bool:
    """A source a session can speak: a str, or a sync or async iterable (not bytes, not a dict)."""
    if isinstance(value, (bytes, bytearray, memoryview, dict)):
        return False
    return isinstance(value, str) or hasattr(value, "__iter__") or hasattr(value, "__aiter__")


def looks_like_code(body: str, namespace: dict[str, Any]) -> bool:
    """Whether a ``%%speak`` body is meant as a token generator rather than text.

    Conservative: prose rarely parses as Python, and when it does ("Hello, world", "Okay")
    it is a bare name or tuple, which does not count. Code counts when it yields, or when it
    ends with a call, comprehension or generator expression on a name that exists, or with a
    name bound to an iterable.
    """
    try:
        tree = ast.parse(body)
    except (SyntaxError, ValueError):
        return False
    if _yields(tree):
        return True
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return False
    for statement in tree.body[:-1]:
        if isinstance(statement, ast.Expr) and not isinstance(statement.value, ast.Call):
            return False  # a line of prose that happens to parse
    value = tree.body[-1].value
    if isinstance(value, ast.Call):
        return _resolvable(value, namespace)
    if isinstance(value, (ast.GeneratorExp, ast.ListComp)):
        return True
    if isinstance(value, ast.Name):
        found = namespace.get(value.id, _MISSING)
        return found is not _MISSING and not isinstance(found, str) and _is_stream(found)
    return False


def _register_source(code: str) -> str:
    """A file name for ``code`` that tracebacks can show lines from."""
    name = f"<speak-cell-{next(_cell_numbers)}>"
    linecache.cache[name] = (len(code), None, code.splitlines(keepends=True), name)
    return name


_WRAPPER = """\
def __fishnb_outer__(FlushEvent, TextEvent):
    def __fishnb_source__():
        pass
    return __fishnb_source__
"""


def code_source(code: str, namespace: dict[str, Any]) -> Any:
    """Run a generator body in ``namespace`` and return the source it gives.

    A body that yields becomes the body of a generator function (async when it awaits),
    whose globals are the namespace; the generator is returned, not yet started. Otherwise
    the body runs like a cell and its final expression is returned. Raises UsageError when
    neither applies or the result is not speakable; the code's own errors propagate.
    """
    filename = _register_source(code)
    try:
        tree = ast.parse(code, filename)
    except SyntaxError as exc:
        raise UsageError(f"--gen: the cell is not valid Python: {exc}") from None
    if _yields(tree):
        outer = ast.parse(_WRAPPER)
        outer_def = outer.body[0]
        assert isinstance(outer_def, ast.FunctionDef)
        inner = outer_def.body[0]
        assert isinstance(inner, ast.FunctionDef)
        inner.body = tree.body
        if _awaits(tree):
            fields = {name: getattr(inner, name) for name in inner._fields}
            async_inner = ast.AsyncFunctionDef(**fields)
            ast.copy_location(async_inner, inner)
            outer_def.body[0] = async_inner
        ast.fix_missing_locations(outer)
        scratch: dict[str, Any] = {}
        exec(compile(outer, filename, "exec"), namespace, scratch)
        make: Callable[..., Callable[[], Any]] = scratch["__fishnb_outer__"]
        return make(FlushEvent, TextEvent)()
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        raise UsageError(
            "--gen: the code must yield its tokens, or end with an expression that gives "
            'them (for example paced("Hello there."))'
        )
    last = tree.body[-1]
    assert isinstance(last, ast.Expr)
    if len(tree.body) > 1:
        exec(compile(ast.Module(tree.body[:-1], type_ignores=[]), filename, "exec"), namespace)
    value = eval(compile(ast.Expression(last.value), filename, "eval"), namespace)
    if not _is_stream(value):
        raise UsageError(
            f"the cell's last expression gave a {type(value).__name__}, not text or an "
            "iterable of text: end the cell with a generator, a list of str or an LLM stream"
        )
    return value


def interpolate(text: str, namespace: dict[str, Any]) -> str:
    """Replace ``{expression}`` with its value in ``namespace``, as IPython does for ``!``."""
    try:
        return str(FullEvalFormatter().vformat(text, (), namespace))
    except Exception as exc:
        raise UsageError(
            f"could not fill in {{...}} in the text ({type(exc).__name__}: {exc}); "
            "write {{ and }} for literal braces, or add --raw"
        ) from None


# --- option parsing -------------------------------------------------------------------------


def _speech_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options shared by ``%%speak`` and ``%speak``."""
    options: list[tuple[tuple[str, ...], dict[str, Any]]] = [
        (("--voice",), {"metavar": "ID", "help": "the voice (reference_id)"}),
        (("--model",), {"help": f"the TTS model header (default {DEFAULT_MODEL})"}),
        (("--latency",), {"choices": LATENCY_MODES, "help": "how eagerly to start speaking"}),
        (("--speed",), {"type": float, "help": "speaking rate, 0.5 to 2.0"}),
        (("--volume",), {"type": float, "metavar": "DB", "help": "loudness, -20 to 20 dB"}),
        (("--save",), {"metavar": "PATH", "help": "write the audio (.wav, .mp3, .vtt, .srt)"}),
        (
            ("--words",),
            {"action": "store_true", "help": "word timings: the transcript lights up as heard"},
        ),
        (("--wait",), {"action": "store_true", "help": "block until the audio is complete"}),
        (("--local",), {"action": "store_true", "help": "use the embedded local server"}),
        (("--cloud",), {"action": "store_true", "help": "use Fish Audio (needs FISH_API_KEY)"}),
        (("--url",), {"help": "use the server at this http(s)/ws(s) URL"}),
        (("-o", "--output"), {"metavar": "NAME", "help": "store the Session in variable NAME"}),
        (("-q", "--quiet"), {"action": "store_true", "help": "no player"}),
        (("--text",), {"action": "store_true", "help": "the body is text (no detection)"}),
        (("--raw",), {"action": "store_true", "help": "do not fill in {expressions}"}),
        (("--gen",), {"action": "store_true", "help": "the body is Python giving tokens"}),
        (("--llm",), {"action": "store_true", "help": "the body is a prompt for an LLM"}),
        (
            ("--llm-model",),
            {"metavar": "NAME", "help": f"the LLM (default {DEFAULT_LLM_MODEL})"},
        ),
        (("--system",), {"help": "a system message for the LLM"}),
        (("--llm-url",), {"metavar": "URL", "help": "the LLM server (default OPENAI_BASE_URL)"}),
        (("--llm-key",), {"metavar": "KEY", "help": "the LLM key (default OPENAI_API_KEY)"}),
    ]
    for names, kwargs in reversed(options):
        func = argument(*names, **kwargs)(func)
    return func


def _token_end(line: str, pos: int) -> int:
    """End of the shell-like token starting at ``pos`` (quotes may hold spaces)."""
    end = pos
    quote: str | None = None
    while end < len(line):
        ch = line[end]
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch.isspace():
            break
        end += 1
    return end


def split_line(parser: Any, line: str) -> tuple[str, str]:
    """Split a ``%speak`` line into its options and the text after them.

    Options come first; the text starts at the first word that is not an option (or after
    a lone ``--``) and is kept verbatim, quotes and all.
    """
    actions = parser._option_string_actions
    pos = opts_end = 0
    while True:
        pos = len(line) - len(line[pos:].lstrip()) if pos < len(line) else pos
        if pos >= len(line) or line[pos] != "-":
            break
        end = _token_end(line, pos)
        token = line[pos:end]
        if token == "--":
            return line[:opts_end], line[end:].strip()
        name = token.split("=", 1)[0]
        action = actions.get(name)
        if action is None:
            if re.fullmatch(r"-[\d.]+\S*", token):
                break  # "-5 degrees": text, not an option
            raise UsageError(f"unrecognized option {name} (see %speak?)")
        pos = end
        if action.nargs != 0 and "=" not in token:
            pos = len(line) - len(line[pos:].lstrip())
            pos = _token_end(line, pos)
        opts_end = pos
    return line[:opts_end], line[opts_end:].strip()


def _parse(magic: Any, line: str) -> Any:
    """Parse options with shell quoting (IPython's own splitter keeps the quotes)."""
    try:
        argv = shlex.split(line)
    except ValueError as exc:  # unbalanced quotes
        raise UsageError(f"cannot read the options: {exc}") from None
    return magic.parser.parse_args(argv)  # its error() raises UsageError


# --- the magics -----------------------------------------------------------------------------


@magics_class
class SpeakMagics(Magics):
    """``%%speak``, ``%speak`` and ``%speak_config``; see the module docstring."""

    @magic_arguments()
    @_speech_options
    @line_cell_magic
    def speak(self, line: str, cell: str | None = None) -> None:
        """Speak text, a generator's tokens, or an LLM's answer, playing while it streams.

        %%speak [options]   -> the cell body is text ({expr} filled in; a line with only
                               -- is a flush point), Python giving tokens (--gen, or
                               detected), or a prompt (--llm).
        %speak [options] text to say

        Returns at once; the audio plays while later cells run. With --wait the cell blocks
        until the audio is complete; stop it with the kernel's interrupt button (widget
        clicks wait while a cell blocks). -o NAME keeps the Session (audio, metrics, save()).
        """
        if cell is None:
            options, body = split_line(self.speak.parser, line)
        else:
            options, body = line, cell
        args = _parse(self.speak, options)
        self._run(args, body, one_line=cell is None)

    def _run(self, args: Any, body: str, *, one_line: bool) -> None:
        modes = [name for name in ("text", "gen", "llm") if getattr(args, name)]
        if len(modes) > 1:
            raise UsageError(f"choose one of --{' / --'.join(modes)}")
        backends = [name for name in ("local", "cloud") if getattr(args, name)]
        if args.url:
            backends.append("url")
        if len(backends) > 1:
            raise UsageError(f"choose one of --{' / --'.join(backends)}")
        if args.output is not None and not args.output.isidentifier():
            raise UsageError(f"-o needs a variable name, got {args.output!r}")
        namespace: dict[str, Any] = self.shell.user_ns if self.shell is not None else {}

        source = self._source(args, body, namespace, modes[0] if modes else None, one_line)
        try:
            session = speak(
                source,
                voice=args.voice,
                model=args.model,
                latency=args.latency,
                speed=args.speed,
                volume=args.volume,
                save=args.save,
                backend=backends[0] if backends and backends[0] != "url" else None,
                base_url=args.url,
                display=not args.quiet,
                timestamps=args.words,
            )
        except ValidationError as exc:
            raise UsageError(str(exc)) from None
        if args.output is not None:
            namespace[args.output] = session
        if args.wait:
            session.wait()

    def _source(
        self,
        args: Any,
        body: str,
        namespace: dict[str, Any],
        mode: str | None,
        one_line: bool,
    ) -> Any:
        if mode == "llm":
            prompt = body.strip() if args.raw else interpolate(body.strip(), namespace)
            if not prompt:
                raise UsageError("--llm: the prompt is empty")
            try:
                return chat_stream(
                    prompt,
                    model=args.llm_model,
                    system=args.system,
                    base_url=args.llm_url,
                    api_key=args.llm_key,
                )
            except ValidationError as exc:
                raise UsageError(f"--llm: {exc}") from None
        if mode == "gen" or (mode is None and looks_like_code(body, namespace)):
            if not body.strip():
                raise UsageError("--gen: the cell is empty")
            return code_source(body, namespace)
        text = body if args.raw else interpolate(body, namespace)
        text = text.strip("\n") if not one_line else text.strip()
        items = typed_tokens(text)
        if not any(isinstance(item, str) and item.strip() for item in items):
            raise UsageError("nothing to speak: the text is empty")
        return items

    @magic_arguments()
    @argument("--voice", metavar="ID", help="the voice (reference_id); '' to unset")
    @argument("--model", help="the TTS model; '' to unset")
    @argument("--latency", choices=LATENCY_MODES, help="normal, balanced or low")
    @argument("--speed", type=float, help="speaking rate, 0.5 to 2.0")
    @argument("--volume", type=float, metavar="DB", help="loudness, -20 to 20 dB")
    @argument("--auto", action="store_true", help="backend: FISH_BASE_URL, cloud or local")
    @argument("--local", action="store_true", help="backend: the embedded local server")
    @argument("--cloud", action="store_true", help="backend: Fish Audio (needs FISH_API_KEY)")
    @argument("--url", help="backend: the server at this URL")
    @argument("--llm-model", metavar="NAME", help="the LLM for --llm; '' to unset")
    @argument("--llm-url", metavar="URL", help="the LLM server for --llm; '' to unset")
    @argument("--reset", action="store_true", help="forget every default first")
    @line_magic
    def speak_config(self, line: str) -> None:
        """Show, or set, the defaults of %%speak, speak() and new panels in this kernel.

        Keys are never shown: they come from FISH_API_KEY / OPENAI_API_KEY.
        """
        args = _parse(self.speak_config, line)
        backends = [name for name in ("auto", "local", "cloud") if getattr(args, name)]
        if args.url:
            backends.append("url")
        if len(backends) > 1:
            raise UsageError(f"choose one of --{' / --'.join(backends)}")
        changes: dict[str, Any] = {}
        for name in ("voice", "model", "llm_model", "llm_url"):
            value = getattr(args, name)
            if value is not None:
                changes[name] = value.strip() or None
        for name in ("latency", "speed", "volume"):
            value = getattr(args, name)
            if value is not None:
                changes[name] = value
        if backends:
            kind = backends[0]
            changes["backend"] = "auto" if kind == "url" else kind
            changes["url"] = args.url if kind == "url" else None
        if args.reset:
            defaults.reset()
        try:
            defaults.update(**changes)
        except ValidationError as exc:
            raise UsageError(str(exc)) from None
        print(describe_defaults())


def describe_defaults() -> str:
    """The kernel defaults as a short table; unset values show what applies, in brackets."""

    def shown(value: Any, fallback: str) -> str:
        return str(value) if value is not None else f"({fallback})"

    fish_key = "set (hidden)" if os.environ.get("FISH_API_KEY") else "not set"
    openai_key = "set (hidden)" if os.environ.get("OPENAI_API_KEY") else "not set"
    rows = [
        ("backend", describe_backend()),
        ("voice", shown(defaults.voice, "server default")),
        ("model", shown(defaults.model, DEFAULT_MODEL)),
        ("latency", shown(defaults.latency, "balanced")),
        ("speed", shown(defaults.speed, "1.0")),
        ("volume", shown(defaults.volume, "0 dB")),
        ("llm model", shown(defaults.llm_model, DEFAULT_LLM_MODEL)),
        ("llm url", shown(defaults.llm_url, "OPENAI_BASE_URL, or OpenAI")),
        ("FISH_API_KEY", fish_key),
        ("OPENAI_API_KEY", openai_key),
    ]
    lines = ["fish-notebook defaults for this kernel:"]
    lines += [f"  {name:<15}{value}" for name, value in rows]
    lines.append("Change with e.g. %speak_config --voice ID --latency low; --reset forgets all.")
    return "\n".join(lines)


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics (``%load_ext fish_notebook``) and the ``asyncio.run`` hint."""
    ipython.register_magics(SpeakMagics)
    hints.install(ipython)
    warmup.start_warmup()


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the magics again (``%unload_ext fish_notebook``)."""
    hints.uninstall(ipython)
    magics = ipython.magics_manager.magics
    for kind, name in (("line", "speak"), ("cell", "speak"), ("line", "speak_config")):
        magics[kind].pop(name, None)
