"""app.media: images and videos decoded within bounds, at the size the Qwen-Omni processors use."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import media
from app.errors import InvalidOption, MediaTooLarge, UnsupportedMedia
from app.protocol.vision import parse_box


def png(image: Image.Image, fmt: str = "PNG", **kwargs: object) -> bytes:
    """The image encoded in fmt."""
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


@pytest.mark.parametrize("height", [1, 27, 28, 100, 333, 1080, 4000])
@pytest.mark.parametrize("width", [1, 29, 56, 640, 1920, 5000])
@pytest.mark.parametrize("grid", [media.QWEN25_GRID, media.QWEN3_GRID])
def test_fit_is_the_processors_rule(height: int, width: int, grid: media.Grid) -> None:
    """Grid.fit gives the size transformers' smart_resize gives, for images and video frames, on both grids."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    if max(height, width) / min(height, width) > media.MAX_ASPECT_RATIO:
        return  # refused before sizing
    for low, high in ((media.IMAGE_MIN_BLOCKS, media.IMAGE_MAX_BLOCKS), (media.VIDEO_MIN_BLOCKS, 300)):
        want = smart_resize(height, width, grid.factor, low * grid.block, high * grid.block)
        assert grid.fit(height, width, low, high) == want


def test_an_image_is_sized_for_the_processor_with_its_size_as_uploaded() -> None:
    """Multiples of 28, within the pixel bounds, aspect kept; the size as uploaded is reported."""
    picture = media.decode_image(png(Image.new("RGB", (640, 400), "navy")), "file")
    assert (picture.width, picture.height) == (640, 400)
    height, width = picture.pixels.shape[:2]
    assert height % 28 == 0 and width % 28 == 0 and picture.pixels.dtype == np.uint8
    assert abs(width / height - 640 / 400) < 0.05
    assert media.image_tokens(picture.pixels) == (height // 28) * (width // 28)
    qwen3 = media.decode_image(png(Image.new("RGB", (640, 400))), "file", media.QWEN3_GRID).pixels
    assert qwen3.shape[0] % 32 == 0 and qwen3.shape[1] % 32 == 0
    assert tuple(picture.pixels[5, 5]) == (0, 0, 128)


def test_transparency_is_laid_over_white() -> None:
    """Dark text on a transparent background stays readable: transparent pixels become white."""
    image = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    image.putpixel((100, 50), (0, 0, 0, 255))
    pixels = media.decode_image(png(image), "file").pixels
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert pixels.min() < 128  # the opaque black pixel survived the scaling


def test_exif_rotation_is_applied() -> None:
    """A portrait photo stored landscape with EXIF orientation 6 is reported and decoded as portrait."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = png(Image.new("RGB", (400, 200), "red"), "JPEG", exif=exif)
    picture = media.decode_image(data, "file")
    assert (picture.width, picture.height) == (200, 400)
    assert picture.pixels.shape[0] > picture.pixels.shape[1]


def test_a_huge_image_is_refused_from_its_header() -> None:
    """A small file declaring 8000 x 8000 pixels is refused before a pixel is decoded."""
    data = png(Image.new("1", (8000, 8000)))  # a few KB: one bit per pixel, all zero
    assert len(data) < 100_000
    with pytest.raises(MediaTooLarge, match="over this server's limit"):
        media.decode_image(data, "file")


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "not an image"),
        (b"hello, this is text", "not an image"),
        (png(Image.new("RGB", (300, 200)))[:60], "could not be decoded"),
        (png(Image.new("RGB", (201, 1))), "too elongated"),
        (b"%PDF-1.4\n", "not an image"),
    ],
)
def test_malformed_images_are_refused(data: bytes, words: str) -> None:
    """Empty, text, truncated, too elongated for the processor, another format: 415 unsupported_media."""
    with pytest.raises(UnsupportedMedia, match=words):
        media.decode_image(data, "messages[0].content[0].image_url.url")


def test_a_gif_gives_its_first_frame() -> None:
    """An animated GIF is an image: its first frame."""
    frames = [Image.new("RGB", (64, 64), colour) for colour in ("red", "blue")]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    pixels = media.decode_image(out.getvalue(), "file").pixels
    assert pixels[10, 10, 0] > 200 and pixels[10, 10, 2] < 50


@pytest.mark.parametrize("duration", [0.5, 3.0, 60.0, 384.0, 600.0])
@pytest.mark.parametrize("budget", [2_000, 30_000])
@pytest.mark.parametrize("grid", [media.QWEN25_GRID, media.QWEN3_GRID])
def test_video_plan_keeps_the_bounds(duration: float, budget: int, grid: media.Grid) -> None:
    """An even number of frames, 2 per second up to 768, frames sized within bounds, tokens within the budget."""
    fps, count, height, width = media.video_plan(duration, 1920, 1080, budget, grid)
    assert count % 2 == 0 and 2 <= count <= media.VIDEO_MAX_FRAMES
    assert height % grid.factor == 0 and width % grid.factor == 0
    assert media.VIDEO_MIN_BLOCKS <= grid.tokens(height, width) <= media.VIDEO_MAX_BLOCKS
    assert count // 2 * grid.tokens(height, width) <= budget
    if budget == 30_000 and duration * media.VIDEO_FPS <= 120:
        assert count >= min(max(round(duration * 2), 4), 768) - 1 and fps == pytest.approx(count / duration)


def test_video_plan_refuses_a_context_with_no_room() -> None:
    """With room for less than a pair of the smallest frames, the video is refused, not cut to nothing."""
    with pytest.raises(MediaTooLarge, match="too few for a video"):
        media.video_plan(10.0, 1920, 1080, 50)


def make_video(path: Path, seconds: float, size: str = "320x240", audio: bool = False) -> Path:
    """A test-pattern video made with ffmpeg."""
    inputs = ["-f", "lavfi", "-i", f"testsrc=size={size}:rate=25"]
    if audio:
        inputs += ["-f", "lavfi", "-i", "sine=frequency=440"]
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", *inputs, "-t", str(seconds), "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )
    return path


def test_a_video_is_sampled_at_two_frames_a_second(tmp_path: Path) -> None:
    """A 5 s mp4: 10 frames at 2 per second, sized for the processor."""
    video = media.decode_video(make_video(tmp_path / "v.mp4", 5.0), "file", 30_000)
    assert video.frames.shape[0] == 10 and video.fps == pytest.approx(2.0)
    assert video.frames.shape[1] % 28 == 0 and video.frames.shape[2] % 28 == 0
    assert video.frames.dtype == np.uint8 and video.frames.flags.writeable
    assert video.tokens == 5 * (video.frames.shape[1] // 28) * (video.frames.shape[2] // 28)


def test_a_webm_decodes_too(tmp_path: Path) -> None:
    """WebM (VP9) is one of the containers a browser records."""
    path = tmp_path / "v.webm"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10", "-t", "1",
         "-c:v", "libvpx-vp9", "-deadline", "realtime", str(path)],
        check=True,
    )  # fmt: skip
    assert media.decode_video(path, "file", 30_000).frames.shape[0] == 4  # the minimum


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"not a video at all", "not a decodable video"),
        (None, "no video stream"),
    ],
)
def test_what_is_not_a_video_is_refused(tmp_path: Path, content: bytes | None, words: str) -> None:
    """Text, and audio without pictures: 415 unsupported_media naming the part."""
    path = tmp_path / "x"
    if content is None:
        subprocess.run(
            ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "sine", "-t", "1", "-f", "mp4", str(path)],
            check=True,
        )
    else:
        path.write_bytes(content)
    with pytest.raises(UnsupportedMedia, match=words):
        media.decode_video(path, "file", 30_000)


def test_a_video_over_the_duration_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    """Over MAX_VIDEO_SECONDS: 413 before decoding."""
    path = tmp_path / "long.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "color=c=black:size=64x64:rate=1", "-t",
         str(media.MAX_VIDEO_SECONDS + 60), "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip
    with pytest.raises(MediaTooLarge, match="over this server's limit"):
        media.decode_video(path, "file", 30_000)


@pytest.mark.parametrize(
    ("raw", "box"),
    [
        ("10,20,30,40", (10, 20, 30, 40)),
        (" 10 , 20 , 30.5 , 40 ", (10, 20, 30.5, 40)),
        ("0,0,1,1", (0, 0, 1, 1)),
    ],
)
def test_box_parses(raw: str, box: tuple[float, ...]) -> None:
    """Four numbers separated by commas, spaces around them allowed."""
    assert parse_box(raw) == box


@pytest.mark.parametrize(
    "raw",
    ["", "1,2,3", "1,2,3,4,5", "a,b,c,d", "1;2;3;4", "-1,0,5,5", "1e2,0,200,5", "10,10,10,20", "10,20,30,20",
     "30,10,20,40", "nan,0,1,1", "1,,2,3", "0x10,0,20,20"],
)  # fmt: skip
def test_box_refuses(raw: str) -> None:
    """Anything but four non-negative numbers with x1 < x2 and y1 < y2: the rule in the message."""
    with pytest.raises(ValueError, match="x1,y1,x2,y2"):
        parse_box(raw)


def test_region_draws_the_box_and_enlarges_the_close_up() -> None:
    """The overview has the red box; the close-up covers the box with context, at least REGION_MIN_PIXELS."""
    image = Image.new("RGB", (800, 600), "white")
    image.paste((0, 128, 0), (300, 200, 400, 300))  # a green square
    picture = media.decode_image(png(image), "file")
    overview, close_up, box = media.region(picture, (300, 200, 400, 300))
    assert box == (300, 200, 400, 300)
    sx = overview.shape[1] / 800
    red = overview[:, :, 0].astype(int) - overview[:, :, 1].astype(int) > 150
    ys, xs = np.nonzero(red)
    assert abs(ys.min() - 200 * overview.shape[0] / 600) <= 3
    assert abs(xs.min() - 300 * sx) <= 3 and abs(xs.max() - 400 * sx) <= 3
    assert media.image_tokens(close_up) >= media.REGION_MIN_BLOCKS
    green = close_up[close_up.shape[0] // 2, close_up.shape[1] // 2]
    assert green[1] > 100 and green[0] < 50  # the square is in the middle of the close-up
    corner = close_up[2, 2]
    assert corner.min() > 200  # with white context around it


@pytest.mark.parametrize("box", [(0, 0, 801, 10), (0, 590, 10, 601)])
def test_a_region_outside_the_image_is_refused(box: tuple[float, float, float, float]) -> None:
    """A box past the image's right or bottom edge: 400 naming box."""
    picture = media.decode_image(png(Image.new("RGB", (800, 600))), "file")
    with pytest.raises(InvalidOption, match="inside the 800 x 600 image") as caught:
        media.region(picture, box)
    assert caught.value.field == "box"


def test_a_video_stored_sideways_keeps_its_shape(tmp_path: Path) -> None:
    """A phone video with a quarter-turn display matrix: frames come out upright and portrait, as uploaded."""
    flat = make_video(tmp_path / "flat.mp4", 2.0)
    turned = tmp_path / "turned.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(flat), "-c", "copy", "-metadata:s:v:0", "rotate=90",
         str(turned)],
        check=True,
    )  # fmt: skip
    video = media.decode_video(turned, "file", 30_000)
    assert (video.width, video.height) == (240, 320)
    assert video.frames.shape[1] > video.frames.shape[2]  # taller than wide, not squashed into landscape


