"""``%%converse``: a voice conversation in a cell (registered by ``%load_ext fish_notebook``).

::

    %%converse --llm --llm-model gpt-4o-mini
    You are a terse assistant. Answer in one sentence.

The cell shows a :class:`~fish_notebook.voicechat.VoiceChat`; its body is one of:

- **the system prompt** (the default): with ``--llm`` (and ``--llm-model``, ``--llm-url``,
  ``--llm-key`` as for ``%%speak --llm``) an OpenAI-compatible model answers; with
  ``--agent EXPR`` the agent is that Python expression; without either, the default agent
  (the LLM when one is configured, else the echo agent). Taken as written: no ``{...}``
  filling, so a prompt may hold braces.
- **Python that makes the agent** (``--code``): it runs in the user namespace; the agent is
  its last expression, else the variable ``agent`` it sets.

``-o NAME`` keeps the chat in a variable; ``--listen`` turns the microphone on at once;
``--push-to-talk`` starts in that mode. Running the cell again ends the previous
conversation of this magic (its microphone and loop).
"""

from __future__ import annotations

import ast
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display

from .agents import Agent, llm_agent
from .errors import FishNotebookError
from .protocol import LATENCY_MODES
from .voicechat import HANDS_FREE, PUSH_TO_TALK, VoiceChat

__all__ = [
    "ConverseMagics",
    "agent_from_code",
    "load_ipython_extension",
    "unload_ipython_extension",
]


def agent_from_code(code: str, namespace: dict[str, Any]) -> Agent:
    """Run ``code`` in ``namespace``; the agent is its last expression, else ``agent``."""
    tree = ast.parse(code, "<%%converse>", "exec")
    last = tree.body[-1] if tree.body else None
    if isinstance(last, ast.Expr):
        body = ast.Module(body=tree.body[:-1], type_ignores=[])
        exec(compile(body, "<%%converse>", "exec"), namespace)
        agent = eval(compile(ast.Expression(last.value), "<%%converse>", "eval"), namespace)
    else:
        exec(compile(tree, "<%%converse>", "exec"), namespace)
        agent = namespace.get("agent")
    if not callable(agent):
        raise UsageError(
            "--code: end the cell with the agent (a callable taking the messages and "
            f"returning text), or set `agent`; got {type(agent).__name__}"
        )
    return agent


@magics_class
class ConverseMagics(Magics):
    """``%%converse``; see the module docstring. ``chat`` is the latest conversation."""

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.chat: VoiceChat | None = None

    @magic_arguments()
    @argument("--llm", action="store_true", help="an OpenAI-compatible LLM answers")
    @argument("--llm-model", metavar="NAME", help="the LLM (default as for %%speak --llm)")
    @argument("--llm-url", metavar="URL", help="the LLM server (default OPENAI_BASE_URL)")
    @argument("--llm-key", metavar="KEY", help="the LLM key (default OPENAI_API_KEY)")
    @argument("--agent", metavar="EXPR", help="the agent: a Python expression")
    @argument("--code", action="store_true", help="the body is Python that makes the agent")
    @argument("--voice", metavar="ID", help="the answer's voice (reference_id)")
    @argument("--model", help="the TTS model")
    @argument("--latency", choices=LATENCY_MODES, help="normal, balanced or low")
    @argument("--speed", type=float, help="speaking rate, 0.5 to 2.0")
    @argument("--language", help="the user's language for speech recognition")
    @argument("--local", action="store_true", help="use the embedded local server")
    @argument("--cloud", action="store_true", help="use Fish Audio (needs FISH_API_KEY)")
    @argument("--url", help="use the server at this URL")
    @argument("--min-barge-in", type=float, metavar="S", help="seconds of speech that cut in")
    @argument("--push-to-talk", action="store_true", help="hold a button to talk")
    @argument("--listen", action="store_true", help="turn the microphone on at once")
    @argument("-o", "--output", metavar="NAME", help="keep the VoiceChat in variable NAME")
    @line_cell_magic
    def converse(self, line: str, cell: str | None = None) -> None:
        """Talk with an agent: a microphone, the conversation, and the answers spoken.

        %%converse [options]   -> the body is the system prompt (--llm, --agent EXPR, or
                                  the default agent), or with --code Python whose last
                                  expression (or `agent`) is the agent.
        %converse [options]    -> the same without a body.
        """
        try:
            args = self.converse.parser.parse_args(shlex.split(line))
        except ValueError as exc:
            raise UsageError(f"cannot read the options: {exc}") from None
        namespace: dict[str, Any] = self.shell.user_ns if self.shell is not None else {}
        agent, system = self._agent(args, cell or "", namespace)
        if self.chat is not None:
            self.chat.close()
            self.chat = None
        try:
            chat = VoiceChat(
                agent,
                system=system,
                mode=PUSH_TO_TALK if args.push_to_talk else HANDS_FREE,
                listen=args.listen,
                **self._loop_options(args),
            )
        except FishNotebookError as exc:
            raise UsageError(str(exc)) from None
        self.chat = chat
        if args.output:
            namespace[args.output] = chat
        display(chat)

    @staticmethod
    def _agent(args: Any, body: str, namespace: dict[str, Any]) -> tuple[Agent | None, str | None]:
        if sum([args.llm, args.agent is not None, args.code]) > 1:
            raise UsageError("choose one of --llm, --agent and --code")
        if args.code:
            if not body.strip():
                raise UsageError("--code: the cell is empty")
            return agent_from_code(body, namespace), None
        system = body.strip() or None
        if args.llm:
            try:
                agent = llm_agent(model=args.llm_model, base_url=args.llm_url, api_key=args.llm_key)
            except FishNotebookError as exc:
                raise UsageError(f"--llm: {exc}") from None
            return agent, system
        if args.agent is not None:
            value = eval(args.agent, namespace)
            if not callable(value):
                raise UsageError(f"--agent: {args.agent} is not callable")
            return value, system
        return None, system

    @staticmethod
    def _loop_options(args: Any) -> dict[str, Any]:
        if args.local + args.cloud + (args.url is not None) > 1:
            raise UsageError("choose one of --local, --cloud and --url")
        options: dict[str, Any] = {
            "voice": args.voice,
            "model": args.model,
            "latency": args.latency,
            "speed": args.speed,
            "language": args.language,
            "backend": "local" if args.local else "cloud" if args.cloud else None,
            "base_url": args.url,
        }
        if args.min_barge_in is not None:
            options["min_barge_in_s"] = args.min_barge_in
        return options


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%%converse`` (``fish_notebook.magics`` calls this)."""
    ipython.register_magics(ConverseMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """Remove ``%%converse`` again, closing its conversation."""
    manager = ipython.magics_manager
    instance = manager.registry.pop("ConverseMagics", None)
    if instance is not None and instance.chat is not None:
        instance.chat.close()
    for kind in ("line", "cell"):
        manager.magics[kind].pop("converse", None)
