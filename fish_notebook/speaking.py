"""``speak()``: a session that plays in the notebook, and the kernel's speaking defaults.

:func:`speak` is what ``%%speak`` and the ``SpeakPanel`` are built on: it merges the kernel
defaults (set with ``%speak_config`` or :data:`defaults`) with the call's options, picks the
backend, starts a :class:`~fish_notebook.session.Session` and shows its player.

Backends: ``"auto"`` (the client's own order: ``FISH_BASE_URL``, then the cloud when
``FISH_API_KEY`` is set, then the embedded local server), ``"local"`` (the embedded server even
when a key or URL is set), ``"cloud"`` (Fish Audio; needs a key) or an explicit ``base_url``.

:func:`chat_stream` turns a prompt into a streaming OpenAI-compatible chat completion (the
``openai`` package, extra ``llm``), and :class:`Timeline` records when text went out and audio
came back, to draw as SVG (the "why flush matters" notebook).
"""

from __future__ import annotations

import dataclasses
import html
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from . import endpoints
from .client import AsyncRealtimeClient, build_request
from .endpoints import BACKENDS
from .errors import MissingDependencyError, ValidationError
from .protocol import LATENCY_MODES
from .session import FINAL_STATES, Session, SessionListener

__all__ = [
    "BACKENDS",
    "SpeakDefaults",
    "Timeline",
    "chat_stream",
    "compare_timelines",
    "defaults",
    "describe_backend",
    "make_client",
    "speak",
]

DEFAULT_LLM_MODEL = "gpt-4o-mini"


