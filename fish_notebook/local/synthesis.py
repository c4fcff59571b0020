"""Speaking one piece of text: the voices in the thread pool, encoded audio back on the loop.

:meth:`Synthesis.speak` runs a piece in the server's thread pool (reading frames, answering
pings and other sessions never wait for it) and yields, on the event loop, each sentence's
encoded audio as soon as it is ready: ``bytes``, or on ``/with-timestamp`` one
:class:`~.output.TimedPart` per run of whole words. Each sentence's run of the voice model
takes a core slot (:mod:`.slots`) by the deadline of a :class:`ListenerClock`: when the
listener runs out of the audio already sent.

A piece is performed as :mod:`.directions` reads it: each speaker's turns by that speaker's
role in the session's :class:`~.cast.Cast`, each break as silence, delivery cues skipped
(the first piece that holds any says so once, through ``log``). The speaker at the end of
a piece goes on into the next one.

On ``/with-timestamp`` every piece is one text chunk (PROTOCOL.md): each part's
:class:`~fish_notebook.protocol.Alignment` is the cumulative snapshot of the piece's words
heard so far (None before the first), times counted from the piece's first sample,
``audio_duration`` the piece's audio so far, ``content`` the piece's text up to the last of
those words, as sent (cues and tags included: they are part of the text, never of a word).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from ..cues import Pause
from ..protocol import Alignment, AlignmentSegment, TTSRequest
from .cast import Cast
from .directions import Turn, Turns, split_turns
from .encoding import StreamEncoder
from .engine import SpeechChunk
from .output import MAX_AUDIO_PAYLOAD, MAX_TIMED_PAYLOAD, SessionFailed, TimedPart
from .recorder import SessionNotes
from .timing import TextWord, TimedWord, WordPlan, cut_at_words

__all__ = ["ListenerClock", "Snapshots", "Synthesis"]

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


class Snapshots:
    """The cumulative word snapshots of one text chunk, part after part.

    Times are seconds from the chunk's first sample (``rate``: the stream's sample rate),
    microsecond-rounded; each word is kept inside the part that holds it, so snapshots
    never shrink and never go back.
    """

    def __init__(self, text: str, rate: int) -> None:
        self.text = text
        self.rate = rate
        self.segments: list[AlignmentSegment] = []
        self.samples = 0  # audio of the chunk so far, at ``rate``
        self._last_end = 0  # where the last word ends in the text

    @property
    def seconds(self) -> float:
        """The chunk's audio so far, in seconds."""
        return self.samples / self.rate

    def add(
        self, words: list[tuple[TextWord, float, float]], samples: int
    ) -> tuple[str, Alignment | None]:
        """The ``content`` and ``alignment`` of the chunk once a part of ``samples`` holding
        ``words`` (each with its start and end in chunk seconds) is heard."""
        begin = round(self.seconds, 6)
        self.samples += samples
        until = round(self.seconds, 6)
        for word, start, end in words:
            start = min(max(round(start, 6), begin), until)
            end = min(max(round(end, 6), start), until)
            self.segments.append(AlignmentSegment(word.text, start, end))
            self._last_end = word.end
        if not self.segments:
            return "", None
        return self.text[: self._last_end], Alignment(tuple(self.segments), until)


