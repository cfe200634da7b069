"""Bad input against the real server: every refusal is a clear 4xx JSON error that leaves nothing on disk.

Each case checks the native error body (status, code, no traceback), that the upload's temporary file is
gone once the request has closed, and that a refused async submission leaves no job directory. Valid audio
under hostile file names must be transcribed, with nothing written outside the data directory and a
sanitized attachment name. What is valid but merely odd (a truncated file that still holds frames, four
hours of silence) gets the answer valid audio gets.
"""

from __future__ import annotations

import math
import random
import re
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.http import parse_options_header

from tests.support import AISHELL, JFK, Server, assert_error, post, wait_for

pytestmark = pytest.mark.e2e

FAST = {"max_new_tokens": "8"}  # random weights rarely stop on their own
ROUTES = ["/transcribe/json", "/transcribe/async"]
OUTPUT_NAME = re.compile(r"\d{14}(_\d+)?\.txt")


# --- media ---------------------------------------------------------------------------------------------


def _tone(seconds: float = 1.0, rate: int = 16000) -> bytes:
    """A 440 Hz tone as 16-bit little-endian PCM."""
    n = int(seconds * rate)
    return struct.pack(f"<{n}h", *(int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(n)))


TONE = _tone()


def wav_bytes(*, rate: int = 16000, channels: int = 1, bits: int = 16, fmt: int = 1, data: bytes = TONE) -> bytes:
    """A RIFF/WAVE file whose header says whatever it is told, consistent or not."""
    block_align = channels * bits // 8
    byte_rate = rate * block_align
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels, rate, byte_rate & 0xFFFFFFFF, block_align & 0xFFFF, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def build(directory: Path) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    return build


def _mp3(directory: Path) -> Path:
    path = directory / "jfk.mp3"
    if not path.exists():
        _ffmpeg("-i", str(JFK), str(path))
    return path


def _truncated_mp3(size: int, name: str) -> Callable[[Path], Path]:
    def build(directory: Path) -> Path:
        path = directory / name
        path.write_bytes(_mp3(directory).read_bytes()[:size])
        return path

    return build


def _png(directory: Path) -> Path:
    png = directory / "frame.png"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=1", "-frames:v", "1", str(png))
    path = directory / "picture.mp3"
    path.write_bytes(png.read_bytes())
    return path


def _video_only(name: str, *codec: str) -> Callable[[Path], Path]:
    def build(directory: Path) -> Path:
        path = directory / name
        _ffmpeg("-f", "lavfi", "-i", "testsrc=duration=1:size=64x64:rate=5", "-an", *codec, str(path))
        return path

    return build


def _scrambled_header_wav(directory: Path) -> Path:
    """A good WAV whose header, past the RIFF tag, is overwritten with (seeded) random bytes."""
    data = bytearray(wav_bytes())
    rng = random.Random(1)
    data[8:44] = bytes(rng.randrange(256) for _ in range(36))
    path = directory / "scrambled.wav"
    path.write_bytes(bytes(data))
    return path


# Not audio, or audio no decoder can turn into samples: 415 unsupported_audio on every route.
UNDECODABLE = [
    pytest.param(_write("empty.mp3", b""), id="empty-file"),
    pytest.param(_write("notes.mp3", b"this is not audio\n" * 100), id="text-renamed-mp3"),
    pytest.param(_png, id="png-renamed-mp3"),
    pytest.param(_truncated_mp3(100, "cut-in-first-frame.mp3"), id="mp3-truncated-before-any-frame"),
    pytest.param(_scrambled_header_wav, id="wav-random-bytes-in-header"),
    pytest.param(_write("weird-format.wav", wav_bytes(fmt=0x1234)), id="wav-unknown-format-tag"),
    pytest.param(_write("zero-bits.wav", wav_bytes(bits=0)), id="wav-zero-bits-per-sample"),
    pytest.param(_write("no-samples.wav", wav_bytes(data=b"")), id="wav-valid-header-no-samples"),
    pytest.param(_video_only("video.mkv"), id="mkv-video-stream-only"),
    pytest.param(_video_only("video.mp4", "-c:v", "mpeg4"), id="mp4-video-without-sound"),
    # 64 samples at 1 Hz claim 64 s of audio: every sample would be stretched over a second of output.
    pytest.param(_write("rate-1hz.wav", wav_bytes(rate=1, data=TONE[:128])), id="wav-rate-1-hz"),
    pytest.param(_write("rate-4ghz.wav", wav_bytes(rate=4_000_000_000)), id="wav-rate-4-ghz"),
    pytest.param(_write("zero-channels.wav", wav_bytes(channels=0)), id="wav-0-channels"),
    pytest.param(_write("many-channels.wav", wav_bytes(channels=65535)), id="wav-65535-channels"),
]


