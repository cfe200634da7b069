"""app.subtitles: segment texts re-wrapped into subtitle cues that keep the line, length and timing rules."""

from __future__ import annotations

import itertools
import random
import unicodedata
from dataclasses import replace
from datetime import timedelta

import pytest
import srt
import webvtt

from app.formats import render_srt, render_vtt
from app.subtitles import (
    MAX_CUE_MS,
    MAX_LINE_CHARS,
    MAX_LINE_CHARS_CJK,
    MAX_LINES,
    Cue,
    cues,
    line_limit,
    segment_cues,
)
from app.text import is_cjk
from app.transcript import Transcript, TranscriptSegment, Word


def transcript(*parts: tuple[float, float, str]) -> Transcript:
    """A Transcript whose segments have the given (start, end, text)."""
    segments = [TranscriptSegment(n, start, end, text) for n, (start, end, text) in enumerate(parts)]
    return Transcript(segments=segments, duration=parts[-1][1] if parts else 0.0, language=None, processing_seconds=0.1)


def lines_of(t: Transcript) -> list[tuple[str, ...]]:
    """The lines of every cue of t."""
    return [c.lines for c in cues(t)]


def ms(seconds: float) -> int:
    """Seconds to whole milliseconds, as the formats write them."""
    return round(seconds * 1000)


def expected_chars(text: str) -> str:
    """The segment's text as cues must show it, whitespace left out: every character once, "-->" made an arrow."""
    return "".join(token.replace("-->", "→") for token in text.split())


def is_letter(char: str) -> bool:
    """A letter or digit (not punctuation)."""
    return unicodedata.category(char)[0] in "LN"


def several_words(cue: Cue, token_ends: set[int], offset: int) -> bool:
    """Whether a cue holds more than one word or CJK character, so the 7 s rule may not clip it.

    offset is where the cue's characters start in the segment's whitespace-free text; token_ends are the
    positions there where a space was.
    """
    chars = "".join("".join(cue.lines).split())
    if any(offset < end < offset + len(chars) for end in token_ends):
        return True
    return any(is_letter(a) and is_letter(b) and (is_cjk(a) or is_cjk(b)) for a, b in itertools.pairwise(chars))


def check_breaks(seg_cues: list[Cue], text: str) -> None:
    """Assert no short Latin word is cut: without CJK or a dash, a word that fits any line stays whole."""
    tokens = [tok.replace("-->", "→") for tok in text.split()]
    whole = set()  # positions in the whitespace-free text inside a word that must not be cut
    pos = 0
    for tok in tokens:
        if len(tok) <= MAX_LINE_CHARS_CJK and not any(is_cjk(c) or c in "—…" for c in tok):
            whole.update(range(pos + 1, pos + len(tok)))
        pos += len(tok)
    pos = 0
    for cue in seg_cues:
        for line in cue.lines:
            pos += len("".join(line.split()))
            assert pos not in whole, (line, text)


