"""speak(), the kernel defaults, backends, chat_stream and Timeline, in this process."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator

import pytest

import fish_notebook
from fish_notebook import FlushEvent, ValidationError, endpoints
from fish_notebook.audio import pcm_duration, pcm_rms
from fish_notebook.local.server import ThreadedServer
from fish_notebook.speaking import (
    SpeakDefaults,
    Timeline,
    chat_stream,
    compare_timelines,
    defaults,
    describe_backend,
    make_client,
    speak,
)

SECRET = "fishnb-secret-" + "3" * 24


@pytest.fixture(autouse=True)
def clean_defaults() -> Iterator[None]:
    """Every test starts and ends with the library's defaults."""
    defaults.reset()
    yield
    defaults.reset()


def test_package_exports_the_function_not_the_module() -> None:
    """`from fish_notebook import speak` is the function, also once its module is imported."""
    importlib.import_module("fish_notebook.speaking")  # must not shadow the function
    from fish_notebook import SpeakPanel
    from fish_notebook import speak as exported

    assert exported is speak and callable(exported)
    assert fish_notebook.speak is speak
    assert SpeakPanel.__module__ == "fish_notebook.panel"


def test_speak_waits_and_applies_kernel_defaults(local_server: ThreadedServer) -> None:
    """Defaults fill what a call leaves out; a call's own options win; wait=True blocks."""
    defaults.update(voice="en_US-joe-medium", latency="low", speed=1.2)
    session = speak(
        ["Kernel ", "defaults ", "meet ", "options."],
        base_url=local_server.url,
        speed=0.9,
        display=False,
        wait=30,
    )
    assert session.state == "finished"
    assert session.request.reference_id == "en_US-joe-medium"
    assert session.request.latency == "low"
    assert session.request.prosody is not None and session.request.prosody.speed == 0.9
    assert 0.5 < session.duration < 8
    assert pcm_rms(session.audio) > 300
    assert local_server.recorder is not None
    record = local_server.recorder.wait_for(
        lambda r: (
            [getattr(f.event, "text", None) for f in r.received_named("text")]
            == ["Kernel ", "defaults ", "meet ", "options."]
        )
    )
    assert pcm_duration(record.audio, 44100) == pytest.approx(session.duration)


def test_defaults_change_all_or_nothing() -> None:
    """A bad value in update() leaves every default as it was."""
    defaults.update(speed=1.5)
    with pytest.raises(ValidationError, match="latency"):
        defaults.update(speed=1.1, latency="instant")
    assert (defaults.speed, defaults.latency) == (1.5, None)
    with pytest.raises(ValidationError, match="backend"):
        defaults.update(backend="moon")
    with pytest.raises(ValidationError, match="base_url"):
        defaults.update(url="ftp://nowhere")
    defaults.reset()
    assert defaults == SpeakDefaults()


def test_backends_pick_where_speech_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    """local ignores the environment; cloud needs a key; a URL wins; no repr shows a key."""
    monkeypatch.setenv("FISH_BASE_URL", "ws://127.0.0.1:1")
    monkeypatch.delenv("FISH_API_KEY", raising=False)
    with pytest.raises(ValidationError, match="FISH_API_KEY"):
        make_client("cloud")
    monkeypatch.setenv("FISH_API_KEY", SECRET)
    cloud = make_client("cloud")
    assert "api.fish.audio" in repr(cloud) and SECRET not in repr(cloud)
    local = make_client("local")
    assert endpoints.plan(local._base_url, local._api_key, local._backend) is None
    assert local._headers("s1") == {"model": "s1"}  # the cloud key never goes to it
    url = make_client(base_url="http://127.0.0.1:2")
    assert "127.0.0.1:2" in repr(url)
    for backend in ("auto", "local", "cloud"):
        assert SECRET not in describe_backend(backend)
    assert describe_backend("auto").startswith("auto -> FISH_BASE_URL http://127.0.0.1:1")
    assert "key set (hidden)" in describe_backend("cloud")
    assert describe_backend(base_url="https://user:pw@host:9/x?key=1") == "url https://host:9/x"


def test_timeline_records_text_flush_and_audio_and_draws_them(
    local_server: ThreadedServer,
) -> None:
    """A Timeline sees the session from its start; the SVG has a bar per audio chunk."""
    timeline = Timeline("flush")
    session = speak(
        ["One sentence here.", FlushEvent(), " Another one there."],
        base_url=local_server.url,
        display=False,
        listeners=[timeline],
        wait=30,
    )
    kinds = [kind for _, kind, _ in timeline.events]
    assert kinds.count("text") == 2 and kinds.count("flush") == 1
    assert kinds.count("audio") == len(session.chunks)
    assert kinds.index("flush") < kinds.index("audio")
    assert timeline.ended and timeline.first_audio is not None
    assert timeline.last_text is not None and timeline.first_audio > 0
    audio_bytes = sum(v for _, k, v in timeline.events if k == "audio")
    assert timeline.audio_seconds(audio_bytes) == pytest.approx(session.duration)
    svg = compare_timelines({"with flush": timeline, "again": timeline})
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert len(re.findall(r"<rect x=", svg)) == 2 * len(session.chunks)
    assert svg.count('stroke="#d33"') == 2  # one flush line per row
    assert "with flush" in svg and "first audio" in timeline._repr_html_()


def test_chat_stream_needs_a_key_or_a_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """No OPENAI_API_KEY and no URL: a ValidationError saying what to set."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ValidationError, match="OPENAI_API_KEY"):
        chat_stream("Hi")
    assert chat_stream("Hi", base_url="http://127.0.0.1:9/v1") is not None  # no I/O yet


def test_playback_policy_reaches_the_player_and_bad_ones_are_refused(
    local_server: ThreadedServer,
) -> None:
    """speak(policy=...) sets the player's playback policy; the kernel default is queue; an
    unknown policy is a ValidationError before anything starts."""
    with pytest.raises(ValidationError, match="policy"):
        speak("Never said.", policy="shout", base_url=local_server.url)
    queued = speak("Queued.", base_url=local_server.url, wait=60)
    overlapping = speak("At once.", base_url=local_server.url, policy="overlap", wait=60)
    assert queued.player is not None and overlapping.player is not None
    assert queued.player.playback["policy"] == "queue"
    assert overlapping.player.playback["policy"] == "overlap"
    assert overlapping.player.playback["order"] > queued.player.playback["order"]
    with pytest.raises(ValidationError, match="policy"):
        defaults.update(policy="shout")
