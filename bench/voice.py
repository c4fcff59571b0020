"""Rows 10a-10d: the voice loop, kernel side (``fish_notebook.voiceloop``).

All local: the shared child server speaks the answers and answers ``POST /v1/asr`` (Whisper
tiny.en, packaged); the agent is the echo agent; the user's speech is the embedded Piper
voice, resampled to the microphone's 16 kHz and fed to ``VoiceLoop.feed`` in 20 ms frames
**in real time** (frame k when it would have been fully captured, ``t0 + (k + 1) * 20 ms``),
so an instant ``s`` seconds into the fed audio happened at ``t0 + s`` on the bench's clock,
which is the loop's clock too (``time.perf_counter``).

- 10a voice to voice: from the real end of the user's speech in the fed audio to the
  answer's first audio reaching the kernel (``turn.metrics.first_audio``); the breakdown
  (end of turn decided, speech recognition answered, transcript, first token, first audio)
  from the same origin. The loop's defaults: the detector's 0.6 s end-of-turn silence, the
  utterance sent to speech recognition after 0.2 s of it (``early_transcript_s``).
- 10b speech recognition through ``POST /v1/asr`` (``transcribe()``) against faster-whisper
  in process (``Transcriber()``), the same WAV, interleaved; text alone (no segment
  timestamps), as the voice loop asks.
- 10c barge-in: the real onset of speech fed over a playing answer -> the answer silenced
  in the kernel (``turn.metrics.silenced``).
- 10d microphone path cost: the process's CPU time while ``VoiceLoop.feed`` gets 20 ms
  frames of silence in real time, against the same paced loop feeding nothing.

"Real" start and end of speech: the first and last 20 ms frame of the Piper audio whose RMS
is above -40 dBFS (Piper's audio is peak-normalised; its silences are digital zeros or
nearly), not the detector's own estimate, which the notes give beside.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fish_notebook.agents import EchoAgent
from fish_notebook.audio import wav_bytes
from fish_notebook.turns import DEFAULT_EARLY_TRANSCRIPT, DEFAULT_MIN_BARGE_IN
from fish_notebook.vad import SAMPLE_RATE, VoiceActivityDetector
from fish_notebook.voiceloop import FRAME_BYTES, VoiceLoop, microphone_pcm

from .common import Row, interleave, now
from .latency import TEN_SENTENCES

QUESTION = "What is the capital of France? Tell me in one short sentence."
#: Speech with no pause in its first second: "Wait, stop there." would hold the detector's
#: voiced span at "Wait" through the comma's pause (the barge-in then comes ~0.3 s later).
INTERRUPTION = "Sorry to interrupt but I need something else."
LEAD_SILENCE = 0.3  # seconds of silence before the speech
TAIL_SILENCE = 1.2  # after it: twice the detector's 0.6 s end-of-turn silence
FRAME = FRAME_BYTES / 2 / SAMPLE_RATE  # 20 ms
VOICED_RMS = 32768 * 10 ** (-40 / 20)  # -40 dBFS
V2V_GOAL = 1.2  # seconds, absolute
BARGE_IN_MARGIN = 0.1  # seconds past min_barge_in_s the answer may take to go quiet
CPU_GOAL = 0.05  # of one core
WAIT = 120.0  # seconds any one wait may take


@dataclass(frozen=True)
class Utterance:
    """Speech as the microphone sends it (16 kHz 16-bit mono), silence around it."""

    text: str
    pcm: bytes
    onset: float  # seconds into pcm: the first voiced frame
    end: float  # seconds into pcm: just past the last voiced frame

    @property
    def wav(self) -> bytes:
        return wav_bytes(self.pcm, SAMPLE_RATE)


def spoken(text: str, lead: float = LEAD_SILENCE, tail: float = TAIL_SILENCE) -> Utterance:
    """``text`` spoken by the embedded Piper voice (in process), as microphone audio."""
    import numpy as np

    from fish_notebook.local.engine import VoiceLibrary

    voice = VoiceLibrary().default()
    raw = b"".join(chunk.pcm for chunk in voice.synthesize(text))
    speech = microphone_pcm(wav_bytes(raw, voice.sample_rate))
    pcm = bytes(2 * round(lead * SAMPLE_RATE)) + speech + bytes(2 * round(tail * SAMPLE_RATE))
    samples = np.frombuffer(pcm, "<i2").astype(np.float64)
    size = FRAME_BYTES // 2
    frames = samples[: len(samples) // size * size].reshape(-1, size)
    voiced = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > VOICED_RMS)
    if not len(voiced):
        raise RuntimeError(f"Piper's audio for {text!r} has no voiced frame")
    return Utterance(text, pcm, float(voiced[0] * FRAME), float((voiced[-1] + 1) * FRAME))


def feed_real_time(
    loop: VoiceLoop | None, pcm: bytes, t0: float, stop: Callable[[], bool] | None = None
) -> None:
    """Feed ``pcm`` in 20 ms frames, frame k at ``t0 + (k + 1) * 20 ms`` (as captured).
    ``loop`` None paces the same frames and feeds nothing (the thread's own cost)."""
    for k, start in enumerate(range(0, len(pcm), FRAME_BYTES)):
        delay = t0 + (k + 1) * FRAME - now()
        if delay > 0:
            time.sleep(delay)
        if loop is not None:
            loop.feed(pcm[start : start + FRAME_BYTES])
        if stop is not None and stop():
            return


def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = now() + timeout
    while not condition():
        if now() > deadline:
            raise RuntimeError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.005)


