"""The web page at GET / in a real headless Chromium (Debian's chromium, driven by Playwright) against the real
server on the tiny checkpoint: upload, progress, jobs, the player, downloads, cancel, the API key, the page's
languages, the microphone, and screenshots of the main states on a desktop and a phone.

One keyed server and one browser serve the whole module; each test has a fresh browser context (its own
localStorage and IndexedDB), so tests do not see each other's jobs.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import srt
import webvtt

from tests.support import JFK, Server, wait_for

pytestmark = pytest.mark.e2e
import playwright.sync_api as playwright_api  # noqa: E402

KEY = "page-test-key"
# A second client's key: it sees none of the first one's jobs.
OTHER_KEY = "page-test-other-key"
# Small enough that a generated file can exceed it, large enough for every recording the tests upload.
MAX_UPLOAD = 6_000_000
STORE_KEY = "qwen-asr.api-key"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
CONTRAST = (Path(__file__).parent / "contrast.js").read_text(encoding="utf-8")


def chromium_path() -> str:
    """$CHROMIUM, else chromium or chromium-browser on the PATH (scripts/setup.sh installs Debian's chromium)."""
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and (found := shutil.which(candidate)):
            return found
    pytest.fail("no Chromium found: run scripts/setup.sh (it installs Debian's chromium) or set CHROMIUM")


@pytest.fixture(scope="module")
def web_server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A keyed server with short generations, one segment per generate call (so a job's progress moves in
    steps a test can watch) and a small upload limit."""
    data = tmp_path_factory.mktemp("web") / "data"
    args = [
        "--api-key",
        f"{KEY},{OTHER_KEY}",
        "--max-new-tokens",
        "24",
        "--batch-size",
        "1",
        "--max-upload-size",
        str(MAX_UPLOAD),
    ]
    srv = Server(tiny_checkpoint, data, args).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """jfk.flac as 16-bit WAV, which Chromium's fake microphone plays in a loop."""
    out = tmp_path_factory.mktemp("mic") / "speech.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(JFK), "-ar", "48000", str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def browser(speech_wav: Path) -> Iterator[Any]:
    """One headless Chromium for the module, with a fake microphone that speaks jfk.flac."""
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=chromium_path(),
            args=[
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-audio-capture={speech_wav}",
            ],
        )
        yield launched
        launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: $SCREENSHOT_DIR (docs/screenshots refreshes the README's), else a temp dir."""
    out = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path / "shots")
    out.mkdir(parents=True, exist_ok=True)
    return out


class Page:
    """A page in a fresh browser context, recording console errors and CSP violations as it goes."""

    def __init__(self, browser: Any, server: Server, *, key: str | None = KEY, **context: Any) -> None:
        self.context = browser.new_context(accept_downloads=True, **{"viewport": DESKTOP, **context})
        if key is not None:
            # Stored before the page's script runs, as if it had been entered once before.
            self.context.add_init_script(f"localStorage.setItem({json.dumps(STORE_KEY)}, {json.dumps(key)})")
        # Every value the upload bar shows, in order, from the first to the last.
        self.context.add_init_script(
            """
            window.__uploadValues = [];
            new MutationObserver(() => {
              const bar = document.getElementById("upload-bar");
              if (bar) window.__uploadValues.push(Number(bar.getAttribute("aria-valuenow")));
            }).observe(document, {subtree: true, attributes: true, attributeFilter: ["aria-valuenow"]});
            """
        )
        self.page = self.context.new_page()
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(m.text))
        self.page.on("pageerror", lambda e: self.problems.append(str(e)))
        # Questions the page asks (deleting a transcript), answered yes and kept for the test to read.
        self.dialogs: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.accept()))
        self.server = server

    def open(self) -> Any:
        """Load the page and wait until its script has started."""
        self.page.goto(self.server.url + "/")
        self.page.wait_for_selector("body[data-ready=true]")
        return self.page

    def close(self, *expected: str) -> None:
        """Close the context; the page must have logged no error and broken no policy. `expected` names the
        statuses a test provoked on purpose (a wrong key's 401), which Chromium logs as failed resources."""
        self.context.close()
        unexpected = [p for p in self.problems if not any(f"status of {status}" in p for status in expected)]
        assert not unexpected, unexpected

    def job(self, name: str) -> Any:
        """The jobs list's item for an upload name."""
        jobs = self.page.get_by_role("list", name="Jobs")
        return jobs.get_by_role("listitem").filter(has=self.page.get_by_role("button", name=name, exact=True))

    def wait_state(self, name: str, state: str, timeout: float = 120) -> None:
        """Wait until the job's state reads `state`."""
        badge = self.job(name).locator(".job-state")
        wait_for(lambda: badge.text_content() == state, timeout, f"{name} to be {state}", interval=0.2)


