"""Images and videos kept for follow-up questions: the decoded media and the questions asked so far, by id.

A native vision route answers with a media_id; a later request names it instead of uploading the file again,
and is answered with the earlier questions and answers of that id as context. Each item lives in a directory
of its own under the data dir (frames as PNG, the rest as JSON), written under a temporary name and renamed,
and is deleted MEDIA_TTL_SECONDS after its last use, or sooner when more than MAX_ITEMS are kept. Like jobs,
an item is seen only by the key that made it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from app import media
from app.errors import MediaNotFound

log = logging.getLogger(__name__)

# An item unused this long is deleted: a conversation about one file rarely pauses for an hour.
MEDIA_TTL_SECONDS = 3600.0
# The most items kept; the least recently used go first. Each is at most a few tens of MB of PNG.
MAX_ITEMS = 200
# The questions and answers kept per item, the most recent; older ones leave the model's context.
MAX_TURNS = 8
_ID_BYTES = 16


@dataclass(frozen=True)
class Turn:
    """A question about an item and the answer it got."""

    question: str
    answer: str


@dataclass(frozen=True)
class Item:
    """A kept image (its pixels at the processor's size and its size as uploaded) or video, and its turns."""

    kind: Literal["image", "video"]
    frames: np.ndarray  # one frame for an image: 1 x height x width x 3
    width: int
    height: int
    fps: float = 0.0
    # The last MAX_TURNS questions and answers, and how many questions were asked in all.
    turns: tuple[Turn, ...] = field(default=())
    asked: int = 0

    @property
    def picture(self) -> media.Picture:
        """The image (only for kind image)."""
        return media.Picture(self.frames[0], self.width, self.height)

    def video(self, grid: media.Grid) -> media.Video:
        """The video (only for kind video), sized for grid."""
        return media.Video(self.frames, self.fps, grid)


class MediaStore:
    """Items under root, one directory per id, expiring MEDIA_TTL_SECONDS after their last use."""

    def __init__(self, root: Path, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self._clock = clock
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)

    def put(self, item: Item, owner: str | None) -> str:
        """Keep an item; its id."""
        self.sweep(room=1)
        media_id = secrets.token_hex(_ID_BYTES)
        staging = self.root / f".new-{media_id}"
        staging.mkdir()
        try:
            for n, frame in enumerate(item.frames):
                (staging / f"{n:05d}.png").write_bytes(media.to_png(frame))
            meta: dict[str, Any] = {
                "kind": item.kind,
                "frames": len(item.frames),
                "width": item.width,
                "height": item.height,
                "fps": item.fps,
                "owner": owner,
                "used": self._clock(),
                "turns": [],
                "asked": 0,
            }
            (staging / "meta.json").write_text(json.dumps(meta))
            staging.rename(self.root / media_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return media_id

    def get(self, media_id: str, owner: str | None, admin: bool = False) -> Item:
        """The item, its use time renewed; MediaNotFound when it does not exist, expired or is another key's."""
        directory = self._directory(media_id)
        self.sweep()
        with self._lock:
            meta = self._meta(directory, owner, admin)
            meta["used"] = self._clock()
            try:
                self._write_meta(directory, meta)
            except OSError:  # evicted between the read and the write
                raise _not_found(media_id) from None
        try:
            frames = np.stack(
                [media.from_png((directory / f"{n:05d}.png").read_bytes()) for n in range(meta["frames"])]
            )
            turns = tuple(Turn(t["question"], t["answer"]) for t in meta["turns"])
            return Item(meta["kind"], frames, meta["width"], meta["height"], meta["fps"], turns, meta["asked"])
        except (OSError, ValueError, KeyError, TypeError):  # swept meanwhile, or damaged: as good as gone
            log.warning("media %s could not be read back; it is treated as gone", media_id, exc_info=True)
            raise _not_found(media_id) from None

    def add_turn(self, media_id: str, turn: Turn) -> None:
        """Record a question and its answer (the last MAX_TURNS are kept); nothing if the item is gone."""
        directory = self._directory(media_id)
        with self._lock:
            try:
                meta = json.loads((directory / "meta.json").read_text())
            except (OSError, ValueError):
                return
            meta["turns"] = [*meta["turns"], {"question": turn.question, "answer": turn.answer}][-MAX_TURNS:]
            meta["asked"] += 1
            meta["used"] = self._clock()
            with contextlib.suppress(OSError):  # evicted meanwhile: the answer was given, the turn is lost with it
                self._write_meta(directory, meta)

    def sweep(self, room: int = 0) -> int:
        """Delete expired items, and the least recently used beyond MAX_ITEMS less room (what a put is about to
        add); returns how many went."""
        now = self._clock()
        kept: list[tuple[float, Path]] = []
        gone = 0
        for directory in self.root.iterdir():
            if directory.name.startswith(".new-"):
                # A put that never finished (the process died): old enough, it is debris. (One in progress
                # may be renamed meanwhile: then it is gone from here, which is no error.)
                with contextlib.suppress(OSError):
                    if now - directory.stat().st_mtime > MEDIA_TTL_SECONDS:
                        shutil.rmtree(directory, ignore_errors=True)
                continue
            try:
                used = float(json.loads((directory / "meta.json").read_text())["used"])
            except (OSError, ValueError, KeyError, TypeError):
                used = 0.0
            if now - used > MEDIA_TTL_SECONDS:
                shutil.rmtree(directory, ignore_errors=True)
                gone += 1
            else:
                kept.append((used, directory))
        kept.sort()
        for _, directory in kept[: max(0, len(kept) - MAX_ITEMS + room)]:
            shutil.rmtree(directory, ignore_errors=True)
            gone += 1
        return gone

    def expires_at(self) -> float:
        """When an item used now expires (epoch seconds)."""
        return self._clock() + MEDIA_TTL_SECONDS

    def _directory(self, media_id: str) -> Path:
        if len(media_id) != 2 * _ID_BYTES or not all(c in "0123456789abcdef" for c in media_id):
            raise _not_found(media_id)
        return self.root / media_id

    def _meta(self, directory: Path, owner: str | None, admin: bool) -> dict[str, Any]:
        try:
            meta: dict[str, Any] = json.loads((directory / "meta.json").read_text())
        except (OSError, ValueError):
            raise _not_found(directory.name) from None
        stale = self._clock() - float(meta.get("used", 0)) > MEDIA_TTL_SECONDS
        if stale or not (admin or meta.get("owner") is None or meta.get("owner") == owner):
            raise _not_found(directory.name)
        return meta

    def _write_meta(self, directory: Path, meta: dict[str, Any]) -> None:
        temporary = directory / "meta.json.tmp"
        temporary.write_text(json.dumps(meta))
        temporary.replace(directory / "meta.json")


def _not_found(media_id: str) -> MediaNotFound:
    return MediaNotFound(
        f"no media {media_id[:40]!r}: it expired ({MEDIA_TTL_SECONDS / 60:.0f} minutes after its last use) or never "
        "existed; upload the file again"
    )
