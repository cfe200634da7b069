"""The web page's vision tabs in a real headless Chromium (Debian's chromium, driven by Playwright) against the
real server on the tiny checkpoint: the tabs themselves, questions about an image and a video with follow-ups
that name the file's media_id instead of sending it again, OCR with its download and copy, a region dragged
over an image, a server whose model does not see, and the tabs in the page's three languages.

The checkpoint has random weights: its answers are gibberish, so the tests check the plumbing (what is sent,
what is shown), never the words. One keyed server and one browser serve the module; each test has a fresh
browser context, and fails on any console error or Content-Security-Policy violation (Page.close).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFont

from tests.e2e.test_web_page import Page, chromium_path, contrast_failures
from tests.support import Server, wait_for

pytestmark = pytest.mark.e2e
import playwright.sync_api as playwright_api  # noqa: E402

KEY = "vision-page-key"
STATIC = Path(__file__).resolve().parents[2] / "app" / "static"
TABS = ("tab_transcribe", "tab_ask", "tab_ocr", "tab_region")


def catalogue(language: str) -> dict[str, str]:
    """A language's strings, as the page loads them."""
    return dict(json.loads((STATIC / "i18n" / f"{language}.json").read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def vision_server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A keyed server with six-token answers."""
    data = tmp_path_factory.mktemp("web-vision") / "data"
    srv = Server(tiny_checkpoint, data, ["--api-key", KEY, "--max-new-tokens", "6"]).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module."""
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=chromium_path())
        yield launched
        launched.close()


def text_image(path: Path, text: str = "HELLO 42\nInvoice", size: tuple[int, int] = (640, 360)) -> Path:
    """A PNG of black text on white, rendered by Pillow."""
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).multiline_text((24, 24), text, fill="black", font=ImageFont.load_default(size=48))
    image.save(path, "PNG")
    return path


def open_page(browser: Any, server: Server, **context: Any) -> tuple[Page, Any]:
    """A fresh context with the key stored, and its page loaded."""
    view = Page(browser, server, key=KEY, **context)
    return view, view.open()


def fields_of(body: bytes) -> dict[str, str]:
    """A multipart body's parts: name -> value (a file part's value is its file name, marked file:)."""
    found: dict[str, str] = {}
    for head, value in re.findall(rb'Content-Disposition: form-data; ([^\r\n]*)\r\n(?:[^\r\n]+\r\n)*\r\n(.*?)\r\n--',
                                  body, re.S):  # fmt: skip
        name = re.search(rb'name="([^"]*)"', head)
        filename = re.search(rb'filename="([^"]*)"', head)
        assert name is not None
        found[name.group(1).decode()] = f"file:{filename.group(1).decode()}" if filename else value.decode()
    return found


class Sent:
    """The form fields of each POST the page sends to a route, as the browser sends them (intercepted with
    page.route: a request event carries no body once a file is in it). With `refuse` set, the server is not
    asked: the route answers with it instead."""

    def __init__(self, page: Any, url: Any) -> None:
        self.forms: list[dict[str, str]] = []
        self.urls: list[str] = []
        self.refuse: dict[str, Any] | None = None
        page.route(url, self._handle)

    def _handle(self, route: Any) -> None:
        if route.request.method == "POST":
            self.forms.append(fields_of(route.request.post_data_buffer or b""))
            self.urls.append(route.request.url)
        if self.refuse is not None:
            route.fulfill(**self.refuse)
        else:
            route.continue_()


def screenshot(page: Any, name: str) -> None:
    """With $SCREENSHOT_DIR set (docs/screenshots for the README), the page as it is now."""
    if folder := os.environ.get("SCREENSHOT_DIR"):
        page.screenshot(path=str(Path(folder) / name))


def shown_panel(page: Any) -> Any:
    """The tab panel shown (the hidden ones hold fields of the same names)."""
    return page.get_by_role("tabpanel")


def watch_disabled(page: Any, element_id: str) -> None:
    """Record every change of the element's disabled state in window.__disabled."""
    page.evaluate(
        """(id) => {
          window.__disabled = [];
          new MutationObserver(() => window.__disabled.push(document.getElementById(id).disabled))
            .observe(document.getElementById(id), {attributes: true, attributeFilter: ["disabled"]});
        }""",
        element_id,
    )


