"""Speaking one piece of text: the voice in the thread pool, encoded audio back on the loop.

:meth:`Synthesis.speak` runs a piece in the server's thread pool (reading frames, answering
pings and other sessions never wait for it) and yields, on the event loop, each sentence's
encoded audio as soon as it is ready: ``bytes``, or on ``/with-timestamp`` one
:class:`~.output.TimedPart` per run of whole words. Each sentence's run of the voice model
takes a core slot (:mod:`.slots`) by the deadline of a :class:`ListenerClock`: when the
listener runs out of the audio already sent.

:func:`choose_voice` picks a request's voice (and says what it could not honour).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from ..protocol import Alignment, AlignmentSegment, TTSRequest
from .encoding import StreamEncoder
from .engine import SpeechChunk, Voice, VoiceLibrary
from .output import MAX_AUDIO_PAYLOAD, MAX_TIMED_PAYLOAD, SessionFailed, TimedPart
from .recorder import SessionNotes
from .timing import WordPlan, cut_at_words

__all__ = ["ListenerClock", "Synthesis", "choose_voice"]

logger = logging.getLogger("fish_notebook.local")


class ListenerClock:
    """When the audio sent so far runs out at the listener (:func:`time.monotonic`).

    Its :meth:`deadline` is the deadline of the session's next sentence for a core slot.
    Called from pool threads, one per session at a time.
    """

    def __init__(self) -> None:
        self._until: float | None = None  # None before the first audio

    def deadline(self) -> float:
        """When the next sentence is needed: when the listener runs out of audio, or now
        for a listener with nothing left (so those are served first come, first served)."""
        now = time.monotonic()
        until = self._until
        return until if until is not None and until > now else now

    def heard(self, seconds: float) -> None:
        """Count ``seconds`` of audio leaving now."""
        now = time.monotonic()
        start = now if self._until is None else max(self._until, now)
        self._until = start + seconds


def _seconds(samples: int, rate: int, limit: float) -> float:
    """``samples`` at ``rate`` in seconds, microsecond-rounded, kept inside ``[0, limit]``."""
    return min(max(round(samples / rate, 6), 0.0), limit)


class Synthesis:
    """One voice, request and encoder: pieces of text in, encoded audio out, in order.

    ``cancelled()`` tells a running synthesis to stop after its sentence (and a waiter for
    a core slot to give up).
    """

    def __init__(
        self,
        voice: Voice,
        request: TTSRequest,
        encoder: StreamEncoder,
        pool: ThreadPoolExecutor,
        *,
        timestamps: bool = False,
        cancelled: Callable[[], bool] = lambda: False,
        notes: SessionNotes | None = None,
    ) -> None:
        self.voice = voice
        self.request = request
        self.encoder = encoder
        self.pool = pool
        self.timestamps = timestamps
        self.cancelled = cancelled
        self.notes = notes
        self.clock = ListenerClock()
        self._estimate_noted = False

    def __repr__(self) -> str:
        return f"Synthesis({self.voice.name!r}, {self.encoder!r})"

    async def speak(self, text: str) -> AsyncGenerator[bytes | TimedPart, None]:
        """Synthesize ``text`` in the pool; yield each sentence's audio as it comes.

        Raises SessionFailed when the synthesis fails or the pool is shut down.
        """
        if self.notes is not None:
            self.notes.spoke(text)
        loop = asyncio.get_running_loop()
        ready: asyncio.Queue[object] = asyncio.Queue()
        done = object()

        def hand_over(item: object) -> None:
            try:
                loop.call_soon_threadsafe(ready.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening any more
                pass

        def job() -> None:
            try:
                for item in self._run(text):
                    hand_over(item)
            except Exception as exc:
                hand_over(exc)
            finally:
                hand_over(done)

        try:
            loop.run_in_executor(self.pool, job)
        except RuntimeError as exc:  # the pool is shut down
            raise SessionFailed("the server is shutting down") from exc
        while (item := await ready.get()) is not done:
            if isinstance(item, Exception):
                logger.exception("synthesis failed", exc_info=item)
                raise SessionFailed(f"synthesis failed: {type(item).__name__}: {item}")
            assert isinstance(item, (bytes, TimedPart))
            yield item

    def _run(self, text: str) -> Iterator[bytes | TimedPart]:
        """The synthesis itself (pool thread): each sentence encoded as it is spoken."""
        prosody = self.request.prosody
        voice = self.voice
        plan = (
            WordPlan(text, voice.phonemize(text), voice.phonemize_word) if self.timestamps else None
        )
        chunks = voice.synthesize(
            text,
            speed=prosody.speed if prosody else 1.0,
            volume_db=prosody.volume if prosody else 0.0,
            normalize_loudness=not (prosody and prosody.normalize_loudness is False),
            cancelled=self.cancelled,
            deadline=self.clock.deadline,
        )
        for index, chunk in enumerate(chunks):
            self.clock.heard(chunk.duration)
            if plan is not None:
                yield from self._timed_parts(plan, index, chunk)
            else:
                yield from self.encoder.encode_slices(chunk.pcm, chunk.sample_rate)

    def _timed_parts(self, plan: WordPlan, index: int, chunk: SpeechChunk) -> Iterator[TimedPart]:
        """One sentence's audio cut at word boundaries, each part with its words (pool thread).

        A part holds whole words and at most half a second or ``MAX_AUDIO_PAYLOAD`` bytes of
        audio, unless one word alone is longer: then the part is that word (sliced only
        past ``MAX_TIMED_PAYLOAD``). Word times are relative to the part's first sample.
        """
        encoder = self.encoder
        samples = len(chunk.pcm) // 2
        rate = chunk.sample_rate
        words = plan.timed(index, chunk.phonemes, chunk.alignment, samples)
        if words is None:
            logger.warning("sentence %d is not the one planned: sent without words", index)
            words = []
        elif chunk.alignment is None and not self._estimate_noted:
            self._estimate_noted = True
            logger.warning(
                "voice %s has no phoneme alignment: word times are estimates", self.voice.name
            )
        per_second = encoder.byte_rate
        soft = int(min(0.5, MAX_AUDIO_PAYLOAD / per_second) * rate)
        hard = int(MAX_TIMED_PAYLOAD / per_second * rate)
        parts = cut_at_words(words, samples, max(1, soft), max(1, hard))
        cuts = [0, *(end for _, end, _ in parts)]
        encoded = encoder.encode_parts(chunk.pcm, rate, cuts)
        for (start, _, held), (data, out_samples) in zip(parts, encoded, strict=True):
            duration = round(out_samples / encoder.sample_rate, 6)
            segments = tuple(
                AlignmentSegment(
                    word.word.text,
                    _seconds(word.start - start, rate, duration),
                    _seconds(word.end - start, rate, duration),
                )
                for word in held
            )
            yield TimedPart(data, out_samples, plan.content(held), Alignment(segments, duration))


async def choose_voice(
    library: VoiceLibrary,
    request: TTSRequest,
    pool: ThreadPoolExecutor,
    log: Callable[[str], Awaitable[None]],
    *,
    timestamps: bool = False,
) -> Voice:
    """The voice ``request`` asks for, loaded in the pool; ``log`` tells the client what
    could not be honoured (several voices, cloning, an unknown id: the default speaks).

    Timestamp sessions need per-phoneme timing: that voice loads on first use.
    """
    loop = asyncio.get_running_loop()
    wanted = request.reference_id or None
    if isinstance(wanted, tuple):
        if len(wanted) > 1:
            await log(
                "several reference_id values (multi-speaker) are not supported locally: "
                f"speaking with {wanted[0]!r} only"
            )
        wanted = wanted[0] if wanted else None
    if request.references:
        await log("zero-shot cloning from 'references' is not available locally: ignored")
    default = functools.partial(library.default, alignment=timestamps or None)
    if wanted is None:
        return await loop.run_in_executor(pool, default)
    find = functools.partial(library.find, alignment=timestamps or None)
    voice = await loop.run_in_executor(pool, find, wanted)
    if voice is None:
        voice = await loop.run_in_executor(pool, default)
        await log(
            f"reference_id {wanted!r} is not a local voice: speaking with the default "
            f"voice {voice.name!r}. Local voices: {', '.join(library.names())}"
        )
    return voice
