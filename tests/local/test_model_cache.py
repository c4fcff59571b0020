"""Optimized copies of voice models: saved once, loaded after, never stale, rebuilt when broken."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest

from fish_notebook.local import engine
from fish_notebook.local.engine import default_voice_files
from fish_notebook.local.model_cache import CACHE_ENV, _copy_name, cache_folder, open_session

MODEL, CONFIG = default_voice_files()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def options() -> Any:
    made = onnxruntime.SessionOptions()
    made.intra_op_num_threads = 1
    return made


def never() -> str:
    raise AssertionError("the source was read although a valid copy is cached")


def speech(session: Any) -> np.ndarray:
    """The voice's audio for fixed phoneme ids with no noise: the same for the same graph."""
    ids = np.array([[1, 0, 20, 0, 59, 0, 24, 0, 27, 0, 2]], dtype=np.int64)
    feed = {
        "input": ids,
        "input_lengths": np.array([ids.shape[1]], dtype=np.int64),
        "scales": np.array([0.0, 1.0, 0.0], dtype=np.float32),
    }
    audio: np.ndarray = session.run(None, feed)[0].squeeze()
    return audio


def same_speech(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.size > 1000 and float(np.max(np.abs(a - b))) < 1e-3


def copies(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.onnx"))


def test_the_first_session_saves_a_copy_the_next_loads_it(cache: Path) -> None:
    """A private folder holds one copy; the next session loads it without optimizing again
    and without reading the source, and speaks the same samples as the source would."""
    first = open_session(MODEL, "plain", lambda: str(MODEL), options())
    (copy,) = copies(cache)
    assert copy.name.startswith(f"{MODEL.stem}.") and ".plain." in copy.name
    assert cache.stat().st_mode & 0o777 == 0o700 and copy.stat().st_mode & 0o777 == 0o600
    second = open_session(MODEL, "plain", never, options())
    assert second._model_path == str(copy)
    level = second.get_session_options().graph_optimization_level
    assert level == onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert same_speech(speech(first), speech(second))
    plain = onnxruntime.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    assert same_speech(speech(plain), speech(second))  # as onnxruntime's default makes it


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"not a model" * 100,
        lambda data: data[: len(data) // 2],
        lambda data: data[:-1000],
    ],
    ids=["garbage", "half", "end cut"],
)
def test_a_broken_copy_is_ignored_and_rebuilt(
    cache: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[bytes], bytes]
) -> None:
    """A copy that does not load is replaced by a good one; the session speaks as before."""
    reference = speech(open_session(MODEL, "plain", lambda: str(MODEL), options()))
    (copy,) = copies(cache)
    good_size = copy.stat().st_size
    copy.write_bytes(damage(copy.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="fish_notebook.local.model_cache"):
        rebuilt = open_session(MODEL, "plain", lambda: str(MODEL), options())
    assert "did not load" in caplog.text
    assert same_speech(reference, speech(rebuilt))
    assert copies(cache) == [copy] and copy.stat().st_size == good_size
    assert same_speech(reference, speech(open_session(MODEL, "plain", never, options())))


def test_a_changed_source_gets_a_new_copy_and_the_old_one_goes(cache: Path, tmp_path: Path) -> None:
    """Size and modification time key the copy: a changed voice file is optimized again and
    its older copy removed; another variant of it keeps its own copy."""
    source = tmp_path / "voice.onnx"
    shutil.copyfile(MODEL, source)
    open_session(source, "plain", lambda: str(source), options())
    open_session(source, "other", lambda: str(source), options())
    (old_other, old_plain) = copies(cache)
    assert ".plain." in old_plain.name and ".other." in old_other.name
    later = source.stat().st_mtime + 10
    os.utime(source, (later, later))
    open_session(source, "plain", lambda: str(source), options())
    (other, plain) = copies(cache)
    assert other == old_other and plain != old_plain and not old_plain.exists()


def test_no_cache_when_turned_off_or_not_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``0`` turns the cache off (sessions optimize as onnxruntime does by default); a folder
    others can read is not used, and a warning says so."""
    monkeypatch.setenv(CACHE_ENV, "0")
    assert cache_folder() is None
    session = open_session(MODEL, "plain", lambda: str(MODEL), options())
    level = session.get_session_options().graph_optimization_level
    assert level == onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    monkeypatch.setenv(CACHE_ENV, str(shared))
    with caplog.at_level(logging.WARNING, logger="fish_notebook.local.model_cache"):
        assert cache_folder() is None
    assert "not a folder of this user's alone" in caplog.text
    open_session(MODEL, "plain", lambda: str(MODEL), options())
    assert copies(shared) == []


def test_a_copy_that_cannot_be_kept_still_gives_a_session(cache: Path) -> None:
    """Something in the way of the copy costs the speed-up only: the session speaks, and
    no temporary file is left."""
    cache.mkdir(mode=0o700)
    blocker = cache / _copy_name(MODEL, "plain", onnxruntime.__version__)
    blocker.mkdir()
    (blocker / "keep").write_text("a folder where the copy would go")
    session = open_session(MODEL, "plain", lambda: str(MODEL), options())
    assert speech(session).size > 1000
    assert blocker.is_dir() and list(cache.glob(".*.tmp")) == []


def test_a_timed_voice_loads_from_its_copy_with_its_alignments(cache: Path) -> None:
    """The copy of a timed voice keeps the alignment output: the voice built from it gives
    per-phoneme durations that cover its samples."""
    voices = [engine._build_voice("timed", MODEL, CONFIG, alignment=True) for _ in range(2)]
    assert [p.name for p in copies(cache)] == [
        _copy_name(MODEL, "aligned", onnxruntime.__version__)
    ]
    second = voices[1]
    assert second._piper.session._model_path == str(copies(cache)[0])
    (chunk,) = second.synthesize("Hello there.")
    assert chunk.alignment is not None
    total = sum(span.samples for span in chunk.alignment)
    assert abs(total - len(chunk.pcm) // 2) <= 256 * 2  # within a hop or two
    for voice in voices:  # their one-thread sessions are built in the background
        assert voice._sessions.wait_shared(60) is not None