def test_tabs_switch_with_the_mouse_and_the_arrow_keys(browser: Any, vision_server: Server) -> None:
    """Four tabs; a click or Left/Right/Home/End chooses one, aria-selected and the roving tabindex follow,
    only its panel is shown, and the choice survives a reload."""
    view, page = open_page(browser, vision_server)
    tabs = page.get_by_role("tab")
    names = ["Transcribe", "Ask about an image or video", "Read text (OCR)", "Describe a region"]
    assert tabs.all_inner_texts() == names
    assert page.get_by_role("tablist", name="Tools").count() == 1

    def chosen() -> str:
        selected = [tab for tab in tabs.all() if tab.get_attribute("aria-selected") == "true"]
        assert len(selected) == 1
        assert [tab.get_attribute("tabindex") for tab in tabs.all()].count("0") == 1
        assert selected[0].get_attribute("tabindex") == "0"
        # Exactly one panel is shown: the chosen tab's, named by it.
        panel = page.get_by_role("tabpanel")
        assert panel.count() == 1 and panel.get_attribute("aria-labelledby") == selected[0].get_attribute("id")
        return selected[0].inner_text()

    assert chosen() == "Transcribe"
    assert page.get_by_label("Audio or video file").is_visible()
    page.get_by_role("tab", name="Read text (OCR)").click()
    assert chosen() == "Read text (OCR)"
    assert not page.get_by_label("Audio or video file").is_visible()
    assert page.get_by_role("button", name="Read the text").is_visible()
    for key, expected in (("ArrowRight", "Describe a region"), ("ArrowRight", "Transcribe"),
                          ("ArrowLeft", "Describe a region"), ("ArrowLeft", "Read text (OCR)"),
                          ("Home", "Transcribe"), ("End", "Describe a region")):  # fmt: skip
        page.keyboard.press(key)
        assert chosen() == expected, key
        assert page.evaluate("document.activeElement.textContent") == expected
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert chosen() == "Describe a region"
    view.close()


def test_the_tabs_speak_three_languages(browser: Any, vision_server: Server) -> None:
    """Switching the page's language renames the tabs and their list as each catalogue says, and no catalogue
    key shows through on a vision tab."""
    view, page = open_page(browser, vision_server)
    page.get_by_role("tab", name="Ask about an image or video").click()
    for language, switch in (("zh-Hant", "Language"), ("ru", "語言"), ("en", "Язык")):
        strings = catalogue(language)
        page.get_by_label(switch, exact=True).select_option(language)
        page.get_by_role("tab", name=strings["tab_transcribe"], exact=True).wait_for()
        assert page.get_by_role("tab").all_inner_texts() == [strings[key] for key in TABS]
        assert page.get_by_role("tablist").get_attribute("aria-label") == strings["tabs_label"]
        assert page.get_by_role("tab", selected=True).inner_text() == strings["tab_ask"]
        assert page.get_by_role("button", name=strings["ask_submit"], exact=True).is_visible()
        body = page.locator("main").inner_text()
        assert not re.search(r"\b[a-z]+_[a-z_]+\b", body), body
    view.close()