class Synthesis:
    """One cast, request and encoder: pieces of text in, encoded audio out, in order.

    ``cancelled()`` tells a running synthesis to stop after its sentence (and a waiter for
    a core slot to give up). ``log`` tells the client what the voices cannot do.
    """

    def __init__(
        self,
        cast: Cast,
        request: TTSRequest,
        encoder: StreamEncoder,
        pool: ThreadPoolExecutor,
        *,
        timestamps: bool = False,
        cancelled: Callable[[], bool] = lambda: False,
        notes: SessionNotes | None = None,
        log: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.cast = cast
        self.request = request
        self.encoder = encoder
        self.pool = pool
        self.timestamps = timestamps
        self.cancelled = cancelled
        self.notes = notes
        self.log = log
        self.clock = ListenerClock()
        self.speaker = 0  # who speaks at the start of the next piece
        self._cues_told = False
        self._estimate_noted = False

    def __repr__(self) -> str:
        return f"Synthesis({self.cast!r}, {self.encoder!r})"

    async def speak(self, text: str) -> AsyncGenerator[bytes | TimedPart, None]:
        """Synthesize ``text`` in the pool; yield each sentence's audio as it comes.

        Raises SessionFailed when the synthesis fails or the pool is shut down.
        """
        if self.notes is not None:
            self.notes.spoke(text)
        turns = split_turns(text, self.speaker)
        self.speaker = turns.speaker
        await self._tell_cues(turns)
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
                for item in self._run(text, turns):
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

    async def _tell_cues(self, turns: Turns) -> None:
        """Once per session, at the first cue: the voices do not act cues."""
        if not turns.cues or self._cues_told or self.log is None:
            return
        self._cues_told = True
        await self.log(
            "the local voice does not act emotions or delivery cues: skipped "
            + ", ".join(turns.cues)
            + " (and any later ones; [break] and [long-break] are pauses)"
        )

    def _run(self, text: str, turns: Turns) -> Iterator[bytes | TimedPart]:
        """The synthesis itself (pool thread): each sentence encoded as it is spoken."""
        snapshots = Snapshots(text, self.encoder.sample_rate) if self.timestamps else None
        for chunk, words in self._sounds(turns):
            self.clock.heard(chunk.duration)
            if snapshots is not None:
                yield from self._timed_parts(snapshots, chunk, words)
            else:
                yield from self.encoder.encode_slices(chunk.pcm, chunk.sample_rate)

    def _sounds(self, turns: Turns) -> Iterator[tuple[SpeechChunk, list[TimedWord]]]:
        """Each sentence of each turn, and each pause, with its words (timestamp sessions;
        word places in the piece's text, times in samples of the chunk)."""
        for item in turns.items:
            if self.cancelled():
                return
            if isinstance(item, Pause):
                yield SpeechChunk.silence(item.seconds, self.cast.default.sample_rate), []
            else:
                yield from self._say(item)

    def _say(self, turn: Turn) -> Iterator[tuple[SpeechChunk, list[TimedWord]]]:
        role = self.cast.role(turn.speaker)
        voice, prosody = role.voice, self.request.prosody
        plan = (
            WordPlan(turn.text, voice.phonemize(turn.text), voice.phonemize_word)
            if self.timestamps
            else None
        )
        chunks = voice.synthesize(
            turn.text,
            speed=prosody.speed if prosody else 1.0,
            volume_db=prosody.volume if prosody else 0.0,
            normalize_loudness=not (prosody and prosody.normalize_loudness is False),
            cancelled=self.cancelled,
            deadline=self.clock.deadline,
            shift=role.shift,
        )
        for index, chunk in enumerate(chunks):
            words = self._words(plan, index, chunk) if plan is not None else []
            yield chunk, [_moved(word, turn.start) for word in words]

    def _words(self, plan: WordPlan, index: int, chunk: SpeechChunk) -> list[TimedWord]:
        words = plan.timed(index, chunk.phonemes, chunk.alignment, len(chunk.pcm) // 2)
        if words is None:
            logger.warning("sentence %d is not the one planned: sent without words", index)
            return []
        if chunk.alignment is None and not self._estimate_noted:
            self._estimate_noted = True
            logger.warning("a voice has no phoneme alignment: word times are estimates")
        return words

    def _timed_parts(
        self, snapshots: Snapshots, chunk: SpeechChunk, words: list[TimedWord]
    ) -> Iterator[TimedPart]:
        """One sentence's audio cut at word boundaries, each part with its chunk's
        snapshot (pool thread).

        A part holds whole words and at most half a second or ``MAX_AUDIO_PAYLOAD`` bytes of
        audio, unless one word alone is longer: then the part is that word (sliced only
        past ``MAX_TIMED_PAYLOAD``). Audio without words goes in half-second parts.
        """
        encoder = self.encoder
        samples = len(chunk.pcm) // 2
        rate = chunk.sample_rate
        per_second = encoder.byte_rate
        soft = max(1, int(min(0.5, MAX_AUDIO_PAYLOAD / per_second) * rate))
        hard = max(1, int(MAX_TIMED_PAYLOAD / per_second * rate)) if words else soft
        parts = cut_at_words(words, samples, soft, hard)
        cuts = [0, *(end for _, end, _ in parts)]
        encoded = encoder.encode_parts(chunk.pcm, rate, cuts)
        sentence = snapshots.seconds  # where this sentence starts in the chunk
        for (_, _, held), (data, out_samples) in zip(parts, encoded, strict=True):
            timed = [(w.word, sentence + w.start / rate, sentence + w.end / rate) for w in held]
            content, alignment = snapshots.add(timed, out_samples)
            yield TimedPart(data, out_samples, content, alignment)


def _moved(word: TimedWord, by: int) -> TimedWord:
    """``word`` with its place in the text moved ``by`` characters (turn -> piece)."""
    text = word.word
    return TimedWord(TextWord(text.text, text.start + by, text.end + by), word.start, word.end)