def fetch_result(server: Server, job_id: str, fmt: str) -> requests.Response:
    """The job's result through the API, as any client fetches it."""
    response = requests.get(
        f"{server.url}/status/{job_id}/result", params={"format": fmt}, headers={"X-API-Key": KEY}, timeout=30
    )
    response.raise_for_status()
    return response


def stored_jobs(page: Any) -> list[dict[str, Any]]:
    """The jobs this browser keeps."""
    return list(json.loads(page.evaluate("localStorage.getItem('qwen-asr.jobs') || '[]'")))


def test_page_is_served_with_its_policy_and_needs_no_key(web_server: Server) -> None:
    """The page and its files are open; the API still needs the key; inline script is forbidden."""
    page = requests.get(web_server.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert "Content-Disposition" not in page.headers
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        answer = requests.get(web_server.url + asset, timeout=10)
        assert answer.status_code == 200, asset
        assert answer.headers["Content-Security-Policy"] == policy
    # A path that climbs out of the static folder, sent as it is (a client library would normalise it).
    connection = http.client.HTTPConnection("127.0.0.1", web_server.port, timeout=10)
    connection.request("GET", "/static/../../app/__init__.py")
    climbed = connection.getresponse()
    assert climbed.status == 404 and b"create_app" not in climbed.read()
    connection.close()
    missing = requests.get(web_server.url + "/static/nothing.js", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    api = requests.get(web_server.url + "/status/0123", timeout=10)
    assert api.status_code == 401
    assert api.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_upload_progress_transcript_player_and_downloads(
    browser: Any, web_server: Server, shots: Path, tmp_path: Path
) -> None:
    """The main path, on a throttled connection so that the upload's progress can be watched."""
    view = Page(browser, web_server, permissions=["clipboard-read", "clipboard-write"])
    page = view.open()
    assert page.get_by_role("list", name="Jobs").count() == 1
    status = page.locator("#server-status")
    shown = r"Model not loaded \(it loads on first use\)|Model loaded · device cpu"
    wait_for(lambda: re.fullmatch(shown, status.inner_text().strip()), 10, "the model's status")
    page.get_by_text("Options").click()
    assert page.get_by_label("Segment length (seconds)").input_value() in ("60", "60.0")
    assert page.get_by_label("Skip silence and music (speech detection)").is_checked()
    page.screenshot(path=str(shots / "desktop-empty.png"))

    # About 4 s for jfk.flac's 1.1 MB: the bar must pass through values between 0 and 100.
    cdp = view.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 5, "downloadThroughput": -1, "uploadThroughput": 300_000},
    )
    page.get_by_label("Audio or video file").set_input_files(str(JFK))
    page.get_by_label("Word timestamps in the JSON download").check()
    page.get_by_role("button", name="Transcribe").click()
    bar = page.get_by_role("progressbar", name="Upload progress")
    bar.wait_for()
    wait_for(lambda: 10 < int(bar.get_attribute("aria-valuenow") or 0) < 90, 30, "the upload half-way")
    assert re.search(r"of 1\.2\sMB sent · [\d.]+\skB/s", page.locator("#upload-progress-label").text_content() or "")
    page.screenshot(path=str(shots / "desktop-uploading.png"))
    unthrottled = {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
    cdp.send("Network.emulateNetworkConditions", unthrottled)

    view.wait_state("jfk.flac", "Completed")
    values = page.evaluate("window.__uploadValues")
    assert values == sorted(values) and values[-1] == 100 and any(0 < v < 100 for v in values), values
    transcript = page.get_by_role("region", name="Transcript", exact=True)
    transcript.locator(".segment").first.wait_for()
    job_id = stored_jobs(page)[0]["id"]
    result = fetch_result(web_server, job_id, "json").json()
    segments = transcript.locator(".segment")
    assert segments.count() == len(result["segments"]) >= 1
    for index, segment in enumerate(result["segments"]):
        assert segments.nth(index).locator(".text").text_content() == segment["text"]
    page.get_by_text("Options").click()
    page.screenshot(path=str(shots / "desktop-result.png"), full_page=True)

    # Clicking a line seeks the player there, and the line is marked as the one playing.
    player = page.locator("#player-box audio")
    wait_for(lambda: page.evaluate("document.querySelector('#player-box audio').readyState") >= 1, 30, "the player")
    last = result["segments"][-1]
    segments.last.get_by_role("button").click()
    wait_for(lambda: abs(player.evaluate("a => a.currentTime") - last["start"]) < 0.5, 10, "the seek")
    page.evaluate("document.querySelector('#player-box audio').pause()")
    wait_for(lambda: segments.last.get_attribute("aria-current") == "true", 10, "the line to be marked")
    words = segments.last.locator(".word")
    if words.count():
        words.last.click()
        word_start = float(words.last.get_attribute("data-start") or 0)
        wait_for(lambda: abs(player.evaluate("a => a.currentTime") - word_start) < 0.5, 10, "the word seek")

    # Every download is named after the upload and parses as its format.
    downloaded: dict[str, str] = {}
    for fmt in ("TXT", "JSON", "SRT", "VTT"):
        with page.expect_download() as info:
            page.get_by_role("button", name=fmt, exact=True).click()
        download = info.value
        assert download.suggested_filename == f"jfk.{fmt.lower()}"
        downloaded[fmt] = Path(download.path()).read_text(encoding="utf-8")
    assert downloaded["TXT"].strip() == result["transcription"].strip()
    assert json.loads(downloaded["JSON"])["segments"][0]["words"]
    assert list(srt.parse(downloaded["SRT"]))
    vtt_path = tmp_path / "downloaded.vtt"
    vtt_path.write_text(downloaded["VTT"], encoding="utf-8")
    assert webvtt.read(str(vtt_path)).captions is not None

    page.get_by_role("button", name="Copy text").click()
    page.get_by_text("The text was copied.").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == result["transcription"]

    # A reload keeps the job, shows its result again, and plays the file kept in this browser.
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    view.job("jfk.flac").wait_for()
    transcript.locator(".segment").first.wait_for()
    page.locator("#player-box audio").wait_for()

    # Deleting a transcript asks first, then removes it here and on the server.
    page.get_by_role("button", name="Delete jfk.flac").click()
    wait_for(lambda: view.job("jfk.flac").count() == 0, 10, "the job to leave the list")
    assert view.dialogs and "jfk.flac" in view.dialogs[0]
    gone = requests.get(f"{web_server.url}/status/{job_id}", headers={"X-API-Key": KEY}, timeout=10)
    assert gone.status_code == 404
    assert page.get_by_role("region", name="Transcript", exact=True).count() == 0
    view.close()


def test_cancel_a_running_job_then_delete_it(browser: Any, web_server: Server, tmp_path: Path) -> None:
    """A long file cut into many short segments: cancel it while it runs, then delete it. Its name, which looks
    like markup, is shown as text."""
    name = '<img src=x onerror="window.__xss=1">.ogg'
    audio = tmp_path / "long.ogg"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-stream_loop", "-1", "-i", str(JFK), "-t", "120", "-ac", "1",
         "-c:a", "libopus", "-b:a", "24k", str(audio)],
        check=True,
    )  # fmt: skip
    view = Page(browser, web_server)
    page = view.open()
    page.get_by_text("Options").click()
    page.get_by_label("Skip silence and music (speech detection)").uncheck()
    page.get_by_label("Segment length (seconds)").fill("2")
    page.get_by_label("Audio or video file").set_input_files(
        {"name": name, "mimeType": "audio/ogg", "buffer": audio.read_bytes()}
    )
    page.get_by_role("button", name="Transcribe").click()
    item = view.job(name)
    item.wait_for()
    detail = item.locator(".job-detail")
    wait_for(lambda: re.search(r"Segments: [1-9]\d* of \d+", detail.text_content() or ""), 120, "some progress")
    bar = item.get_by_role("progressbar")
    assert 0 < int(bar.get_attribute("aria-valuenow") or 0) < 100
    assert re.search(r"elapsed · about \d+:\d\d left", detail.text_content() or "")
    item.get_by_role("button", name=f"Cancel {name}").click()
    view.wait_state(name, "Cancelled", 30)
    job_id = stored_jobs(page)[0]["id"]
    status = requests.get(f"{web_server.url}/status/{job_id}", headers={"X-API-Key": KEY}, timeout=10).json()
    progress = status["progress"]
    assert status["status"] == "cancelled" and progress["segments_done"] < progress["segments_total"]
    item.get_by_role("button", name=f"Delete {name}").click()
    wait_for(lambda: item.count() == 0, 10, "the job to leave the list")
    assert requests.get(f"{web_server.url}/status/{job_id}", headers={"X-API-Key": KEY}, timeout=10).status_code == 404
    assert page.evaluate("window.__xss") is None and page.locator("#jobs img").count() == 0
    view.close()


