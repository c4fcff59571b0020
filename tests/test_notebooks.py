"""The notebooks in notebooks/, executed headless with nbclient, and the `make demo` script.

Each notebook runs top to bottom in a fresh kernel pointed at the suite's embedded server
(FISH_BASE_URL), with no OpenAI key (so 02 takes its paced stand-in path, and 04's default
agent is the echo agent, as for a user without a key). No cell may produce an error output,
and every audio file a notebook saves is checked: a duration plausible for its text, and not
silent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path
from typing import Any

import pytest

from fish_notebook.agents import EchoAgent
from fish_notebook.audio import pcm_duration, pcm_rms
from fish_notebook.local.server import ThreadedServer
from tests.helpers import spoken_words, stop_child

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def execute(
    name: str,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: ThreadedServer,
    setup: str | None = None,
) -> Any:
    """Run notebooks/``name`` in ``workdir`` (after a ``setup`` cell of the test's, if any);
    return the executed notebook."""
    monkeypatch.setenv("FISH_BASE_URL", server.url)
    for variable in ("FISH_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    shutil.copy(NOTEBOOKS / name, workdir / name)
    notebook = nbformat.read(workdir / name, as_version=4)
    if setup is not None:
        notebook.cells.insert(0, nbformat.v4.new_code_cell(setup))
    client = nbclient.NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    return notebook


def outputs(notebook: Any) -> list[dict[str, Any]]:
    return [
        output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    ]


def assert_no_errors(notebook: Any) -> None:
    errors = [o for o in outputs(notebook) if o.output_type == "error"]
    assert errors == [], [f"{o.ename}: {o.evalue}" for o in errors]
    stderr = [o.text for o in outputs(notebook) if o.output_type == "stream" and o.name == "stderr"]
    assert not any("Error" in text or "Traceback" in text for text in stderr), stderr


def stdout(notebook: Any) -> str:
    return "".join(
        o.text for o in outputs(notebook) if o.output_type == "stream" and o.name == "stdout"
    )


def assert_wav_speech(path: Path, text: str) -> float:
    """``path`` is a WAV of speech plausible for ``text``: duration in range, not silent."""
    assert path.is_file(), f"{path.name} was not written"
    with wave.open(str(path)) as wav:
        rate = wav.getframerate()
        pcm = wav.readframes(wav.getnframes())
    words = len(text.split())
    duration = pcm_duration(pcm, rate)
    assert 0.12 * words <= duration <= 1.2 * words + 1.0, (path.name, duration, words)
    assert pcm_rms(pcm) > 300, (path.name, pcm_rms(pcm))
    return duration


def test_quickstart_runs_and_saves_its_speech(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_server: ThreadedServer
) -> None:
    """01: every form speaks; the saved files hold speech for their text."""
    notebook = execute("01_quickstart.ipynb", tmp_path, monkeypatch, local_server)
    assert_no_errors(notebook)
    assert_wav_speech(
        tmp_path / "hello.wav", "Hello! This is fish notebook, speaking while the audio streams in."
    )
    assert_wav_speech(
        tmp_path / "cell.wav",
        "Hello Jupyter. Each line goes out word by word, as you would type it. "
        "The line above was a flush point, so the first line was spoken right away.",
    )
    assert_wav_speech(
        tmp_path / "generator.wav",
        "Generators work too: every yield is a token, spoken as it comes.",
    )
    assert_wav_speech(
        tmp_path / "paced.wav",
        "This stream is paced like a language model, about twenty five tokens a second.",
    )
    text = stdout(notebook)
    # The transcript, with the client's early flush after the first sentence and the cell's `--`.
    words = " ".join(text.split())  # where the spaces fall around a flush mark is not the point
    assert "Hello Jupyter. | Each line goes out word by word, as you would type it. | The" in words
    assert "FISH_BASE_URL" in text  # %speak_config says where speech goes
    views = [
        o
        for o in outputs(notebook)
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert len(views) >= 5  # four players and the panel
    static = [o for o in outputs(notebook) if "<audio" in o.get("data", {}).get("text/html", "")]
    # A static <audio> for each player whose session ended within its own cell (nbclient
    # drops updates addressed to an earlier cell, so speak()'s, which ends one cell later,
    # is not seen here; a browser shows it).
    assert len(static) >= 3


def test_llm_notebook_uses_the_paced_stand_in_without_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_server: ThreadedServer
) -> None:
    """02 without a key says so, speaks sync and async, survives a broken stream, saves."""
    notebook = execute("02_llm_tokens_to_speech.ipynb", tmp_path, monkeypatch, local_server)
    assert_no_errors(notebook)
    text = stdout(notebook)
    assert "No OPENAI_API_KEY or OPENAI_BASE_URL: using a local token stream" in text
    canned = (
        "Streaming speech starts talking before the answer is finished. "
        "Each sentence is spoken as soon as it is complete. "
        "So you hear the first words while the rest is still being written."
    )
    for name in ("llm_sync.wav", "llm_async.wav", "llm_magic.wav"):
        assert_wav_speech(tmp_path / name, canned)
    assert_wav_speech(
        tmp_path / "llm_error.wav", "This first sentence arrives whole. Then the connection"
    )
    assert "The stream failed (the LLM connection dropped)" in text and "state: failed" in text
    per_flush = re.search(r"per flush: \[([^\]]*)\]", text)
    assert per_flush is not None and per_flush.group(1)  # flush latencies were measured
    mp3 = (tmp_path / "llm_answer.mp3").read_bytes()
    assert len(mp3) > 5000 and (mp3[:3] == b"ID3" or mp3[0] == 0xFF)


def test_flush_notebook_draws_the_timeline_and_flush_speeds_up_normal_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_server: ThreadedServer
) -> None:
    """03 draws five runs; in normal mode a flush brings the first audio before the text ends."""
    notebook = execute("03_why_flush_matters.ipynb", tmp_path, monkeypatch, local_server)
    assert_no_errors(notebook)
    svgs = [
        o["data"]["text/html"]
        for o in outputs(notebook)
        if "<svg" in o.get("data", {}).get("text/html", "")
    ]
    assert len(svgs) == 1
    assert svgs[0].count("first audio") == 5
    rows = {}
    for line in stdout(notebook).splitlines():
        match = re.match(r"(.+?)\s+([\d.]+)s\s+([\d.]+)s\s+([\d.]+)s$", line)
        if match:
            rows[match.group(1).strip()] = [float(match.group(i)) for i in (2, 3, 4)]
    assert set(rows) == {"normal", "normal + flush", "balanced", "balanced + flush", "low"}
    first_audio, text_done = rows["normal"][0], rows["normal"][1]
    assert first_audio > text_done  # normal mode waits for the end of the text
    assert rows["normal + flush"][0] < rows["normal + flush"][1]  # a flush speaks before the end
    assert_wav_speech(
        tmp_path / "flush_demo.wav",
        "Streaming speech can start before the text is finished. A flush tells the server to "
        "speak what it has right now. "
        "Without one, it waits until it has enough text to sound natural.",
    )


QUESTION = "What is the capital of France? Tell me in one short sentence."


def test_voice_agent_notebook_hears_a_spoken_question_and_answers_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_server: ThreadedServer
) -> None:
    """04: the question, spoken by the embedded voice into a WAV file, goes round the voice
    loop (detector, speech recognition, agent, speech) in the chat and in %%converse's. Speech
    recognition is the embedded server's own (Whisper), where the kernel's speech goes."""
    transcriber = local_server.server.transcriber()
    recognize = transcriber.recognize
    heard: list[float] = []  # seconds of each utterance the server was asked to transcribe

    def counted(prepared: Any, *args: Any, **kwargs: Any) -> Any:
        heard.append(prepared.duration)
        return recognize(prepared, *args, **kwargs)

    monkeypatch.setattr(transcriber, "recognize", counted)
    notebook = execute("04_voice_agent.ipynb", tmp_path, monkeypatch, local_server)
    assert_no_errors(notebook)
    question = assert_wav_speech(tmp_path / "question.wav", QUESTION)
    # Each hear() sent the whole question (and no more than its margins) to recognition,
    # once; any other request was an early transcript of a pause inside it (shorter).
    whole = [s for s in heard if question - 1.0 < s < question + 1.0]
    assert len(whole) == 2 and all(s < question + 1.0 for s in heard), heard
    text = stdout(notebook)
    said = re.search(r"^you said:   (.*)$", text, re.M)
    assert said is not None, text
    assert spoken_words(said[1]) == spoken_words(QUESTION)
    echo = f"{EchoAgent.introduction} You said: {said[1]}"
    assert f"answer:     {echo}" in text and f"heard:      {echo}" in text
    assert f"agent:      {EchoAgent.name}" in text
    assert re.search(r"first_audio_s\s+\d+\.\d\d s", text)
    assert "   system: Answer in one short sentence." in text
    assert f"assistant: {echo}" in text
    answered = r"^(.*) -> Paris is the capital of France\. It stands on the Seine\.$"
    geography = re.search(answered, text, re.M)
    assert geography is not None and spoken_words(geography[1]) == spoken_words(QUESTION), text
    views = [
        o
        for o in outputs(notebook)
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert len(views) == 2  # the chat, and %%converse's


def test_demo_script_serves_the_quickstart_with_a_token(tmp_path: Path) -> None:
    """`make demo`'s script starts JupyterLab on loopback and prints a working URL and token."""
    env = {
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),  # the demo writes its Lab log there
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
    }
    process = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "demo.py")],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = None
        deadline = time.monotonic() + 90
        assert process.stdout is not None
        lines = []
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(
                r"(http://127\.0\.0\.1:\d+/lab/tree/01_quickstart\.ipynb\?token=\w+)", line
            )
            if found:
                url = found.group(1)
        assert url is not None, "".join(lines)
        with urllib.request.urlopen(url, timeout=20) as response:
            assert response.status == 200
        api = (
            url.split("/lab/")[0]
            + "/api/contents/01_quickstart.ipynb?content=0&token="
            + url.rsplit("=", 1)[1]
        )
        with urllib.request.urlopen(api, timeout=20) as response:
            assert b'"01_quickstart.ipynb"' in response.read()
    finally:
        stop_child(process)
