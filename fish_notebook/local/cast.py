"""Who speaks in a session: the voice of each speaker of a dialogue, chosen at its start.

A request names one voice (``reference_id``: a voice id) or, for a dialogue, one per
speaker (a list: speaker ``N`` of the text's ``<|speaker:N|>`` tags gets the ``N``-th).
:func:`choose_cast` loads them all before the first word, so a speaker change never waits
for a voice to load, and says what it could not honour (an unknown id, cloning from
``references``). A speaker with no voice of its own (none listed, or one the server does
not have) speaks with a *rendition* of the default voice: rendition ``N`` shifts pitch and
formants by :data:`RENDITION_SHIFTS` ``[N]`` at the same tempo (:meth:`Voice.synthesize`,
``shift``), so each speaker sounds apart. Speaker 0's rendition is the voice itself.

Measured with the default voice (en_US-joe-medium) on six sentences (72 words), median
pitch by autocorrelation over voiced frames, words recognised by Whisper tiny.en (word
error rate; Piper's noise makes every run differ, 0-8 % for the voice itself):

======  ==========  =================================
shift   pitch       word error rate (runs)
======  ==========  =================================
1.0     89 Hz       2.8 % (12 of 432 words, 6 runs)
1.1     98 Hz       0.0 % (1 run)
1.2     105-108 Hz  3.3 % (12 of 360 words, 5 runs)
1.3     114-116 Hz  4.6 % (23 of 504 words, 7 runs)
1.4     124 Hz      2.8 % (1 run)
1.5     131 Hz      4.2 % (1 run)
0.85    79 Hz       12 % (1 run); 0.8: 74 Hz, 12 %
======  ==========  =================================

So speaker 1 gets x1.2 (as intelligible as the voice, three semitones higher, told apart
at once), and every rendition is higher than the voice: shifts down cost words.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..protocol import TTSRequest
from .engine import Voice, VoiceLibrary

__all__ = ["RENDITION_SHIFTS", "Cast", "Role", "choose_cast"]

#: Pitch and formant factor of each speaker's rendition of the default voice (speaker
#: ``N`` takes ``[N % len]``): speakers 0, 1 and 2 at least 15 % apart in pitch, the
#: others in between.
RENDITION_SHIFTS: tuple[float, ...] = (1.0, 1.2, 1.4, 1.1, 1.3, 1.5, 1.05, 1.25, 1.45)


@dataclass(frozen=True)
class Role:
    """How one speaker sounds: a voice, and its rendition (``shift``, 1.0 for itself)."""

    voice: Voice
    shift: float = 1.0


class Cast:
    """The role of every speaker number of one session.

    ``voices[N]`` is speaker ``N``'s own voice (None: it has none); any other speaker gets
    rendition ``N`` of ``default``.
    """

    def __init__(self, default: Voice, voices: Sequence[Voice | None] = ()) -> None:
        self.default = default
        self.voices = tuple(voices)

    def __repr__(self) -> str:
        names = [v.name if v else None for v in self.voices]
        return f"Cast(default={self.default.name!r}, voices={names})"

    @property
    def names(self) -> list[str]:
        """The voices that speak, each once (speaker 0's first)."""
        found = [self.role(0).voice.name, *(v.name for v in self.voices if v is not None)]
        return list(dict.fromkeys(found))

    def role(self, speaker: int) -> Role:
        """Who says speaker ``speaker``'s words."""
        voice = self.voices[speaker] if speaker < len(self.voices) else None
        if voice is not None:
            return Role(voice)
        return Role(self.default, RENDITION_SHIFTS[speaker % len(RENDITION_SHIFTS)])


async def choose_cast(
    library: VoiceLibrary,
    request: TTSRequest,
    pool: ThreadPoolExecutor,
    log: Callable[[str], Awaitable[None]],
    *,
    timestamps: bool = False,
) -> Cast:
    """The voices ``request`` asks for, loaded in the pool; ``log`` tells the client what
    could not be honoured. Timestamp sessions need per-phoneme timing: those voices load
    with it on first use."""
    loop = asyncio.get_running_loop()
    alignment = timestamps or None
    rid = request.reference_id
    wanted = list(rid) if isinstance(rid, tuple) else [rid] if rid else []
    if request.references:
        await log("zero-shot cloning from 'references' is not available locally: ignored")
    default = await loop.run_in_executor(
        pool, functools.partial(library.default, alignment=alignment)
    )
    find = functools.partial(library.find, alignment=alignment)
    voices: list[Voice | None] = []
    for speaker, name in enumerate(wanted):
        voice = await loop.run_in_executor(pool, find, name)
        voices.append(voice)
        if voice is None:
            shift = RENDITION_SHIFTS[speaker % len(RENDITION_SHIFTS)]
            instead = (
                f"the default voice {default.name!r}"
                if speaker == 0
                else f"a rendition of the default voice (pitch x{shift:g})"
            )
            whose = f" (speaker {speaker})" if len(wanted) > 1 else ""
            await log(
                f"reference_id {name!r}{whose} is not a local voice: speaking with {instead}. "
                f"Local voices: {', '.join(library.names())}"
            )
    return Cast(default, voices)