def test_a_dropped_video_plays_with_its_subtitles(browser: Any, web_server: Server, tmp_path: Path) -> None:
    """A WebM video dropped on the page: transcribed, played in a video element whose subtitle track is the
    job's VTT (a blob: URL the policy allows), with the VTT's cues."""
    video = tmp_path / "clip.webm"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "color=c=navy:s=320x240:d=6", "-i", str(JFK),
         "-t", "6", "-c:v", "libvpx", "-b:v", "50k", "-c:a", "libopus", str(video)],
        check=True,
    )  # fmt: skip
    view = Page(browser, web_server)
    page = view.open()
    dropped = page.evaluate_handle(
        """([name, base64]) => {
          const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
          const transfer = new DataTransfer();
          transfer.items.add(new File([bytes], name, {type: "video/webm"}));
          return transfer;
        }""",
        ["clip.webm", base64.b64encode(video.read_bytes()).decode()],
    )
    page.dispatch_event("#jobs-panel", "drop", {"dataTransfer": dropped})
    assert "clip.webm" in (page.locator("#file-info").text_content() or "")
    page.get_by_role("button", name="Transcribe").click()
    view.wait_state("clip.webm", "Completed")
    player = page.locator("#player-box video")
    player.wait_for()
    job_id = stored_jobs(page)[0]["id"]
    cues = fetch_result(web_server, job_id, "vtt").text.count(" --> ")
    assert cues >= 1
    wait_for(
        lambda: player.evaluate("v => v.textTracks[0] && v.textTracks[0].cues && v.textTracks[0].cues.length") == cues,
        20,
        "the subtitle cues",
    )
    assert player.evaluate("v => v.textTracks[0].mode") == "showing"
    view.close()


