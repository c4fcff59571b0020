"""``%%speak``, ``%speak`` and ``%speak_config`` in a real IPython kernel.

One kernel (jupyter_client) serves the module; it finds the suite's embedded TTS server
through ``FISH_BASE_URL``, and the server's recorder shows what reached it: text where the
body put it, flush points where the text marked them, the request options. The audio that
came out is checked for a plausible duration and for not being silent.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fish_notebook.audio import pcm_duration, pcm_rms
from fish_notebook.local.recorder import SessionRecord
from fish_notebook.local.server import ThreadedServer
from tests.helpers import wait_until

from .llm_server import LLMServer

jupyter_client = pytest.importorskip("jupyter_client")

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

SAMPLE_RATE = 44100
SECRET = "fishnb-secret-" + "7" * 24


@dataclass
class Reply:
    """What one execution produced."""

    status: str
    ename: str | None
    evalue: str | None
    traceback: list[str]
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return "".join(
            m["content"]["text"]
            for m in self.messages
            if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
        )

    @property
    def stderr(self) -> str:
        return "".join(
            m["content"]["text"]
            for m in self.messages
            if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"
        )

    def data(self, msg_type: str) -> list[dict[str, Any]]:
        """The ``data`` bundles of the display messages of one type."""
        return [m["content"]["data"] for m in self.messages if m["msg_type"] == msg_type]


class Kernel:
    """A running kernel and the helpers the tests use to drive it."""

    def __init__(self, manager: Any, client: Any, cwd: Path) -> None:
        self.manager = manager
        self.client = client
        self.cwd = cwd

    def run(self, code: str, timeout: float = 60.0) -> Reply:
        """Execute ``code`` and collect its reply and output messages."""
        messages: list[dict[str, Any]] = []
        reply = self.client.execute_interactive(
            code, timeout=timeout, output_hook=messages.append, allow_stdin=False
        )
        content = reply["content"]
        return Reply(
            content["status"],
            content.get("ename"),
            content.get("evalue"),
            content.get("traceback", []),
            messages,
        )

    def ok(self, code: str, timeout: float = 60.0) -> Reply:
        """Execute ``code`` and fail the test if it raised."""
        reply = self.run(code, timeout)
        assert reply.status == "ok", f"{reply.ename}: {reply.evalue}\n{reply.stderr}"
        return reply

    def value(self, expression: str) -> Any:
        """Evaluate an expression in the kernel and return it through JSON."""
        out = self.ok(f"import json as _j; print(_j.dumps({expression}))").stdout
        return json.loads(out.strip().splitlines()[-1])


@contextlib.contextmanager
def running_kernel(server_url: str, cwd: Path, **extra_env: str) -> Iterator[Kernel]:
    """A kernel with FISH_BASE_URL at ``server_url`` and the extension loaded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FISH_", "OPENAI_"))}
    env["FISH_BASE_URL"] = server_url
    env.update(extra_env)
    manager = jupyter_client.KernelManager(kernel_name="python3")
    manager.start_kernel(env=env, cwd=str(cwd))
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        kernel = Kernel(manager, client, cwd)
        kernel.ok("%load_ext fish_notebook")
        yield kernel
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def kernel(
    local_server: ThreadedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kernel]:
    """One kernel for the module, with FISH_BASE_URL at the suite's embedded server."""
    with running_kernel(local_server.url, tmp_path_factory.mktemp("kernel")) as kernel:
        yield kernel


@pytest.fixture(scope="module")
def llm() -> Iterator[LLMServer]:
    """The OpenAI-compatible streaming test server."""
    with LLMServer() as server:
        yield server


def record_with(server: ThreadedServer, text: str, timeout: float = 20.0) -> SessionRecord:
    """The newest closed server session whose received text contains ``text``."""
    recorder = server.recorder
    assert recorder is not None

    def newest() -> SessionRecord | None:
        for record in reversed(recorder.sessions):
            if record.closed is not None and text in "".join(texts(record)):
                return record
        return None

    found: SessionRecord = wait_until(newest, f"a closed session with {text!r}", timeout)
    return found


def texts(record: SessionRecord) -> list[str]:
    return [f.event.text for f in record.received if f.name == "text"]  # type: ignore[union-attr]


