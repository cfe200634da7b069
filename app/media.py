"""Images and videos for the Omni thinkers' vision tower: decoded with bounds, sized the way their processor sizes.

Images are decoded by Pillow and videos by ffmpeg (the same guarded input as audio). A hostile file cannot
exhaust memory: an image's header is checked against MAX_SOURCE_PIXELS before any pixel is decoded, a
video's stream against MAX_SOURCE_PIXELS per frame and MAX_VIDEO_SECONDS, and what comes out is already
scaled to the processor's size, so nothing bigger than the model will see is ever held.

The sizes are those of the Qwen-Omni processors and Qwen's own qwen-omni-utils (which the model cards use),
counted in blocks: a vision token stands for one block of a Grid's factor (28 pixels for Qwen2.5-Omni's
14-pixel patches merged 2 by 2, 32 for Qwen3-Omni's 16-pixel ones). An image keeps its aspect ratio and is
scaled to whole blocks, between IMAGE_MIN_BLOCKS and IMAGE_MAX_BLOCKS of them; a video is sampled at VIDEO_FPS
frames per second (VIDEO_MIN_FRAMES to VIDEO_MAX_FRAMES frames, an even number, as frames go to the model in
pairs), its frames scaled to between VIDEO_MIN_BLOCKS and VIDEO_MAX_BLOCKS blocks and to at most
VIDEO_TOTAL_BLOCKS tokens for the whole video, a token per block of each pair of frames. The processor's own
resize then finds nothing to change.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.audio import DECODE_TIMEOUT_SECONDS, INPUT_GUARD, check_signalled, ffmpeg_reason, positive_number, run_probe
from app.errors import InvalidOption, MediaTooLarge, UnsupportedAudio, UnsupportedMedia

# The processor refuses (raises) an aspect ratio beyond this.
MAX_ASPECT_RATIO = 200
IMAGE_MIN_BLOCKS = 4
IMAGE_MAX_BLOCKS = 16384
VIDEO_FPS = 2.0
VIDEO_MIN_FRAMES = 4
VIDEO_MAX_FRAMES = 768
VIDEO_MIN_BLOCKS = 128
VIDEO_MAX_BLOCKS = 768
VIDEO_TOTAL_BLOCKS = int(128000 * 0.9)
# How often a video decode looks whether its client is still there.
CHECK_SECONDS = 1.0
# Frames go to the vision tower in pairs (its temporal patch).
FRAME_FACTOR = 2
# Bounds on what is decoded at all: an 8K frame or a 50-megapixel photo, and ten minutes of video. An image
# file is read into memory whole (a 50-megapixel photo is well under the bound); a video file is read by
# ffmpeg from disk, and only held whole when it comes inline or from a URL.
MAX_SOURCE_PIXELS = 50_000_000
MAX_VIDEO_SECONDS = 600.0
MAX_IMAGE_BYTES = 64 * 1024**2
MAX_VIDEO_BYTES = 256 * 1024**2
# Image formats Pillow may open: the ones cameras, screenshots and the web produce (no plugins that parse
# scripts or exotic containers).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
# The containers a video may come in (ffmpeg's demuxer names); the decoder is ffmpeg's, guarded like audio.
VIDEO_FORMATS = ("mov", "mp4", "m4a", "3gp", "matroska", "webm", "avi", "mpegts", "ogg", "flv")


@dataclass(frozen=True)
class Grid:
    """A vision tower's block: factor x factor pixels per token (its patch size times its 2 x 2 merge)."""

    factor: int = 28

    @property
    def block(self) -> int:
        """Pixels in one block."""
        return self.factor * self.factor

    def tokens(self, height: int, width: int) -> int:
        """Tokens of an image (or a pair of frames) of this size, sized by fit."""
        return (height // self.factor) * (width // self.factor)

    def fit(self, height: int, width: int, min_blocks: float, max_blocks: float) -> tuple[int, int]:
        """The processor's target size: whole blocks, aspect ratio kept, between min_blocks and max_blocks.

        This is the rule of transformers' smart_resize for the Qwen-VL processors (a test holds the two equal);
        it is restated here so that a request is sized, and its tokens counted, without importing torch.
        """
        factor, min_pixels, max_pixels = self.factor, min_blocks * self.block, max_blocks * self.block
        h_bar = round(height / factor) * factor
        w_bar = round(width / factor) * factor
        if h_bar * w_bar > max_pixels:
            beta = math.sqrt(height * width / max_pixels)
            h_bar = max(factor, math.floor(height / beta / factor) * factor)
            w_bar = max(factor, math.floor(width / beta / factor) * factor)
        elif h_bar * w_bar < min_pixels:
            beta = math.sqrt(min_pixels / (height * width))
            h_bar = math.ceil(height * beta / factor) * factor
            w_bar = math.ceil(width * beta / factor) * factor
        return h_bar, w_bar


# Qwen2.5-Omni: 14-pixel patches; Qwen3-Omni: 16-pixel ones (both merged 2 x 2).
QWEN25_GRID = Grid(28)
QWEN3_GRID = Grid(32)


@dataclass(frozen=True)
class Video:
    """A video's sampled frames (uint8, frames x height x width x 3), the rate they were taken at, and the grid
    they were sized for."""

    frames: np.ndarray
    fps: float
    grid: Grid = QWEN25_GRID
    # The frame size as uploaded (0 when not known: a video that crossed the broker).
    width: int = 0
    height: int = 0

    @property
    def tokens(self) -> int:
        """Vision tokens the thinker spends on it."""
        count, height, width = self.frames.shape[:3]
        return int(count // FRAME_FACTOR * self.grid.tokens(height, width))


def image_tokens(image: np.ndarray, grid: Grid = QWEN25_GRID) -> int:
    """Vision tokens the thinker spends on an image sized by decode_image (the 28-pixel grid counts the most)."""
    return grid.tokens(image.shape[0], image.shape[1])


def _check_shape(width: int, height: int, where: str) -> None:
    """Refuse sizes that are empty, too large to decode, or too elongated for the processor."""
    if width < 1 or height < 1:
        raise UnsupportedMedia(f"{where}: the image has no pixels")
    if width * height > MAX_SOURCE_PIXELS:
        raise MediaTooLarge(
            f"{where}: {width} x {height} pixels is over this server's limit of {MAX_SOURCE_PIXELS:,} pixels"
        )
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise UnsupportedMedia(
            f"{where}: {width} x {height} pixels is too elongated; the longer side may be at most "
            f"{MAX_ASPECT_RATIO} times the shorter"
        )


@dataclass(frozen=True)
class Picture:
    """An image's pixels at the processor's size (RGB uint8, height x width x 3) and its size as uploaded."""

    pixels: np.ndarray
    width: int
    height: int


def decode_image(data: bytes, where: str, grid: Grid = QWEN25_GRID) -> Picture:
    """An image file's pixels at the processor's size, with its size as a viewer shows it.

    Transparency is laid over white (dark text on a transparent background stays readable), and a photo's
    EXIF orientation is applied, as a viewer would show it.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) > MAX_IMAGE_BYTES:
        raise MediaTooLarge(f"{where}: an image may be at most {MAX_IMAGE_BYTES // 1024**2} MB")
    try:
        with warnings.catch_warnings():
            # The size is checked below, against this server's own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            _check_shape(image.width, image.height, where)
            width, height = image.size
            target_h, target_w = grid.fit(image.height, image.width, IMAGE_MIN_BLOCKS, IMAGE_MAX_BLOCKS)
            # JPEG decodes at 1/2, 1/4 or 1/8 scale for free: never more pixels than the target needs.
            image.draft("RGB", (target_w, target_h))
            before = image.size
            image = ImageOps.exif_transpose(image)
            if image.size != before and image.size == before[::-1]:
                # Turned a quarter by its EXIF orientation: shown (and boxed) the other way round. (Told by the
                # pixels, not the tag: Pillow already reports some formats' sizes turned.)
                width, height = height, width
            image = _eight_bits(image)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                image = Image.new("RGB", rgba.size, "white")
                image.paste(rgba, mask=rgba.getchannel("A"))
            image = image.convert("RGB")
            target_h, target_w = grid.fit(image.height, image.width, IMAGE_MIN_BLOCKS, IMAGE_MAX_BLOCKS)
            if image.size != (target_w, target_h):
                image = image.resize((target_w, target_h), Image.Resampling.BICUBIC)
            return Picture(np.array(image, dtype=np.uint8), width, height)
    except (UnsupportedMedia, MediaTooLarge):
        raise
    except Image.DecompressionBombError:
        raise MediaTooLarge(f"{where}: the image is over this server's limit of {MAX_SOURCE_PIXELS:,} pixels") from None
    except UnidentifiedImageError:
        raise UnsupportedMedia(f"{where}: not an image in a supported format ({', '.join(IMAGE_FORMATS)})") from None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors for truncated or corrupt files
        raise UnsupportedMedia(f"{where}: the image could not be decoded ({exc})") from None


def _eight_bits(image: Any) -> Any:
    """An image of 16-bit, 32-bit or float samples scaled to 8 bits (Pillow's convert would clip them at 255)."""
    from PIL import Image

    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if values.size and np.nanmax(values) <= 1.0 else 255.0  # 0-1 floats, else 0-255 ones
    else:
        top = 65535.0 if image.mode.startswith("I;16") or (values.size and values.max() > 255) else 255.0
    scaled = np.clip(np.nan_to_num(values) * (255.0 / top), 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled, "L")


def to_png(pixels: np.ndarray) -> bytes:
    """RGB pixels as a PNG: lossless, and quick at the lowest compression level."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG", compress_level=1)
    return out.getvalue()


def from_png(png: bytes) -> np.ndarray:
    """The RGB pixels of a PNG written by to_png."""
    from PIL import Image

    with Image.open(io.BytesIO(png), formats=("PNG",)) as image:
        return np.array(image.convert("RGB"), dtype=np.uint8)


def resize(image: np.ndarray, max_blocks: int, grid: Grid = QWEN25_GRID) -> np.ndarray:
    """An RGB image scaled to the processor's size with at most max_blocks blocks."""
    from PIL import Image

    height, width = grid.fit(image.shape[0], image.shape[1], IMAGE_MIN_BLOCKS, max_blocks)
    if (height, width) == image.shape[:2]:
        return image
    scaled = Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC)
    return np.array(scaled, dtype=np.uint8)


# /describe-region: the close-up of a region has at least this many blocks (small regions are enlarged, so the
# model looks closely), and the crop keeps this share of the box's size around it as context.
REGION_MIN_BLOCKS = 256
REGION_MARGIN = 0.15


def region(
    picture: Picture,
    box: tuple[float, float, float, float],
    grid: Grid = QWEN25_GRID,
    max_blocks: int = IMAGE_MAX_BLOCKS,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """The picture with box drawn in red, a close-up of the box with some context around it, and the box in
    whole pixels of the picture as uploaded.

    The box is in the uploaded image's pixels; InvalidOption when it is not inside the image.
    """
    from PIL import Image, ImageDraw

    x1, y1, x2, y2 = box
    if x2 > picture.width or y2 > picture.height:
        raise InvalidOption(
            "box", f"must lie inside the {picture.width} x {picture.height} image; got {x1:g},{y1:g},{x2:g},{y2:g}"
        )
    height, width = picture.pixels.shape[:2]
    sx, sy = width / picture.width, height / picture.height
    # In the processor-size pixels: at least one pixel wide and high.
    left, top = math.floor(x1 * sx), math.floor(y1 * sy)
    right, bottom = max(left + 1, math.ceil(x2 * sx)), max(top + 1, math.ceil(y2 * sy))
    overview = Image.fromarray(picture.pixels)
    line = max(2, round(min(width, height) / 150))
    ImageDraw.Draw(overview).rectangle((left, top, right - 1, bottom - 1), outline=(255, 0, 0), width=line)
    margin_x, margin_y = math.ceil((right - left) * REGION_MARGIN), math.ceil((bottom - top) * REGION_MARGIN)
    crop = Image.fromarray(picture.pixels).crop(
        (max(0, left - margin_x), max(0, top - margin_y), min(width, right + margin_x), min(height, bottom + margin_y))
    )
    if max(crop.width, crop.height) / min(crop.width, crop.height) > MAX_ASPECT_RATIO:
        raise InvalidOption("box", f"its longer side may be at most {MAX_ASPECT_RATIO} times its shorter")
    # Each image at most max_blocks (the two share the model's context), the close-up at least REGION_MIN_BLOCKS.
    if max_blocks < REGION_MIN_BLOCKS:
        raise MediaTooLarge(
            f"the model's context has room for {max(0, max_blocks)} tokens per image beside the answer, too few for "
            f"a region ({REGION_MIN_BLOCKS}): ask for a shorter answer"
        )
    crop_h, crop_w = grid.fit(crop.height, crop.width, REGION_MIN_BLOCKS, min(max_blocks, IMAGE_MAX_BLOCKS))
    close_up = np.array(crop.resize((crop_w, crop_h), Image.Resampling.BICUBIC), dtype=np.uint8)
    whole = (math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2))
    shown = np.array(overview, dtype=np.uint8)
    if grid.tokens(*shown.shape[:2]) > max_blocks:
        shown = resize(shown, max_blocks, grid)
    return shown, close_up, whole


def video_plan(
    duration: float, width: int, height: int, max_tokens: int, grid: Grid = QWEN25_GRID
) -> tuple[float, int, int, int]:
    """How a video is sampled: (fps, frames, frame height, frame width).

    As qwen-omni-utils samples it (VIDEO_FPS, between VIDEO_MIN_FRAMES and VIDEO_MAX_FRAMES, frames of
    VIDEO_MIN_BLOCKS to VIDEO_MAX_BLOCKS blocks, VIDEO_TOTAL_BLOCKS tokens in all), and within max_tokens: what
    the model's context leaves. Frames get smaller first, down to VIDEO_MIN_BLOCKS; then there are fewer.
    """
    wanted = min(max(duration * VIDEO_FPS, VIDEO_MIN_FRAMES), VIDEO_MAX_FRAMES)
    count = max(FRAME_FACTOR, round(wanted / FRAME_FACTOR) * FRAME_FACTOR)
    # A pair of frames at the smallest size: the fewest tokens a pair can cost.
    smallest = grid.tokens(*_frame_size(grid, height, width, VIDEO_MIN_BLOCKS))
    if count // FRAME_FACTOR * smallest > max_tokens:
        count = max_tokens // smallest * FRAME_FACTOR
        if count < FRAME_FACTOR:
            raise MediaTooLarge(
                f"the model's context has room for {max(0, max_tokens)} more tokens beside the answer and the rest "
                f"of the request, too few for a video (a pair of its smallest frames takes {smallest}): ask for a "
                "shorter answer, or send less"
            )
    # A token per block of a pair of frames: each pair may have budget / pairs blocks.
    budget = min(VIDEO_TOTAL_BLOCKS, max_tokens)
    max_blocks = max(min(VIDEO_MAX_BLOCKS, budget / count * FRAME_FACTOR), VIDEO_MIN_BLOCKS)
    frame_h, frame_w = _frame_size(grid, height, width, max_blocks)
    # Rounding to whole blocks may have added a little: fewer frames then.
    count = min(count, max_tokens // grid.tokens(frame_h, frame_w) * FRAME_FACTOR)
    fps = count / duration if duration > 0 else VIDEO_FPS
    return fps, count, frame_h, frame_w


def _frame_size(grid: Grid, height: int, width: int, max_blocks: float) -> tuple[int, int]:
    """A frame's size for at most max_blocks, as the processor then leaves it (it enlarges what is below its
    minimum, which rounding down to whole blocks can give)."""
    frame_h, frame_w = grid.fit(height, width, VIDEO_MIN_BLOCKS, max_blocks)
    return grid.fit(frame_h, frame_w, VIDEO_MIN_BLOCKS, VIDEO_MAX_BLOCKS)


def decode_video(
    path: Path, where: str, max_tokens: int, grid: Grid = QWEN25_GRID, check: Callable[[], None] | None = None
) -> Video:
    """A video file's frames, sampled and scaled as video_plan says (its audio is not used).

    check is called about every CHECK_SECONDS while ffmpeg runs; what it raises (the client left) stops ffmpeg.
    """
    width, height, duration = _probe_video(path, where)
    try:
        fps, count, frame_h, frame_w = video_plan(duration, width, height, max_tokens, grid)
    except MediaTooLarge as exc:
        raise MediaTooLarge(f"{where}: {exc.message}") from None
    frame_bytes = frame_h * frame_w * 3
    cmd = [
        "ffmpeg", "-nostdin", "-v", "error", *_VIDEO_GUARD, "-i", str(path), "-map", "0:v:0", "-an", "-sn", "-dn",
        "-t", f"{MAX_VIDEO_SECONDS:g}",
        # Frames at the sampling rate, scaled once to the processor's size, as raw RGB on the pipe.
        "-vf", f"fps={fps:.6f},scale={frame_w}:{frame_h}:flags=bicubic", "-frames:v", str(count),
        "-pix_fmt", "rgb24", "-f", "rawvideo", "-",
    ]  # fmt: skip
    # A session of its own: Ctrl-C in the service's terminal stops the service, which stops ffmpeg.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + DECODE_TIMEOUT_SECONDS
    try:
        while True:
            try:
                # Waiting again after a timeout loses nothing of what was read (subprocess' promise).
                out, err = proc.communicate(timeout=CHECK_SECONDS)
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    raise UnsupportedMedia(f"{where}: decoding the video took too long") from None
                if check is not None:
                    check()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    check_signalled(proc.returncode)
    if proc.returncode != 0:
        raise UnsupportedMedia(f"{where}: not a decodable video: {ffmpeg_reason(err)}")
    got = len(out) // frame_bytes
    if got == 0:
        raise UnsupportedMedia(f"{where}: the video has no frames")
    frames = np.frombuffer(out, dtype=np.uint8, count=got * frame_bytes).reshape(got, frame_h, frame_w, 3)
    if got % FRAME_FACTOR:
        # Frames go in pairs: the last is repeated, as the processor would.
        frames = np.concatenate([frames, frames[-1:]])
    return Video(frames.copy(), fps, grid, width, height)


# ffmpeg confined to the upload and real video containers (the audio guard's protocol list, a video list).
_VIDEO_GUARD = (*INPUT_GUARD[:2], "-format_whitelist", ",".join(VIDEO_FORMATS))


def _probe_video(path: Path, where: str) -> tuple[int, int, float]:
    """The first video stream's width, height and duration; refused when absent, too large or too long."""
    cmd = [
        "ffprobe", "-v", "error", *_VIDEO_GUARD, "-select_streams", "v:0",
        "-show_entries", "stream=codec_type,width,height,duration:stream_side_data=rotation:stream_tags=rotate"
        ":format=duration", "-of", "json", str(path),
    ]  # fmt: skip
    try:
        proc = run_probe(cmd)
    except UnsupportedAudio:  # its timeout, in audio's words
        raise UnsupportedMedia(f"{where}: probing the video took too long") from None
    if proc.returncode != 0:
        raise UnsupportedMedia(f"{where}: not a decodable video: {ffmpeg_reason(proc.stderr)}")
    try:
        info = json.loads(proc.stdout or b"{}")
    except ValueError:
        info = {}
    streams = info.get("streams") or []
    if not streams or streams[0].get("codec_type") != "video":
        raise UnsupportedMedia(f"{where}: the file has no video stream")
    stream = streams[0]
    width, height = positive_number(stream.get("width")), positive_number(stream.get("height"))
    if width is None or height is None:
        raise UnsupportedMedia(f"{where}: the video states no frame size")
    _check_shape(int(width), int(height), where)
    if _quarter_turned(stream):
        # A phone video stored sideways: ffmpeg turns its frames upright, so they are as wide as it is high.
        width, height = height, width
    duration = positive_number(stream.get("duration")) or positive_number((info.get("format") or {}).get("duration"))
    if duration is None:
        raise UnsupportedMedia(f"{where}: the video states no duration")
    if duration > MAX_VIDEO_SECONDS:
        raise MediaTooLarge(
            f"{where}: the video lasts {duration:.0f} s, over this server's limit of {MAX_VIDEO_SECONDS:g} s"
        )
    return int(width), int(height), duration


def _quarter_turned(stream: dict[str, Any]) -> bool:
    """Whether a video stream is shown turned a quarter (its display matrix, or the older rotate tag)."""
    turns = [side.get("rotation") for side in stream.get("side_data_list") or [] if isinstance(side, dict)]
    turns.append((stream.get("tags") or {}).get("rotate"))
    for turn in turns:
        degrees = positive_number(str(turn).lstrip("-"))  # -90 turns as much as 90
        if degrees is not None and round(degrees) % 180 == 90:
            return True
    return False