def check_rules(t: Transcript) -> list[Cue]:
    """Assert every subtitle rule for every cue of t; returns the cues."""
    all_cues = cues(t)
    rebuilt: list[Cue] = []
    previous_end = 0
    for segment in t.segments:
        seg_cues = segment_cues(segment, rebuilt[-1].end_ms if rebuilt else 0)
        rebuilt.extend(seg_cues)
        chars = expected_chars(segment.text)
        token_ends = set(itertools.accumulate(len(tok.replace("-->", "→")) for tok in segment.text.split()))
        seg_start = max(ms(segment.start), previous_end, 0)
        seg_end = ms(segment.end)
        if not chars or seg_end <= seg_start:
            assert seg_cues == []
            continue
        pos = 0
        boundaries = [c.start_ms for c in seg_cues[1:]] + [seg_end]
        for cue, share_end in zip(seg_cues, boundaries, strict=True):
            # Lines: one or two, none empty or padded, none over the limit, nothing that breaks a cue block.
            assert 1 <= len(cue.lines) <= MAX_LINES
            cue_chars = "".join("".join(cue.lines).split())
            cjk = sum(1 for c in cue_chars if is_cjk(c))
            limit = MAX_LINE_CHARS_CJK if cjk > len(cue_chars) - cjk else MAX_LINE_CHARS
            for line in cue.lines:
                assert line and line == line.strip() and len(line) <= limit
                assert "-->" not in line and "\n" not in line and "\r" not in line
            # Times: inside the segment, after the previous cue, at least 1 ms and at most 7 s.
            assert seg_start <= cue.start_ms < cue.end_ms <= seg_end
            assert cue.start_ms >= previous_end
            assert cue.end_ms - cue.start_ms <= MAX_CUE_MS
            if several_words(cue, token_ends, pos):
                assert cue.end_ms == share_end  # split further rather than clipped
            else:
                assert cue.end_ms == min(share_end, cue.start_ms + MAX_CUE_MS)
            previous_end = cue.end_ms
            # No text lost or duplicated: the cue's characters come next in the segment's text.
            found = chars.find(cue_chars, pos)
            assert found >= 0
            if seg_end - seg_start >= len(chars):
                # Enough milliseconds for a cue per character: no cue may be dropped, shares are proportional.
                assert found == pos
                share = share_end - cue.start_ms
                proportional = (seg_end - seg_start) * len(cue_chars) / len(chars)
                assert abs(share - proportional) <= 2 + len(seg_cues) * len(cue_chars) / len(chars)
            pos = found + len(cue_chars)
        if seg_end - seg_start >= len(chars):
            assert seg_cues[0].start_ms == seg_start and pos == len(chars)
            assert "".join("".join("".join(c.lines).split()) for c in seg_cues) == chars
            check_breaks(seg_cues, segment.text)
    assert rebuilt == all_cues
    return all_cues


def check_rendered(t: Transcript, all_cues: list[Cue]) -> None:
    """SRT and VTT renderings parse back to exactly the cues."""
    srt_out = render_srt(t)
    assert srt_out.count("-->") == len(all_cues)
    parsed = list(srt.parse(srt_out))
    assert len(parsed) == len(all_cues)
    for n, (sub, cue) in enumerate(zip(parsed, all_cues, strict=True), start=1):
        assert sub.index == n
        assert sub.start == timedelta(milliseconds=cue.start_ms)
        assert sub.end == timedelta(milliseconds=cue.end_ms)
        assert sub.content == cue.text

    vtt_out = render_vtt(t)
    assert vtt_out.startswith("WEBVTT\n")
    assert vtt_out.count("-->") == len(all_cues)
    captions = webvtt.from_string(vtt_out, strict=True).captions
    assert len(captions) == len(all_cues)
    for caption, cue in zip(captions, all_cues, strict=True):
        assert caption.start_time.in_milliseconds() == cue.start_ms
        assert caption.end_time.in_milliseconds() == cue.end_ms
        # Escaped, so the parser sees no tags: the text without tags is the raw text.
        assert caption.text == caption.raw_text
        unescaped = caption.raw_text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
        assert unescaped == cue.text


def test_english_prose_splits_at_sentences() -> None:
    """Sentences too long to share a cue each get their own, wrapped on two lines."""
    text = (
        "The committee met on Tuesday to discuss the budget. Everyone agreed that costs had to come down soon. "
        "The vote will take place next month."
    )
    t = transcript((0.0, 15.0, text))
    assert lines_of(t) == [
        ("The committee met on Tuesday", "to discuss the budget."),
        ("Everyone agreed that costs", "had to come down soon."),
        ("The vote will take place next month.",),
    ]
    check_rendered(t, check_rules(t))