def segments(record: SessionRecord) -> list[str]:
    """The text the server received, cut at each flush event."""
    parts = [""]
    for frame in record.received:
        if frame.name == "text":
            parts[-1] += frame.event.text  # type: ignore[union-attr]
        elif frame.name == "flush":
            parts.append("")
    return parts


def assert_speech(pcm: bytes, text: str) -> float:
    """The audio is plausible for ``text``: a duration in range, and not silent."""
    words = len(text.split())
    duration = pcm_duration(pcm, SAMPLE_RATE)
    assert 0.12 * words <= duration <= 1.2 * words + 1.0, (duration, words)
    assert pcm_rms(pcm) > 300, pcm_rms(pcm)
    return duration


# --- text bodies ------------------------------------------------------------------------------


def test_text_body_interpolates_and_flushes_where_marked(
    kernel: Kernel, local_server: ThreadedServer
) -> None:
    """{expressions} are filled in, each word goes out on its own, `--` is a flush point."""
    kernel.ok('who = "Ada"')
    kernel.ok(
        "%%speak --wait --quiet -o s_text\n"
        "Hello {who}, this is the first line.\n"
        "--\n"
        "And {2 + 3} comes after the flush.\n"
    )
    record = record_with(local_server, "Hello Ada")
    assert segments(record) == [  # the client's early flush, then the cell's `--`
        "Hello Ada, this is the first line.",
        "\n",
        "And 5 comes after the flush.\n",
    ]
    assert texts(record)[:3] == ["Hello ", "Ada, ", "this "]  # typed word by word
    assert [f.name for f in record.received][-1] == "stop"
    assert record.finish is not None and record.finish.reason == "stop"
    duration = assert_speech(record.audio, "Hello Ada, this is the first line. And 5 comes after")
    state = kernel.value("[s_text.state, s_text.duration, s_text.transcript]")
    assert state[0] == "finished"
    assert state[1] == pytest.approx(duration)
    assert "|" in state[2]  # the flush point shows in the transcript


def test_line_magic_options_reach_the_server_and_save(
    kernel: Kernel, local_server: ThreadedServer
) -> None:
    """%speak takes its options, then the text verbatim; the player shows, the file is saved."""
    reply = kernel.ok(
        "%speak --voice en_US-joe-medium --speed 1.25 --volume -3 --latency low "
        "--model s1 --save line.wav -o s_line --wait Don't stop: options first, then text."
    )
    record = record_with(local_server, "Don't stop")
    assert "".join(texts(record)).strip() == "Don't stop: options first, then text."
    start = record.received[0].event
    assert record.received[0].name == "start"
    request = start.request  # type: ignore[union-attr]
    assert request.reference_id == "en_US-joe-medium"
    assert request.latency == "low"
    assert request.prosody.speed == 1.25 and request.prosody.volume == -3
    assert request.format == "pcm"
    assert record.model_header == "s1"
    assert record.voice == "en_US-joe-medium"
    assert_speech(record.audio, "Don't stop: options first, then text.")

    widget_views = [
        d for d in reply.data("display_data") if "application/vnd.jupyter.widget-view+json" in d
    ]
    assert len(widget_views) == 1
    fallbacks = [d["text/html"] for d in reply.data("update_display_data")]
    # The static player once it ended, as MP3: a tenth of WAV's size in the saved notebook.
    assert any("<audio" in html and "data:audio/mpeg;base64," in html for html in fallbacks)

    saved = kernel.cwd / "line.wav"
    assert saved.is_file()
    assert kernel.value("[str(s_line.saved_path), s_line.state]") == ["line.wav", "finished"]


def test_words_option_gives_word_timings_and_subtitles(
    kernel: Kernel, local_server: ThreadedServer
) -> None:
    """--words asks the with-timestamp endpoint: the session has word times, saved as .vtt."""
    kernel.ok("%speak --words --save words.vtt -o s_words --wait Words light up as spoken.")
    words = kernel.value("[w.text for w in s_words.words]")
    assert " ".join(words) == "Words light up as spoken."
    vtt = (kernel.cwd / "words.vtt").read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT") and "spoken." in vtt


# --- generator bodies -------------------------------------------------------------------------