# --- helpers -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the generated files of this module."""
    return tmp_path_factory.mktemp("bad-media")


@pytest.fixture
def clean(server: Server) -> Iterator[None]:
    """After the test: no upload left in flight and no job directory the test did not end with."""
    jobs = server.data_dir / "jobs"
    before = set(jobs.iterdir())
    yield
    assert_no_leftovers(server, before)


def assert_no_leftovers(server: Server, jobs_before: set[Path]) -> None:
    """Uploads are removed when the request closes (poll briefly); refused jobs leave no directory."""
    uploads = server.data_dir / "uploads"
    deadline = time.monotonic() + 5
    while (left := sorted(p.name for p in uploads.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"upload temp files left behind: {left}"
    new_jobs = sorted(p.name for p in set((server.data_dir / "jobs").iterdir()) - jobs_before)
    assert not new_jobs, f"job directories left behind: {new_jobs}"


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"b0undary") -> bytes:
    """A multipart/form-data body from (Content-Disposition parameters, payload) pairs, byte for byte."""
    body = b""
    for disposition, payload in parts:
        body += b"--" + boundary + b"\r\nContent-Disposition: form-data; " + disposition + b"\r\n\r\n"
        body += payload + b"\r\n"
    return body + b"--" + boundary + b"--\r\n"


def post_raw(server: Server, route: str, body: bytes, content_type: str) -> requests.Response:
    """POST a body exactly as given."""
    return requests.post(server.url + route, data=body, headers={"Content-Type": content_type}, timeout=120)


def upload_named(server: Server, route: str, filename: bytes, payload: bytes) -> requests.Response:
    """POST payload as the file part with the file name's raw bytes in its header, plus FAST."""
    parts = [(b'name="file"; filename="' + filename + b'"', payload)]
    parts += [(b'name="' + k.encode() + b'"', v.encode()) for k, v in FAST.items()]
    return post_raw(server, route, multipart(parts), "multipart/form-data; boundary=b0undary")


def job_status(server: Server, job_id: str) -> dict[str, Any]:
    """GET /status/<id>."""
    return dict(requests.get(f"{server.url}/status/{job_id}", timeout=10).json())


# --- undecodable uploads -------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("build", UNDECODABLE)
def test_undecodable_upload_is_415(
    server: Server, media_dir: Path, build: Callable[[Path], Path], route: str, clean: None
) -> None:
    """Not audio, no audio stream, no samples or an absurd header: 415 up front, on the async route too."""
    path = build(media_dir)
    response = post(server, route, path, **FAST)
    if response.status_code == 202:
        # Taken as a job (wrongly): let it end, so the tests after this one find an idle server.
        job_id = response.json()["job_id"]
        ended = wait_for(lambda: (s := job_status(server, job_id))["status"] not in ("queued", "processing") and s)
        wait_for(lambda: not (server.data_dir / "jobs" / job_id).exists(), timeout=30)
        pytest.fail(f"accepted as job {job_id}, which ended {ended}")
    assert_error(response, 415, "unsupported_audio")


@pytest.mark.parametrize(
    ("build", "longest"),
    [
        pytest.param(_truncated_mp3(1024, "first-kb.mp3"), 0.1, id="mp3-first-1-KB"),
        pytest.param(_write("cut.wav", wav_bytes()[:5000]), 0.2, id="wav-data-shorter-than-header-says"),
    ],
)
def test_truncated_file_with_frames_transcribes_what_is_there(
    server: Server, media_dir: Path, build: Callable[[Path], Path], longest: float, clean: None
) -> None:
    """A file cut short is still audio up to the cut (as in any player): 200, with the duration that decoded."""
    path = build(media_dir)
    response = post(server, "/transcribe/json", path, **FAST)
    assert response.status_code == 200, response.text
    assert 0 < response.json()["duration"] <= longest


def test_four_hours_of_silence_is_accepted_and_can_be_cancelled(server: Server, media_dir: Path) -> None:
    """Valid audio however long: the async route takes it (202) and it starts; DELETE cancels it, files go."""
    path = media_dir / "silence-4h.flac"
    _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "14400", "-c:a", "flac", str(path))
    jobs_before = set((server.data_dir / "jobs").iterdir())
    # vad=false: silence goes to the model like any audio (with VAD it would end at once, nothing to cancel).
    response = post(server, "/transcribe/async", path, vad="false", **FAST)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    job_dir = server.data_dir / "jobs" / job_id
    try:
        started = wait_for(
            lambda: (s := job_status(server, job_id))["progress"]["segments_done"] >= 1 and s, what="a segment done"
        )
        assert started["status"] == "processing"
        cancelled = requests.delete(f"{server.url}/status/{job_id}", timeout=10)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        wait_for(lambda: not job_dir.exists(), timeout=60, what="the cancelled job's audio to go")
        assert job_status(server, job_id)["status"] == "cancelled"
    finally:
        # Whatever failed above, leave no running job to the tests after this one.
        wait_for(lambda: job_status(server, job_id).get("status") not in ("queued", "processing"), timeout=600)
        wait_for(lambda: not job_dir.exists(), timeout=30, what="the job's audio to go")
    assert_no_leftovers(server, jobs_before)


