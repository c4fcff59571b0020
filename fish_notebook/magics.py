"""``%load_ext fish_notebook``: the ``%%speak`` and ``%speak`` magics, and ``%speak_config``
(and ``%%converse``, which lives with the voice chat: :mod:`fish_notebook.converse`).

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
import contextlib
import dataclasses
import itertools
import linecache
import os
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.utils.text import FullEvalFormatter
from traitlets import Float, TraitError, Unicode, observe, validate
from traitlets.config import Configurable

from . import converse, hints, warmup
from .chat import Conversation
from .dialogue import parse_dialogue, parse_voice_map
from .errors import ValidationError
from .protocol import DEFAULT_MODEL, LATENCY_MODES, FlushEvent, TextEvent
from .recording import PLAYBACK_POLICIES
from .speaking import (
    BACKENDS,
    DEFAULT_LLM_MODEL,
    chat_stream,
    defaults,
    describe_backend,
    speak,
)

__all__ = [
    "FLUSH_MARKER",
    "SETTINGS",
    "SpeakMagics",
    "SpeakSettings",
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


#: The options shared by ``%%speak`` and ``%speak``: (names, argparse keywords).
_SPEECH_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
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
    (
        ("--interrupt",),
        {"action": "store_true", "help": "fade out whatever speaks in the page, speak now"},
    ),
    (
        ("--overlap",),
        {"action": "store_true", "help": "speak at once, over other speech (no queue)"},
    ),
    (("--text",), {"action": "store_true", "help": "the body is text (no detection)"}),
    (("--raw",), {"action": "store_true", "help": "do not fill in {expressions}"}),
    (("--gen",), {"action": "store_true", "help": "the body is Python giving tokens"}),
    (
        ("--dialogue",),
        {
            "action": "store_true",
            "help": "the body is a dialogue: 'Name: line' lines, one voice per speaker "
            "(S2 models); a blank line or -- is a flush point",
        },
    ),
    (
        ("--voices",),
        {
            "metavar": "MAP",
            "help": "with --dialogue: the speakers' voices, alice=ID,bob=ID "
            "(others get --voice or the default)",
        },
    ),
    (("--llm",), {"action": "store_true", "help": "the body is a prompt for an LLM"}),
    (
        ("--speak-markup",),
        {
            "action": "store_true",
            "help": "read markdown as written: by default an --llm answer is read as "
            "speech (no asterisks or hashes, a code block as a short note, URLs as "
            "their host; the transcript shows what was skipped, greyed)",
        },
    ),
    (
        ("--chat",),
        {
            "action": "store_true",
            "help": "with --llm: the model sees the earlier --chat turns of this kernel "
            "(what was heard of its answers); %speak_config --reset-chat forgets them",
        },
    ),
    (
        ("--llm-model",),
        {"metavar": "NAME", "help": f"the LLM (default {DEFAULT_LLM_MODEL})"},
    ),
    (("--system",), {"help": "a system message for the LLM"}),
    (("--llm-url",), {"metavar": "URL", "help": "the LLM server (default OPENAI_BASE_URL)"}),
    (("--llm-key",), {"metavar": "KEY", "help": "the LLM key (default OPENAI_API_KEY)"}),
]


def _speech_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``func`` the options shared by ``%%speak`` and ``%speak``."""
    for names, kwargs in reversed(_SPEECH_OPTIONS):
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


# --- the kernel's defaults, as IPython configuration -----------------------------------------

#: The settings of :class:`SpeakSettings`, which are the fields of ``speaking.defaults``.
SETTINGS = (
    "voice",
    "model",
    "latency",
    "speed",
    "volume",
    "backend",
    "url",
    "llm_model",
    "llm_url",
    "policy",
)

#: Where a setting's value came from, as ``%speak_config`` shows it.
_ORIGINS = {
    "config": "%config / ipython_config.py",
    "%speak_config": "%speak_config",
    "code": "set in Python (fish_notebook.speaking.defaults)",
}


def _setting(help: str, *, number: bool = False) -> Any:
    kind = Float if number else Unicode
    return kind(None, allow_none=True, help=help).tag(config=True)


