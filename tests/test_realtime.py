"""The realtime stream's logic with no I/O (fish_notebook.realtime): frames in, outcomes out."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from fish_notebook.errors import (
    ProtocolError,
    ReceiveTimeout,
    ServerBusyError,
    SessionStateError,
    WebSocketError,
)
from fish_notebook.protocol import (
    AudioEvent,
    FinishEvent,
    FlushEvent,
    LogEvent,
    StartEvent,
    StopEvent,
    TextEvent,
    TTSRequest,
    UnknownEvent,
)
from fish_notebook.realtime import RealtimeProtocol, StreamState

REQUEST = TTSRequest(format="pcm")


def frame(**fields: Any) -> bytes:
    """One server frame, as it comes off the wire."""
    return msgpack.packb(fields, use_bin_type=True)


def open_protocol() -> RealtimeProtocol:
    protocol = RealtimeProtocol(REQUEST)
    protocol.connecting()
    assert protocol.opened() == StartEvent(REQUEST)
    return protocol


def test_opening_gives_start_first_and_only_once() -> None:
    """opened() hands over start with the request; a second open or a late one is refused."""
    protocol = open_protocol()
    assert protocol.state is StreamState.OPEN
    with pytest.raises(SessionStateError, match="already open"):
        protocol.connecting()
    closed_while_connecting = RealtimeProtocol(REQUEST)
    closed_while_connecting.connecting()
    closed_while_connecting.close()
    with pytest.raises(SessionStateError, match="closed while it connected"):
        closed_while_connecting.opened()


def test_sends_follow_the_state() -> None:
    """Text, flush and stop while open; nothing after stop but a second, silent stop."""
    unopened = RealtimeProtocol(REQUEST)
    with pytest.raises(SessionStateError, match="not open yet"):
        unopened.send_text("early")
    protocol = open_protocol()
    assert protocol.send_text("Hi.") == TextEvent("Hi.")
    assert protocol.send_text("") is None
    with pytest.raises(TypeError, match="takes a str"):
        protocol.send_text(b"bytes")  # type: ignore[arg-type]
    assert protocol.send_flush(1.0) == FlushEvent()
    assert protocol.send_stop(2.0) == StopEvent()
    assert protocol.state is StreamState.STOPPING
    assert protocol.send_stop(3.0) is None
    with pytest.raises(SessionStateError, match="stop\\(\\) was sent"):
        protocol.send_text("more")
    protocol.close()
    assert protocol.send_stop(4.0) is None
    with pytest.raises(SessionStateError, match="closed"):
        protocol.send_flush(5.0)


def test_audio_is_owed_after_a_flush_that_followed_text() -> None:
    """The clock starts at a flush after new text, keeps its start, and stops with audio."""
    protocol = open_protocol()
    assert protocol.time_left(0.0, 5.0) is None
    protocol.send_flush(1.0)  # nothing was sent: nothing is owed
    assert protocol.time_left(2.0, 5.0) is None
    protocol.send_text("One.")
    protocol.send_flush(10.0)
    protocol.send_text(" Two.")
    protocol.send_flush(11.0)  # still owed since 10
    assert protocol.time_left(12.0, 5.0) == pytest.approx(3.0)
    assert protocol.time_left(12.0, None) is None  # no bound, no clock
    protocol.receive_frame(frame(event="audio", audio=b"\x00\x01"), 13.0)
    assert protocol.time_left(100.0, 5.0) is None


def test_after_stop_every_audio_frame_restarts_the_clock() -> None:
    """After stop, audio keeps the stream alive; silence past the bound is a ReceiveTimeout."""
    protocol = open_protocol()
    protocol.send_stop(20.0)
    assert protocol.time_left(22.0, 5.0) == pytest.approx(3.0)
    protocol.receive_frame(frame(event="audio", audio=b"\x00\x01"), 24.0)
    assert protocol.time_left(26.0, 5.0) == pytest.approx(3.0)
    with pytest.raises(ReceiveTimeout, match="5.0 s while finish after stop"):
        protocol.time_left(29.5, 5.0)
    assert protocol.state is StreamState.CLOSED


def test_a_silent_server_after_flush_times_out() -> None:
    """The timeout says what was owed: audio after a flush."""
    protocol = open_protocol()
    protocol.send_text("Hi.")
    protocol.send_flush(0.0)
    with pytest.raises(ReceiveTimeout, match="audio after flush"):
        protocol.time_left(0.5, 0.5)


def test_events_to_hand_on() -> None:
    """Audio, log and unknown events are handed on as typed events; the stream stays open."""
    protocol = open_protocol()
    audio = protocol.receive_frame(frame(event="audio", audio=b"pcm"), 0.0)
    assert audio == AudioEvent(b"pcm")
    assert protocol.receive_frame(frame(event="log", message="hi"), 0.0) == LogEvent("hi")
    unknown = protocol.receive_frame(frame(event="progress", chars=3), 0.0)
    assert isinstance(unknown, UnknownEvent) and unknown.name == "progress"
    assert protocol.state is StreamState.OPEN


def test_finish_stop_ends_the_stream_cleanly() -> None:
    """finish reason=stop is handed on, kept, and closes the stream."""
    protocol = open_protocol()
    protocol.send_stop(0.0)
    assert protocol.receive_frame(frame(event="finish", reason="stop"), 1.0) == FinishEvent()
    assert protocol.finish == FinishEvent() and protocol.state is StreamState.CLOSED
    assert protocol.time_left(100.0, 1.0) is None


@pytest.mark.parametrize(
    ("fields", "error_type", "words", "reason"),
    [
        (
            {"event": "finish", "reason": "error", "message": "model crashed"},
            WebSocketError,
            "ended the stream with an error: model crashed",
            "model crashed",
        ),
        ({"event": "finish", "reason": "error"}, WebSocketError, "with an error", "error"),
        (
            {"event": "error", "error": "Concurrency limit exceeded", "max_concurrency": 2},
            ServerBusyError,
            "(max 2 sessions)",
            "Concurrency limit exceeded",
        ),
        (
            {"event": "error", "error": "bad voice"},
            WebSocketError,
            "reported an error",
            "bad voice",
        ),
    ],
)
def test_failures_raise_typed_errors_and_close(
    fields: dict[str, Any], error_type: type[WebSocketError], words: str, reason: str
) -> None:
    """finish with an error and error events raise their typed error; the stream is closed."""
    protocol = open_protocol()
    with pytest.raises(error_type, match=words.replace("(", "\\(").replace(")", "\\)")) as info:
        protocol.receive_frame(frame(**fields), 0.0)
    assert info.value.reason == reason
    assert protocol.state is StreamState.CLOSED
    if error_type is ServerBusyError:
        assert isinstance(info.value, ServerBusyError) and info.value.max_concurrency == 2
    else:
        assert not isinstance(info.value, ServerBusyError)


@pytest.mark.parametrize(
    "raw", [b"\xc1\xc1 not msgpack", msgpack.packb([1, 2, 3]), "a text frame", frame(no="event")]
)
def test_frames_that_break_the_protocol(raw: bytes | str) -> None:
    """A frame that is not a MessagePack map with an event is a ProtocolError; the stream closes."""
    protocol = open_protocol()
    with pytest.raises(ProtocolError):
        protocol.receive_frame(raw, 0.0)
    assert protocol.state is StreamState.CLOSED