# --- no file, or not a multipart upload ----------------------------------------------------------------

WAV = wav_bytes()
BROKEN_BODIES = [
    pytest.param({"files": {"files": ("a.wav", WAV)}}, id="field-named-files"),
    pytest.param({"files": {"upload": ("a.wav", WAV)}}, id="field-named-upload"),
    pytest.param({"data": {"file": "a.wav"}}, id="file-as-plain-form-field"),
    pytest.param({"files": {"file": (None, WAV)}}, id="file-part-without-filename"),
    pytest.param({"json": {"file": "UklGRg==", "language": "en"}}, id="json-body"),
    pytest.param({"data": WAV, "headers": {"Content-Type": "audio/wav"}}, id="raw-audio-body"),
    pytest.param({"data": WAV, "headers": {"Content-Type": "application/octet-stream"}}, id="raw-octet-stream"),
    pytest.param(
        {"data": multipart([(b'name="file"; filename="a.wav"', WAV)]),
         "headers": {"Content-Type": "multipart/form-data; boundary=not-the-one-used"}},
        id="multipart-wrong-boundary",
    ),
    pytest.param(
        {"data": multipart([(b'name="file"; filename="a.wav"', WAV)]),
         "headers": {"Content-Type": "multipart/form-data"}},
        id="multipart-no-boundary-parameter",
    ),
    pytest.param(
        {"data": multipart([(b'name="file"; filename="a.wav"', WAV)])[:-40],
         "headers": {"Content-Type": "multipart/form-data; boundary=b0undary"}},
        id="multipart-unterminated",
    ),
    pytest.param(
        {"data": b"\x00garbage\xff" * 500, "headers": {"Content-Type": "multipart/form-data; boundary=b0undary"}},
        id="multipart-garbage",
    ),
]  # fmt: skip


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("kwargs", BROKEN_BODIES)
def test_no_file_part_is_400(server: Server, route: str, kwargs: dict[str, Any], clean: None) -> None:
    """Anything but a multipart upload in the field 'file' gets 400, never a 5xx or a hang."""
    response = requests.post(server.url + route, timeout=30, **kwargs)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status"] == "error" and body["error"]["code"] in ("missing_file", "invalid_request")
    assert "Traceback" not in response.text


# --- options -------------------------------------------------------------------------------------------

BAD_OPTIONS = [
    ("segment_duration", "-5"),
    ("segment_duration", "0.5"),
    ("segment_duration", "300.01"),
    ("segment_duration", "1e309"),  # overflows to inf
    ("segment_duration", "-inf"),
    ("segment_duration", "0x10"),
    ("segment_duration", "1,5"),
    ("max_new_tokens", "0"),
    ("max_new_tokens", "32769"),
    ("max_new_tokens", "1.5"),
    ("max_new_tokens", "1e400"),
    ("max_new_tokens", "9" * 40),
    ("max_new_tokens", "NaN"),
    ("max_new_tokens", "Infinity"),
    ("max_new_tokens", "-32768"),
    ("temperature", "-0.1"),
    ("temperature", "2.0001"),
    ("temperature", "nan"),
    ("temperature", "-inf"),
    ("temperature", "hot"),
    ("repetition_penalty", "0.4"),
    ("repetition_penalty", "3.5"),
    ("repetition_penalty", "-1"),
    ("repetition_penalty", "NAN"),
    ("repetition_penalty", "1e999"),
    ("enable_s2t", "2"),
    ("enable_s2t", "yes please"),
    ("enable_s2t", "null"),
    ("language", "xx"),
    ("language", "en-US"),
    ("language", "english; DROP TABLE jobs"),
    ("prompt", "p" * 4001),
    ("prompt", "p" * 200_000),
]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("field", "value"), BAD_OPTIONS, ids=[f"{f}={v[:12]}" for f, v in BAD_OPTIONS])
def test_bad_option_is_400_naming_the_field(server: Server, route: str, field: str, value: str, clean: None) -> None:
    """Out of range, not a number, NaN, inf, huge, unknown: 400 invalid_option naming the field."""
    fields = {**FAST, field: value}
    with open(AISHELL, "rb") as f:
        response = requests.post(server.url + route, files={"file": ("a.wav", f)}, data=fields, timeout=60)
    message = assert_error(response, 400, "invalid_option")
    assert message.startswith(f"{field}:")
    assert len(message) < 1000, "the message echoes the whole value back"