class SpeakSettings(Configurable):
    """The kernel's speaking defaults as traitlets: ``%config SpeakMagics.latency = "low"``
    for this kernel, ``c.SpeakMagics.voice = "ID"`` in ``ipython_config.py`` for every one.

    Each value is checked by :meth:`SpeakDefaults.check` (the one home of those rules) and
    written through to :data:`fish_notebook.speaking.defaults`, which ``speak()`` and the
    panel read; the settings and ``defaults`` never disagree. ``None`` (or ``""``) unsets.
    """

    voice = _setting("The voice (reference_id); unset: the server's default voice.")
    model = _setting(f"The TTS model header; unset: {DEFAULT_MODEL}.")
    latency = _setting(f"How eagerly to start speaking: one of {', '.join(LATENCY_MODES)}.")
    speed = _setting("Speaking rate, 0.5 to 2.0; unset: 1.0.", number=True)
    volume = _setting("Loudness, -20 to 20 dB; unset: 0.", number=True)
    backend = Unicode("auto", help=f"Where speech goes: one of {', '.join(BACKENDS)}.").tag(
        config=True
    )
    url = _setting("The TTS server's URL (http(s) or ws(s)); overrides backend.")
    llm_model = _setting(f"The LLM of %%speak --llm; unset: OPENAI_MODEL or {DEFAULT_LLM_MODEL}.")
    llm_url = _setting("The LLM server of %%speak --llm; unset: OPENAI_BASE_URL, or OpenAI.")
    policy = Unicode(
        "queue",
        help="How speech meets other speech in the page: queue (one voice at a time, in "
        "start order), interrupt (fade out what plays, speak now) or overlap (at once).",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        self._origins: dict[str, str] = {}  # setting -> where its value came from
        self._origin_now = "config"  # what a change right now is attributed to
        super().__init__(**kwargs)  # loads the configuration: writes through, origin "config"
        self.sync_from_defaults()

    @validate(*SETTINGS)
    def _check_setting(self, proposal: Any) -> Any:
        name, value = proposal["trait"].name, proposal["value"]
        if isinstance(value, str) and not value.strip():
            value = {"backend": "auto", "policy": "queue"}.get(name)
        try:
            dataclasses.replace(defaults, **{name: value}).check()
        except ValidationError as exc:
            raise TraitError(f"SpeakMagics.{name}: {exc}") from None
        return value

    @observe(*SETTINGS)
    def _write_through(self, change: Any) -> None:
        name = change["name"]
        if getattr(defaults, name) != change["new"]:
            defaults.update(**{name: change["new"]})
        self._origins[name] = self._origin_now

    @contextlib.contextmanager
    def _changes_from(self, origin: str) -> Iterator[None]:
        saved, self._origin_now = self._origin_now, origin
        try:
            yield
        finally:
            self._origin_now = saved

    def sync_from_defaults(self) -> None:
        """Take the values ``defaults`` holds when code changed it directly (origin "code")."""
        with self._changes_from("code"):
            for name in SETTINGS:
                if getattr(self, name) != getattr(defaults, name):
                    setattr(self, name, getattr(defaults, name))

    def set_defaults(self, changes: Mapping[str, Any], *, reset: bool = False) -> None:
        """``%speak_config``'s changes, all checked before any is made (UsageError if one is
        bad); ``reset`` first brings every setting back to the library's default."""
        try:
            base = dataclasses.replace(defaults, **self._library_defaults()) if reset else defaults
            dataclasses.replace(base, **changes).check()
        except ValidationError as exc:
            raise UsageError(str(exc)) from None
        if reset:
            with self._changes_from("default"):
                for name, value in self._library_defaults().items():
                    setattr(self, name, value)
            self._origins.clear()
        with self._changes_from("%speak_config"):
            for name, value in changes.items():
                setattr(self, name, value)

    def _library_defaults(self) -> dict[str, Any]:
        return {name: self.trait_defaults(name) for name in SETTINGS}

    def origins(self) -> dict[str, str]:
        """Where each setting's value came from: ``default``, ``config`` (``%config`` or
        ``ipython_config.py``), ``%speak_config`` or ``code``."""
        return {name: self._origins.get(name, "default") for name in SETTINGS}


# --- the magics -----------------------------------------------------------------------------


def _policy(args: Any) -> str | None:
    """--interrupt / --overlap (None: the kernel default, queue unless set)."""
    if args.interrupt and args.overlap:
        raise UsageError("choose one of --interrupt / --overlap")
    return "interrupt" if args.interrupt else "overlap" if args.overlap else None


def _choose(args: Any) -> tuple[str | None, str | None]:
    """The body's mode and the backend the options ask for; UsageError for a clash."""
    modes = [name for name in ("text", "gen", "llm", "dialogue") if getattr(args, name)]
    if len(modes) > 1:
        raise UsageError(f"choose one of --{' / --'.join(modes)}")
    backends = [name for name in ("local", "cloud") if getattr(args, name)]
    if args.url:
        backends.append("url")
    if len(backends) > 1:
        raise UsageError(f"choose one of --{' / --'.join(backends)}")
    if args.output is not None and not args.output.isidentifier():
        raise UsageError(f"-o needs a variable name, got {args.output!r}")
    if args.voices is not None and not args.dialogue:
        raise UsageError("--voices goes with --dialogue")
    if args.chat and not args.llm:
        raise UsageError("--chat goes with --llm")
    backend = backends[0] if backends and backends[0] != "url" else None
    return (modes[0] if modes else None), backend


@magics_class
class SpeakMagics(Magics, SpeakSettings):
    """``%%speak``, ``%speak`` and ``%speak_config``; see the module docstring.

    Its settings (:class:`SpeakSettings`) are the kernel's defaults; ``conversation`` holds
    the turns of ``%%speak --llm --chat``.
    """

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        self.conversation = Conversation()
        super().__init__(shell=shell, **kwargs)

    @magic_arguments()
    @_speech_options
    @line_cell_magic
    def speak(self, line: str, cell: str | None = None) -> None:
        """Speak text, a generator's tokens, a dialogue, or an LLM's answer, playing while it
        streams.

        %%speak [options]   -> the cell body is text ({expr} filled in; a line with only
                               -- is a flush point), Python giving tokens (--gen, or
                               detected), a dialogue (--dialogue: 'Name: line' lines), or a
                               prompt (--llm; --chat keeps the conversation).
        %speak [options] text to say

        Returns at once; the audio plays while later cells run. With --wait the cell blocks
        until the audio is complete; stop it with the kernel's interrupt button (widget
        clicks wait while a cell blocks). -o NAME keeps the Session (audio, metrics, save()).
        Defaults: %speak_config, or %config SpeakMagics.
        """
        if cell is None:
            options, body = split_line(self.speak.parser, line)
        else:
            options, body = line, cell
        args = _parse(self.speak, options)
        self._run(args, body, one_line=cell is None)

    def _run(self, args: Any, body: str, *, one_line: bool) -> None:
        mode, backend = _choose(args)
        namespace: dict[str, Any] = self.shell.user_ns if self.shell is not None else {}
        request_options: dict[str, Any] = {}
        prompt: str | None = None
        if mode == "llm":
            prompt = self._prompt(args, body, namespace)
            source = self._llm_source(args, prompt)
        elif mode == "dialogue":
            source, request_options = self._dialogue_source(args, body, namespace)
        else:
            source = self._source(args, body, namespace, mode, one_line)
        try:
            session = speak(
                source,
                voice=args.voice,
                model=args.model,
                latency=args.latency,
                speed=args.speed,
                volume=args.volume,
                save=args.save,
                backend=backend,
                base_url=args.url,
                display=not args.quiet,
                timestamps=args.words,
                speakable=False if args.speak_markup else None,
                policy=_policy(args),
                **request_options,
            )
        except ValidationError as exc:
            raise UsageError(str(exc)) from None
        if args.chat and prompt is not None:
            self.conversation.add_user(prompt)
            self.conversation.add_answer(session)
        if args.output is not None:
            namespace[args.output] = session
        if args.wait:
            session.wait()

    @staticmethod
    def _prompt(args: Any, body: str, namespace: dict[str, Any]) -> str:
        prompt = body.strip() if args.raw else interpolate(body.strip(), namespace)
        if not prompt:
            raise UsageError("--llm: the prompt is empty")
        return prompt

    def _llm_source(self, args: Any, prompt: str) -> Any:
        history = self.conversation.messages() if args.chat else []
        try:
            return chat_stream(
                prompt,
                model=args.llm_model,
                system=args.system,
                history=history,
                base_url=args.llm_url,
                api_key=args.llm_key,
            )
        except ValidationError as exc:
            raise UsageError(f"--llm: {exc}") from None

    @staticmethod
    def _dialogue_source(
        args: Any, body: str, namespace: dict[str, Any]
    ) -> tuple[list[str | FlushEvent], dict[str, Any]]:
        """A dialogue's tokens (its tagged lines, word by word) and its reference_id list."""
        script = body if args.raw else interpolate(body, namespace)
        try:
            dialogue = parse_dialogue(script)
            voices = parse_voice_map(args.voices) if args.voices else {}
            ids = dialogue.voices(voices, args.voice or defaults.voice)
        except ValidationError as exc:
            raise UsageError(f"--dialogue: {exc}") from None
        items: list[str | FlushEvent] = []
        for part in dialogue.parts:
            items.extend(typed_tokens(part) if isinstance(part, str) else [part])
        return items, ({"reference_id": ids} if ids is not None else {})

    @staticmethod
    def _source(
        args: Any, body: str, namespace: dict[str, Any], mode: str | None, one_line: bool
    ) -> Any:
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
    @argument(
        "--policy", choices=PLAYBACK_POLICIES, help="queue, interrupt or overlap other speech"
    )
    @argument("--reset", action="store_true", help="forget every default first")
    @argument("--reset-chat", action="store_true", help="forget the --chat conversation")
    @line_magic
    def speak_config(self, line: str) -> None:
        """Show, or set, the defaults of %%speak, speak() and new panels in this kernel.

        Each value shows where it came from: the library's default, IPython configuration
        (%config SpeakMagics.voice = "ID", or c.SpeakMagics.voice in ipython_config.py),
        %speak_config, or code that set fish_notebook.speaking.defaults.
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
        for name in ("latency", "speed", "volume", "policy"):
            value = getattr(args, name)
            if value is not None:
                changes[name] = value
        if backends:
            kind = backends[0]
            changes["backend"] = "auto" if kind == "url" else kind
            changes["url"] = args.url if kind == "url" else None
        self.sync_from_defaults()
        self.set_defaults(changes, reset=args.reset)
        if args.reset_chat:
            self.conversation.reset()
        print(describe_defaults(self.origins(), chat_turns=len(self.conversation)))


def describe_defaults(
    origins: Mapping[str, str] | None = None, chat_turns: int | None = None
) -> str:
    """The kernel defaults as a short table; unset values show what applies, in brackets,
    and set ones where they came from (``origins``, as :meth:`SpeakSettings.origins`)."""
    origins = origins or {}

    def shown(value: Any, fallback: str) -> str:
        return str(value) if value is not None else f"({fallback})"

    def source(*names: str) -> str:
        found = [_ORIGINS[o] for o in (origins.get(n, "default") for n in names) if o in _ORIGINS]
        return f"   [{found[0]}]" if found else ""

    fish_key = "set (hidden)" if os.environ.get("FISH_API_KEY") else "not set"
    openai_key = "set (hidden)" if os.environ.get("OPENAI_API_KEY") else "not set"
    rows = [
        ("backend", describe_backend() + source("url", "backend")),
        ("voice", shown(defaults.voice, "server default") + source("voice")),
        ("model", shown(defaults.model, DEFAULT_MODEL) + source("model")),
        ("latency", shown(defaults.latency, "balanced") + source("latency")),
        ("speed", shown(defaults.speed, "1.0") + source("speed")),
        ("volume", shown(defaults.volume, "0 dB") + source("volume")),
        ("llm model", shown(defaults.llm_model, DEFAULT_LLM_MODEL) + source("llm_model")),
        ("llm url", shown(defaults.llm_url, "OPENAI_BASE_URL, or OpenAI") + source("llm_url")),
        ("policy", defaults.policy + source("policy")),
        ("FISH_API_KEY", fish_key),
        ("OPENAI_API_KEY", openai_key),
    ]
    if chat_turns is not None:
        rows.append(("chat", f"{chat_turns} turns (--reset-chat forgets them)"))
    lines = ["fish-notebook defaults for this kernel:"]
    lines += [f"  {name:<15}{value}" for name, value in rows]
    lines.append("Change with e.g. %speak_config --voice ID --latency low; --reset forgets all.")
    lines.append('For every kernel: c.SpeakMagics.voice = "ID" in ipython_config.py.')
    return "\n".join(lines)


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics (``%load_ext fish_notebook``) and the ``asyncio.run`` hint."""
    ipython.register_magics(SpeakMagics)
    converse.load_ipython_extension(ipython)  # %%converse, the voice chat's magic
    hints.install(ipython)
    warmup.start_warmup()


def unload_ipython_extension(ipython: Any) -> None:
    """Remove the magics again (``%unload_ext fish_notebook``)."""
    hints.uninstall(ipython)
    converse.unload_ipython_extension(ipython)
    manager = ipython.magics_manager
    for kind, name in (("line", "speak"), ("cell", "speak"), ("line", "speak_config")):
        manager.magics[kind].pop(name, None)
    instance = manager.registry.pop("SpeakMagics", None)
    configurables = getattr(ipython, "configurables", [])
    if instance in configurables:
        configurables.remove(instance)  # %config must not find a stale copy
