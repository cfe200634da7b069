"""app.words: the words of a segment's text, and their times from the aligner or from the segment's speech."""

from __future__ import annotations

import itertools

import pytest

from app import words
from app.transcript import TranscriptSegment, Word


def written(text: str) -> list[str]:
    """The words of text as they are written."""
    return [text[w.start : w.end] for w in words.text_words(text)]


@pytest.mark.parametrize(
    ("text", "expected", "keys"),
    [
        ("Hello, world.", ["Hello,", "world."], ["Hello", "world"]),
        ("“Yes,” she said — then left…", ["“Yes,”", "she", "said —", "then", "left…"], None),
        ("It's 3.14 o'clock", ["It's", "3.14", "o'clock"], ["It's", "314", "o'clock"]),
        ("我们去公园。", ["我", "们", "去", "公", "园。"], ["我", "们", "去", "公", "园"]),
        ("用Python写程序", ["用", "Python", "写", "程", "序"], None),
        ("— well", ["— well"], ["well"]),
        ("♪ ♪", [], []),
        ("", [], []),
        ("안녕하세요 반갑습니다.", ["안녕하세요", "반갑습니다."], None),
    ],
)
def test_text_words_split_like_the_aligner_with_punctuation_kept(
    text: str, expected: list[str], keys: list[str] | None
) -> None:
    """Spaces and CJK ideographs separate words; punctuation stays with its word; keys are the aligner's."""
    assert written(text) == expected
    if keys is not None:
        assert [w.key for w in words.text_words(text)] == keys


def check_inside(segment: TranscriptSegment, timed: list[tuple[float, float]]) -> None:
    """Times in order, none overlapping, each inside the segment and never starting or ending in a pause."""
    floor = segment.start
    for start, end in timed:
        assert floor - 1e-9 <= start <= end <= segment.end + 1e-9
        floor = end
        for (_, a), (b, _) in itertools.pairwise(segment.spans):
            assert not a < start < b and not a < end < b, (start, end, segment.spans)


def test_estimate_shares_the_speech_and_skips_pauses() -> None:
    """Without VAD the whole segment is shared by characters; with it, only the speech spans are."""
    plain = TranscriptSegment(0, 10.0, 20.0, "one two three four")
    timed = [(a, b) for _, a, b in words.estimate(plain)]
    assert timed[0][0] == 10.0 and timed[-1][1] == 20.0
    assert [round(b - a, 3) for a, b in timed] == [round(10 * n / 15, 3) for n in (3, 3, 5, 4)]
    check_inside(plain, timed)

    spans = ((10.0, 12.0), (15.0, 17.0), (19.5, 20.0))
    vad = TranscriptSegment(0, 10.0, 20.0, "one two three four five six seven eight", speech=spans)
    timed = [(a, b) for _, a, b in words.estimate(vad)]
    assert timed[0][0] == 10.0 and timed[-1][1] == 20.0
    check_inside(vad, timed)
    # 4.5 s of speech: none of the words is timed in the pauses 12-15 s and 17-19.5 s.
    assert not any(12.0 < (a + b) / 2 < 15.0 or 17.0 < (a + b) / 2 < 19.5 for a, b in timed)


def test_words_of_prefers_the_aligner_and_keeps_the_written_form() -> None:
    """A segment's own words are its words; else the estimate, with punctuation as written."""
    aligned = (Word("Hi,", 1.0, 1.2), Word("you.", 1.5, 1.9))
    assert words.words_of(TranscriptSegment(0, 0.0, 3.0, "Hi, you.", words=aligned)) == aligned
    estimated = words.words_of(TranscriptSegment(0, 0.0, 3.0, "Hi, you."))
    assert [w.text for w in estimated] == ["Hi,", "you."] and estimated[-1].end == 3.0
    # A lone dash joins the word before it across the line break between them: written with one space.
    dashed = words.words_of(TranscriptSegment(0, 0.0, 3.0, "so \n— then"))
    assert [w.text for w in dashed] == ["so —", "then"]
    aligned_dash = words.from_alignment(TranscriptSegment(0, 0.0, 3.0, "so \n— then"), [("so", 0, 1), ("then", 1, 2)])
    assert aligned_dash is not None and [w.text for w in aligned_dash] == ["so —", "then"]


def test_alignment_is_placed_back_in_the_file_through_the_speech_spans() -> None:
    """The aligner heard the spans joined: 2.5 s into that audio is 0.5 s into the second span."""
    segment = TranscriptSegment(0, 4.0, 12.0, "alpha beta, gamma", speech=((4.0, 6.0), (9.0, 12.0)))
    got = words.from_alignment(segment, [("alpha", 0.1, 1.0), ("beta", 1.2, 2.0), ("gamma", 2.5, 3.1)])
    assert got == (
        Word("alpha", pytest.approx(4.1), pytest.approx(5.0)),  # type: ignore[arg-type]
        Word("beta,", pytest.approx(5.2), 6.0),  # type: ignore[arg-type]
        Word("gamma", pytest.approx(9.5), pytest.approx(10.1)),  # type: ignore[arg-type]
    )


def test_alignment_is_made_monotonic_and_kept_inside_the_segment() -> None:
    """Times that go back, or past the audio, are clamped: in order and inside the segment."""
    segment = TranscriptSegment(0, 2.0, 5.0, "a b c d")
    got = words.from_alignment(segment, [("a", -1.0, 0.5), ("b", 0.2, 0.4), ("c", 2.0, 9.0), ("d", 9.5, 9.9)])
    assert got is not None
    check_inside(segment, [(w.start, w.end) for w in got])
    assert [(w.start, w.end) for w in got] == [(2.0, 2.5), (2.5, 2.5), (4.0, 5.0), (5.0, 5.0)]


def test_alignment_of_other_words_is_refused() -> None:
    """The aligner's words must be the text's: anything else is not used."""
    segment = TranscriptSegment(0, 0.0, 2.0, "one two")
    assert words.from_alignment(segment, [("one", 0.0, 0.5)]) is None
    assert words.from_alignment(segment, [("one", 0.0, 0.5), ("too", 0.5, 1.0)]) is None


def test_an_alignment_piled_up_at_one_instant_is_refused() -> None:
    """Most words without duration (all clamped to the end of the audio) is a failed alignment: estimated instead."""
    segment = TranscriptSegment(0, 1.0, 4.0, "one two three")
    assert words.from_alignment(segment, [("one", 3.0, 3.0), ("two", 3.0, 3.0), ("three", 3.0, 3.0)]) is None
    assert words.from_alignment(segment, [("one", 0.5, 1.5), ("two", 9.0, 9.0), ("three", 9.0, 9.0)]) is None
    # Half of them at an instant is still an alignment (short words fall inside one 80 ms bin).
    assert words.from_alignment(segment, [("one", 0.5, 1.5), ("two", 1.5, 1.5), ("three", 2.0, 2.5)]) is not None
    # One word is its own measure.
    assert words.from_alignment(TranscriptSegment(0, 1.0, 4.0, "one"), [("one", 0.4, 0.4)]) is not None


def test_timed_uses_the_segment_words_only_when_they_match() -> None:
    """Words for another text (a subtitle's normalized one) are used only when they are the same words."""
    segment = TranscriptSegment(0, 0.0, 4.0, "one\r\ntwo", words=(Word("one", 0.5, 1.0), Word("two", 3.0, 3.5)))
    assert [(a, b) for _, a, b in words.timed(segment, "one two")] == [(0.5, 1.0), (3.0, 3.5)]
    other = [(a, b) for _, a, b in words.timed(segment, "one two three")]
    assert other[0][0] == 0.0 and other[-1][1] == 4.0
