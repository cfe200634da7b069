"""The web page's files: one catalogue per language with the same strings, every string the page uses in
each, and an HTML file that the Content-Security-Policy lets run as it is (no inline script or style)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from app.errors import HTTP_CODES, ServiceError

STATIC = Path(__file__).resolve().parents[2] / "app" / "static"
LANGUAGES = ("en", "zh-Hant", "ru")
# Keys the script builds from a state: t(`model_${state}`), t(`state_${state}`).
BUILT_KEYS = [f"model_{s}" for s in ("unloaded", "loading", "loaded", "error")] + [
    f"state_{s}" for s in ("queued", "processing", "completed", "failed", "cancelled", "gone")
]


def scripts() -> str:
    """The page's scripts (app.js and the modules it imports), one after another."""
    return "\n".join(path.read_text(encoding="utf-8") for path in sorted(STATIC.glob("*.js")))


def catalogue(language: str) -> dict[str, str]:
    """A language's strings."""
    return dict(json.loads((STATIC / "i18n" / f"{language}.json").read_text(encoding="utf-8")))


class Page(HTMLParser):
    """index.html's translated elements (key -> inline text), script and style tags, and attributes."""

    def __init__(self) -> None:
        super().__init__()
        # (key, inline text) of each translated element, in order.
        self.texts: list[tuple[str, str]] = []
        self.labels: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append((tag, found))
        if (key := found.get("data-i18n-label")) is not None:
            self.labels.append(key)
        key = found.get("data-i18n")
        if key is not None:
            self.texts.append((key, ""))
        self._open.append(key or "")

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open and self._open[-1]:
            key, text = self.texts[-1]
            self.texts[-1] = (key, text + data)


@pytest.fixture(scope="module")
def page() -> Page:
    parsed = Page()
    parsed.feed((STATIC / "index.html").read_text(encoding="utf-8"))
    return parsed


def test_every_language_has_the_same_strings_with_the_same_placeholders() -> None:
    """Each catalogue has exactly English's keys, each string the same {placeholders}, none left empty."""
    english = catalogue("en")
    for language in LANGUAGES:
        strings = catalogue(language)
        assert set(strings) == set(english), language
        for key, text in strings.items():
            assert text.strip(), (language, key)
            assert set(re.findall(r"\{\w+\}", text)) == set(re.findall(r"\{\w+\}", english[key])), (language, key)


def test_every_string_the_page_uses_is_in_the_catalogues(page: Page) -> None:
    """Keys of the HTML and of the scripts' t("...") calls, and the keys they build, are all defined."""
    script = scripts()
    used = set(re.findall(r"\bt\(\"([a-z_0-9]+)\"", script)) | {key for key, _ in page.texts} | set(page.labels)
    used |= set(BUILT_KEYS) | {key for key in catalogue("en") if key.startswith("error_") and key != "error_status"}
    for pair in re.findall(r"\bt\([^\"\n]*\? \"([a-z_]+)\" : \"([a-z_]+)\"\)", script):  # t(x ? "a" : "b")
        used |= set(pair)
    assert len(used) > 60
    english = catalogue("en")
    assert sorted(used - set(english)) == []
    # And nothing is kept that nothing uses.
    assert sorted(set(english) - used) == []


def error_codes() -> set[str]:
    """Every error code the server answers with: the exception classes' and the HTTP-level ones."""
    found: set[str] = set()
    pending: list[type[ServiceError]] = [ServiceError]
    while pending:
        cls = pending.pop()
        found.add(cls.code)
        pending.extend(cls.__subclasses__())
    return found | set(HTTP_CODES.values())


def test_translated_errors_are_codes_the_server_sends() -> None:
    """The page words some refusals itself (error_<code>): each is a code the server really answers with."""
    keys = {key.removeprefix("error_") for key in catalogue("en") if key.startswith("error_")}
    keys -= {"status", "network"}
    assert keys and keys <= error_codes(), keys - error_codes()


def test_the_html_shows_the_english_strings_before_the_script_runs(page: Page) -> None:
    """The inline English of index.html is the English catalogue's, so the two cannot drift."""
    english = catalogue("en")
    for key, text in page.texts:
        assert text.strip() == english[key], key


def test_the_html_has_no_inline_script_or_style(page: Page) -> None:
    """What the page's policy (script-src 'self', style-src 'self') forbids is not there to be blocked."""
    for tag, attrs in page.tags:
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        assert "style" not in attrs, (tag, attrs)
        assert tag != "style"
        if tag == "script":
            assert (attrs.get("src") or "").startswith("/static/"), attrs
    script = scripts()
    assert "vision.js" in script and "common.js" in script
    # Server text goes in as text only.
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function", script)
