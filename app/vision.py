"""What the thinkers see: the bytes behind an image or video reference, decoded into what a ChatPrompt holds.

A reference is a data: URL (base64), or an http(s) URL that the server fetches only with --allow-remote-media
(app.remote_media refuses private addresses). Uploads of the native routes skip the URL and come here as
bytes or a file. Either way the variant must have a vision tower (Variant.sees).
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from app import media
from app.errors import InvalidOption, MediaTooLarge, RemoteMediaRefused
from app.settings import Settings
from app.uploads import temporary_file

# What a decode calls now and then; it raises to stop the work (the client left).
Check = Callable[[], None]

# A remote image or video must arrive within this many seconds (and within the upload limit).
REMOTE_MEDIA_SECONDS = 30.0
# detail=low: OpenAI's low-detail images are 512 px at most; this many blocks is about that (256 tokens).
LOW_DETAIL_BLOCKS = 256
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.I)


def require_sight(settings: Settings, where: str) -> None:
    """A clear 400 when this server's variant does not take images or video."""
    variant = settings.model_variant
    if not variant.sees:
        raise InvalidOption(where, f"the {variant.name} variant does not take images or video: {variant.why_blind}")


def grid(settings: Settings) -> media.Grid:
    """The block size of this server's vision tower."""
    return media.Grid(settings.model_variant.vision_factor)


def fetch_bytes(url: str, where: str, settings: Settings, max_bytes: int, deadline: float | None = None) -> bytes:
    """The bytes a media URL names: a base64 data: URL's content, or (when allowed) what a public URL serves;
    MediaTooLarge past max_bytes (or the upload limit)."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    limit = min(max_bytes, settings.max_upload_size)
    if scheme == "data":
        data = _data_url(url, where)
        if len(data) > limit:
            raise MediaTooLarge(f"{where}: {len(data) // 1024**2} MB is over the {limit // 1024**2} MB allowed here")
        return data
    if scheme in ("http", "https"):
        if not settings.allow_remote_media:
            raise InvalidOption(
                where,
                "this server does not fetch remote media: send the file inline as a data: URL "
                "(data:image/png;base64,...), or start the server with --allow-remote-media",
            )
        from app.remote_media import fetch

        # One budget for all of a request's fetches (deadline, by time.monotonic()), not one per part.
        left = REMOTE_MEDIA_SECONDS if deadline is None else deadline - time.monotonic()
        if left <= 0:
            raise RemoteMediaRefused(
                f"{where}: the request's remote media took over {REMOTE_MEDIA_SECONDS:g} s in all; send fewer, "
                "smaller or faster ones, or inline them as data: URLs"
            )
        return fetch(url, max_bytes=limit, timeout=left).data
    raise InvalidOption(where, "must be a data: URL (data:image/png;base64,...) or an http(s) URL")


def _data_url(url: str, where: str) -> bytes:
    """The content of a base64 data: URL."""
    head = _DATA_URL.match(url)
    if head is None:
        raise InvalidOption(where, "is not a valid data: URL (data:<type>;base64,<data>)")
    if head.group("b64") is None:
        raise InvalidOption(where, "a data: URL must be base64 encoded (data:<type>;base64,<data>)")
    try:
        data = base64.b64decode(url[head.end() :], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidOption(where, "the data: URL's content is not valid base64") from None
    if not data:
        raise InvalidOption(where, "the data: URL is empty")
    return data


def image(data: bytes, where: str, blocks: media.Grid, detail: str = "auto") -> np.ndarray:
    """An image's pixels at the processor's size (at most LOW_DETAIL_BLOCKS with detail=low)."""
    pixels = media.decode_image(data, where, blocks).pixels
    if detail == "low" and blocks.tokens(*pixels.shape[:2]) > LOW_DETAIL_BLOCKS:
        return media.resize(pixels, LOW_DETAIL_BLOCKS, blocks)
    return pixels


def video(
    data: bytes, where: str, uploads_dir: Path, max_tokens: int, blocks: media.Grid, check: Check | None = None
) -> media.Video:
    """A video's sampled frames within max_tokens, decoded from a temporary file that is always removed."""
    with temporary_file(uploads_dir) as path:
        path.write_bytes(data)
        return media.decode_video(path, where, max_tokens, blocks, check)
