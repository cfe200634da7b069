"""app.media_store: images and videos kept for follow-up questions, per key, for an hour after their last use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.errors import MediaNotFound
from app.media_store import MAX_ITEMS, MAX_TURNS, MEDIA_TTL_SECONDS, Item, MediaStore, Turn


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def image_item() -> Item:
    """A small image whose pixels are not all alike."""
    frames = np.arange(28 * 56 * 3, dtype=np.uint8).reshape(1, 28, 56, 3)
    return Item("image", frames, width=100, height=50)


def test_an_item_comes_back_as_it_was_kept(tmp_path: Path) -> None:
    """Pixels, size, kind, fps: lossless through the disk."""
    store = MediaStore(tmp_path / "media")
    video = Item("video", np.random.default_rng(0).integers(0, 255, (4, 28, 28, 3), dtype=np.uint8), 28, 28, 2.0)
    for item in (image_item(), video):
        got = store.get(store.put(item, "owner-a"), "owner-a")
        assert (got.kind, got.width, got.height, got.fps, got.turns, got.asked) == (
            item.kind, item.width, item.height, item.fps, (), 0,
        )  # fmt: skip
        assert np.array_equal(got.frames, item.frames)


def test_another_key_sees_nothing(tmp_path: Path) -> None:
    """Like jobs: another key's media_id is 404, an admin's is found, an open server's item is everyone's."""
    store = MediaStore(tmp_path / "media")
    media_id = store.put(image_item(), "owner-a")
    with pytest.raises(MediaNotFound):
        store.get(media_id, "owner-b")
    assert store.get(media_id, "owner-b", admin=True).kind == "image"
    open_id = store.put(image_item(), None)
    assert store.get(open_id, "anyone").kind == "image"


@pytest.mark.parametrize("media_id", ["", "x" * 32, "../../etc/passwd", "A" * 32, "0" * 31, "0" * 33])
def test_malformed_ids_are_not_found(tmp_path: Path, media_id: str) -> None:
    """Ids are 32 hex digits; anything else is 404 without touching the disk outside the store."""
    with pytest.raises(MediaNotFound):
        MediaStore(tmp_path / "media").get(media_id, None)


def test_turns_are_kept_and_capped(tmp_path: Path) -> None:
    """The last MAX_TURNS questions and answers, in order; asked counts them all."""
    store = MediaStore(tmp_path / "media")
    media_id = store.put(image_item(), None)
    for n in range(MAX_TURNS + 3):
        store.add_turn(media_id, Turn(f"q{n}", f"a{n}"))
    item = store.get(media_id, None)
    assert [t.question for t in item.turns] == [f"q{n}" for n in range(3, MAX_TURNS + 3)]
    assert item.turns[-1].answer == f"a{MAX_TURNS + 2}" and item.asked == MAX_TURNS + 3


def test_items_expire_an_hour_after_their_last_use(tmp_path: Path) -> None:
    """Use renews an item; unused for MEDIA_TTL_SECONDS, it is gone, from the disk too once swept."""
    clock = Clock()
    store = MediaStore(tmp_path / "media", clock=clock)
    media_id = store.put(image_item(), None)
    clock.now += MEDIA_TTL_SECONDS - 10
    store.get(media_id, None)  # renewed
    clock.now += MEDIA_TTL_SECONDS - 10
    store.get(media_id, None)
    clock.now += MEDIA_TTL_SECONDS + 1
    assert store.sweep() == 1 and not (tmp_path / "media" / media_id).exists()
    with pytest.raises(MediaNotFound, match="expired"):
        store.get(media_id, None)


def test_the_least_recently_used_go_beyond_the_limit(tmp_path: Path) -> None:
    """At most MAX_ITEMS are kept: a put beyond them deletes the least recently used."""
    clock = Clock()
    store = MediaStore(tmp_path / "media", clock=clock)
    ids = []
    for _ in range(MAX_ITEMS):
        clock.now += 1
        ids.append(store.put(image_item(), None))
    clock.now += 1
    store.get(ids[0], None)  # the oldest, used again: kept
    clock.now += 1
    store.put(image_item(), None)
    store.get(ids[0], None)
    with pytest.raises(MediaNotFound):
        store.get(ids[1], None)
    assert len([p for p in (tmp_path / "media").iterdir()]) == MAX_ITEMS


def test_an_unfinished_put_is_cleared(tmp_path: Path) -> None:
    """Debris of a put the process never finished goes once it is old."""
    clock = Clock()
    store = MediaStore(tmp_path / "media", clock=clock)
    debris = tmp_path / "media" / ".new-0123"
    debris.mkdir()
    store.sweep()
    assert debris.exists()  # fresh: a put may be writing it
    clock.now = debris.stat().st_mtime + MEDIA_TTL_SECONDS + 1
    store.sweep()
    assert not debris.exists()


def test_a_damaged_item_is_not_found(tmp_path: Path) -> None:
    """A frame file cut short (a disk fault) makes the item 404, not a server error."""
    store = MediaStore(tmp_path / "media")
    media_id = store.put(image_item(), None)
    frame = tmp_path / "media" / media_id / "00000.png"
    frame.write_bytes(frame.read_bytes()[:20])
    with pytest.raises(MediaNotFound):
        store.get(media_id, None)


def test_puts_gets_and_sweeps_at_once_never_fail(tmp_path: Path) -> None:
    """Many threads keeping and reading items past MAX_ITEMS: only MediaNotFound (an evicted item), never an
    OSError from a directory swept or renamed under another thread."""
    import threading

    store = MediaStore(tmp_path / "media")
    errors: list[BaseException] = []
    ids: list[str] = []

    def work() -> None:
        for _ in range(40):
            try:
                ids.append(store.put(image_item(), None))
                store.get(ids[-3 if len(ids) > 3 else -1], None)
                store.add_turn(ids[0], Turn("q", "a"))
            except MediaNotFound:
                pass
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == [] and len(ids) == 320
    assert len([p for p in (tmp_path / "media").iterdir() if not p.name.startswith(".")]) <= MAX_ITEMS