def test_line_break_at_a_clause() -> None:
    """Inside a cue, the line breaks after a comma rather than at a space nearer the middle."""
    t = transcript((0.0, 6.0, "When the meeting was finally over, everyone went home to get some rest."))
    assert lines_of(t) == [("When the meeting was finally over,", "everyone went home to get some rest.")]


def test_short_sentences_share_a_cue() -> None:
    """Text that fits one line stays on one line, in one cue."""
    t = transcript((0.0, 3.0, "Hi. How are you?"))
    assert lines_of(t) == [("Hi. How are you?",)]


def test_long_sentence_without_punctuation() -> None:
    """Split only at spaces, into as few cues as fit, of balanced sizes."""
    text = (
        "the river runs past the old mill and under the stone bridge where children play in summer while "
        "their parents sit on the grass and talk about the weather and the harvest"
    )
    t = transcript((0.0, 10.0, text))
    got = cues(t)
    assert len(got) == 3
    assert " ".join(line for cue in got for line in cue.lines) == text  # no word broken
    widths = [len(" ".join(cue.lines)) for cue in got]
    assert max(widths) - min(widths) <= 25
    check_rendered(t, check_rules(t))


def test_very_long_word() -> None:
    """A word longer than a line is cut inside, as a last resort, into even pieces; no character is lost."""
    word = "Pneumonoultramicroscopicsilicovolcanoconiosis" * 3
    t = transcript((0.0, 3.0, word))
    got = cues(t)
    assert [len(line) for cue in got for line in cue.lines] == [34, 34, 33, 34]
    assert "".join(line for cue in got for line in cue.lines) == word
    assert [(c.start_ms, c.end_ms) for c in got] == [(0, 1511), (1511, 3000)]
    check_rendered(t, check_rules(t))


def test_chinese_lines_of_16_characters_broken_after_punctuation() -> None:
    """Chinese text has 16-character lines, broken after its commas and full stops."""
    t = transcript((0.0, 12.0, "今天天气很好，我们一起去公园散步吧。公园里有很多人在跑步，还有小朋友在放风筝。"))
    assert lines_of(t) == [
        ("今天天气很好，", "我们一起去公园散步吧。"),
        ("公园里有很多人在跑步，", "还有小朋友在放风筝。"),
    ]
    check_rendered(t, check_rules(t))


def test_chinese_without_punctuation_breaks_between_characters() -> None:
    """Long unpunctuated Chinese is cut between characters, every line within 16."""
    text = "这是一个很长的句子没有标点符号但是需要被分成好几行才能在屏幕上显示出来让观众看清楚"
    t = transcript((0.0, 12.0, text))
    got = cues(t)
    assert all(len(line) <= MAX_LINE_CHARS_CJK for cue in got for line in cue.lines)
    assert "".join(line for cue in got for line in cue.lines) == text
    assert len(got) == 2
    check_rendered(t, check_rules(t))


def test_japanese() -> None:
    """Japanese is CJK too: 16-character lines, broken after 。."""
    t = transcript((0.0, 8.0, "こんにちは。今日はとても良い天気ですね。散歩に行きませんか？"))
    assert lines_of(t) == [("こんにちは。", "今日はとても良い天気ですね。"), ("散歩に行きませんか？",)]


def test_mixed_cjk_and_latin() -> None:
    """The line width follows each cue's own majority; Latin words inside CJK text are kept whole."""
    t = transcript((0.0, 8.0, "我今天用Python写了一个很长的程序，然后把它部署到了服务器上面，大家都觉得很好用。"))
    assert lines_of(t) == [
        ("我今天用Python", "写了一个很长的程序，"),
        ("然后把它部署到了服务器上面，", "大家都觉得很好用。"),
    ]
    check_rendered(t, check_rules(t))

    # The first cue has more Latin than CJK characters, so it may run to 42; the second is all CJK.
    t = transcript((0.0, 8.0, "我们今天用Python和JavaScript写一个Web应用程序，然后部署到服务器上。"))
    assert lines_of(t) == [("我们今天用Python和JavaScript写一个Web应用程序，",), ("然后部署到服务器上。",)]
    check_rendered(t, check_rules(t))

    t = transcript((0.0, 8.0, "The word 你好 means hello in Chinese, and people say it every day when they meet."))
    assert lines_of(t)[0] == ("The word 你好 means hello in Chinese,",)
    check_rendered(t, check_rules(t))


