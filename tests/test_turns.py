"""The turn-taking machine, driven by synthetic detector events and a fake clock."""

from __future__ import annotations

import pytest

from fish_notebook.errors import ValidationError
from fish_notebook.turns import (
    DEFAULT_EARLY_TRANSCRIPT,
    BargeIn,
    CancelReply,
    EndOfTurn,
    TranscribeEarly,
    TurnMetrics,
    TurnTaker,
)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def user_turn(machine: TurnTaker, clock: Clock, start: float = 1.0, end: float = 3.0) -> EndOfTurn:
    """The user speaks from ``start`` to ``end``; the detector decides 0.6 s later."""
    machine.speech_started(start, now=start + 0.2)
    assert machine.state == "user_speaking"
    clock.advance(end + 0.6 - start)
    action = machine.speech_ended(start, end, now=end + 0.6)
    assert isinstance(action, EndOfTurn)
    return action


def answering(machine: TurnTaker, clock: Clock) -> TurnMetrics:
    action = user_turn(machine, clock)
    assert machine.transcribed(action.metrics, "What is the capital of France?")
    assert machine.state == "answering"
    return action.metrics


def test_a_turn_goes_round_with_its_metrics(clock: Clock) -> None:
    machine = TurnTaker(clock=clock)
    action = user_turn(machine, clock)
    assert (action.start, action.end) == (1.0, 3.0) and machine.state == "thinking"
    metrics = action.metrics
    # The end was decided 0.6 s of audio after the speech ended, at the clock's reading now.
    assert metrics.turn_end == clock.now and metrics.speech_end == pytest.approx(clock.now - 0.6)
    steps = [("transcript", 0.3), ("first_token", 0.2), ("first_audio", 0.25)]
    clock.advance(0.3)
    assert machine.transcribed(metrics, "Hello.") and machine.state == "answering"
    clock.advance(0.2)
    machine.first_token(metrics)
    clock.advance(0.25)
    machine.first_audio(metrics)
    machine.first_audio(metrics)  # the first one counts
    clock.advance(0.05)
    machine.first_sample(metrics)
    clock.advance(2.0)
    machine.answer_ended(metrics)
    assert machine.state == "listening" and metrics.answer_end == clock.now
    latencies = metrics.latencies()
    expected, total = {}, 0.6
    for name, step in steps:
        total += step
        expected[f"{name}_s"] = pytest.approx(total)
    assert latencies == {
        "turn_end_s": pytest.approx(0.6),
        "recognized_s": pytest.approx(0.9),  # told with the transcript: recognized then
        **expected,
        "first_sample_s": pytest.approx(1.4),
        "barge_in_to_silence_s": None,
    }


def test_an_empty_transcript_gives_the_floor_back(clock: Clock) -> None:
    machine = TurnTaker(clock=clock)
    action = user_turn(machine, clock)
    assert not machine.transcribed(action.metrics, "  ")
    assert machine.state == "listening" and action.metrics.transcript == clock.now


def test_speech_over_an_answer_long_enough_is_a_barge_in(clock: Clock) -> None:
    machine = TurnTaker(min_barge_in_s=0.4, clock=clock)
    metrics = answering(machine, clock)
    machine.speech_started(10.0, now=10.2)
    assert machine.speech_continues(10.3, now=10.3) is None  # 0.3 s: not yet
    assert machine.state == "answering"
    clock.advance(0.1)
    action = machine.speech_continues(10.4, now=10.45)
    assert action == BargeIn(10.0, metrics)
    assert metrics.barge_in == clock.now
    assert metrics.barge_in_onset == pytest.approx(clock.now - 0.45)
    # The new speech is already the user's next turn; the answer is silenced next.
    assert machine.state == "user_speaking" and machine.current is not metrics
    clock.advance(0.08)
    machine.interrupted(metrics)
    assert metrics.silenced == clock.now and metrics.answer_end == clock.now
    assert metrics.latencies()["barge_in_to_silence_s"] == pytest.approx(0.53)
    assert machine.state == "user_speaking"  # news about the old turn changes nothing
    following = machine.speech_ended(10.0, 12.0, now=12.6)
    assert isinstance(following, EndOfTurn) and following.start == 10.0


def test_a_cough_over_the_answer_does_not_cut_it(clock: Clock) -> None:
    machine = TurnTaker(min_barge_in_s=0.4, clock=clock)
    metrics = answering(machine, clock)
    machine.speech_started(10.0, now=10.2)
    assert machine.speech_continues(10.25, now=10.3) is None
    assert machine.speech_ended(10.0, 10.25, now=10.85) is None
    assert machine.speech_continues(12.0, now=12.0) is None  # that onset is forgotten
    assert machine.state == "answering" and metrics.barge_in is None
    machine.answer_ended(metrics)
    assert machine.state == "listening"


def test_min_barge_in_is_settable(clock: Clock) -> None:
    machine = TurnTaker(min_barge_in_s=0.0, clock=clock)
    metrics = answering(machine, clock)
    machine.speech_started(10.0, now=10.2)
    assert machine.speech_continues(10.0, now=10.2) == BargeIn(10.0, metrics)


