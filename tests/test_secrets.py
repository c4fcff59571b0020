"""The API key never leaks: not in a repr, a DEBUG log line, an exception, widget state,
notebook output or the saved .ipynb, after running every magic, speak(), play() and the panel.

A real kernel runs a notebook with FISH_API_KEY set to a recognisable key. The embedded
server requires that same key as its token, so every call really carries it. DEBUG logging
is on in the kernel and goes to the cell outputs, so anything logged would be saved too.
The executed notebook is written with its widget state, then searched for the key's bytes.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import nbclient
import nbformat
import pytest

from fish_notebook.local.server import LocalServer, ThreadedServer

from .llm_server import LLMServer

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(240)]

KEY = "fishkey-5EcR3t-0123456789abcdef"
OPENAI_KEY = "sk-openai-5EcR3t-fedcba9876543210"

CELLS = [
    "import logging, sys\n"
    "logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, force=True)\n"
    "%load_ext fish_notebook",
    "%speak --wait Keys stay secret.",
    "%%speak --wait --words\nA text body, {1 + 1} lines.\n--\nAfter the flush.",
    "%%speak --wait\nfor word in ['A', ' generator', ' body.']:\n    yield word",
    "%%speak --wait --llm --llm-model fake-1 --llm-url {LLM_URL}\nSay something.",
    "%speak_config",
    "%speak_config --speed 1.1",
    "from fish_notebook import RealtimeClient, SpeakPanel, play, speak\n"
    "client = RealtimeClient()\n"
    "print(repr(client), client.async_client)\n"
    "session = speak('From speak.', wait=True)\n"
    "print(repr(session), session.metrics)\n"
    "session",
    "from fishaudio import FishAudio\n"
    "import os\n"
    "sdk = FishAudio(base_url=os.environ['FISH_BASE_URL'].replace('ws://', 'http://'))\n"
    "play(sdk.tts.stream_websocket(iter(['Played back.']), format='wav'), format='wav').wait(60)",
    "panel = SpeakPanel()\npanel",
    "from fish_notebook import AsyncRealtimeClient\n"
    "bad = RealtimeClient(api_key=os.environ['FISH_API_KEY'] + 'x')\n"
    "try:\n"
    "    list(bad.stream_websocket('Refused.'))\n"
    "except Exception as exc:\n"
    "    print(type(exc).__name__, exc, repr(exc))",
    "speak('This one fails.', api_key=os.environ['FISH_API_KEY'] + 'y', wait=True)",
]


@pytest.fixture(scope="module")
def guarded_server() -> Iterator[ThreadedServer]:
    """An embedded server that demands the key as its bearer token."""
    with LocalServer(token=KEY, record=True).run_in_thread() as server:
        yield server


def _variants(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [raw, base64.b64encode(raw), secret[4:20].encode()]


def test_no_key_anywhere_after_every_surface(
    guarded_server: ThreadedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run every surface with the key set, save the notebook, search it for the key's bytes."""
    with LLMServer() as llm:
        monkeypatch.setenv("FISH_API_KEY", KEY)
        monkeypatch.setenv("FISH_BASE_URL", guarded_server.url)
        monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
        cells = [c.replace("{LLM_URL}", llm.url) for c in CELLS]
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
        client = nbclient.NotebookClient(
            notebook,
            timeout=120,
            kernel_name="python3",
            allow_errors=True,  # the last cell fails on purpose (a refused key)
            store_widget_state=True,
            resources={"metadata": {"path": str(tmp_path)}},
        )
        client.execute()
        assert llm.requests, "the LLM cell did not reach the test LLM server"
    saved = tmp_path / "executed.ipynb"
    nbformat.write(notebook, saved)
    data = saved.read_bytes()

    errors = [o for c in notebook.cells for o in c.outputs if o.output_type == "error"]
    assert [e.ename for e in errors] == ["AuthenticationError"], [e.evalue for e in errors]
    assert b"AuthenticationError" in data and b"refused the credentials" in data
    assert b"DEBUG" in data and b"Authorization" in data, "DEBUG logs should be in the outputs"
    assert b"widgets" in data and b"application/vnd.jupyter.widget-state+json" in data
    assert b"<audio" in data, "the static fallback players are saved"
    for secret in (KEY, OPENAI_KEY):
        for needle in _variants(secret):
            assert needle not in data, f"{needle!r} leaked into the saved notebook"
    sessions = guarded_server.recorder.sessions  # type: ignore[union-attr]
    assert len([s for s in sessions if s.audio]) >= 6, "the calls did not really carry the key"