# --- job ids and methods -------------------------------------------------------------------------------

UNKNOWN_IDS = [
    pytest.param("0" * 32, id="well-formed-unknown"),
    pytest.param("nope", id="short"),
    pytest.param("a" * 3000, id="3000-chars"),
    pytest.param("%2e%2e", id="encoded-dot-dot"),
    pytest.param("' OR 1=1 --", id="sql"),
    pytest.param("%00", id="nul"),
    pytest.param("%E3%82%B8%E3%83%A7%E3%83%96", id="non-ascii"),
    pytest.param("%FF%FE", id="invalid-utf8"),
]


@pytest.mark.parametrize("job_id", UNKNOWN_IDS)
def test_unknown_job_id_is_404(server: Server, job_id: str) -> None:
    """GET /status/<id> of no job: 404 job_not_found, and the message does not echo a huge id whole."""
    message = assert_error(requests.get(f"{server.url}/status/{job_id}", timeout=10), 404, "job_not_found")
    assert len(message) < 300


@pytest.mark.parametrize(
    "job_id", ["%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%2F..%2Fjobs.sqlite3", "x%2f..%2f..%2foutputs"]
)
def test_job_id_with_encoded_slashes_is_404(server: Server, job_id: str) -> None:
    """WSGI decodes %2f before routing, so these reach no route or no job: 404 either way, nothing served."""
    response = requests.get(f"{server.url}/status/{job_id}", timeout=10)
    assert response.status_code == 404, response.text
    body = response.json()
    assert body["status"] == "error" and body["error"]["code"] in ("job_not_found", "not_found")
    assert "root:" not in response.text and "SQLite" not in response.text


def test_job_id_longer_than_a_request_line_is_a_json_error(server: Server) -> None:
    """An id of 10 000 characters still gets the JSON error body every error promises."""
    response = requests.get(f"{server.url}/status/{'a' * 10_000}", timeout=10)
    assert response.status_code in (404, 414), response.text[:300]
    assert response.headers.get("Content-Type", "").startswith("application/json"), response.text[:300]
    assert response.json()["status"] == "error"


def test_delete_of_an_unknown_job_is_404(server: Server) -> None:
    """DELETE /status/<id> of no job."""
    assert_error(requests.delete(f"{server.url}/status/{'0' * 32}", timeout=10), 404, "job_not_found")


NATIVE_ROUTES = {
    "/health": ["POST", "PUT", "PATCH", "DELETE"],
    "/transcribe": ["GET", "HEAD", "PUT", "PATCH", "DELETE"],
    "/transcribe/json": ["GET", "PUT", "PATCH", "DELETE"],
    "/transcribe/srt": ["GET", "PUT", "PATCH", "DELETE"],
    "/transcribe/vtt": ["GET", "PUT", "PATCH", "DELETE"],
    "/transcribe/async": ["GET", "PUT", "PATCH", "DELETE"],
    "/status/0123456789abcdef0123456789abcdef": ["POST", "PUT", "PATCH"],
}
WRONG_METHODS = [(route, method) for route, methods in NATIVE_ROUTES.items() for method in methods]


@pytest.mark.parametrize(("route", "method"), WRONG_METHODS, ids=[f"{m} {r}" for r, m in WRONG_METHODS])
def test_wrong_method_is_405_with_allow(server: Server, route: str, method: str) -> None:
    """405 method_not_allowed, with an Allow header that lists what the route takes and not the method."""
    response = requests.request(method, server.url + route, timeout=10)
    assert response.status_code == 405, response.text
    allow = {m.strip() for m in response.headers["Allow"].split(",")}
    assert method not in allow and allow & {"GET", "POST"}
    if method != "HEAD":  # a HEAD answer has no body
        assert_error(response, 405, "method_not_allowed")