def test_ask_about_an_image_then_follow_up_without_sending_it_again(
    browser: Any, vision_server: Server, tmp_path: Path
) -> None:
    """An image is sent once; the follow-up names its media_id and sends no file; the conversation shows both
    turns as the server answered them. A file the server forgot is asked for again, and a new file starts a
    new conversation."""
    view, page = open_page(browser, vision_server)
    sent = Sent(page, "**/describe")
    page.get_by_role("tab", name="Ask about an image or video").click()
    page.get_by_label("Image or video file").set_input_files(str(text_image(tmp_path / "sign.png")))
    preview = page.locator("#ask-preview img")
    assert (preview.get_attribute("src") or "").startswith("blob:")
    wait_for(lambda: preview.evaluate("i => i.naturalWidth") == 640, 10, "the preview")
    assert page.get_by_role("img", name="Preview of sign.png").is_visible()
    conversation = page.locator("#ask-conversation > li")
    assert conversation.count() == 0 and page.get_by_text("No questions yet.").is_visible()

    ask = page.get_by_role("button", name="Ask", exact=True)
    watch_disabled(page, "ask-submit")
    with page.expect_response(lambda r: r.url.endswith("/describe")) as first_info:
        ask.click()
    first = first_info.value.json()
    wait_for(lambda: conversation.count() == 1, 30, "the first answer")
    # The button was disabled while the request ran, and nothing is left spinning.
    assert page.evaluate("window.__disabled") == [True, False] and ask.is_enabled()
    assert page.locator("#ask-busy").is_hidden()
    assert conversation.nth(0).locator(".question .said").text_content() == "Describe this image."
    assert conversation.nth(0).locator(".answer .said").text_content() == first["answer"]
    media_id = first["media"]["media_id"]
    assert sent.forms == [{"file": "file:sign.png", "question": ""}]

    shown_panel(page).get_by_label("Question (optional)").fill("What number is written?")
    with page.expect_response(lambda r: r.url.endswith("/describe")) as second_info:
        ask.click()
    second = second_info.value.json()
    wait_for(lambda: conversation.count() == 2, 30, "the second answer")
    assert second["turn"] == 2 and second["media"]["media_id"] == media_id
    assert sent.forms[1] == {"media_id": media_id, "question": "What number is written?"}
    said = conversation.locator(".said").all_text_contents()
    assert said == ["Describe this image.", first["answer"], "What number is written?", second["answer"]]
    assert shown_panel(page).get_by_label("Question (optional)").input_value() == ""
    assert contrast_failures(page) == []
    screenshot(page, "desktop-vision-ask.png")

    # The server forgot the file (as an hour after its last use): the page says so and asks for it again.
    forgotten = {"status": "error", "error": {"code": "media_not_found", "message": f"no media '{media_id}'"}}
    sent.refuse = {"status": 404, "json": forgotten}
    ask.click()
    page.get_by_text("The server no longer keeps this file").wait_for()
    assert page.locator("#ask-file-info").text_content() == "" and conversation.count() == 2
    assert sent.forms[2] == {"media_id": media_id, "question": ""}
    sent.refuse = None
    ask.click()
    page.get_by_text("Choose an image or a video first.").wait_for()
    assert len(sent.forms) == 3
    shown_panel(page).get_by_label("Image or video file").set_input_files(str(text_image(tmp_path / "other.png")))
    assert conversation.count() == 0
    ask.click()
    wait_for(lambda: conversation.count() == 1, 30, "the new conversation's answer")
    assert sent.forms[3:] == [{"file": "file:other.png", "question": ""}]
    view.close("404")


def test_ask_about_a_video(browser: Any, vision_server: Server, tmp_path: Path) -> None:
    """A 2 s mp4 is previewed in a video element from a blob: URL and described as a video."""
    clip = tmp_path / "clip.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=10", "-t", "2",
         "-pix_fmt", "yuv420p", str(clip)],
        check=True,
    )  # fmt: skip
    view, page = open_page(browser, vision_server)
    page.get_by_role("tab", name="Ask about an image or video").click()
    page.get_by_label("Image or video file").set_input_files(str(clip))
    video = page.locator("#ask-preview video")
    assert (video.get_attribute("src") or "").startswith("blob:")
    wait_for(lambda: video.evaluate("v => v.readyState") >= 1, 10, "the video's metadata")
    assert round(video.evaluate("v => v.duration")) == 2
    with page.expect_response(lambda r: r.url.endswith("/describe")) as info:
        page.get_by_role("button", name="Ask", exact=True).click()
    body = info.value.json()
    assert body["media"]["kind"] == "video" and body["media"]["frames"] >= 2
    turn = page.locator("#ask-conversation > li")
    turn.wait_for()
    assert turn.locator(".said").all_text_contents() == ["Describe this video.", body["answer"]]
    view.close()


