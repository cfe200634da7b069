"""Images and video through the Omni thinker: /v1/chat/completions with every part type, and /ocr, /describe and
/describe-region, against a real server on the tiny checkpoint (its vision tower fed by the real processor)."""

from __future__ import annotations

import base64
import http.server
import io
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
from PIL import Image, ImageDraw, ImageFont

from tests.support import JFK, Server, assert_error

pytestmark = pytest.mark.e2e

SHORT = {"max_new_tokens": "8"}


def text_image(text: str = "INVOICE 2024\nTotal: 42.00 EUR", size: tuple[int, int] = (640, 240)) -> bytes:
    """A PNG of black text on white, rendered by Pillow: an OCR input."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.multiline_text((20, 20), text, fill="black", font=ImageFont.load_default(size=36))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3 s test-pattern mp4 with a sound track, made with ffmpeg."""
    path = tmp_path_factory.mktemp("vision") / "clip.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-f", "lavfi",
         "-i", "sine=frequency=440", "-t", "3", "-pix_fmt", "yuv420p", "-shortest", str(path)],
        check=True,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    """The unmodified OpenAI SDK pointed at the server."""
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def data_url(data: bytes, media_type: str) -> str:
    """A base64 data: URL."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def leftovers(server: Server) -> list[Path]:
    """Files left in the server's uploads directory (temporary copies must all be gone)."""
    return list((server.data_dir / "uploads").iterdir())


def test_every_part_type_through_the_sdk(client: openai.OpenAI, server: Server, mp4: Path) -> None:
    """image_url (with detail), video_url, Qwen-VL image and video parts, audio and text in one conversation."""
    png = data_url(text_image(), "image/png")
    video = data_url(mp4.read_bytes(), "video/mp4")
    audio = base64.b64encode(JFK.read_bytes()).decode()
    parts: list[Any] = [
        {"type": "text", "text": "Compare these."},
        {"type": "image_url", "image_url": {"url": png, "detail": "low"}},
        {"type": "image_url", "image_url": {"url": png, "detail": "high"}},
        {"type": "video_url", "video_url": {"url": video}},
        {"type": "image", "image": png},
        {"type": "video", "video": video},
        {"type": "input_audio", "input_audio": {"data": audio, "format": "flac"}},
    ]
    answer = client.chat.completions.create(model="awq", messages=[{"role": "user", "content": parts}], max_tokens=6)
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.usage is not None
    # Two images, two videos (6 frames each, 3 pairs) and 11 s of audio: hundreds of prompt tokens.
    plain = client.chat.completions.create(model="awq", messages=[{"role": "user", "content": "Hi"}], max_tokens=6)
    assert plain.usage is not None and answer.usage.prompt_tokens > plain.usage.prompt_tokens + 500
    assert leftovers(server) == []


def test_low_detail_costs_fewer_tokens(client: openai.OpenAI) -> None:
    """detail=low scales a large image down to about 256 tokens; high keeps the processor's size."""
    big = data_url(text_image(size=(1600, 1200)), "image/png")
    usage = {}
    for detail in ("low", "high"):
        part = {"type": "image_url", "image_url": {"url": big, "detail": detail}}
        answer = client.chat.completions.create(
            model="awq", messages=[{"role": "user", "content": [part]}], max_tokens=2
        )
        assert answer.usage is not None
        usage[detail] = answer.usage.prompt_tokens
    assert usage["low"] < 300 < 2000 < usage["high"]