# --- 10a: voice to voice -----------------------------------------------------------------------

STEPS = ("turn_end", "recognized", "transcript", "first_token", "first_audio")


def voice_turn(loop: VoiceLoop, question: Utterance) -> dict[str, float]:
    """One turn fed in real time: seconds from the real end of speech to each step, and
    ``detector_end`` (where the detector put the end, against the real one)."""
    loop.wait(WAIT)
    count = len(loop.turns)
    t0 = now()
    feed_real_time(loop, question.pcm, t0)  # the tail silence ends the turn on its own
    loop.wait(WAIT)
    turns = loop.turns
    if len(turns) <= count:
        raise RuntimeError("the voice loop heard no turn in the question")
    turn = turns[count]
    if turn.error is not None:
        raise RuntimeError(f"the turn failed: {turn.error!r}")
    metrics, end = turn.metrics, t0 + question.end
    out = {step: _after(getattr(metrics, step), end, step) for step in STEPS}
    out["detector_end"] = _after(metrics.speech_end, end, "speech_end")
    out["early"] = float(turn.early_transcript)
    return out


def _after(at: float | None, origin: float, step: str) -> float:
    if at is None:
        raise RuntimeError(f"the turn never reached {step}")
    return at - origin


def voice_to_voice_row(url: str, repeats: int, question: Utterance) -> Row:
    detector = VoiceActivityDetector()  # the defaults, as VoiceLoop makes its own
    silence = detector.silence  # the end-of-turn silence
    early_s = DEFAULT_EARLY_TRANSCRIPT  # as VoiceLoop has it by default
    loop = VoiceLoop(EchoAgent(), base_url=url, vad=detector, early_transcript_s=early_s)
    try:
        voice_turn(loop, question)  # warm: the server's Whisper and Piper, the socket
        turns = [voice_turn(loop, question) for _ in range(repeats)]
    finally:
        loop.close()
    median = {key: statistics.median([t[key] for t in turns]) for key in turns[0]}
    breakdown = ", ".join(f"{step} {median[step] * 1000:.0f}" for step in STEPS)
    early = sum(t["early"] for t in turns)
    row = Row(
        "10a",
        "voice to voice: end of speech -> first answer audio in the kernel (all local)",
        "ms",
        "",
        f"<= {V2V_GOAL * 1000:.0f} ms",
        ours=[t["first_audio"] for t in turns],
        scale=1000,
        note=f"medians after the end of speech (ms): {breakdown}; end-of-turn silence "
        f"{silence * 1000:.0f} ms (the detector's end is {median['detector_end'] * 1000:+.0f} "
        f"ms from the real one); transcript asked for after {early_s * 1000:.0f} ms of it, "
        f"used in {early:.0f} of {len(turns)} turns; echo agent, Whisper tiny.en and Piper on "
        "the shared server, frames fed in real time",
        extra={
            "turns_s": turns,
            "end_of_turn_silence_s": silence,
            "early_transcript_s": early_s,
        },
    )
    return row.finish(lambda _r, m: m is not None and m <= V2V_GOAL)


# --- 10b: speech recognition through HTTP ------------------------------------------------------


def asr_row(url: str, repeats: int, question: Utterance) -> Row:
    from fish_notebook.local.asr import Transcriber
    from fish_notebook.local.transcription import ASR_SOLO_THREADS, ASR_THREADS
    from fish_notebook.transcribe import transcribe

    wav = question.wav
    in_process = Transcriber()
    one_thread = Transcriber(cpu_threads=1)
    texts: dict[str, str] = {}

    def timed(name: str, call: Callable[[], Any]) -> Callable[[], float]:
        def run() -> float:
            began = now()
            answer = call()
            elapsed = now() - began
            texts[name] = answer.text if hasattr(answer, "text") else answer["text"]
            return elapsed

        return run

    variants = {
        "http": timed(
            "http", lambda: transcribe(wav, base_url=url, timeout=WAIT, timestamps=False)
        ),
        "in_process": timed("in_process", lambda: in_process.transcribe(wav, timestamps=False)),
        "one_thread": timed("one_thread", lambda: one_thread.transcribe(wav, timestamps=False)),
    }
    for variant in variants.values():  # warm: the server's model, both local models
        variant()
    samples = interleave(variants, repeats)
    one = statistics.median(samples["one_thread"]) * 1000
    seconds = len(question.pcm) / 2 / SAMPLE_RATE
    row = Row(
        "10b",
        f"speech recognition, {seconds:.1f} s question: POST /v1/asr (transcribe())",
        "ms",
        f"faster-whisper in process (Transcriber(), {in_process.cpu_threads} threads), same WAV",
        "<= 1.2x",
        ours=samples["http"],
        peer=samples["in_process"],
        scale=1000,
        note=f"the server runs Whisper on {ASR_SOLO_THREADS} threads when nothing else runs "
        f"there ({ASR_THREADS} beside synthesis); in process on 1 thread: {one:.0f} ms; "
        f"heard: {texts['http']!r}",
        extra={"one_thread_s": samples["one_thread"], "texts": texts},
    )
    return row.finish(lambda ratio, _m: ratio is not None and ratio <= 1.2)


