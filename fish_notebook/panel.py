"""``SpeakPanel``: type, and hear it as you type. A widget panel that needs no cell to run.

The panel holds a text area, **Speak**, **Flush** and **Stop** buttons, a voice selector, speed
and volume sliders, a latency toggle and a live player. What it does:

- Typing streams: each word goes to the server as soon as it is complete (a space, a line
  break or punctuation followed by a space ends it); the word being typed waits. The first
  complete word starts a session; later words join it. Editing text already sent changes
  nothing already spoken: the panel goes on from the edit point.
- **Flush** sends the word being typed and a flush point: the server speaks what it has now.
- **Speak** sends the rest and ends the input, so the server speaks everything and the
  session finishes. With no session running it speaks the whole text as a new session.
- **Stop** ends the session at once (the socket is closed, the audio so far is kept).
- Voice, speed, volume and latency apply to the next session (the protocol fixes them when
  a session starts). Voices come from the server's ``GET /v1/voices`` (the embedded server
  serves it); for the cloud, or a server without that list, the selector is a text field.

Thread safety: widget callbacks run on the kernel's main thread, a session runs on the
background loop, and the session's listeners run on its IO thread. Text reaches the session
through a :class:`TextFeed`, which any thread may push to; the panel's own state is guarded
by a lock. Several panels run side by side, each with its own session and player.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import html
import json
import os
import re
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from . import endpoints
from .errors import FishNotebookError
from .protocol import LATENCY_MODES, FlushEvent
from .session import FINAL_STATES, Session
from .speaking import defaults, speak
from .widget import Player

__all__ = ["SpeakPanel", "TextFeed", "Voice", "fetch_voices", "voices_url"]

MODEL_PATH = "/model"
_WORD = re.compile(r"\s*\S+\s*")


class TextFeed:
    """A text source fed from any thread: :meth:`push` text and flush points, :meth:`close`.

    A session reads it as an async iterable on its loop. Items come out in push order;
    after :meth:`close` the items already pushed still come out, then the iteration ends.
    ``push`` never blocks and returns False once the feed is closed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: collections.deque[str | FlushEvent] = collections.deque()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<TextFeed {state}, {len(self._items)} waiting>"

    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, item: str | FlushEvent) -> bool:
        """Queue text or a FlushEvent; False (and nothing queued) when closed."""
        with self._lock:
            if self._closed:
                return False
            self._items.append(item)
            self._wake()
        return True

    def close(self) -> None:
        """No more items: the session speaks what it has and finishes. Safe to call twice."""
        with self._lock:
            self._closed = True
            self._wake()

    def _wake(self) -> None:
        waiter, loop = self._waiter, self._loop
        if waiter is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_resolve, waiter)

    def __aiter__(self) -> TextFeed:
        return self

    async def __anext__(self) -> str | FlushEvent:
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                if self._items:
                    return self._items.popleft()
                if self._closed:
                    raise StopAsyncIteration
                self._loop = loop
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiter = waiter
            try:
                await waiter
            finally:
                with self._lock:
                    if self._waiter is waiter:
                        self._waiter = None

    async def aclose(self) -> None:
        self.close()