def test_multi_turn_and_streaming(client: openai.OpenAI) -> None:
    """An image in the first turn, an answer, a follow-up question: streamed, then whole, the same prompt size."""
    messages: list[Any] = [
        {"role": "system", "content": "You read documents."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(text_image(), "image/png")}},
                                     {"type": "text", "text": "What is the total?"}]},
        {"role": "assistant", "content": "42.00 EUR"},
        {"role": "user", "content": "And the year?"},
    ]  # fmt: skip
    chunks = list(
        client.chat.completions.create(
            model="awq", messages=messages, max_tokens=6, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(model="awq", messages=messages, max_tokens=6, temperature=0)
    assert streamed.strip() == (whole.choices[0].message.content or "")
    usage = chunks[-1].usage
    assert usage is not None and whole.usage is not None and usage.prompt_tokens == whole.usage.prompt_tokens


@pytest.mark.parametrize(
    ("part", "status", "code", "param"),
    [
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}, 400, "unsupported_media",
         None),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}, 400, "invalid_option",
         "messages[0].content[0].image_url.url"),
        ({"type": "image_url", "image_url": {"url": "data:image/png,rawtext"}}, 400, "invalid_option",
         "messages[0].content[0].image_url.url"),
        ({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, 400, "invalid_option",
         "messages[0].content[0].image_url.url"),
        ({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, 400, "invalid_option",
         "messages[0].content[0].image_url.url"),
        ({"type": "image", "image": "aGVsbG8="}, 400, "invalid_option", "messages[0].content[0].image"),
        ({"type": "video_url", "video_url": {"url": data_url(b"not a video", "video/mp4")}}, 400, "unsupported_media",
         None),
        ({"type": "image_url", "image_url": {"url": "x", "detail": "ultra"}}, 400, "invalid_option",
         "messages[0].content[0].image_url.detail"),
    ],
)  # fmt: skip
def test_bad_media_parts_are_clear_400s(
    server: Server, part: dict[str, Any], status: int, code: str, param: str | None
) -> None:
    """Malformed, undecodable, local-file and (remote media off) http URLs: 400 naming the part, no temp file."""
    body = {"messages": [{"role": "user", "content": [part]}], "max_tokens": 4}
    response = requests.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and "Traceback" not in response.text
    if param is not None:
        assert error["param"] == param
    assert leftovers(server) == []


def test_a_bomb_image_is_refused_without_decoding(server: Server) -> None:
    """A few KB declaring 9000 x 9000 pixels: 413 media_too_large (OpenAI's envelope says 400... 413 stays 413)."""
    out = io.BytesIO()
    Image.new("1", (9000, 9000)).save(out, "PNG")
    part = {"type": "image_url", "image_url": {"url": data_url(out.getvalue(), "image/png")}}
    response = requests.post(
        server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": [part]}]}, timeout=60
    )
    assert response.status_code in (400, 413) and response.json()["error"]["code"] == "media_too_large"