def test_yielding_body_is_detected_and_flush_events_work(
    kernel: Kernel, local_server: ThreadedServer
) -> None:
    """A body that yields is a generator; FlushEvent needs no import inside it."""
    kernel.ok(
        "%%speak --wait -q -o s_gen\n"
        "words = ['Generators ', 'speak ', 'their ', 'tokens.']\n"
        "for word in words:\n"
        "    yield word\n"
        "yield FlushEvent()\n"
        "yield TextEvent('Then some more.')\n"
    )
    record = record_with(local_server, "Generators ")
    assert texts(record)[:4] == ["Generators ", "speak ", "their ", "tokens."]
    assert segments(record) == ["Generators speak their tokens.", "Then some more."]
    assert_speech(record.audio, "Generators speak their tokens. Then some more.")
    # The generator's own names stayed local: the user namespace is untouched.
    assert kernel.value("'words' in globals()") is False


def test_final_expression_and_async_bodies(kernel: Kernel, local_server: ThreadedServer) -> None:
    """A body ending in an async iterable is detected; --gen runs an awaiting async body."""
    kernel.ok("from fish_notebook.sources import apaced")
    kernel.ok(
        "%%speak --wait -q\n"
        "apaced('An async stream of tokens. It ends here.', tokens_per_second=200,\n"
        "       first_token_delay=0, flush_at_sentence_end=True)\n"
    )
    record = record_with(local_server, "An async stream")
    assert segments(record) == ["An async stream of tokens.", " It ends here.", ""]
    assert_speech(record.audio, "An async stream of tokens. It ends here.")

    kernel.ok(
        "%%speak --gen --wait -q -o s_async\n"
        "import asyncio\n"
        "for word in ['Awaiting ', 'bodies ', 'work ', 'too.']:\n"
        "    await asyncio.sleep(0.01)\n"
        "    yield word\n"
    )
    record = record_with(local_server, "Awaiting ")
    assert texts(record) == ["Awaiting ", "bodies ", "work ", "too."]
    assert kernel.value("s_async.state") == "finished"


def test_prose_that_parses_as_python_stays_text(
    kernel: Kernel, local_server: ThreadedServer
) -> None:
    """'Hello, world' is valid Python (a tuple) but is spoken as text; --text forces text."""
    kernel.ok("%%speak --wait -q\nHello, world\n")
    record = record_with(local_server, "Hello, world")
    assert "".join(texts(record)) == "Hello, world\n"
    kernel.ok("%%speak --text --wait -q\nlen('abc')\n")
    record = record_with(local_server, "len(")
    assert "".join(texts(record)) == "len('abc')\n"


# --- speak() ----------------------------------------------------------------------------------


def test_speak_function_returns_a_session_and_shows_the_player(
    kernel: Kernel, local_server: ThreadedServer
) -> None:
    """speak() returns at once with a Session; the player shows unless display=False."""
    reply = kernel.ok(
        "from fish_notebook import speak\n"
        "s_fn = speak(['Spoken ', 'from ', 'plain ', 'Python.'])\n"
        "s_fn.wait(60)\n"
        "quiet = speak('Quiet one.', display=False, wait=True)"
    )
    views = [
        d for d in reply.data("display_data") if "application/vnd.jupyter.widget-view+json" in d
    ]
    assert len(views) == 1
    record = record_with(local_server, "Spoken ")
    assert_speech(record.audio, "Spoken from plain Python.")
    assert kernel.value("[s_fn.state, type(s_fn).__name__, quiet.state]") == [
        "finished",
        "Session",
        "finished",
    ]


# --- mistakes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("%speak --latency fast hi", "invalid choice"),
        ("%speak --speed 9 hi", "speed"),
        ("%speak --volume loud hi", "invalid float"),
        ("%speak --voise x hi", "unrecognized option --voise"),
        ("%speak --cloud hi", "FISH_API_KEY"),
        ("%speak --local --url http://127.0.0.1:9 hi", "choose one of"),
        ("%speak -o 1bad hi", "variable name"),
        ("%speak --url ftp://nowhere hi", "base_url"),
        ("%%speak --gen --llm\nhi", "choose one of"),
        ("%%speak\n\n", "nothing to speak"),
        ("%%speak\nHello {undefined_name}\n", "undefined_name"),
        ("%%speak --gen\nx = 1\n", "must yield"),
        ("%%speak --gen\n42\n", "not text or an iterable"),
        ("%speak --llm", "prompt is empty"),
        ("%speak_config --speed 0.1", "speed"),
        ("%speak_config --local --cloud", "choose one of"),
    ],
)
def test_bad_options_are_usage_errors(kernel: Kernel, code: str, message: str) -> None:
    """A mistake is IPython's UsageError: one line that says what is wrong, no traceback."""
    reply = kernel.run(code)
    assert reply.status == "error"
    assert reply.ename == "UsageError", (reply.ename, reply.evalue)
    assert message in (reply.evalue or ""), reply.evalue
    assert reply.traceback == []


