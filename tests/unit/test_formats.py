"""app.formats: joining segment texts and rendering text, SRT, VTT and JSON views."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
import srt
import webvtt

from app.formats import render_srt, render_text, render_vtt
from app.protocol.native import TranscriptResult
from app.text import join_text
from app.transcript import Transcript, TranscriptSegment


def transcript(*parts: tuple[float, float, str]) -> Transcript:
    """A Transcript whose segments have the given (start, end, text)."""
    segments = [TranscriptSegment(n, start, end, text) for n, (start, end, text) in enumerate(parts)]
    return Transcript(segments=segments, duration=parts[-1][1] if parts else 0.0, language=None, processing_seconds=0.1)


@pytest.mark.parametrize(
    ("parts", "joined"),
    [
        (["Hello", "world"], "Hello world"),
        (["  Ask not ", " what your country "], "Ask not what your country"),
        (["你好", "世界"], "你好世界"),
        (["广州市房地产", "中介协会分析"], "广州市房地产中介协会分析"),
        (["你好。", "世界，", "再见"], "你好。世界，再见"),
        (["こんにちは", "カタカナ"], "こんにちはカタカナ"),
        (["我用", "Python", "写代码"], "我用 Python 写代码"),
        (["Hello", "世界"], "Hello 世界"),
        (["Hello", "", "   ", "world"], "Hello world"),
        (["", "a"], "a"),
        ([], ""),
        (["", " "], ""),
    ],
)
def test_join_text(parts: list[str], joined: str) -> None:
    """Spaces between Latin words, none between CJK characters, empty parts skipped."""
    assert join_text(parts) == joined


@pytest.mark.parametrize(
    ("parts", "joined"),
    [
        (["他说「你好」", "我们走吧"], "他说「你好」我们走吧"),
        (["我读了《红楼梦》", "很好看"], "我读了《红楼梦》很好看"),
        (["标题", "【重要】通知"], "标题【重要】通知"),
    ],
    ids=["corner-brackets", "book-title-marks", "lenticular-brackets"],
)
def test_join_text_cjk_brackets(parts: list[str], joined: str) -> None:
    """CJK punctuation (the docstring's own category) joins without a space, brackets included."""
    assert join_text(parts) == joined


def test_join_text_korean_words_keep_their_space() -> None:
    """Korean segments cut between words are joined with a space."""
    assert join_text(["안녕하세요", "반갑습니다"]) == "안녕하세요 반갑습니다"


def test_render_text() -> None:
    """The joined text of all segments, newline-terminated."""
    t = transcript((0.0, 2.0, "And so my fellow Americans,"), (2.0, 3.0, ""), (3.0, 5.5, "ask not"))
    assert render_text(t) == "And so my fellow Americans, ask not\n"


def test_render_text_empty() -> None:
    """A transcript with no words is a single newline."""
    assert render_text(transcript((0.0, 1.0, "  "))) == "\n"


def test_render_srt_cues_match_segments() -> None:
    """Short segments give one cue each, numbered from 1, timed by the segment positions."""
    t = transcript(
        (0.0, 5.5, "First part."),
        (5.5, 8.0, "   "),
        (8.0, 11.2345, "Second part."),
        (11.2345, 15.75, "广州市房地产中介协会分析"),
    )
    cues = list(srt.parse(render_srt(t)))
    assert [c.index for c in cues] == [1, 2, 3]
    assert [c.content for c in cues] == ["First part.", "Second part.", "广州市房地产中介协会分析"]
    expected = [(0.0, 5.5), (8.0, 11.2345), (11.2345, 15.75)]
    for cue, (start, end) in zip(cues, expected, strict=True):
        # SubRip has millisecond resolution.
        assert abs(cue.start - timedelta(seconds=start)) < timedelta(milliseconds=1)
        assert abs(cue.end - timedelta(seconds=end)) < timedelta(milliseconds=1)


def test_render_srt_wraps_long_segments_into_subtitle_cues() -> None:
    """A long segment is split into cues of at most two 42-character lines, none over 7 seconds."""
    text = (
        "The committee met on Tuesday to discuss the budget. Everyone agreed that costs had to come down soon. "
        "The vote will take place next month."
    )
    cues = list(srt.parse(render_srt(transcript((0.0, 15.0, text)))))
    assert [c.content for c in cues] == [
        "The committee met on Tuesday\nto discuss the budget.",
        "Everyone agreed that costs\nhad to come down soon.",
        "The vote will take place next month.",
    ]
    assert all(c.end - c.start <= timedelta(seconds=7) for c in cues)
    assert all(a.end <= b.start for a, b in itertools.pairwise(cues))
    assert cues[0].start == timedelta(0) and cues[-1].end == timedelta(seconds=15)


def test_render_srt_text_form() -> None:
    """The SubRip text itself uses HH:MM:SS,mmm timestamps."""
    out = render_srt(transcript((1.5, 4.25, "Hello."), (3661.0, 3662.5, "Later.")))
    assert out == "1\n00:00:01,500 --> 00:00:04,250\nHello.\n\n2\n01:01:01,000 --> 01:01:02,500\nLater.\n\n"


def test_render_srt_all_empty() -> None:
    """No non-empty segments gives no cues."""
    assert list(srt.parse(render_srt(transcript((0.0, 3.0, ""), (3.0, 6.0, " "))))) == []


def test_segments_json() -> None:
    """Every segment (empty ones included), times rounded to milliseconds."""
    t = transcript((0.0, 2.6449375, "ask not"), (2.6449375, 4.84, ""))
    assert TranscriptResult.of(t).body()["segments"] == [
        {"index": 0, "start": 0.0, "end": 2.645, "text": "ask not", "stop_reason": "eos"},
        {"index": 1, "start": 2.645, "end": 4.84, "text": "", "stop_reason": "eos"},
    ]


def test_srt_cues_never_contain_blank_or_carriage_return_lines() -> None:
    """Model output with CR and whitespace-only lines is re-wrapped: its line breaks are only whitespace."""
    transcript = Transcript(
        segments=[
            TranscriptSegment(0, 0.0, 2.0, "a\n \nb\r\n\r\nc\rd"),
            TranscriptSegment(1, 2.0, 4.0, " \r\n "),
            TranscriptSegment(2, 4.0, 6.0, "e"),
        ],
        duration=6.0,
        language=None,
        processing_seconds=0.0,
    )
    out = render_srt(transcript)
    assert "\r" not in out and "\n\n\n" not in out
    cues = list(srt.parse(out))
    assert [c.content for c in cues] == ["a b c d", "e"]
    assert [c.start.total_seconds() for c in cues] == [0.0, 4.0]


def test_render_vtt_text_form() -> None:
    """WebVTT: the header, then cues with HH:MM:SS.mmm timestamps."""
    out = render_vtt(transcript((1.5, 4.25, "Hello."), (3661.0, 3662.5, "Later.")))
    assert out == "WEBVTT\n\n00:00:01.500 --> 00:00:04.250\nHello.\n\n01:01:01.000 --> 01:01:02.500\nLater.\n"


def test_render_vtt_all_empty() -> None:
    """No non-empty segments gives the header alone, which parses to no captions."""
    out = render_vtt(transcript((0.0, 3.0, ""), (3.0, 6.0, " \r\n ")))
    assert out == "WEBVTT\n"
    assert webvtt.from_string(out).captions == []


def test_render_vtt_escapes_markup_and_arrows() -> None:
    """&, < and > are escaped, so tags in the text are shown rather than applied; no "-->" is left in cue text."""
    out = render_vtt(transcript((0.0, 2.0, "a --> b <b>bold</b> & co")))
    assert out == "WEBVTT\n\n00:00:00.000 --> 00:00:02.000\na → b &lt;b&gt;bold&lt;/b&gt; &amp; co\n"
    [caption] = webvtt.from_string(out, strict=True).captions
    assert caption.raw_text == "a → b &lt;b&gt;bold&lt;/b&gt; &amp; co"


def test_render_srt_replaces_arrows() -> None:
    """SubRip text never holds "-->", which would read as a timing line; other characters are left as they are."""
    out = render_srt(transcript((0.0, 2.0, "a --> b <i>x</i> & --->")))
    assert out.count("-->") == 1
    [cue] = srt.parse(out)
    assert cue.content == "a → b <i>x</i> & -→"
