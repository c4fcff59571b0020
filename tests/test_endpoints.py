"""Where speech goes: fish_notebook.endpoints, the one resolver (no I/O in these tests)."""

from __future__ import annotations

import pytest

from fish_notebook import ValidationError, endpoints
from fish_notebook.endpoints import Endpoint

SECRET = "sk-endpoint-secret-0123456789"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FISH_BASE_URL", raising=False)
    monkeypatch.delenv("FISH_API_KEY", raising=False)


def test_order_argument_env_cloud_local(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argument, then FISH_BASE_URL, then the cloud when a key is set, else local (None)."""
    assert endpoints.plan() is None
    cloud = endpoints.plan(None, "key")
    assert cloud is not None and cloud.origin == "cloud" and cloud.is_cloud
    monkeypatch.setenv("FISH_BASE_URL", "http://127.0.0.1:5000")
    assert endpoints.plan(None, "key").origin == "FISH_BASE_URL"  # type: ignore[union-attr]
    assert endpoints.plan("http://a:1", "key").origin == "argument"  # type: ignore[union-attr]
    monkeypatch.setenv("FISH_API_KEY", SECRET)
    assert endpoints.plan(backend="local") is None  # local ignores key and URL in the env
    assert endpoints.plan(backend="cloud").origin == "cloud"  # type: ignore[union-attr]


def test_cloud_without_key_and_unknown_backend_are_refused() -> None:
    """backend="cloud" needs a key; an unknown backend is named in the error."""
    with pytest.raises(ValidationError, match="FISH_API_KEY"):
        endpoints.plan(backend="cloud")
    with pytest.raises(ValidationError, match="backend"):
        endpoints.plan(backend="moon")
    assert "no FISH_API_KEY" in endpoints.describe(backend="cloud")


@pytest.mark.parametrize(
    ("given", "live", "timestamps", "http"),
    [
        (
            "https://example.com",
            "wss://example.com/v1/tts/live",
            False,
            "https://example.com/model",
        ),
        ("ws://h:1/v1/tts/live", "ws://h:1/v1/tts/live", False, "http://h:1/model"),
        (
            "http://h/proxy/",
            "ws://h/proxy/v1/tts/live/with-timestamp",
            True,
            "http://h/proxy/model",
        ),
        ("wss://h/v1/tts/live/with-timestamp", "wss://h/v1/tts/live", False, "https://h/model"),
    ],
)
def test_urls_of_one_server(given: str, live: str, timestamps: bool, http: str) -> None:
    """Any URL of the server gives its WebSocket and HTTP URLs."""
    endpoint = Endpoint.from_url(given, "argument")
    assert endpoint.ws_url(timestamps=timestamps) == live
    assert endpoint.http_url("/model") == http


@pytest.mark.parametrize("bad", ["ftp://example", "example.com", "", "http://"])
def test_bad_urls_are_refused(bad: str) -> None:
    """Only http(s)/ws(s) URLs with a host are taken."""
    with pytest.raises(ValidationError, match="base_url"):
        Endpoint.from_url(bad, "argument")


def test_descriptions_never_show_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key, user info or query in any description; the origin is named."""
    assert endpoints.describe() == "the embedded local server (started on demand)"
    assert "cloud" in endpoints.describe(None, SECRET) and SECRET not in endpoints.describe(
        None, SECRET
    )
    with_userinfo = endpoints.describe(f"https://user:{SECRET}@host:9/x?key={SECRET}")
    assert with_userinfo == "https://host:9/x"
    monkeypatch.setenv("FISH_BASE_URL", "ws://127.0.0.1:1")
    assert endpoints.describe() == "FISH_BASE_URL http://127.0.0.1:1"
    assert Endpoint.from_url("http://127.0.0.1:9", "local").is_loopback
    assert not Endpoint.from_url("https://api.fish.audio", "cloud").is_loopback