# --- %speak_config ------------------------------------------------------------------------------


def test_speak_config_sets_defaults_and_never_shows_the_key(
    kernel: Kernel, local_server: ThreadedServer
) -> None:
    """Defaults apply to the next %speak; the key is shown as set, never its value."""
    kernel.ok(f"import os; os.environ['FISH_API_KEY'] = {SECRET!r}")
    try:
        shown = kernel.ok("%speak_config --voice en_US-joe-medium --latency low --speed 1.1").stdout
        assert "FISH_API_KEY   set (hidden)" in shown
        assert "latency        low" in shown and "voice          en_US-joe-medium" in shown
        assert "FISH_BASE_URL" in shown  # FISH_BASE_URL wins over the key in auto mode
        kernel.ok("%speak --wait -q Defaults now apply.")
        record = record_with(local_server, "Defaults now apply.")
        request = record.received[0].event.request  # type: ignore[union-attr]
        assert (request.latency, request.reference_id) == ("low", "en_US-joe-medium")
        assert request.prosody.speed == pytest.approx(1.1)

        cloud = kernel.ok("%speak_config --cloud").stdout
        assert "cloud" in cloud and "hidden" in cloud
        for output in (shown, cloud):
            assert SECRET not in output
        reset = kernel.ok("%speak_config --reset").stdout
        assert "(server default)" in reset and "auto -> FISH_BASE_URL" in reset
    finally:
        kernel.ok("%speak_config --reset\nos.environ.pop('FISH_API_KEY', None)")


# --- interrupt ------------------------------------------------------------------------------------


def test_interrupt_during_wait_stops_the_session_and_keeps_the_audio(
    kernel: Kernel, local_server: ThreadedServer
) -> None:
    """The interrupt button during --wait: KeyboardInterrupt, socket closed, audio kept."""
    assert local_server.recorder is not None
    before = len(local_server.recorder.sessions)
    kernel.client.execute(
        "%%speak --wait -q -o s_slow\n"
        "import time\n"
        "for i in range(400):\n"
        "    time.sleep(0.05)\n"
        "    yield f'Sentence number {i} is here. '\n",
        stop_on_error=False,  # the next requests must not be aborted after the interrupt
    )

    def speaking() -> SessionRecord | None:
        for record in local_server.recorder.sessions[before:]:  # type: ignore[union-attr]
            if "Sentence number 0" in "".join(texts(record)) and record.audio:
                return record
        return None

    record = wait_until(speaking, "the first audio of the slow session")
    kernel.manager.interrupt_kernel()
    reply = kernel.client.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    closed = local_server.recorder.wait_for(lambda r: r.id == record.id, timeout=15)
    assert closed.closed is not None  # the socket was closed
    assert "stop" not in [f.name for f in closed.received]  # cut short, not drained
    state, duration, sent = kernel.value("[s_slow.state, s_slow.duration, len(s_slow.text)]")
    assert state == "stopped"
    assert duration > 0.5
    assert sent < 400
    assert kernel.value("1 + 1") == 2  # the kernel goes on


# --- the LLM path -----------------------------------------------------------------------------


def test_llm_prompt_is_streamed_from_an_openai_compatible_server(
    kernel: Kernel, local_server: ThreadedServer, llm: LLMServer
) -> None:
    """--llm sends the prompt with stream=True and speaks each chunk's delta as it comes."""
    kernel.ok("topic = 'tests'")
    kernel.ok(
        f"%%speak --llm --llm-url {llm.url} --llm-key test-key --llm-model fake-1 "
        "--system 'Be brief.' --wait -q -o s_llm\n"
        "Say something about {topic}.\n"
    )
    request = llm.requests[-1]
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == "Bearer test-key"
    assert request["body"]["stream"] is True
    assert request["body"]["model"] == "fake-1"
    assert request["body"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say something about tests."},
    ]
    record = record_with(local_server, "Hello from the test model.")
    assert "".join(texts(record)) == llm.reply
    assert texts(record) == [t for t in llm.tokens() if t]  # one text event per delta
    assert_speech(record.audio, llm.reply)
    state, transcript = kernel.value("[s_llm.state, s_llm.transcript]")
    # One flush point, sent by the client as soon as the first sentence was complete.
    assert state == "finished" and transcript.replace(" | ", "") == llm.reply
    assert transcript.startswith("Hello from the test model. | ")