@dataclasses.dataclass
class SpeakDefaults:
    """What ``speak()``, ``%%speak`` and new panels use when a call does not say.

    ``None`` means "not set": the server's (or the library's) own default applies. Change it
    with ``%speak_config`` or :meth:`update`; it holds no secret (keys come from the
    environment or from a call's ``api_key``).
    """

    voice: str | None = None
    model: str | None = None
    latency: str | None = None
    speed: float | None = None
    volume: float | None = None
    backend: str = "auto"
    url: str | None = None
    llm_model: str | None = None
    llm_url: str | None = None

    def update(self, **changes: Any) -> None:
        """Set some defaults after checking them all; nothing changes if one is bad.

        Raises ValidationError naming the bad field.
        """
        merged = dataclasses.replace(self, **changes)
        merged.check()
        for name, value in changes.items():
            setattr(self, name, value)

    def reset(self) -> None:
        """Back to the library's defaults."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, field.default)

    def check(self) -> None:
        """Raise ValidationError if a value cannot be used."""
        endpoints.plan(None, "(checked when used)", self.backend)  # a known backend
        if self.latency is not None and self.latency not in LATENCY_MODES:
            raise ValidationError("latency", self.latency, f"must be one of {LATENCY_MODES}")
        build_request(speed=self.speed, volume=self.volume)  # prosody ranges
        if self.url is not None:
            endpoints.Endpoint.from_url(self.url, "argument")  # a URL the client can use
        for name in ("voice", "model", "llm_model", "llm_url"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValidationError(name, value, "must be a non-empty str or None")


#: The kernel's defaults (one per process).
defaults = SpeakDefaults()


def describe_backend(
    backend: str | None = None, base_url: str | None = None, api_key: str | None = None
) -> str:
    """One line saying where speech would go, for people (never shows a key)."""
    backend = backend or defaults.backend
    base_url = base_url or defaults.url
    where = endpoints.describe(base_url, api_key, backend)
    return f"url {where}" if base_url else f"{backend} -> {where}"


def make_client(
    backend: str | None = None,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    model: str | None = None,
) -> AsyncRealtimeClient:
    """The client for a backend (see the module docstring); defaults fill what is not given.

    Raises ValidationError for an unknown backend, a bad URL, or ``"cloud"`` with no key.
    """
    backend = backend or defaults.backend
    extra: dict[str, Any] = {"model": model or defaults.model} if model or defaults.model else {}
    return AsyncRealtimeClient(api_key, base_url or defaults.url, backend=backend, **extra)


def speak(
    source: Any,
    *,
    voice: str | None = None,
    model: str | None = None,
    latency: str | None = None,
    speed: float | None = None,
    volume: float | None = None,
    save: str | os.PathLike[str] | None = None,
    format: str | None = None,
    backend: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    client: AsyncRealtimeClient | None = None,
    display: bool = True,
    wait: bool | float = False,
    listeners: Iterable[SessionListener] = (),
    **request_options: Any,
) -> Session:
    """Speak ``source`` now; return its :class:`~fish_notebook.session.Session`.

    Args:
        source: a str, any sync or async iterable of text (``TextEvent``/``FlushEvent`` too),
            or an LLM stream object (OpenAI, Anthropic, LangChain chunks).
        voice: the voice (``reference_id``); servers list theirs at ``GET /model`` (the
            panel shows them); the local server speaks an unknown one with its default voice
            and says so in a log message.
        model, latency, speed, volume: as in ``stream_websocket``; unset ones take the
            kernel defaults (``%speak_config``).
        save: a ``.wav`` or ``.mp3`` path written when the session ends, whatever the end.
        backend: ``"auto"``, ``"local"`` or ``"cloud"``; ``base_url`` overrides it.
        display: show the live player (with a static ``<audio>`` once it ends). In marimo,
            which shows a cell's last expression, end the cell with the returned session.
        wait: block until the audio is complete (``True``, or a timeout in seconds); then
            re-raise the session's error if it failed. Ctrl-C stops the session cleanly.
        listeners: extra session listeners (a :class:`Timeline`), attached before it starts.
        request_options: other request fields (``sample_rate``, ``chunk_length``, ...), and
            ``speakable`` (``None``, the default: an LLM's chunk objects are read as speech,
            markdown and code blocks aside, plain text as written; ``True``/``False`` to
            choose; see :class:`~fish_notebook.session.Session`).

    Returns at once unless ``wait``: the audio streams in the background and keeps playing
    while later cells run. Raises ValidationError for a bad option, before anything starts.
    """
    if client is None:
        client = make_client(backend, base_url=base_url, api_key=api_key, model=model)
    options = _request_options(voice, latency, speed, volume, request_options)
    model = model or defaults.model
    session = Session(
        source, client=client, model=model, save=save, format=format, start=False, **options
    )
    for listener in listeners:
        session.add_listener(listener, replay=False)
    if display:
        from .widget import display_player

        display_player(session, fallback="mp3")  # 10x smaller saved notebooks than WAV
    session.start()
    if wait is not False:
        session.wait(None if wait is True else float(wait))
    return session


def _request_options(
    voice: str | None,
    latency: str | None,
    speed: float | None,
    volume: float | None,
    others: Mapping[str, Any],
) -> dict[str, Any]:
    """A call's request fields, the kernel defaults filling what it leaves unset; the fields
    neither sets are left out (the server's own defaults apply)."""
    options = {
        "reference_id": voice or defaults.voice,
        "latency": latency or defaults.latency,
        "speed": speed if speed is not None else defaults.speed,
        "volume": volume if volume is not None else defaults.volume,
        **others,
    }
    return {k: v for k, v in options.items() if v is not None}


# --- an LLM's tokens ------------------------------------------------------------------------


def chat_stream(
    prompt: str,
    *,
    model: str | None = None,
    system: str | None = None,
    history: Sequence[Mapping[str, str]] = (),
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    **create_options: Any,
) -> Iterator[Any]:
    """A streaming chat completion from an OpenAI-compatible endpoint, as an iterator of chunks.

    ``speak(chat_stream("Tell me a story"))`` speaks the answer while it is written. The
    request is made on the first ``next()``, so inside a session it runs in the source's
    worker thread, overlapping the TTS connection. ``base_url`` and ``api_key`` default to
    ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``; a server that needs no key (a local
    OpenAI-compatible one) works with just a URL. ``model`` defaults to the kernel default
    (``%speak_config --llm-model``), then ``OPENAI_MODEL``, then ``gpt-4o-mini``.
    ``history`` is the conversation so far (``{"role", "content"}`` messages, as
    :meth:`fish_notebook.chat.Conversation.messages` gives them), sent after ``system`` and
    before ``prompt``.

    Raises MissingDependencyError at once when ``openai`` (extra ``llm``) is not installed,
    and ValidationError when neither a key nor a URL is known. Errors of the stream itself
    (a dropped connection) are raised by the iteration, so a session fails with them and
    keeps the audio spoken so far.
    """
    try:
        import openai
    except ImportError as exc:
        raise MissingDependencyError("openai", "llm", "Speaking an LLM's answer") from exc
    base_url = base_url or defaults.llm_url or os.environ.get("OPENAI_BASE_URL") or None
    api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
    if api_key is None and base_url is None:
        raise ValidationError(
            "api_key",
            "<not set>",
            "set OPENAI_API_KEY, or give the URL of an OpenAI-compatible server "
            "(--llm-url / OPENAI_BASE_URL) that needs no key",
        )
    model = model or defaults.llm_model or os.environ.get("OPENAI_MODEL") or DEFAULT_LLM_MODEL
    messages: list[Any] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages += [{"role": m["role"], "content": m["content"]} for m in history]
    messages.append({"role": "user", "content": prompt})
    client = openai.OpenAI(api_key=api_key or "not-needed", base_url=base_url, timeout=timeout)

    def chunks() -> Iterator[Any]:
        stream: Any = client.chat.completions.create(
            model=model, messages=messages, stream=True, **create_options
        )
        try:
            yield from stream
        finally:
            stream.close()

    return chunks()


# --- a timeline of one session ----------------------------------------------------------------


class Timeline:
    """A session listener that notes when text went out and audio came back.

    Pass it to ``speak(..., listeners=[timeline])`` so it sees the session from its start.
    ``events`` holds ``(seconds since the timeline was made, kind, value)``: kind ``"text"``
    (the text), ``"flush"``, ``"audio"`` (bytes of 16-bit PCM in the chunk; see
    :meth:`audio_seconds`) or ``"state"``.
    Shows itself as an SVG picture in a notebook; :func:`compare_timelines` draws several.
    """

    def __init__(self, label: str = "") -> None:
        self.label = label
        self.sample_rate = 44100
        self.events: list[tuple[float, str, Any]] = []
        self._t0 = time.perf_counter()

    def _note(self, kind: str, value: Any) -> None:
        self.events.append((time.perf_counter() - self._t0, kind, value))

    def on_text(self, text: str) -> None:
        self._note("text", text)

    def on_flush(self) -> None:
        self._note("flush", None)

    def on_audio(self, pcm: bytes, seq: int) -> None:
        self._note("audio", len(pcm))

    def on_state(self, state: str, error: str | None) -> None:
        self._note("state", state)

    def on_metrics(self, metrics: Mapping[str, Any]) -> None:
        rate = metrics.get("sample_rate")
        if isinstance(rate, int) and rate > 0:
            self.sample_rate = rate

    def audio_seconds(self, size: int) -> float:
        """Seconds of speech in an audio event of ``size`` bytes."""
        return (size // 2) / self.sample_rate

    @property
    def first_audio(self) -> float | None:
        """Seconds from the start to the first audio, if any came."""
        return next((t for t, kind, _ in self.events if kind == "audio"), None)

    @property
    def last_text(self) -> float | None:
        """Seconds from the start to the last text sent."""
        times = [t for t, kind, _ in self.events if kind == "text"]
        return times[-1] if times else None

    @property
    def ended(self) -> bool:
        return any(kind == "state" and value in FINAL_STATES for _, kind, value in self.events)

    def _repr_html_(self) -> str:
        return compare_timelines({self.label or "session": self})


def compare_timelines(runs: Mapping[str, Timeline], *, width: int = 760) -> str:
    """Draw timelines one under another on a shared time axis, as an HTML-embeddable SVG.

    Each run gets two lanes: text sent (a tick per piece, a red line per flush point) and
    audio received (a bar per chunk, starting when it arrived, as long as the speech in it).
    """
    label_w, lane_h, gap, top = 170, 16, 14, 26
    plot_w = width - label_w - 20
    end = 0.5
    for timeline in runs.values():
        for t, kind, value in timeline.events:
            end = max(end, t + (timeline.audio_seconds(value) if kind == "audio" else 0.0))
    scale = plot_w / end
    row_h = 2 * lane_h + gap
    height = top + row_h * len(runs) + 24
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11" class="fishnb-timeline">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{label_w}" y="14" fill="#555">text sent (ticks, red = flush) and audio '
        "received (bars: arrival time, length = speech in the chunk)</text>",
    ]
    step = _tick_step(end)
    tick = 0.0
    axis_y = top + row_h * len(runs)
    while tick <= end + 1e-9:
        x = label_w + tick * scale
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{axis_y}" stroke="#eee"/>'
            f'<text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle" fill="#555">'
            f"{tick:g} s</text>"
        )
        tick += step
    for row, (name, timeline) in enumerate(runs.items()):
        parts += _lanes(name, timeline, top + row * row_h, label_w, lane_h, scale)
    parts.append("</svg>")
    return "".join(parts)