def test_two_tabs_share_one_list(browser: Any, web_server: Server) -> None:
    """Two tabs of the page: a job submitted in one appears in the other; deleted in the other, it stays
    deleted in the first, whose own writes do not bring it back."""
    view = Page(browser, web_server)
    first = view.open()
    second = view.context.new_page()
    second.goto(web_server.url + "/")
    second.wait_for_selector("body[data-ready=true]")
    first.get_by_label("Audio or video file").set_input_files(str(JFK))
    first.get_by_role("button", name="Transcribe").click()
    view.wait_state("jfk.flac", "Completed")
    in_second = second.get_by_role("list", name="Jobs").get_by_role("listitem")
    wait_for(lambda: in_second.count() == 1, 10, "the job in the second tab")
    second.on("dialog", lambda d: d.accept())
    in_second.get_by_role("button", name="Delete jfk.flac").click()
    wait_for(lambda: view.job("jfk.flac").count() == 0, 10, "the job to leave the first tab")
    # The first tab writes its list (a new upload), and the deleted job stays deleted.
    first.get_by_label("Audio or video file").set_input_files(
        {"name": "second.flac", "mimeType": "audio/flac", "buffer": JFK.read_bytes()}
    )
    first.get_by_role("button", name="Transcribe").click()
    view.wait_state("second.flac", "Completed")
    assert [job["name"] for job in stored_jobs(first)] == ["second.flac"]
    wait_for(lambda: in_second.count() == 1, 10, "the second job in the second tab")
    view.close()