def test_llm_stream_that_breaks_midway_fails_and_keeps_the_audio(
    kernel: Kernel, local_server: ThreadedServer, llm: LLMServer
) -> None:
    """A connection cut mid-answer surfaces as the cell's error; the audio so far is kept."""
    kernel.ok(
        f"import os; os.environ['OPENAI_BASE_URL'] = {llm.url!r}; "
        "os.environ['OPENAI_API_KEY'] = 'k'"
    )
    try:
        reply = kernel.run("%%speak --llm --llm-model break-after-12 --wait -q -o s_cut\nGo.\n")
    finally:
        kernel.ok("os.environ.pop('OPENAI_BASE_URL'); os.environ.pop('OPENAI_API_KEY')")
    assert reply.status == "error"
    assert reply.ename == "APIConnectionError"
    spoken = "".join(llm.tokens()[:12])
    record = record_with(local_server, spoken)
    assert "".join(texts(record)) == spoken
    assert [f.name for f in record.received][-1] == "stop"  # what was sent is still spoken
    state, transcript, duration = kernel.value("[s_cut.state, s_cut.transcript, s_cut.duration]")
    assert state == "failed"
    assert transcript.replace(" | ", "") == spoken.strip()  # the client's early flush shows
    assert duration == pytest.approx(pcm_duration(record.audio, SAMPLE_RATE))
    assert_speech(record.audio, spoken)


def test_llm_without_openai_installed_names_the_extra(kernel: Kernel) -> None:
    """No `openai` package: MissingDependencyError saying which extra to install."""
    kernel.ok("import sys; _saved_openai = sys.modules.get('openai'); sys.modules['openai'] = None")
    try:
        reply = kernel.run("%%speak --llm --llm-url http://127.0.0.1:9/v1\nHi.\n")
    finally:
        kernel.ok(
            "if _saved_openai is None: sys.modules.pop('openai')\n"
            "else: sys.modules['openai'] = _saved_openai"
        )
    assert reply.ename == "MissingDependencyError"
    assert "fish-notebook[llm]" in (reply.evalue or "")


# --- the asyncio.run hint ---------------------------------------------------------------------


def test_asyncio_run_in_a_cell_gets_a_hint_and_other_errors_do_not(kernel: Kernel) -> None:
    """Fish's cookbook recipe ends with asyncio.run(main()): in a cell that fails (the kernel's
    loop runs), and the traceback is followed by a hint to await instead; await works."""
    kernel.ok("import asyncio\nasync def main():\n    await asyncio.sleep(0)\n    return 'spoken'")
    failed = kernel.run("asyncio.run(main())")
    assert failed.status == "error" and failed.ename == "RuntimeError"
    assert "await main()" in failed.stdout
    assert "cannot be called from a running event loop" in "".join(
        str(m["content"]) for m in failed.messages
    )
    assert kernel.ok("await main()").data("execute_result")[0]["text/plain"] == "'spoken'"
    other = kernel.run("raise RuntimeError('something else')")
    assert other.status == "error" and "await main()" not in other.stdout
    kernel.ok("%unload_ext fish_notebook")
    try:
        unloaded = kernel.run("asyncio.run(main())")
        assert unloaded.status == "error" and "await main()" not in unloaded.stdout
    finally:
        kernel.ok("%load_ext fish_notebook")


# --- configuration the IPython way ----------------------------------------------------------------