def test_korean_uses_the_latin_limit_and_breaks_at_spaces() -> None:
    """Korean separates words with spaces: 42-character lines, words never cut."""
    text = (
        "안녕하세요 반갑습니다. 오늘은 날씨가 정말 좋네요, 그래서 우리는 공원에 가기로 했습니다. "
        "정말 즐거운 하루였어요."
    )
    assert line_limit(text) == MAX_LINE_CHARS
    t = transcript((0.0, 10.0, text))
    got = cues(t)
    assert any(len(line) > MAX_LINE_CHARS_CJK for cue in got for line in cue.lines)
    assert " ".join(line for cue in got for line in cue.lines) == text
    check_rendered(t, check_rules(t))


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("hello", MAX_LINE_CHARS),
        ("你好", MAX_LINE_CHARS_CJK),
        ("ab你好", MAX_LINE_CHARS),  # a tie is not a majority
        ("ab你好吗", MAX_LINE_CHARS_CJK),
        ("한국어 문장", MAX_LINE_CHARS),
        ("カタカナ ok", MAX_LINE_CHARS_CJK),
    ],
)
def test_line_limit(text: str, limit: int) -> None:
    """The CJK limit applies when most non-space characters are CJK."""
    assert line_limit(text) == limit


def test_empty_and_whitespace_segments_give_no_cues() -> None:
    """Only segments with text make cues."""
    t = transcript((0.0, 1.0, ""), (1.0, 2.0, "  \r\n\t "), (2.0, 3.0, "Yes."), (3.0, 4.0, "\n"))
    got = cues(t)
    assert [(c.start_ms, c.end_ms, c.lines) for c in got] == [(2000, 3000, ("Yes.",))]
    check_rendered(t, check_rules(t))
    assert cues(transcript()) == []
    assert render_srt(transcript((0.0, 1.0, " "))) == ""
    assert render_vtt(transcript((0.0, 1.0, " "))) == "WEBVTT\n"


def test_long_segment_with_little_text_is_split_and_clipped() -> None:
    """60 s for four words: one cue per word, each starting at its share, none over 7 s."""
    t = transcript((0.0, 60.0, "Hello there, my friend."))
    got = cues(t)
    assert [c.lines for c in got] == [("Hello",), ("there,",), ("my",), ("friend.",)]
    # Shares by characters (5, 6, 2, 7 of 20): starts at 0, 15, 33, 39 s.
    assert [c.start_ms for c in got] == pytest.approx([0, 15000, 33000, 39000], abs=5)
    assert [c.end_ms - c.start_ms for c in got] == pytest.approx([7000, 7000, 6000, 7000], abs=5)
    check_rendered(t, check_rules(t))


def test_long_segment_with_many_words_is_split_not_clipped() -> None:
    """A cue with several words is never clipped: the segment is covered end to end by cues of at most 7 s."""
    text = " ".join(["one two three four five six seven eight nine ten"] * 3)
    t = transcript((0.0, 60.0, text))
    got = cues(t)
    assert len(got) >= 9
    assert got[0].start_ms == 0 and got[-1].end_ms == 60000
    assert all(a.end_ms == b.start_ms for a, b in itertools.pairwise(got))
    assert all(c.end_ms - c.start_ms <= MAX_CUE_MS for c in got)
    check_rendered(t, check_rules(t))


def test_single_cjk_character_over_a_long_segment_is_clipped() -> None:
    """One character cannot be split: shown for 7 s from the segment start."""
    t = transcript((10.0, 30.0, "嗯"))
    assert [(c.start_ms, c.end_ms, c.lines) for c in cues(t)] == [(10000, 17000, ("嗯",))]