# --- 10c: barge-in -------------------------------------------------------------------------------


def barge_in_once(url: str, question: Utterance, interruption: Utterance) -> dict[str, float]:
    """A ten-sentence answer playing (the page counted as playing it: ``wait_for_page``);
    ``interruption`` fed over it in real time. Seconds from its real onset to each step."""
    loop = VoiceLoop(lambda _messages: TEN_SENTENCES, base_url=url, wait_for_page=True)
    try:
        for start in range(0, len(question.pcm), FRAME_BYTES):  # the question, at once
            loop.feed(question.pcm[start : start + FRAME_BYTES])
        _until(lambda: bool(loop.turns), WAIT, "the question's transcript")
        metrics = loop.turns[0].metrics
        _until(lambda: metrics.first_audio is not None, WAIT, "the answer's first audio")
        time.sleep(0.5)  # the answer has been playing a while
        t0 = now()
        feed_real_time(loop, interruption.pcm, t0, stop=lambda: metrics.silenced is not None)
        _until(lambda: metrics.silenced is not None, 5.0, "the barge-in")
        onset = t0 + interruption.onset
        return {
            "silenced": _after(metrics.silenced, onset, "silenced"),
            "confirmed": _after(metrics.barge_in, onset, "barge_in"),
            "detector_onset": _after(metrics.barge_in_onset, onset, "barge_in_onset"),
        }
    finally:
        loop.close()


def barge_in_row(url: str, repeats: int, question: Utterance, interruption: Utterance) -> Row:
    runs = [barge_in_once(url, question, interruption) for _ in range(repeats)]
    median = {key: statistics.median([r[key] for r in runs]) for key in runs[0]}
    goal = DEFAULT_MIN_BARGE_IN + BARGE_IN_MARGIN
    row = Row(
        "10c",
        "barge-in: speech onset over a playing answer -> answer silenced (kernel side)",
        "ms",
        "",
        f"<= {goal * 1000:.0f} ms",
        ours=[r["silenced"] for r in runs],
        scale=1000,
        note=f"min_barge_in_s {DEFAULT_MIN_BARGE_IN * 1000:.0f} ms (speech must last that "
        f"long to interrupt) + {BARGE_IN_MARGIN * 1000:.0f} ms; medians after the real onset: "
        f"confirmed {median['confirmed'] * 1000:.0f} ms, silenced "
        f"{median['silenced'] * 1000:.0f} ms (the detector's onset "
        f"{median['detector_onset'] * 1000:+.0f} ms); the kernel side: the page's fade (the "
        "voice chat widget) is not measured here",
        extra={"runs_s": runs},
    )
    return row.finish(lambda _r, m: m is not None and m <= goal)


# --- 10d: the microphone path's CPU cost -------------------------------------------------------


def cpu_share(loop: VoiceLoop | None, seconds: float) -> float:
    """Process CPU time / wall time while 20 ms frames of silence are paced in real time."""
    silence = bytes(round(seconds / FRAME) * FRAME_BYTES)
    wall, cpu = now(), time.process_time()
    feed_real_time(loop, silence, wall)
    return (time.process_time() - cpu) / (now() - wall)


def microphone_cpu_row(url: str, repeats: int, seconds: float) -> Row:
    loop = VoiceLoop(EchoAgent(), base_url=url)
    try:
        cpu_share(loop, 1.0)  # the detector's model session made, caches warm
        samples = interleave(
            {"ours": lambda: cpu_share(loop, seconds), "peer": lambda: cpu_share(None, seconds)},
            repeats,
        )
    finally:
        loop.close()
    row = Row(
        "10d",
        f"microphone path in the kernel: CPU while fed {seconds:.0f} s of 20 ms silent frames",
        "% of a core",
        "the same real-time pacing thread feeding nothing",
        f"<= {CPU_GOAL * 100:.0f}%",
        ours=samples["ours"],
        peer=samples["peer"],
        scale=100,
        note="process CPU time / wall time (every thread of the bench process); the ratio "
        "only informs, the goal is on our share",
    )
    return row.finish(lambda _r, m: m is not None and m <= CPU_GOAL)


def utterances() -> tuple[Utterance, Utterance]:
    """The question (rows 10a-10c) and the interruption (10c), spoken by Piper."""
    return spoken(QUESTION), spoken(INTERRUPTION)