def test_config_magic_sets_the_defaults_and_speak_config_says_where_they_came_from(
    kernel: Kernel, local_server: ThreadedServer
) -> None:
    """%config SpeakMagics.x reaches speak(); %speak_config shows each value's origin."""
    try:
        kernel.ok('%config SpeakMagics.latency = "low"')
        kernel.ok("%speak_config --voice en_US-joe-medium")
        kernel.ok("import fish_notebook.speaking as _fs; _fs.defaults.model = 's1'")
        shown = kernel.ok("%speak_config").stdout
        assert "latency        low   [%config / ipython_config.py]" in shown
        assert "voice          en_US-joe-medium   [%speak_config]" in shown
        assert "model          s1   [set in Python" in shown
        assert "speed          (1.0)\n" in shown  # the library's default: no origin
        assert kernel.value("[_fs.defaults.latency, get_ipython().config.SpeakMagics.latency]") == [
            "low",
            "low",
        ]
        kernel.ok("%speak --wait -q Configured the IPython way.")
        record = record_with(local_server, "Configured the IPython way.")
        request = record.received[0].event.request  # type: ignore[union-attr]
        assert (request.latency, request.reference_id) == ("low", "en_US-joe-medium")
        assert record.model_header == "s1"

        bad = kernel.run("%config SpeakMagics.speed = 9")
        assert "SpeakMagics.speed" in bad.stderr + bad.stdout and "0.5..2" in bad.stderr
        assert kernel.value("_fs.defaults.speed") is None  # refused: nothing changed
        bad = kernel.run('%config SpeakMagics.backend = "moon"')
        assert "SpeakMagics.backend" in bad.stderr
        assert kernel.value("_fs.defaults.backend") == "auto"
    finally:
        reset = kernel.ok("%speak_config --reset").stdout
    assert "[" not in reset.split("FISH_API_KEY")[0]  # every value back to its default
    assert kernel.value("[_fs.defaults.latency, _fs.defaults.model]") == [None, None]


def test_ipython_config_file_sets_the_defaults_of_every_kernel(
    local_server: ThreadedServer, tmp_path: Path
) -> None:
    """c.SpeakMagics.voice in ipython_config.py holds in a new kernel, shown as config."""
    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_config.py").write_text(
        'c.SpeakMagics.voice = "en_US-joe-medium"\nc.SpeakMagics.speed = 1.2\n', encoding="utf-8"
    )
    with running_kernel(local_server.url, tmp_path, IPYTHONDIR=str(tmp_path / "ipython")) as k:
        shown = k.ok("%speak_config").stdout
        assert "voice          en_US-joe-medium   [%config / ipython_config.py]" in shown
        assert "speed          1.2   [%config / ipython_config.py]" in shown
        k.ok("%speak --wait -q From the config file.")
        record = record_with(local_server, "From the config file.")
        request = record.received[0].event.request  # type: ignore[union-attr]
        assert request.reference_id == "en_US-joe-medium"
        assert request.prosody is not None and request.prosody.speed == pytest.approx(1.2)


# --- dialogue cells -------------------------------------------------------------------------------


def test_dialogue_cell_sends_speaker_tags_and_a_voice_per_speaker(
    kernel: Kernel, local_server: ThreadedServer
) -> None:
    """--dialogue: speakers tagged in order of appearance, reference_id one voice each."""
    kernel.ok("guest = 'Bob'")
    kernel.ok(
        "%%speak --dialogue --voices alice=en_US-joe-medium,bob=en_US-joe-medium --wait -q\n"
        "Alice: Good morning, {guest}!\n"
        "{guest}: Hi Alice.\n"
        "\n"
        "Alice: Dialogue cells work.\n"
    )
    record = record_with(local_server, "Dialogue cells work.")
    request = record.received[0].event.request  # type: ignore[union-attr]
    assert request.reference_id == ("en_US-joe-medium", "en_US-joe-medium")
    assert "".join(texts(record)) == (
        "<|speaker:0|>Good morning, Bob!\n<|speaker:1|>Hi Alice.\n"
        "<|speaker:0|>Dialogue cells work.\n"
    )
    # The blank line is a flush point (the client may add its own early flush before it).
    assert segments(record)[-1] == "<|speaker:0|>Dialogue cells work.\n"
    assert texts(record)[:2] == ["<|speaker:0|>Good ", "morning, "]  # typed word by word


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("%%speak --voices a=x\nhi", "--voices goes with --dialogue"),
        ("%%speak --chat\nhi", "--chat goes with --llm"),
        ("%%speak --dialogue --gen\nA: hi", "choose one of"),
        ("%%speak --dialogue\nno name here\nA: hi", "each turn starts with 'Name: '"),
        ("%%speak --dialogue --voices carol=x\nA: hi", "not a speaker here"),
        ("%%speak --dialogue --voices a\nA: hi", "name=ID"),
        ("%%speak --dialogue --voices a=x\nA: hi\nB: ho", "these speakers have no voice"),
    ],
)
def test_dialogue_and_chat_mistakes_are_usage_errors(
    kernel: Kernel, code: str, message: str
) -> None:
    """Bad dialogue scripts and misplaced options: one-line UsageErrors."""
    reply = kernel.run(code)
    assert reply.ename == "UsageError", (reply.ename, reply.evalue)
    assert message in (reply.evalue or ""), reply.evalue