def test_many_short_segments() -> None:
    """Short segments map one to one onto cues at their own times."""
    parts = [(i * 0.5, (i + 1) * 0.5, f"word{i}.") for i in range(200)]
    t = transcript(*parts)
    got = check_rules(t)
    assert [(c.start_ms, c.end_ms, c.lines) for c in got] == [
        (ms(start), ms(end), (text,)) for start, end, text in parts
    ]
    check_rendered(t, got)


def test_zero_length_and_tiny_segments() -> None:
    """No time, no cue; a segment shorter in ms than its cues keeps those that get at least 1 ms."""
    assert cues(transcript((5.0, 5.0, "text"))) == []
    assert cues(transcript((5.0, 4.0, "backwards"))) == []
    assert cues(transcript((5.0, 5.0004, "rounds to nothing"))) == []
    long_text = "The quick brown fox jumps over the lazy dog and then runs far away into the forest. " * 3
    t = transcript((5.0, 5.002, long_text))
    got = check_rules(t)
    assert 1 <= len(got) <= 2
    assert all(5000 <= c.start_ms < c.end_ms <= 5002 for c in got)
    check_rendered(t, got)


def test_every_cue_gets_a_millisecond_when_there_are_enough() -> None:
    """A segment with as many milliseconds as cues shows them all, 1 ms each, short cues included."""
    text = "Yes. " + "The committee met on Tuesday to discuss the budget and then everyone went home. " * 3
    many = cues(transcript((0.0, 2.0, text)))
    assert len(many) == 4 and many[0].lines == ("Yes.",)
    tiny = cues(transcript((1.0, 1.0 + len(many) / 1000, text)))
    assert [c.lines for c in tiny] == [c.lines for c in many]
    assert [(c.start_ms, c.end_ms) for c in tiny] == [(1000 + k, 1001 + k) for k in range(len(many))]


def test_overlapping_segments_give_cues_that_do_not_overlap() -> None:
    """A segment starting before the previous cue ends has its cues start after it."""
    t = transcript((0.0, 4.0, "First segment here."), (3.0, 6.0, "Second one."), (1.0, 2.0, "Inside."))
    got = check_rules(t)
    assert [(c.start_ms, c.end_ms) for c in got] == [(0, 4000), (4000, 6000)]


def test_special_text() -> None:
    """Arrows, markup, ampersands, CR/LF and blank lines survive into valid SRT and VTT."""
    text = "a --> b\r\n\r\n<b>bold</b> & more\rlast  line\n\n\n-->"
    t = transcript((0.0, 3.0, text))
    got = check_rules(t)
    assert [c.lines for c in got] == [("a → b <b>bold</b> & more last line →",)]
    check_rendered(t, got)
    assert "<b>" in render_srt(t) and "&lt;b&gt;bold&lt;/b&gt; &amp; more" in render_vtt(t)


def test_cjk_line_break_is_dropped_not_made_a_space() -> None:
    """A line break between CJK characters joins them, as join_text does between segments."""
    assert lines_of(transcript((0.0, 2.0, "你好\n世界"))) == [("你好世界",)]
    assert lines_of(transcript((0.0, 2.0, "Hello\nworld"))) == [("Hello world",)]


def test_cue_seconds() -> None:
    """Cue exposes seconds and its text alongside whole milliseconds."""
    cue = Cue(1500, 4250, ("a", "b"))
    assert (cue.start, cue.end, cue.text) == (1.5, 4.25, "a\nb")