def _common_prefix_length(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# --- voices ---------------------------------------------------------------------------------


def voices_url(
    backend: str | None = None, base_url: str | None = None, api_key: str | None = None
) -> tuple[str, str | None]:
    """Where the voice list of the server a session would use lives (``GET /model``, the
    cloud's and the embedded server's alike), and the bearer key it wants.

    The cloud lists the user's own voices (``self=true``); the embedded server all of its.
    May start the embedded server (that is where speech would go anyway).
    """
    backend = backend or defaults.backend
    endpoint = endpoints.resolve(base_url or defaults.url, api_key, backend)
    if endpoint.origin == "local":
        return endpoint.http_url(f"{MODEL_PATH}?page_size=100"), endpoint.token
    key = api_key or os.environ.get("FISH_API_KEY") or None
    query = "?page_size=100&self=true" if endpoint.is_cloud else "?page_size=100"
    return endpoint.http_url(MODEL_PATH + query), key


def fetch_voices(url: str, key: str | None = None, *, timeout: float = 10.0) -> list[Voice]:
    """``GET`` a Fish voice list (``{total, items: [{_id, title, tags, ...}], ...}``).

    Raises OSError (or ValueError for a body that is not such a list).
    """
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = json.loads(response.read().decode("utf-8"))
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(
        isinstance(v, dict) and isinstance(v.get("_id"), str) for v in items
    ):
        raise ValueError(f"{url} did not answer with a list of voices")
    return [
        Voice(v["_id"], str(v.get("title") or v["_id"]), "default" in (v.get("tags") or ()))
        for v in items
    ]


@dataclasses.dataclass(frozen=True)
class Voice:
    """A voice of the list: ``id`` goes into ``reference_id``."""

    id: str
    title: str
    default: bool = False

    @property
    def label(self) -> str:
        name = self.id if self.title == self.id else f"{self.title} ({self.id})"
        return f"{name} (default)" if self.default else name


# --- the panel ------------------------------------------------------------------------------


class _SessionWatch:
    """Listens to one panel session, to notice when it ends (called on the IO thread)."""

    def __init__(self, panel: SpeakPanel, feed: TextFeed) -> None:
        self.panel = panel
        self.feed = feed
        self.session: Session | None = None  # set once speak() returned it

    def on_text(self, text: str) -> None: ...
    def on_flush(self) -> None: ...
    def on_audio(self, pcm: bytes, seq: int) -> None: ...
    def on_metrics(self, metrics: dict[str, Any]) -> None: ...

    def on_state(self, state: str, error: str | None) -> None:
        self.panel._session_state(self, state, error)


#: The panel's buttons: label, icon, CSS class, style, tooltip.
_BUTTONS = (
    ("Speak", "play", "fishnb-panel-speak", "primary",
     "Speak the rest and finish (or speak the whole text anew)"),
    ("Flush", "forward", "fishnb-panel-flush", "", "Speak what has been typed so far, now"),
    ("Stop", "stop", "fishnb-panel-stop", "danger", "Stop now; the audio so far is kept"),
)  # fmt: skip


def _button(label: str, icon: str, css: str, style: str, tooltip: str) -> widgets.Button:
    button = widgets.Button(description=label, icon=icon, button_style=style, tooltip=tooltip)
    button.add_class(css)
    return button


def _slider(
    value: float, bounds: tuple[float, float, float], label: str, readout: str
) -> widgets.FloatSlider:
    low, high, step = bounds
    return widgets.FloatSlider(
        value=value, min=low, max=high, step=step, description=label, readout_format=readout
    )


class VoiceSelector(widgets.Box):
    """The panel's voice control: a dropdown of the server's voices once they are loaded (in
    a thread: the server may be starting), or a text field when the server lists none.

    ``value`` is the chosen voice id, or None for the server's default.
    """

    def __init__(self, wanted: str | None, find_url: Callable[[], tuple[str, str | None]]) -> None:
        self._wanted = wanted
        self._find_url = find_url
        self.ready = threading.Event()
        self.input: widgets.Dropdown | widgets.Text = widgets.Dropdown(
            options=[("loading voices...", "")],
            value="",
            description="voice",
            disabled=True,
            layout=widgets.Layout(width="260px"),
        )
        super().__init__([self.input])
        threading.Thread(target=self._load, name="fish-notebook-voices", daemon=True).start()

    @property
    def value(self) -> str | None:
        value = self.input.value
        return (value.strip() or None) if isinstance(value, str) else None

    def _load(self) -> None:
        try:
            voices = fetch_voices(*self._find_url())
        except (OSError, ValueError, FishNotebookError):
            voices = None
        try:
            if voices:
                self._use_dropdown(voices)
            else:
                self._use_text_field()
        finally:
            self.ready.set()

    def _use_dropdown(self, voices: list[Voice]) -> None:
        options = [(v.label, v.id) for v in voices]
        ids = [value for _, value in options]
        wanted = self._wanted
        if wanted and wanted not in ids:
            options.append((f"{wanted} (not listed)", wanted))
            ids.append(wanted)
        default = next((v.id for v in voices if v.default), ids[0])
        dropdown = self.input
        assert isinstance(dropdown, widgets.Dropdown)
        dropdown.options = options
        dropdown.value = wanted or default
        dropdown.disabled = False

    def _use_text_field(self) -> None:
        field = widgets.Text(
            value=self._wanted or "",
            placeholder="voice id (reference_id)",
            description="voice",
            layout=widgets.Layout(width="260px"),
        )
        old, self.input = self.input, field
        self.children = (field,)
        old.close()


class SpeakPanel(widgets.VBox):
    """An interactive panel: type and hear it as you type. See the module docstring.

    Args:
        text: text to start with (it is not spoken until you type on or press Speak).
        voice, latency, speed, volume, model: the first values of the controls; the kernel
            defaults (``%speak_config``) fill what is not given.
        backend, base_url, api_key: where sessions go, as for :func:`~fish_notebook.speak`.

    Attributes:
        sessions: every session this panel started, oldest first.
    """

    def __init__(
        self,
        text: str = "",
        *,
        voice: str | None = None,
        latency: str | None = None,
        speed: float | None = None,
        volume: float | None = None,
        model: str | None = None,
        backend: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._lock = threading.Lock()
        self._backend = backend
        self._base_url = base_url
        self._api_key = api_key  # never put in a trait
        self._model = model
        self._sent = ""  # the prefix of the text already handed to a session
        self._feed: TextFeed | None = None
        self._session: Session | None = None
        self.sessions: list[Session] = []
        self.player: Player | None = None

        self.text_input = widgets.Textarea(
            value=text,
            placeholder="Type here: each word is spoken as soon as you finish it.",
            continuous_update=True,
            layout=widgets.Layout(width="100%", height="7em"),
        )
        self.text_input.add_class("fishnb-panel-text")
        self.speak_button, self.flush_button, self.stop_button = (
            _button(*spec) for spec in _BUTTONS
        )
        self.voice_box = VoiceSelector(
            voice or defaults.voice, lambda: voices_url(backend, base_url, api_key)
        )
        speed = speed if speed is not None else defaults.speed or 1.0
        volume = volume if volume is not None else defaults.volume or 0.0
        self.speed_slider = _slider(speed, (0.5, 2.0, 0.05), "speed", ".2f")
        self.volume_slider = _slider(volume, (-20.0, 20.0, 1.0), "volume dB", ".0f")
        self.latency_toggle = widgets.ToggleButtons(
            options=list(LATENCY_MODES),
            value=latency or defaults.latency or "balanced",
            description="latency",
            style={"button_width": "72px"},
        )
        self.status_html = widgets.HTML("<i>idle</i>: type to speak")
        self.status_html.add_class("fishnb-panel-status")
        self.player_box = widgets.Box(layout=widgets.Layout(width="100%"))

        super().__init__(self._wire(), **kwargs)
        self.add_class("fishnb-panel")

    def _wire(self) -> list[widgets.Widget]:
        """Connect the controls to their actions; return the panel's rows."""
        self.text_input.observe(self._on_text, names="value")
        buttons = (self.speak_button, self.flush_button, self.stop_button)
        for button, action in zip(buttons, (self.speak, self.flush, self.stop), strict=True):
            button.on_click(lambda _, act=action: act())
        return [
            self.text_input,
            widgets.HBox(list(buttons)),
            widgets.HBox([self.voice_box, self.latency_toggle]),
            widgets.HBox([self.speed_slider, self.volume_slider]),
            self.status_html,
            self.player_box,
        ]

    def __repr__(self) -> str:
        state = self._session.state if self._session is not None else "idle"
        return f"<SpeakPanel {state}, {len(self.sessions)} sessions>"

    # --- what the user does ---------------------------------------------------------------

    @property
    def session(self) -> Session | None:
        """The session running now, or the last one."""
        return self._session or (self.sessions[-1] if self.sessions else None)

    @property
    def voice(self) -> str | None:
        """The voice chosen in the selector (None: the server's default)."""
        return self.voice_box.value

    @property
    def voice_input(self) -> widgets.Dropdown | widgets.Text:
        """The voice control itself (a dropdown, or a text field when none are listed)."""
        return self.voice_box.input

    @property
    def voices_ready(self) -> threading.Event:
        """Set once the voice list was loaded (or found missing)."""
        return self.voice_box.ready

    def _on_text(self, change: dict[str, Any]) -> None:
        self._report(self._send_typed, change["new"], everything=False)

    def flush(self) -> None:
        """Send the word being typed, then a flush point (the Flush button)."""
        self._report(self._send_typed, self.text_input.value, everything=True)
        feed = self._live_feed()
        if feed is not None:
            feed.push(FlushEvent())

    def speak(self) -> None:
        """Send the rest and end the input (the Speak button); with no session, speak it all."""
        if self._live_feed() is None:
            with self._lock:
                self._sent = ""
        self._report(self._send_typed, self.text_input.value, everything=True)
        feed = self._live_feed()
        if feed is not None:
            feed.close()

    def stop(self) -> None:
        """Stop the running session now (the Stop button); typing later starts a new one."""
        with self._lock:
            session = self._session
            self._feed = self._session = None  # typing from now on starts a new session
            self._sent = self.text_input.value
        if session is not None:
            # Cancels the session at once; closing the feed first would let it drain instead.
            session.stop()

    def close(self) -> None:
        """Stop any session and close the panel's widgets."""
        self.stop()
        if self.player is not None:
            self.player.close()
        super().close()

    # --- feeding the session --------------------------------------------------------------

    def _send_typed(self, value: str, *, everything: bool) -> None:
        """Hand the complete words of ``value`` not yet sent (all of it with ``everything``)."""
        with self._lock:
            sent = self._sent
            if not value.startswith(sent):  # an edit before the end: go on from there
                sent = sent[: _common_prefix_length(sent, value)]
            pending = value[len(sent) :]
            if not everything:
                last_space = max((i for i, ch in enumerate(pending) if ch.isspace()), default=-1)
                pending = pending[: last_space + 1]
            self._sent = sent + pending
        if not pending.strip():
            return
        feed = self._live_feed() or self._start_session()
        for word in _WORD.findall(pending):
            feed.push(word)

    def _live_feed(self) -> TextFeed | None:
        with self._lock:
            feed = self._feed
            return feed if feed is not None and not feed.closed else None

    def _start_session(self) -> TextFeed:
        feed = TextFeed()
        watch = _SessionWatch(self, feed)
        session = speak(
            feed,
            voice=self.voice,
            model=self._model,
            latency=self.latency_toggle.value,
            speed=self.speed_slider.value,
            volume=self.volume_slider.value,
            backend=self._backend,
            base_url=self._base_url,
            api_key=self._api_key,
            display=False,
            listeners=[watch],
        )
        watch.session = session
        old = self.player
        self.player = Player(session)
        self.player_box.children = (self.player,)
        if old is not None:
            old.close()
        with self._lock:
            self._feed, self._session = feed, session
            self.sessions.append(session)
        self._show(f"<b>speaking</b> (session {len(self.sessions)})")
        if session.done:  # it ended before it was registered: its watcher found nothing
            error = session.error
            self._session_state(watch, session.state, None if error is None else repr(error))
        return feed

    def _session_state(self, watch: _SessionWatch, state: str, error: str | None) -> None:
        """Called on the IO thread when a session of this panel changes state."""
        if state not in FINAL_STATES:
            return
        feed, session = watch.feed, watch.session
        feed.close()
        with self._lock:
            if self._feed is feed:
                self._feed = self._session = None
            elif self._feed is not None:
                return  # a newer session is running: its status stays
        audio = f"{session.duration:.1f} s of audio" if session is not None else ""
        detail = f": {html.escape(error)}" if error else ""
        self._show(f"<b>{state}</b>{detail} ({audio}); type or press Speak for more")

    def _report(self, action: Any, *args: Any, **kwargs: Any) -> None:
        """Run a button action; show a FishNotebookError instead of losing it in a callback."""
        try:
            action(*args, **kwargs)
        except FishNotebookError as exc:
            self._show(f"<b>error</b>: {html.escape(str(exc))}")

    def _show(self, message: str) -> None:
        self.status_html.value = message