def test_ocr_shows_the_text_downloads_and_copies_it(browser: Any, vision_server: Server, tmp_path: Path) -> None:
    """The text is shown read-only; Download .txt saves it under the server's ocr_result_<YYYYMMDDHHMMSS>.txt
    name without asking the server again; Copy text copies it."""
    view, page = open_page(browser, vision_server, permissions=["clipboard-read", "clipboard-write"])
    sent = Sent(page, re.compile(r"/ocr(\?|$)"))
    page.get_by_role("tab", name="Read text (OCR)").click()
    shown_panel(page).get_by_label("Image file").set_input_files(str(text_image(tmp_path / "scan.png")))
    page.locator("#ocr-preview img").wait_for()
    text_box = page.get_by_label("Text found")
    assert not text_box.is_visible()
    with page.expect_response(lambda r: "/ocr?format=json" in r.url) as info:
        page.get_by_role("button", name="Read the text").click()
    body = info.value.json()
    text_box.wait_for()
    # A textarea's value has its line breaks as \n.
    assert text_box.input_value() == re.sub(r"\r\n?", "\n", body["text"])
    assert text_box.get_attribute("readonly") is not None
    assert sent.forms == [{"file": "file:scan.png"}]

    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download .txt").click()
    download = download_info.value
    assert download.suggested_filename == body["file_name"]
    assert re.fullmatch(r"ocr_result_\d{14}\.txt", download.suggested_filename), download.suggested_filename
    assert Path(download.path()).read_text(encoding="utf-8") == body["text"] + "\n"
    assert len(sent.forms) == 1  # the text shown is saved: the model is not asked again

    page.get_by_role("button", name="Copy text").click()
    page.get_by_text("The text was copied.").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == body["text"]
    view.close()


def drag(page: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
    """A mouse drag from one point of the page to another."""
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=6)
    page.mouse.up()


def box_of(page: Any) -> list[int]:
    """The region field's x1,y1,x2,y2."""
    return [int(v) for v in page.get_by_label("Region: x1,y1,x2,y2 in the image's pixels").input_value().split(",")]


def test_a_dragged_region_is_described_and_a_bad_box_is_refused(
    browser: Any, vision_server: Server, tmp_path: Path
) -> None:
    """A mouse drag over the scaled-down image fills the box in the image's own pixels (either direction,
    clamped inside the image) and draws it; the region is described; a typed box the server refuses shows its
    400 message naming box, after the page's own words."""
    view, page = open_page(browser, vision_server)
    page.get_by_role("tab", name="Describe a region").click()
    shown_panel(page).get_by_label("Image file").set_input_files(
        str(text_image(tmp_path / "wide.png", size=(1600, 1000)))
    )
    image = page.get_by_role("img", name="Preview of wide.png")
    wait_for(lambda: image.evaluate("i => i.complete && i.naturalWidth") == 1600, 10, "the image")
    image.scroll_into_view_if_needed()
    shown = image.bounding_box()
    # Scaled down to fit, with room around it for drags that leave it.
    assert shown is not None and shown["width"] < 1000 and shown["x"] > 20, shown
    assert shown["y"] > 20 and shown["y"] + shown["height"] + 50 < 900, shown
    natural = (1600, 1000)

    def at(fx: float, fy: float) -> tuple[float, float]:
        return shown["x"] + fx * shown["width"], shown["y"] + fy * shown["height"]

    drag(page, at(0.2, 0.25), at(0.6, 0.7))
    expected = [0.2 * natural[0], 0.25 * natural[1], 0.6 * natural[0], 0.7 * natural[1]]
    assert all(abs(got - want) <= 2 for got, want in zip(box_of(page), expected, strict=True)), box_of(page)
    rect = page.locator("#region-rect").bounding_box()
    assert rect is not None
    drawn = [rect["x"], rect["y"], rect["x"] + rect["width"], rect["y"] + rect["height"]]
    assert all(abs(a - b) <= 2 for a, b in zip(drawn, [*at(0.2, 0.25), *at(0.6, 0.7)], strict=True)), drawn
    # From bottom right to top left, and past the image's corner: still x1 < x2, y1 < y2, inside the image.
    drag(page, at(0.5, 0.5), (shown["x"] - 20, shown["y"] - 20))
    assert all(abs(got - want) <= 2 for got, want in zip(box_of(page), [0, 0, 800, 500], strict=True)), box_of(page)
    drag(page, at(0.75, 0.8), (shown["x"] + shown["width"] + 50, shown["y"] + shown["height"] + 50))
    x1, y1, x2, y2 = box_of(page)
    assert abs(x1 - 1200) <= 2 and abs(y1 - 800) <= 2 and (x2, y2) == natural

    shown_panel(page).get_by_label("Question (optional)").fill("What is in the corner?")
    with page.expect_response(lambda r: r.url.endswith("/describe-region")) as info:
        page.get_by_role("button", name="Describe the region").click()
    body = info.value.json()
    assert body["box"] == [x1, y1, x2, y2]
    answer = page.get_by_role("region", name="Answer")
    answer.wait_for()
    assert answer.locator("#region-answer-text").text_content() == body["answer"]
    assert "What is in the corner?" in answer.inner_text()
    screenshot(page, "desktop-vision-region.png")

    page.get_by_label("Region: x1,y1,x2,y2 in the image's pixels").fill("5,5,1,1")
    assert page.locator("#region-rect").is_hidden()
    page.get_by_role("button", name="Describe the region").click()
    error = page.get_by_role("alert").filter(has_text="box")
    error.wait_for()
    message = error.inner_text()
    assert re.fullmatch(r"The server did not accept a value\. \(box: must be x1,y1,x2,y2.*x1 >= x2\)", message), message
    assert page.get_by_role("button", name="Describe the region").is_enabled()
    assert page.locator("#region-busy").is_hidden()
    view.close("400")


