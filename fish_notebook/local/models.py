"""``GET /model`` and ``GET /model/{id}``: the local voices in the shape of Fish's voice list.

The Fish SDK's ``voices.list()`` and ``voices.get(id)`` read these. Each voice is a cloud
voice item with every field the SDK requires: ``_id`` (what ``reference_id`` takes),
``type`` ``"tts"``, ``title`` (the voice's name), ``state`` ``"trained"``, ``tags``
(``local``, ``piper``, its quality, ``default`` for the default voice), ``languages``
(from its config), ``created_at`` / ``updated_at`` (its model file's time), ``visibility``
``"public"``, zero counts, and an ``author`` standing for this server.

The list answers ``{total, items, has_more}`` and honours, where they mean something
locally: ``page_size`` (1..100) and ``page_number`` (from 1); ``title`` (a part of it, any
case); ``tag`` (repeatable: voices with every tag asked); ``language`` (repeatable: voices
speaking any); ``self`` (true: only the voices of this server's voices folder, as a user's
own); ``author_id`` (this server's author, or nothing); ``sort_by`` ``task_count`` (the
default voice first, then by name) or ``created_at`` (newest first). A bad value is a 400
JSON message; an unknown id a 404 JSON message.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from .engine import VoiceInfo, VoiceLibrary
from .http import JsonHandler

__all__ = ["AUTHOR_ID", "MODEL_PATH", "ModelHandler", "ModelsHandler", "voice_item"]

MODEL_PATH = "/model"
AUTHOR_ID = "fish-notebook-local"
MAX_PAGE_SIZE = 100
_AUTHOR = {"_id": AUTHOR_ID, "nickname": "fish-notebook (local voices)", "avatar": ""}
_SORTS = ("task_count", "created_at")


def _created(path: Path | None) -> str:
    try:
        seconds = path.stat().st_mtime if path is not None else 0.0
    except OSError:
        seconds = 0.0
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat()


def voice_item(info: VoiceInfo) -> dict[str, Any]:
    """A local voice as a cloud voice item (module docstring)."""
    tags = ["local", "piper", *([info.quality] if info.quality else [])]
    if info.default:
        tags.append("default")
    created = _created(info.model_path)
    return {
        "_id": info.id,
        "type": "tts",
        "title": info.id,
        "description": f"Piper voice {info.id} ({info.sample_rate} Hz), served locally",
        "cover_image": "",
        "train_mode": "fast",
        "state": "trained",
        "tags": tags,
        "samples": [],
        "created_at": created,
        "updated_at": created,
        "languages": [info.language] if info.language else [],
        "visibility": "public",
        "lock_visibility": False,
        "like_count": 0,
        "mark_count": 0,
        "shared_count": 0,
        "task_count": 0,
        "liked": False,
        "marked": False,
        "author": dict(_AUTHOR),
    }


class _Query:
    """The list's query arguments, checked."""

    def __init__(self, handler: JsonHandler) -> None:
        self.page_size = _int(handler, "page_size", 10, 1, MAX_PAGE_SIZE)
        self.page_number = _int(handler, "page_number", 1, 1, 1_000_000)
        self.title = (handler.get_query_argument("title", "") or "").lower()
        self.tags = [t for t in handler.get_query_arguments("tag") if t]
        self.languages = [x.lower() for x in handler.get_query_arguments("language") if x]
        self.own = _bool(handler, "self")
        self.author = handler.get_query_argument("author_id", None)
        self.sort_by = handler.get_query_argument("sort_by", "task_count") or "task_count"
        if self.sort_by not in _SORTS:
            raise _BadQuery(f"sort_by={self.sort_by!r}: use one of {', '.join(_SORTS)}")

    def keeps(self, info: VoiceInfo, item: dict[str, Any], library: VoiceLibrary) -> bool:
        folder = library.voices_dir
        own = (
            folder is not None and info.model_path is not None and info.model_path.parent == folder
        )
        return (
            self.title in info.id.lower()
            and all(tag in item["tags"] for tag in self.tags)
            and (not self.languages or any(x in self.languages for x in item["languages"]))
            and (not self.own or own)
            and self.author in (None, "", AUTHOR_ID)
        )


class _BadQuery(Exception):
    pass


def _int(handler: JsonHandler, name: str, default: int, low: int, high: int) -> int:
    raw = handler.get_query_argument(name, None)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise _BadQuery(f"{name}={raw!r}: must be a whole number in {low}..{high}")
    return int(raw)


def _bool(handler: JsonHandler, name: str) -> bool:
    raw = (handler.get_query_argument(name, "false") or "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise _BadQuery(f"{name}={raw!r}: must be true or false")
    return raw in ("true", "1")


class ModelsHandler(JsonHandler):
    """``GET /model``: one page of the local voices."""

    def get(self) -> None:
        try:
            query = _Query(self)
        except _BadQuery as bad:
            self.send_json({"status": 400, "message": str(bad)}, 400)
            return
        library = self.server.voices
        found = [
            item
            for info in library.voices()
            if query.keeps(info, item := voice_item(info), library)
        ]
        if query.sort_by == "created_at":
            found.sort(key=lambda item: item["created_at"], reverse=True)
        start = (query.page_number - 1) * query.page_size
        page = found[start : start + query.page_size]
        total = len(found)
        self.send_json({"total": total, "items": page, "has_more": start + len(page) < total})


class ModelHandler(JsonHandler):
    """``GET /model/{id}``: one local voice, or 404."""

    def get(self, voice_id: str) -> None:
        for info in self.server.voices.voices():
            if info.id == voice_id:
                self.send_json(voice_item(info))
                return
        names = ", ".join(self.server.voices.names())
        message = f"no local voice {voice_id!r}: the local voices are {names}"
        self.send_json({"status": 404, "message": message}, 404)