# --- chat memory ----------------------------------------------------------------------------------


def test_chat_cells_keep_the_conversation_until_reset(
    kernel: Kernel, local_server: ThreadedServer, llm: LLMServer
) -> None:
    """--chat: the second request holds the first turn; --reset-chat empties it."""
    options = f"--llm --chat --llm-url {llm.url} --llm-key k --wait -q"
    kernel.ok("%speak_config --reset-chat")
    before = len(llm.messages)
    kernel.ok(f"%%speak {options}\nFirst question.\n")
    kernel.ok(f"%%speak {options} --system 'Be brief.'\nSecond question.\n")
    first, second = llm.messages[before:]
    assert first == [{"role": "user", "content": "First question."}]
    assert second == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "First question."},
        {"role": "assistant", "content": llm.reply},  # what was heard: all of it
        {"role": "user", "content": "Second question."},
    ]
    assert "chat           4 turns" in kernel.ok("%speak_config").stdout

    kernel.ok(f"%%speak --llm --llm-url {llm.url} --llm-key k --wait -q\nNot remembered.\n")
    assert llm.messages[-1] == [{"role": "user", "content": "Not remembered."}]  # no --chat
    assert "chat           0 turns" in kernel.ok("%speak_config --reset-chat").stdout
    kernel.ok(f"%%speak {options}\nThird question.\n")
    assert llm.messages[-1] == [{"role": "user", "content": "Third question."}]


# --- help -----------------------------------------------------------------------------------------


def test_speak_help_shows_every_option(kernel: Kernel) -> None:
    """%%speak? pages the help of every option, the new ones included."""
    reply = kernel.client.execute_interactive("%%speak?", timeout=30, allow_stdin=False)
    pages = [p["data"]["text/plain"] for p in reply["content"]["payload"] if p["source"] == "page"]
    assert pages, reply["content"]
    page = pages[0]
    options = kernel.value(
        "sorted({o for a in get_ipython().magics_manager.magics['cell']['speak'].parser._actions"
        " for o in a.option_strings})"
    )
    assert len(options) > 25
    for option in options:
        assert option in page, option
    for words in ("'Name: line' lines", "alice=ID,bob=ID", "--reset-chat forgets them"):
        assert words in " ".join(page.split()), words


# --- LLM answers worth hearing ----------------------------------------------------------------

MARKDOWN_REPLY = (
    "## Plan\n\nFirst, **install** the package:\n\n```sh\npip install fish-notebook\n```\n\n"
    "- Then read [the docs](https://docs.python.org/3/library/) now.\n"
)


def test_llm_markdown_is_read_as_speech_and_the_transcript_keeps_what_was_skipped(
    kernel: Kernel, local_server: ThreadedServer
) -> None:
    """An --llm answer in markdown: no markup character reaches the server, the code block
    is a spoken note, the link its text; --speak-markup sends the markup as written."""
    with LLMServer(MARKDOWN_REPLY) as markdown_llm:
        kernel.ok(f"%%speak --llm --llm-url {markdown_llm.url} --wait -q -o s_md\nPlan it.\n")
        record = record_with(local_server, "Plan")
        sent = "".join(texts(record))
        assert not set("*#`[]()|") & set(sent), sent
        assert "install the package" in sent and "code block in shell" in sent
        assert "pip install fish-notebook" not in sent and "the docs" in sent
        entries = kernel.value("s_md.recording.transcript_entries")
        skipped = "".join(e["skipped"] for e in entries if isinstance(e, dict) and "skipped" in e)
        assert "pip install fish-notebook" in skipped and "**" in skipped
        kernel.ok(
            f"%%speak --llm --speak-markup --llm-url {markdown_llm.url} --wait -q\nRaw, please.\n"
        )
        raw = "".join(texts(record_with(local_server, "## Plan")))
        assert raw == MARKDOWN_REPLY
