"""``play(audio_stream)``: the live player for audio streams people already have.

The Fish SDK's realtime recipe ends with ``play(audio_stream)``; this is that call, made live:
chunks play in the notebook while they arrive, instead of after the whole stream.
"""

from __future__ import annotations

from typing import Any

from .session import Playback

__all__ = ["play"]


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
    playback = Playback(stream, start=False, **options)
    if display:
        from .widget import display_player

        display_player(playback, fallback="mp3")  # 10x smaller saved notebooks than WAV
    return playback.start()