# Pools for pseudo-random texts: English words with punctuation, long words, CJK, Korean, awkward characters.
ENGLISH_TEXT = (
    "the quick brown fox jumps over a lazy dog and I said Hello, world. What? yes! wait; note: end… well—so "
    "it's U.S. 3.14 x"
)
ENGLISH = ENGLISH_TEXT.split(" ")
LONG = ["Supercalifragilisticexpialidocious", "https://example.com/a/very/long/path/that/never/seems/to/end", "a" * 100]
CJK = [
    *"我你他的是了在有人这中大来上国说们为子和地出道也时年得就那要下以生会自着去之过家学对可",
    *"。，、！？：；「」《》（）……——",
]
KANA = list("こんにちはありがとうカタカナ")
KOREAN = ["안녕하세요", "반갑습니다.", "오늘은", "날씨가", "정말", "좋네요,"]
SPECIAL = ["-->", "<b>", "</b>", "&", "&amp;", "-", "--", ">", "<", "—", "…", '"', "'", "(", ")", "→"]
SEPARATORS = [" ", " ", " ", "  ", "\n", "\r\n", "\r", "\n\n", "\t", " \r\n \r\n", "\u00a0", ""]


def random_text(rng: random.Random) -> str:
    """Text of a random mix: mostly one script, sometimes empty or whitespace."""
    roll = rng.random()
    if roll < 0.08:
        return rng.choice(["", " ", "\r\n", " \n\n\t "])
    pools = rng.choice(
        [
            [(ENGLISH, 10), (SPECIAL, 1)],
            [(ENGLISH, 6), (LONG, 1), (CJK, 1)],
            [(CJK, 10), (ENGLISH, 1), (KANA, 2)],
            [(CJK, 5), (ENGLISH, 5), (SPECIAL, 1)],
            [(KOREAN, 8), (ENGLISH, 1)],
            [(LONG, 1)],
        ]
    )
    words = [pool for pool, weight in pools for _ in range(weight)]
    count = rng.choice([1, 2, 3, 5, 10, 30, 80, 150]) if len(pools) > 1 else rng.randint(1, 5)
    out = ""
    for _ in range(count):
        pool = rng.choice(words)
        token = rng.choice(pool)
        glue = "" if pool is CJK or pool is KANA else rng.choice(SEPARATORS)
        out += (glue if rng.random() < 0.9 else rng.choice(SEPARATORS)) + token
    return out


def random_transcript(rng: random.Random) -> Transcript:
    """Segments of random texts and lengths: mostly back to back, some with gaps, overlaps or no length."""
    segments = []
    start = rng.choice([0.0, rng.uniform(0, 5000)])
    for n in range(rng.randint(1, 12)):
        length = rng.choice([0.0, 0.001, 0.003, 0.05, rng.uniform(0.1, 3), rng.uniform(1, 15), rng.uniform(15, 90)])
        segments.append(TranscriptSegment(n, start, start + length, random_text(rng)))
        start += length + rng.choice([0.0, 0.0, 0.0, rng.uniform(0, 3), -rng.uniform(0, 2)])
        start = max(start, 0.0)
    return Transcript(segments=segments, duration=start, language=None, processing_seconds=0.0)


def test_random_transcripts_keep_every_rule() -> None:
    """Hundreds of seeded pseudo-random transcripts: every rule for every cue, SRT and VTT parse back."""
    rng = random.Random(20240611)
    total = 0
    for _ in range(300):
        t = random_transcript(rng)
        got = check_rules(t)
        check_rendered(t, got)
        total += len(got)
    assert total > 1000  # the generator does make real work


# --- timed by words: the aligner's, or the estimate inside VAD's speech spans --------------------------------


def aligned(start: float, end: float, *timed: tuple[str, float, float]) -> TranscriptSegment:
    """A segment whose words the aligner timed."""
    text = " ".join(w for w, _, _ in timed)
    return TranscriptSegment(0, start, end, text, words=tuple(Word(*w) for w in timed))