def _lanes(
    name: str, timeline: Timeline, y: int, label_w: int, lane_h: int, scale: float
) -> list[str]:
    """One run's two lanes (text sent, audio received) at height ``y``, as SVG elements."""
    first = timeline.first_audio
    caption = f"first audio {first:.2f} s" if first is not None else "no audio"
    parts = [
        f'<text x="4" y="{y + lane_h - 3}" fill="#222">{html.escape(name)}</text>'
        f'<text x="4" y="{y + 2 * lane_h - 3}" fill="#777">{caption}</text>'
    ]
    for t, kind, value in timeline.events:
        x = label_w + t * scale
        if kind == "text":
            parts.append(
                f'<line x1="{x:.1f}" y1="{y + 3}" x2="{x:.1f}" y2="{y + lane_h - 2}" '
                'stroke="#3b6fb6" stroke-width="1.2"/>'
            )
        elif kind == "flush":
            parts.append(
                f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 2 * lane_h}" '
                'stroke="#d33" stroke-width="2"/>'
            )
        elif kind == "audio":
            w = max(1.0, timeline.audio_seconds(value) * scale)
            parts.append(
                f'<rect x="{x:.1f}" y="{y + lane_h + 2}" width="{w:.1f}" '
                f'height="{lane_h - 4}" fill="#2a9d60" fill-opacity="0.55" '
                'stroke="#1d6b42" stroke-width="0.5"/>'
            )
    return parts


def _tick_step(end: float) -> float:
    for step in (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0):
        if end / step <= 12:
            return step
    return 120.0