OPENAI_ROUTES = {
    "/v1/audio/transcriptions": ["GET", "PUT", "DELETE"],
    "/v1/chat/completions": ["GET", "PATCH"],
    "/v1/models": ["POST", "DELETE"],
    "/v1/models/whisper-1": ["POST", "PUT"],
}
OPENAI_WRONG = [(route, method) for route, methods in OPENAI_ROUTES.items() for method in methods]


@pytest.mark.parametrize(("route", "method"), OPENAI_WRONG, ids=[f"{m} {r}" for r, m in OPENAI_WRONG])
def test_wrong_method_on_openai_routes_is_405_in_openai_envelope(server: Server, route: str, method: str) -> None:
    """The /v1 routes answer a wrong method with 405 and Allow too, in OpenAI's error envelope."""
    response = requests.request(method, server.url + route, timeout=10)
    assert response.status_code == 405, response.text
    assert method not in {m.strip() for m in response.headers["Allow"].split(",")}
    error = response.json()["error"]
    assert error["code"] == "method_not_allowed" and error["type"] == "invalid_request_error"


# --- valid audio under hostile file names --------------------------------------------------------------

HOSTILE_NAMES = [
    pytest.param(b"../../etc/passwd", id="dot-dot-passwd"),
    pytest.param(b"/etc/passwd", id="absolute-passwd"),
    pytest.param(b"..\\..\\..\\windows\\passwd.wav", id="backslashes"),
    pytest.param(b"%2e%2e%2f%2e%2e%2fpasswd.wav", id="percent-encoded-dot-dot"),
    pytest.param(b"a" * 1000 + b".wav", id="1000-chars"),
    pytest.param(b"a\x00b.wav", id="nul"),
    pytest.param(b"red\x1b[31m\x01\x7f.wav", id="control-characters"),
    pytest.param(b"line1%0Aline2%0D%0AX-Injected: 1.wav", id="newline-as-clients-encode-it"),
    pytest.param("日本語 <script>.wav".encode(), id="utf8-and-markup"),
    pytest.param(b"", id="empty-name"),
    pytest.param(b"....", id="dots-only"),
]


def _files_under(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*") if p.is_file()}


@pytest.mark.parametrize("filename", HOSTILE_NAMES)
def test_hostile_file_name_is_transcribed_and_sanitized(server: Server, filename: bytes, clean: None) -> None:
    """200, the attachment name has no path or control characters, and nothing lands outside the data dir."""
    base = server.data_dir.parent.parent  # the session's temporary root: a traversal would land in here
    before = _files_under(base)
    response = upload_named(server, "/transcribe", filename, AISHELL.read_bytes())
    assert response.status_code == 200, response.text[:300]
    assert "X-Injected" not in response.headers
    disposition, params = parse_options_header(response.headers["Content-Disposition"])
    name = params["filename"]
    assert disposition == "attachment" and name.endswith(".txt")
    assert not set(name) & {"/", "\\"} and not any(ord(c) < 32 or ord(c) == 127 for c in name), name
    assert len(name.encode()) <= 255, name
    written = _files_under(base) - before
    outputs = server.data_dir / "outputs"
    assert all(p.parent == outputs and OUTPUT_NAME.fullmatch(p.name) for p in written), written
    assert not [p for p in base.rglob("*passwd*")]


@pytest.mark.parametrize(
    "filename", [pytest.param(b"caf\xe9 cr\xe8me.wav", id="latin-1"), pytest.param(b"\xff\xfe\xfd.wav", id="invalid")]
)
def test_file_name_that_is_not_utf8_is_a_clear_400(server: Server, filename: bytes, clean: None) -> None:
    """RFC 7578 part headers are UTF-8: another encoding is refused as unparseable, not taken for "no file"."""
    response = upload_named(server, "/transcribe/json", filename, AISHELL.read_bytes())
    assert "multipart body cannot be parsed" in assert_error(response, 400, "invalid_request")


def test_hostile_file_name_on_an_async_job(server: Server) -> None:
    """The job keeps its audio under its own id, whatever the upload was called, and cleans up after."""
    jobs_before = set((server.data_dir / "jobs").iterdir())
    response = upload_named(server, "/transcribe/async", b"../../../../etc/passwd", AISHELL.read_bytes())
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert [p.name for p in (server.data_dir / "jobs" / job_id).iterdir()] in ([], ["audio"])
    final = wait_for(lambda: (s := job_status(server, job_id))["status"] in ("completed", "failed") and s)
    assert final["status"] == "completed", final
    assert not [p for p in server.data_dir.parent.parent.rglob("*passwd*")]
    assert_no_leftovers(server, jobs_before)