def test_cues_start_at_their_first_word_and_end_at_their_last() -> None:
    """The speech starts 2 s in and stops 1 s before the end: so do the cues, not the segment."""
    segment = aligned(0.0, 10.0, ("Ask", 2.0, 2.3), ("not", 2.35, 2.6), ("what", 2.7, 3.0), ("your", 3.05, 3.3),
                      ("country", 3.4, 3.9), ("can", 4.0, 4.2), ("do", 4.25, 4.4), ("for", 4.5, 4.7),
                      ("you.", 4.8, 9.0))  # fmt: skip
    got = segment_cues(segment)
    assert got[0].start_ms == 2000 and got[-1].end_ms == 9000
    assert all(c.end_ms - c.start_ms <= MAX_CUE_MS for c in got)


def test_no_cue_stays_on_screen_through_a_long_pause() -> None:
    """3 s of silence between two sentences ends the first cue at its last word, even where they would fit."""
    segment = aligned(0.0, 12.0, ("Hello", 1.0, 1.4), ("there.", 1.5, 2.0), ("How", 5.0, 5.3), ("are", 5.4, 5.6),
                      ("you?", 5.7, 6.2))  # fmt: skip
    got = segment_cues(segment)
    assert [(c.start_ms, c.end_ms, c.lines) for c in got] == [
        (1000, 2000, ("Hello there.",)),
        (5000, 6200, ("How are you?",)),
    ]


def test_a_short_cue_is_held_to_the_minimum_unless_the_next_one_starts() -> None:
    """ "Yes." said in 0.2 s shows for 0.8 s; held only until the next cue when that comes sooner."""
    assert [(c.start_ms, c.end_ms) for c in segment_cues(aligned(0.0, 9.0, ("Yes.", 1.0, 1.2)))] == [(1000, 1800)]
    held = segment_cues(aligned(0.0, 9.0, ("Yes.", 1.0, 1.2), ("Then", 3.0, 3.2), ("go.", 3.3, 3.5)))
    assert [(c.start_ms, c.end_ms) for c in held] == [(1000, 1800), (3000, 3800)]
    # Ends at the segment however short its words: a cue never leaves its segment.
    assert [(c.start_ms, c.end_ms) for c in segment_cues(aligned(0.0, 1.1, ("Yes.", 1.0, 1.05)))] == [(1000, 1100)]


def test_vad_pauses_inside_a_segment_split_the_estimated_cues() -> None:
    """No aligner: the text is shared over the speech spans, so the 5 s pause between them shows nothing."""
    segment = TranscriptSegment(
        0, 0.0, 20.0, "The first part is said here. And the second part comes after the pause.",
        speech=((0.5, 4.0), (9.0, 13.0)),
    )  # fmt: skip
    got = segment_cues(segment)
    assert got[0].start_ms == 500 and got[-1].end_ms == 13000
    assert not any(c.start_ms < 6500 < c.end_ms for c in got), got
    assert all(c.end_ms <= 4000 or c.start_ms >= 9000 for c in got), got


def test_a_pause_inside_an_unbroken_run_of_text_still_ends_the_cue() -> None:
    """A CJK word's trailing symbols and the next word share a run with no space ("分��vx"): said on both sides
    of the pause, the run is cut there, so no cue spans the pause (random weights wrote such text)."""
    from app.words import words_of

    text = "中介分\ufffd\ufffdvx alpha beta gamma delt"
    segment = TranscriptSegment(0, 0.0, 20.0, text, speech=((0.5, 2.0), (9.0, 15.0)))
    # The case itself: the last word before the pause ends the run's first half, the next starts after it.
    spoken = {w.text: (w.start, w.end) for w in words_of(segment)}
    assert spoken["分\ufffd\ufffd"][1] <= 2.0 and spoken["vx"][0] >= 9.0, spoken
    got = segment_cues(segment)
    assert all(c.end_ms <= 2000 or c.start_ms >= 9000 for c in got), got
    assert "".join(line for c in got for line in c.lines).replace(" ", "") == text.replace(" ", "")