def test_api_key_is_asked_once_and_a_wrong_one_is_refused(browser: Any, web_server: Server) -> None:
    """No key stored: the page asks; a wrong key is refused with a message; the right one is kept. Another
    client's key does not see this key's job, and the job is back when the key is."""
    view = Page(browser, web_server, key=None)
    page = view.open()
    key_input = page.get_by_label("API key", exact=True)
    key_input.wait_for()
    assert page.evaluate("document.activeElement.id") == "api-key"
    key_input.fill("not-the-key")
    page.get_by_role("button", name="Save key").click()
    page.get_by_text("This key was not accepted by the server.").wait_for()
    assert page.evaluate(f"localStorage.getItem('{STORE_KEY}')") is None
    key_input.fill(KEY)
    page.get_by_role("button", name="Save key").click()
    key_input.wait_for(state="hidden")
    assert page.evaluate(f"localStorage.getItem('{STORE_KEY}')") == KEY
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.get_by_label("Audio or video file").set_input_files(str(JFK))
    page.get_by_role("button", name="Transcribe").click()
    view.wait_state("jfk.flac", "Completed")
    assert not key_input.is_visible()

    for key, state in ((OTHER_KEY, "Gone"), (KEY, "Completed")):
        page.get_by_role("button", name="Change API key").click()
        key_input.fill(key)
        page.get_by_role("button", name="Save key").click()
        key_input.wait_for(state="hidden")
        view.wait_state("jfk.flac", state, 20)
    # The wrong key's 401, and the other key's 404 for the job it cannot see.
    view.close("401", "404")


def test_files_the_server_would_refuse(browser: Any, web_server: Server, tmp_path: Path) -> None:
    """The size limit from /health and emptiness are checked in the browser (a clear message, no upload at all);
    a file that is not audio is refused by the server, and the page says so in its own words."""
    view = Page(browser, web_server)
    page = view.open()
    page.get_by_text(re.compile(r"At most 6\sMB")).wait_for()
    uploads: list[str] = []
    page.on("request", lambda r: r.method == "POST" and uploads.append(r.url))
    page.get_by_label("Audio or video file").set_input_files(
        {"name": "big.wav", "mimeType": "audio/wav", "buffer": b"\0" * (MAX_UPLOAD + 1)}
    )
    page.get_by_role("button", name="Transcribe").click()
    page.get_by_text(re.compile(r"This file is 6\sMB; the server accepts at most 6\sMB\.")).wait_for()
    page.get_by_label("Audio or video file").set_input_files(
        {"name": "empty.wav", "mimeType": "audio/wav", "buffer": b""}
    )
    page.get_by_role("button", name="Transcribe").click()
    page.get_by_text("This file is empty.").wait_for()
    assert uploads == []
    # What the server refuses is said in the page's words, with the server's after them.
    page.get_by_label("Audio or video file").set_input_files(
        {"name": "notes.mp3", "mimeType": "audio/mpeg", "buffer": b"not audio at all\n" * 64}
    )
    page.get_by_role("button", name="Transcribe").click()
    page.get_by_text(re.compile(r"^The server cannot read this file as audio or video\. \(.+\)$")).wait_for()
    assert len(uploads) == 1 and stored_jobs(page) == []
    view.close("415")