def test_too_many_images_are_refused_before_all_are_decoded(server: Server) -> None:
    """Fifty large images: refused once the ones read pass the model's context, naming messages."""
    out = io.BytesIO()
    Image.new("RGB", (2000, 2000), "grey").save(out, "PNG")
    part = {"type": "image_url", "image_url": {"url": data_url(out.getvalue(), "image/png")}}
    body = {"messages": [{"role": "user", "content": [part] * 50}], "max_tokens": 4}
    response = requests.post(server.url + "/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages" and "already about" in error["message"]


def test_ocr_as_an_attachment_and_as_json(server: Server) -> None:
    """The text as ocr_result_<YYYYMMDDHHMMSS>.txt, or JSON with the media_id for follow-ups."""
    files = {"file": ("scan.png", text_image())}
    response = requests.post(server.url + "/ocr", files=files, data=SHORT, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert re.fullmatch(r'attachment; filename="?ocr_result_\d{14}\.txt"?', response.headers["Content-Disposition"])
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Media-Id"])
    body = requests.post(server.url + "/ocr", params={"format": "json"}, files=files, data=SHORT, timeout=120).json()
    assert set(body) == {"text", "file_name", "media", "usage"} and body["usage"]["completion_tokens"] <= 8
    assert re.fullmatch(r"ocr_result_\d{14}\.txt", body["file_name"])
    assert body["media"]["kind"] == "image" and (body["media"]["width"], body["media"]["height"]) == (640, 240)
    again = requests.post(server.url + "/ocr", params={"format": "json"},
                          data={"media_id": body["media"]["media_id"], **SHORT}, timeout=120)  # fmt: skip
    assert again.status_code == 200 and again.json()["media"]["media_id"] == body["media"]["media_id"]


def test_describe_an_image_then_ask_again_without_uploading(server: Server) -> None:
    """The answer carries a media_id; follow-ups name it, count their turn and see the earlier turns."""
    first = requests.post(server.url + "/describe", files={"file": ("a.png", text_image())}, data=SHORT, timeout=120)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["question"] == "Describe this image." and body["turn"] == 1 and "box" not in body
    media_id = body["media"]["media_id"]
    follow = requests.post(server.url + "/describe", data={"media_id": media_id, "question": "What is the total?",
                                                           **SHORT}, timeout=120)  # fmt: skip
    assert follow.status_code == 200, follow.text
    again = follow.json()
    assert (again["question"], again["turn"]) == ("What is the total?", 2)
    # The first question and answer are in the follow-up's prompt.
    assert again["usage"]["prompt_tokens"] > body["usage"]["prompt_tokens"]


def test_describe_a_video(server: Server, mp4: Path) -> None:
    """An mp4 is sampled at 2 frames per second: 6 frames for 3 s; its default question names a video."""
    with mp4.open("rb") as f:
        response = requests.post(server.url + "/describe", files={"file": ("clip.mp4", f)}, data=SHORT, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["question"] == "Describe this video." and body["media"]["kind"] == "video"
    assert body["media"]["frames"] == 6 and (body["media"]["width"], body["media"]["height"]) == (320, 240)
    assert leftovers(server) == []


@pytest.fixture(scope="module")
def kept_image(server: Server) -> str:
    """The media_id of an 800 x 600 image."""
    files = {"file": ("p.png", text_image(size=(800, 600)))}
    response = requests.post(server.url + "/ocr", params={"format": "json"}, files=files, data=SHORT, timeout=120)
    return str(response.json()["media"]["media_id"])


@pytest.mark.parametrize(
    ("box", "words"),
    [
        ("", "is required"),
        ("1,2,3", "exactly four numbers"),
        ("1,2,3,4,5", "exactly four numbers"),
        ("a,b,c,d", "exactly four numbers"),
        ("1;2;3;4", "exactly four numbers"),
        ("-5,0,10,10", "exactly four numbers"),
        ("10,10,10,50", "x1 >= x2"),
        ("50,10,20,60", "x1 >= x2"),
        ("10,60,50,20", "y1 >= y2"),
        ("0,0,801,100", "inside the 800 x 600 image"),
        ("0,0,100,601", "inside the 800 x 600 image"),
        ("1e3,0,2000,10", "exactly four numbers"),
    ],
)
def test_box_validation(server: Server, kept_image: str, box: str, words: str) -> None:
    """Anything but x1,y1,x2,y2 with x1 < x2, y1 < y2 inside the image: 400 naming box and the rule."""
    data = {"media_id": kept_image, "box": box, **SHORT}
    message = assert_error(requests.post(server.url + "/describe-region", data=data, timeout=60), 400, "invalid_option")
    assert message.startswith("box: ") and words in message


def test_describe_a_region(server: Server, kept_image: str) -> None:
    """A valid box is described, and the answer says which box it cropped; an upload works the same."""
    data = {"media_id": kept_image, "box": " 100, 50 ,400.5,300 ", **SHORT}
    response = requests.post(server.url + "/describe-region", data=data, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["box"] == [100, 50, 401, 300] and body["question"] == "Describe the object inside the red rectangle."
    data = {"box": "0,0,64,64", "question": "What letter is this?", **SHORT}
    upload = requests.post(server.url + "/describe-region", files={"file": ("p.png", text_image())}, data=data,
                           timeout=120)  # fmt: skip
    assert upload.status_code == 200 and upload.json()["question"] == "What letter is this?"


@pytest.mark.parametrize(
    ("route", "files", "data", "status", "code"),
    [
        ("/describe", {"file": ("x.png", b"\x89PNG\r\n\x1a\ngarbage")}, {}, 415, "unsupported_media"),
        ("/describe", {"file": ("x.txt", b"plain text")}, {}, 415, "unsupported_media"),
        ("/ocr", {"file": ("x.mp4", b"\x00\x00\x00\x18ftypmp42")}, {}, 415, "unsupported_media"),
        ("/describe", {}, {}, 400, "missing_file"),
        ("/describe", {}, {"media_id": "0" * 32}, 404, "media_not_found"),
        ("/describe", {}, {"media_id": "../../jobs.sqlite3"}, 404, "media_not_found"),
        ("/describe", {"file": ("a.png", text_image())}, {"media_id": "0" * 32}, 400, "invalid_option"),
        ("/describe", {"file": ("a.png", text_image())}, {"max_new_tokens": "0"}, 400, "invalid_option"),
        ("/describe", {"file": ("a.png", text_image())}, {"temperature": "hot"}, 400, "invalid_option"),
    ],
)
def test_native_bad_requests(
    server: Server, route: str, files: dict[str, Any], data: dict[str, str], status: int, code: str
) -> None:
    """Undecodable files, nothing sent, unknown or malformed ids, both file and id, bad options: clear 4xx."""
    response = requests.post(server.url + route, files=files or None, data=data, timeout=60)
    assert_error(response, status, code)
    assert leftovers(server) == []


def test_an_audio_file_is_not_a_video(server: Server) -> None:
    """Audio sent to /describe: 415 saying there is no video stream (the file is still removed)."""
    with JFK.open("rb") as f:
        response = requests.post(server.url + "/describe", files={"file": ("jfk.flac", f)}, timeout=60)
    assert_error(response, 415, "unsupported_media")
    assert leftovers(server) == []


def test_an_overlong_video_is_refused_from_its_header(server: Server, tmp_path: Path) -> None:
    """Eleven minutes of video (a few KB of a still colour): 413 media_too_large before any frame is decoded."""
    path = tmp_path / "long.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "color=c=blue:size=64x64:rate=1", "-t", "660",
         "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip
    with path.open("rb") as f:
        response = requests.post(server.url + "/describe", files={"file": ("long.mp4", f)}, timeout=60)
    assert "over this server's limit of 600 s" in assert_error(response, 413, "media_too_large")
    assert leftovers(server) == []


def test_the_routes_are_in_the_openapi_document(server: Server) -> None:
    """The three routes, with the vision tag, and the chat's new part types in the request schema."""
    spec = requests.get(server.url + "/openapi.json", timeout=10).json()
    for path in ("/ocr", "/describe", "/describe-region"):
        assert spec["paths"][path]["post"]["tags"] == ["vision"]
    parts = spec["components"]["schemas"]
    assert {"ImageUrlPart", "VideoUrlPart", "ImagePart", "VideoPart"} <= set(parts)


@pytest.fixture(scope="module")
def inner_site() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on loopback standing for the server's own network: it serves an image and a redirect to
    itself, and records every path asked of it."""
    asked: list[str] = []
    body = text_image()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            if self.path == "/hop":
                self.send_response(302)
                self.send_header("Location", "/secret.png")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{site.server_address[1]}", asked
    finally:
        site.shutdown()
        site.server_close()


@pytest.fixture(scope="module")
def fetching(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that fetches remote media (--allow-remote-media)."""
    server = Server(tiny_checkpoint, tmp_path_factory.mktemp("fetching") / "data", ["--allow-remote-media"]).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("{site}/secret.png", "127.0.0.1 is a loopback address"),
        ("{site}/hop", "127.0.0.1 is a loopback address"),
        ("http://localhost:{port}/secret.png", "is a loopback address"),
        ("http://10.0.0.7/admin.png", "10.0.0.7 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://[::ffff:127.0.0.1]:{port}/secret.png", "loopback"),
        ("http://user:pw@example.com/a.png", "user name or password"),
        ("ftp://example.com/a.png", "must be a data: URL"),
    ],
)
def test_remote_media_never_reach_the_servers_own_network(
    fetching: Server, inner_site: tuple[str, list[str]], url: str, words: str
) -> None:
    """Loopback, private and link-local addresses, by name, literal or redirect: 400 saying why, and the inner
    site is never asked anything."""
    site, asked = inner_site
    before = len(asked)
    url = url.format(site=site, port=site.rsplit(":", 1)[1])
    part = {"type": "image_url", "image_url": {"url": url}}
    body = {"messages": [{"role": "user", "content": [part]}], "max_tokens": 2}
    response = requests.post(fetching.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] in ("remote_media_refused", "invalid_option") and words in error["message"], error
    assert len(asked) == before