def test_fast_speech_prefers_cues_that_can_be_read() -> None:
    """Every cue is at least 0.8 s or ends where the next starts; long text is cut into readable cues."""
    timed = [(f"word{n}", 0.5 + n * 0.15, 0.5 + n * 0.15 + 0.12) for n in range(60)]
    got = segment_cues(aligned(0.0, 10.0, *timed))
    for before, after in itertools.pairwise(got):
        assert before.end_ms - before.start_ms >= 800 or before.end_ms == after.start_ms
    assert all(len(c.lines) <= MAX_LINES for c in got) and got[-1].end_ms <= 10000


def test_words_piled_at_the_end_still_get_their_cues() -> None:
    """An aligner that puts the last words at the segment's very end (it does with text the audio does not
    hold): their cues are brought forward, 1 ms each, rather than left out."""
    first = [(f"word{n}", 0.2 + n * 0.3, 0.4 + n * 0.3) for n in range(8)]
    piled = [(f"end{n}.", 6.0, 6.0) for n in range(30)]
    segment = aligned(0.0, 6.0, *first, *piled)
    got = segment_cues(segment)
    assert "".join("".join(c.text.split()) for c in got) == expected_chars(segment.text)
    assert all(a.end_ms <= b.start_ms for a, b in itertools.pairwise(got))
    assert all(0 <= c.start_ms < c.end_ms <= 6000 for c in got) and got[-1].end_ms == 6000


def random_words(rng: random.Random, segment: TranscriptSegment) -> TranscriptSegment:
    """The segment with aligner-like words: random lengths, random pauses, some out of order or outside."""
    from app.words import text_words

    found = text_words(segment.text)
    at = segment.start - rng.choice([0.0, 0.0, 0.5])
    timed = []
    for w in found:
        at += rng.choice([0.0, 0.05, 0.1, 0.3, rng.uniform(0, 4)])
        length = rng.choice([0.0, 0.05, rng.uniform(0.1, 0.6), rng.uniform(0, 9)])
        timed.append(Word(segment.text[w.start : w.end], at, at + length))
        at += length - rng.choice([0.0, 0.0, 0.0, 0.2])
    return replace(segment, words=tuple(timed))


def test_random_aligned_transcripts_keep_the_timing_rules() -> None:
    """Random texts with random word times: no overlap, inside the segment, at most 7 s, no long pause shown."""
    rng = random.Random(20261203)
    for _ in range(150):
        t = random_transcript(rng)
        t = Transcript([random_words(rng, s) for s in t.segments], t.duration, None, 0.0)
        got = cues(t)
        check_rendered(t, got)
        previous = 0
        for segment in t.segments:
            previous_before = previous
            seg_cues = segment_cues(segment, previous)
            if seg_cues:
                previous = seg_cues[-1].end_ms
            starts = sorted(max(ms(w.start), ms(segment.start)) for w in segment.words)
            ends = [min(ms(w.end), ms(segment.end)) for w in segment.words]
            # Long pauses between words (times made monotonic the way the renderer sees them).
            pauses = [(a, b) for a, b in zip(itertools.accumulate(ends, max), starts[1:], strict=False) if b - a > 1500]
            if ms(segment.end) - max(ms(segment.start), previous_before) >= len(expected_chars(segment.text)):
                # Time enough for a cue per character: whatever the words' times, no text is left out.
                assert "".join("".join(c.text.split()) for c in seg_cues) == expected_chars(segment.text)
            for cue in seg_cues:
                assert ms(segment.start) <= cue.start_ms < cue.end_ms <= ms(segment.end)
                assert cue.end_ms - cue.start_ms <= MAX_CUE_MS and 1 <= len(cue.lines) <= MAX_LINES
                assert not any(cue.start_ms < a and b < cue.end_ms for a, b in pauses), (cue, pauses)
        assert all(a.end_ms <= b.start_ms for a, b in itertools.pairwise(got))