def test_the_page_speaks_three_languages(browser: Any, web_server: Server) -> None:
    """The browser's language picks the catalogue; the switch changes every string and is remembered."""
    view = Page(browser, web_server, locale="ru-RU")
    page = view.open()
    assert page.evaluate("document.documentElement.lang") == "ru"
    page.get_by_role("button", name="Расшифровать").wait_for()
    page.get_by_label("Аудио- или видеофайл").wait_for()
    page.get_by_label("Язык", exact=True).select_option("zh-Hant")
    page.get_by_role("button", name="轉錄").wait_for()
    assert page.get_by_role("list", name="工作").count() == 1
    page.get_by_label("音訊或影片檔案").wait_for()
    assert page.evaluate("document.documentElement.lang") == "zh-Hant"
    assert page.title() == "語音轉文字"
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.get_by_role("button", name="轉錄").wait_for()
    # No catalogue key shows through: every visible string was found.
    body = page.locator("body").inner_text()
    assert not re.search(r"\b[a-z]+_[a-z_]+\b", body), body
    page.get_by_label("語言", exact=True).select_option("en")
    page.get_by_role("button", name="Transcribe").wait_for()
    view.close()


def test_record_from_the_microphone(browser: Any, web_server: Server) -> None:
    """MediaRecorder on the fake microphone (playing jfk.flac); the recording is transcribed as an upload."""
    view = Page(browser, web_server, permissions=["microphone"])
    page = view.open()
    page.get_by_role("button", name="Record from the microphone").click()
    stop = page.get_by_role("button", name="Stop recording and transcribe")
    stop.wait_for()
    time.sleep(3)
    stop.click()
    item = page.get_by_role("list", name="Jobs").get_by_role("listitem").first
    item.wait_for()
    name = item.locator(".job-name").text_content() or ""
    assert re.fullmatch(r"recording-\d{8}-\d{6}\.webm", name), name
    view.wait_state(name, "Completed")
    job_id = stored_jobs(page)[0]["id"]
    result = fetch_result(web_server, job_id, "json").json()
    # The fake microphone speaks, so speech detection keeps something of the three seconds.
    assert 2.0 < result["duration"] < 10 and result["segments"]
    view.close()


def contrast_failures(page: Any) -> list[str]:
    """Visible text whose contrast with its background is under WCAG AA's 4.5:1 (3:1 for large text)."""
    return list(page.evaluate(CONTRAST))


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_phone_layout_contrast_and_keyboard(browser: Any, web_server: Server, shots: Path, scheme: str) -> None:
    """On a phone nothing scrolls sideways; text contrast passes AA in both themes; the keyboard reaches the
    controls in order; and a finished job shows its transcript under the player."""
    view = Page(browser, web_server, viewport=PHONE, is_mobile=True, has_touch=True, color_scheme=scheme)
    page = view.open()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert contrast_failures(page) == []
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to the content"
    page.get_by_label("Audio or video file").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.tagName") == "SUMMARY"
    page.get_by_label("Audio or video file").set_input_files(str(JFK))
    page.get_by_label("Audio or video file").focus()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Transcribe"
    page.keyboard.press("Enter")
    view.wait_state("jfk.flac", "Completed")
    page.get_by_role("region", name="Transcript", exact=True).locator(".segment").first.wait_for()
    page.locator("#player-box audio").wait_for()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert contrast_failures(page) == []
    if scheme == "light":
        page.screenshot(path=str(shots / "phone-result.png"), full_page=True)
    view.close()