@pytest.mark.parametrize("bad", [-0.1, 11, float("nan"), "0.4", None])
def test_a_bad_min_barge_in_is_refused(bad: object) -> None:
    with pytest.raises(ValidationError, match="min_barge_in_s"):
        TurnTaker(min_barge_in_s=bad)  # type: ignore[arg-type]


def test_speech_while_thinking_cancels_the_reply_and_the_turn_goes_on(clock: Clock) -> None:
    machine = TurnTaker(min_barge_in_s=0.4, clock=clock)
    first = user_turn(machine, clock, start=1.0, end=3.0)
    assert machine.speech_from == 1.0  # the audio from 1.0 may still be asked for
    machine.speech_started(4.0, now=4.2)
    action = machine.speech_continues(4.5, now=4.5)
    assert action == CancelReply(first.metrics)
    assert machine.state == "user_speaking"
    # The transcript of the first stretch arrives late: it is stale and changes nothing.
    assert not machine.transcribed(first.metrics, "What is")
    assert machine.state == "user_speaking"
    merged = machine.speech_ended(4.0, 6.0, now=6.6)
    assert isinstance(merged, EndOfTurn) and (merged.start, merged.end) == (1.0, 6.0)
    assert merged.metrics is not first.metrics


def test_speech_still_going_when_the_answer_ends_is_the_next_turn(clock: Clock) -> None:
    machine = TurnTaker(min_barge_in_s=0.4, clock=clock)
    metrics = answering(machine, clock)
    machine.speech_started(10.0, now=10.2)
    assert machine.speech_from == 10.0
    machine.answer_ended(metrics)
    assert machine.state == "user_speaking"
    action = machine.speech_ended(10.0, 10.3, now=10.9)
    assert isinstance(action, EndOfTurn) and action.start == 10.0


def test_nothing_pending_while_listening_or_answering_quietly(clock: Clock) -> None:
    machine = TurnTaker(clock=clock)
    assert machine.speech_from is None and machine.speech_continues(5.0, now=5.0) is None
    answering(machine, clock)
    assert machine.speech_from is None
    machine.reset()
    assert machine.state == "listening" and machine.current is None


def test_a_pause_is_transcribed_early_once_and_the_end_of_turn_covers_the_same_audio(
    clock: Clock,
) -> None:
    machine = TurnTaker(clock=clock)
    assert machine.early_transcript_s == DEFAULT_EARLY_TRANSCRIPT == 0.2
    assert machine.speech_paused(3.0, now=3.5) is None  # nobody is speaking
    machine.speech_started(1.0, now=1.2)
    assert machine.speech_paused(3.0, now=3.1) is None  # 0.1 s of silence: not yet
    early = machine.speech_paused(3.0, now=3.2)
    assert early == TranscribeEarly(1.0, 3.0, machine.current)  # type: ignore[arg-type]
    assert machine.speech_paused(3.0, now=3.3) is None  # once for each pause
    clock.advance(2.6)
    end = machine.speech_ended(1.0, 3.0, now=3.6)
    assert isinstance(end, EndOfTurn) and (end.start, end.end, end.metrics) == (
        early.start,
        early.end,
        early.metrics,
    )
    # When it was recognized and when the turn had it are both kept.
    assert machine.transcribed(end.metrics, "Hello.", recognized=clock.now - 0.1)
    assert end.metrics.recognized == pytest.approx(clock.now - 0.1)
    assert end.metrics.transcript == clock.now
    assert machine.speech_paused(3.0, now=4.0) is None  # answering: no user turn to transcribe


def test_speech_after_a_pause_makes_a_new_early_transcript_of_more_audio(clock: Clock) -> None:
    machine = TurnTaker(clock=clock)
    machine.speech_started(1.0, now=1.2)
    first = machine.speech_paused(2.0, now=2.3)
    assert isinstance(first, TranscribeEarly) and first.end == 2.0
    # The user speaks on (the detector's silence is over); the next pause is another one.
    second = machine.speech_paused(3.5, now=3.7)
    assert isinstance(second, TranscribeEarly) and (second.start, second.end) == (1.0, 3.5)
    end = machine.speech_ended(1.0, 3.5, now=4.1)
    assert isinstance(end, EndOfTurn) and end.end == second.end != first.end


def test_early_transcripts_can_be_turned_off_or_moved(clock: Clock) -> None:
    off = TurnTaker(early_transcript_s=None, clock=clock)
    off.speech_started(1.0, now=1.2)
    assert off.speech_paused(2.0, now=9.0) is None
    later = TurnTaker(early_transcript_s=0.5, clock=clock)
    later.speech_started(1.0, now=1.2)
    assert later.speech_paused(2.0, now=2.4) is None
    assert isinstance(later.speech_paused(2.0, now=2.5), TranscribeEarly)
    with pytest.raises(ValidationError, match="early_transcript_s"):
        TurnTaker(early_transcript_s=-1)