def test_a_touch_drag_marks_a_region_on_a_phone(browser: Any, vision_server: Server, tmp_path: Path) -> None:
    """On a phone, a finger's drag (touch pointer events) marks the region; nothing scrolls sideways."""
    view, page = open_page(browser, vision_server, viewport={"width": 390, "height": 844}, is_mobile=True,
                           has_touch=True)  # fmt: skip
    page.get_by_role("tab", name="Describe a region").click()
    shown_panel(page).get_by_label("Image file").set_input_files(
        str(text_image(tmp_path / "tall.png", size=(600, 900)))
    )
    image = page.get_by_role("img", name="Preview of tall.png")
    wait_for(lambda: image.evaluate("i => i.complete && i.naturalWidth") == 600, 10, "the image")
    image.scroll_into_view_if_needed()
    shown = image.bounding_box()
    assert shown is not None
    cdp = view.context.new_cdp_session(page)
    # One finger from a tenth of the way across and down to the middle, then lifted.
    for kind, f in (("touchStart", 0.1), ("touchMove", 0.3), ("touchMove", 0.5), ("touchEnd", None)):
        points = [] if f is None else [{"x": shown["x"] + shown["width"] * f, "y": shown["y"] + shown["height"] * f}]
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})
    expected = [60, 90, 300, 450]
    assert all(abs(got - want) <= 2 for got, want in zip(box_of(page), expected, strict=True)), box_of(page)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    view.close()


def test_a_server_that_does_not_see(browser: Any, vision_server: Server) -> None:
    """/health's upload.sees false: the vision tabs stay, say that this server's model takes no images or video,
    and their forms are disabled; the transcription tab is untouched."""
    view = Page(browser, vision_server, key=KEY)

    def blind(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        body["upload"]["sees"] = False
        route.fulfill(response=response, json=body)

    view.page.route("**/health", blind)
    page = view.open()
    assert page.get_by_role("tab").count() == 4
    page.get_by_role("tab", name="Describe a region").click()
    notice = shown_panel(page).get_by_text("This server's model does not take images or video")
    wait_for(lambda: notice.is_visible(), 10, "the notice")
    assert shown_panel(page).get_by_label("Image file").is_disabled()
    assert page.get_by_role("button", name="Describe the region").is_disabled()
    page.get_by_role("tab", name="Ask about an image or video").click()
    assert page.get_by_label("Image or video file").is_disabled() and notice.is_visible()
    page.get_by_role("tab", name="Transcribe").click()
    assert page.get_by_label("Audio or video file").is_enabled() and notice.count() == 0
    view.close()