def test_sixteen_bit_and_float_images_keep_their_range() -> None:
    """A 16-bit grey gradient spans black to white (Pillow's own convert would clip it to two values)."""
    gradient = np.tile(np.linspace(0, 65535, 256, dtype=np.uint16), (64, 1))
    pixels = media.decode_image(png(Image.fromarray(gradient)), "file").pixels
    assert pixels.min() < 10 and pixels.max() > 245 and len(np.unique(pixels[..., 0])) > 100
    floats = np.tile(np.linspace(0, 1, 256, dtype=np.float32), (64, 1))
    pixels = media.decode_image(png(Image.fromarray(floats, "F"), "TIFF"), "file").pixels
    assert pixels.min() < 10 and pixels.max() > 245


def test_a_tiff_turned_by_its_orientation_reports_its_shown_size() -> None:
    """A 300 x 100 TIFF with orientation 6 is shown 100 x 300, and a box in that frame is inside it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    picture = media.decode_image(png(Image.new("RGB", (300, 100), "red"), "TIFF", exif=exif), "file")
    assert (picture.width, picture.height) == (100, 300)
    assert picture.pixels.shape[0] > picture.pixels.shape[1]
    media.region(picture, (0, 0, 100, 300))


def test_region_images_share_the_room_they_are_given() -> None:
    """Both the overview and the close-up stay within max_blocks; too little room for a close-up is a 413."""
    picture = media.decode_image(png(Image.new("RGB", (4000, 3000), "white")), "file")
    overview, close_up, _ = media.region(picture, (0, 0, 4000, 3000), max_blocks=2000)
    assert media.image_tokens(overview) <= 2000 and media.image_tokens(close_up) <= 2000
    with pytest.raises(MediaTooLarge, match="too few for a region"):
        media.region(picture, (0, 0, 10, 10), max_blocks=100)


def test_box_digits_are_ascii() -> None:
    """Fullwidth and Arabic-Indic digits are not numbers a box takes."""
    for raw in ("１,2,3,4", "1,2,3,٤"):
        with pytest.raises(ValueError, match="x1,y1,x2,y2"):
            parse_box(raw)
