"""The words of a segment's text and their times: the aligner's, or an estimate from the segment's speech.

A word is what a reader sees as one: a run of characters between spaces, except that every CJK ideograph is
a word of its own (those scripts put no spaces between words), and punctuation belongs to the word it is
written against ("Hello," and "“Yes" are words; a dash standing alone joins the word before it). This is
the splitting Qwen3-ForcedAligner's processor does (split_words_for_alignment), with the punctuation kept:
its words are these with every character but letters, digits and apostrophes dropped.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from app.transcript import TranscriptSegment, Word

# An alignment that leaves most words without duration (piled up at one instant, typically at the end of
# the audio for text the audio does not hold) has failed: it would give cues no time to be seen.
MAX_INSTANT_SHARE = 0.5


@dataclass(frozen=True)
class TextWord:
    """A word of a text: where it lies (character offsets) and the form the aligner sees."""

    start: int
    end: int
    key: str


def is_ideograph(char: str) -> bool:
    """A CJK ideograph (the aligner gives each its own time); kana and Hangul are letters like any other."""
    code = ord(char)
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0x20000 <= code <= 0x2CEAF
        or 0xF900 <= code <= 0xFAFF
        or 0x2F800 <= code <= 0x2FA1F
    )


def is_kept(char: str) -> bool:
    """A character the aligner keeps: letters, digits, apostrophes."""
    return char == "'" or unicodedata.category(char)[0] in "LN"


def text_words(text: str) -> list[TextWord]:
    """The words of text, in order, each with at least one character the aligner keeps."""
    pieces: list[list[int]] = []  # [start, end] of each piece between spaces and around ideographs
    open_piece = False
    for at, char in enumerate(text):
        if char.isspace():
            open_piece = False
        elif is_ideograph(char):
            pieces.append([at, at + 1])
            open_piece = False
        elif open_piece:
            pieces[-1][1] = at + 1
        elif pieces and pieces[-1][1] == at and not is_kept(char):
            pieces[-1][1] = at + 1  # punctuation right after an ideograph: "市，"
        else:
            pieces.append([at, at + 1])
            open_piece = True
    words: list[TextWord] = []
    for start, end in pieces:
        key = "".join(c for c in text[start:end] if is_kept(c))
        if key:
            words.append(TextWord(start, end, key))
        elif words:
            # Punctuation alone ("—", "…"): part of the word before it; at the very start, of the one after.
            words[-1] = TextWord(words[-1].start, end, words[-1].key)
        else:
            words.append(TextWord(start, end, ""))
    if len(words) > 1 and not words[0].key:
        words[1] = TextWord(words[0].start, words[1].end, words[1].key)
        del words[0]
    return [w for w in words if w.key]


def key(text: str) -> str:
    """The form of a word the aligner sees: its letters, digits and apostrophes."""
    return "".join(c for c in text if is_kept(c))


def estimate(segment: TranscriptSegment, text: str | None = None) -> list[tuple[TextWord, float, float]]:
    """The words of text (default: the segment's) timed by sharing the segment's speech out by characters.

    Each word gets the share of its written characters (punctuation too, which takes time to read), in
    order, so none starts or ends in a pause between the segment's speech spans.
    """
    written = segment.text if text is None else text
    found = text_words(written)
    sizes = [sum(not c.isspace() for c in written[w.start : w.end]) for w in found]
    total = sum(sizes)
    out: list[tuple[TextWord, float, float]] = []
    done = 0
    spans = segment.spans
    for w, size in zip(found, sizes, strict=True):
        start = segment.at(done / total)
        done += size
        end = max(start, segment.at(done / total, ending=True))
        # A word is said on one side of a pause: one whose share straddles it goes where most of it lies.
        touched = [(min(end, b) - max(start, a), a, b) for a, b in spans if a < end and start < b]
        if len(touched) > 1:
            _, a, b = max(touched)
            start, end = max(start, a), min(end, b)
        out.append((w, start, end))
    return out


def timed(segment: TranscriptSegment, text: str | None = None) -> list[tuple[TextWord, float, float]]:
    """The words of text (default: the segment's) with times: the segment's own words' where they are the
    same words, else the estimate."""
    found = text_words(segment.text if text is None else text)
    if segment.words and [key(w.text) for w in segment.words] == [w.key for w in found]:
        return [(w, word.start, word.end) for w, word in zip(found, segment.words, strict=True)]
    return estimate(segment, text)


def words_of(segment: TranscriptSegment) -> tuple[Word, ...]:
    """The segment's words as written, with times: the aligner's where it gave them, else the estimate."""
    return segment.words or tuple(Word(written(segment.text, w), a, b) for w, a, b in estimate(segment))


def written(text: str, word: TextWord) -> str:
    """The word as the text writes it, a line break or spaces inside it (before a lone dash) as one space."""
    return " ".join(text[word.start : word.end].split())


def from_alignment(
    segment: TranscriptSegment, aligned: Sequence[tuple[str, float, float]], aligned_text: str | None = None
) -> tuple[Word, ...] | None:
    """The segment's words timed by the aligner, or None when its words are not the text's or most of them
    have no duration.

    aligned holds the aligner's (word, start, end) in seconds of the audio it was given: the segment's
    speech spans joined. aligned_text is the text it was given when the segment's differs (converted to
    Traditional characters, word for word). Times are placed back in the file, made monotonic and kept
    inside the segment.
    """
    found = text_words(segment.text)
    keys = [w.key for w in (found if aligned_text is None else text_words(aligned_text))]
    if keys != [a[0] for a in aligned] or len(keys) != len(found):
        return None
    out: list[Word] = []
    floor = segment.start
    for w, (_, start, end) in zip(found, aligned, strict=True):
        begin = min(max(_to_file(segment, start, ending=False), floor), segment.end)
        finish = min(max(_to_file(segment, end, ending=True), begin), segment.end)
        out.append(Word(written(segment.text, w), begin, finish))
        floor = finish
    instants = sum(1 for w in out if w.end <= w.start)
    if len(out) > 1 and instants > len(out) * MAX_INSTANT_SHARE:
        return None
    return tuple(out)


def _to_file(segment: TranscriptSegment, seconds: float, *, ending: bool) -> float:
    """A time in the segment's joined speech audio as a time in the file."""
    left = max(seconds, 0.0)
    for start, end in segment.spans:
        if left < end - start or (ending and left <= end - start):
            return start + left
        left -= end - start
    return segment.spans[-1][1]
