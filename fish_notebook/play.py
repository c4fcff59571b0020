"""``play(audio_stream)``: the live player for audio streams people already have.

The Fish SDK's realtime recipe ends with ``play(audio_stream)``; this is that call, made live:
chunks play in the notebook while they arrive, instead of after the whole stream.
:func:`start_playing` is the step it shares with ``speak()``: show a session's player, then
start the session.
"""

from __future__ import annotations

from typing import Any, TypeVar

from .session import BaseSession, Playback

__all__ = ["play", "start_playing"]

_S = TypeVar("_S", bound=BaseSession)


def play(stream: Any, *, display: bool = True, **options: Any) -> Playback:
    """Play an audio byte stream in the notebook as it arrives; return its :class:`Playback`.

    Args:
        stream: bytes, or any sync or async iterable of bytes, for example the Fish SDK's
            ``client.tts.stream_websocket(...)`` (mp3 unless you asked for another format).
        display: show the player (default); otherwise just record.
        options: :class:`Playback`'s: ``format`` (``"mp3"``, the default, needs
            ``fish-notebook[mp3]``; ``"wav"`` or ``"pcm"``, 16-bit mono), ``sample_rate``
            (of ``pcm`` input, and the rate ``mp3`` is decoded to) and ``save`` (a .wav or
            .mp3 path written when the stream ends).

    The call returns at once; ``.wait()`` blocks until the stream is done.
    """
    return start_playing(Playback(stream, start=False, **options), display=display)


def start_playing(session: _S, *, display: bool = True) -> _S:
    """Show ``session``'s live player (unless ``display`` is false), then start it.

    The player's static fallback, for viewers without widgets, is MP3: saved notebooks are
    ten times smaller than with WAV.
    """
    if display:
        from .widget import display_player  # the widget stack only when something is shown

        display_player(session, fallback="mp3")
    return session.start()
