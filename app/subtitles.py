"""Subtitle cues from a Transcript: segment texts re-wrapped into readable cues, timed by their words.

The rules every SRT and VTT the service renders follows:

- a cue has at most MAX_LINES lines of at most MAX_LINE_CHARS characters (MAX_LINE_CHARS_CJK when most of the
  cue's characters are Chinese or Japanese, decided per cue) and lasts at most MAX_CUE_MS;
- text is split at sentence punctuation first, then clause punctuation, then spaces, and only as a last resort
  inside a word (between CJK characters is an ordinary break, as CJK text has no spaces);
- every word has a time (the aligner's, or the segment's speech shared out by characters, see app/words.py):
  a cue starts at its first word and ends at its last, held to MIN_CUE_MS when the next cue starts later;
  a pause of more than MAX_PAUSE_MS between two words always ends a cue, so no cue stays on screen through
  it; a cue whose words take over MAX_CUE_MS is split further when it holds more than one word or CJK
  character, and a single word is shown for MAX_CUE_MS from its start;
- times are whole milliseconds (the resolution of both formats): cues never overlap, never leave their
  segment and last at least 1 ms.

The split is chosen by dynamic programming over the break points of each stretch of speech between long
pauses, so a cue boundary at a full stop beats one at a comma, which beats one at a space, while cues and
their lines stay balanced, cues shorter than MIN_CUE_MS are avoided and reading speed stays under
MAX_CHARS_PER_SECOND where the speech allows.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace
from functools import cache
from itertools import pairwise

from app import words
from app.text import cue_text, is_cjk, join_text
from app.transcript import Transcript, TranscriptSegment

MAX_LINES = 2
MAX_LINE_CHARS = 42
MAX_LINE_CHARS_CJK = 16
MAX_CUE_MS = 7_000
MIN_CUE_MS = 800
# A pause between words longer than this ends the cue before it (no subtitle lingers over silence).
MAX_PAUSE_MS = 1_500
MAX_CHARS_PER_SECOND = 20

# "-->" separates the times of a cue in both SRT and VTT, so it must never appear in cue text.
ARROW = "-->"
ARROW_REPLACEMENT = "→"

SENTENCE_END = frozenset(".!?…。！？｡")
CLAUSE_END = frozenset(",;:—，、；：")
# Closing quotes and brackets may follow the punctuation that ends a sentence or clause: 'He said "no." Then'.
CLOSERS = frozenset("\"')]}”’」』）》〉】〕｣")
_CLOSER_CHARS = "".join(sorted(CLOSERS))
# Characters a line should not start with (punctuation belongs at the end of the line before) ...
_NO_BREAK_BEFORE = SENTENCE_END | CLAUSE_END | frozenset(")]}”’」』）》〉】〕｣ー々ゝゞ・")
# ... or end with (an opening bracket belongs with what it opens).
_NO_BREAK_AFTER = frozenset("([{“‘「『（《〈【〔｢")

# Break levels, best first: after a sentence, after a clause, at a space, between CJK characters (the normal
# break in text without spaces), inside a word that is too long for a line.
_SENTENCE, _CLAUSE, _SPACE, _CJK, _INSIDE_WORD = range(5)
# What ending a cue, or a line inside a cue, at each level costs in the split's score.
_CUE_BREAK_COST = (0.0, 4.0, 10.0, 10.0, 100.0)
_LINE_BREAK_COST = (0.0, 1.0, 3.0, 3.0, 50.0)
# Cost of lines of unequal length in a cue, per line width of difference.
_LINE_IMBALANCE_COST = 4.0
# Cost of a first line longer than the second: between otherwise equal breaks, the usual shape is bottom-heavy.
_TOP_HEAVY_COST = 0.1
# Cost of a cue far from full (squared): spreads long text evenly over its cues instead of leaving a stub.
_EMPTY_CUE_COST = 8.0
# Multi-word cues are kept to MAX_CUE_MS - 1 of their words' time: a cue pushed back by 1 ms (see _place) must
# not pass MAX_CUE_MS.
_SHARE_BUDGET_MS = MAX_CUE_MS - 1
# Cost of a cue shorter than MIN_CUE_MS (squared shortfall): merge a flicker into its neighbour when it fits.
_SHORT_CUE_COST = 6.0
# Cost of reading faster than MAX_CHARS_PER_SECOND, per character of the cue's share of the text.
_FAST_CUE_COST = 4.0
# A layout on a single line: no cost, no line breaks.
_ONE_LINE: tuple[float, tuple[int, ...]] = (0.0, ())


@dataclass(frozen=True)
class Cue:
    """One subtitle: its lines, shown from start_ms to end_ms (whole milliseconds)."""

    start_ms: int
    end_ms: int
    lines: tuple[str, ...]

    @property
    def start(self) -> float:
        """Start time in seconds."""
        return self.start_ms / 1000

    @property
    def end(self) -> float:
        """End time in seconds."""
        return self.end_ms / 1000

    @property
    def text(self) -> str:
        """The lines joined by newlines."""
        return "\n".join(self.lines)


@dataclass(frozen=True)
class _Atom:
    """A piece of text that is never broken: a word, a CJK character with its punctuation, a word fragment."""

    text: str
    space_before: bool  # separated from the previous atom by a space, which a line break drops
    level: int  # how good a break before this atom is (one of the break levels)
    cjk: int  # how many of its characters are CJK


def cues(transcript: Transcript) -> list[Cue]:
    """The subtitle cues of a whole transcript, in order and never overlapping."""
    out: list[Cue] = []
    for segment in transcript.segments:
        out.extend(segment_cues(segment, out[-1].end_ms if out else 0))
    return out


def segment_cues(segment: TranscriptSegment, not_before_ms: int = 0) -> list[Cue]:
    """The cues of one segment, none starting before not_before_ms (where the previous cue ends)."""
    if not (math.isfinite(segment.start) and math.isfinite(segment.end)):
        return []
    # Clamped to the previous cue's end so that segments that overlap (the pipeline never makes them, but a
    # Transcript may hold them) still give cues that do not.
    start_ms = max(to_ms(segment.start), not_before_ms, 0)
    end_ms = to_ms(segment.end)
    text = subtitle_text(segment.text)
    if not text or end_ms <= start_ms:
        # A segment of zero length (or one wholly inside the previous cue) has no time to show anything.
        return []
    if start_ms > to_ms(segment.start) and not segment.words:
        # Only what the previous cue left of the segment is shared out (the estimate would put words under it).
        left = start_ms / 1000
        speech = tuple((max(a, left), b) for a, b in segment.speech if b > left)
        segment = replace(segment, start=left, speech=speech)
    begins, ends = _char_times(segment, text)
    atoms = _split_at_pauses(_atoms(text), text, begins, ends)
    times = _atom_times(text, atoms, begins, ends, start_ms, end_ms)
    groups: list[tuple[tuple[str, ...], int, int]] = []
    first = 0
    for k in range(1, len(atoms) + 1):
        if k == len(atoms) or times[k][0] - times[k - 1][1] > MAX_PAUSE_MS:
            groups.extend((lines, first + a, first + b) for lines, a, b in _split(atoms[first:k], times[first:k]))
            first = k
    return _place(groups, times, start_ms, end_ms)


def _char_times(segment: TranscriptSegment, text: str) -> tuple[list[float], list[float]]:
    """When each character of text starts and ends, in seconds (NaN for those outside every word, spaces among
    them): each word's time is shared among its written characters."""
    timed = words.timed(segment, text) or [
        (words.TextWord(0, len(text), ""), segment.at(0.0), segment.at(1.0, ending=True))
    ]  # nothing the aligner would call a word ("♪"): the whole text over the whole speech
    begins = [math.nan] * len(text)
    ends = [math.nan] * len(text)
    for word, begin, end in timed:
        written = [i for i in range(word.start, word.end) if not text[i].isspace()]
        for n, i in enumerate(written):
            begins[i] = begin + (end - begin) * n / len(written)
            ends[i] = begin + (end - begin) * (n + 1) / len(written)
    return begins, ends


def _split_at_pauses(atoms: list[_Atom], text: str, begins: list[float], ends: list[float]) -> list[_Atom]:
    """The atoms, each cut where a pause of over MAX_PAUSE_MS falls between two of its characters.

    An atom is cut at spaces and CJK characters only, so it can hold the end of one word and the start of the
    next with no space between (a word's trailing symbols, then a letter): spoken on both sides of a pause, it
    would keep a cue on screen through it.
    """
    out: list[_Atom] = []
    at = 0
    for atom in atoms:
        at += atom.space_before
        cut, last_end = 0, math.nan
        for i in range(len(atom.text)):
            # NaN (a character outside every word, or nothing timed before it) never counts as a pause.
            if i > cut and (begins[at + i] - last_end) * 1000 > MAX_PAUSE_MS:
                piece = atom.text[cut:i]
                out.append(_Atom(piece, atom.space_before and cut == 0, atom.level if cut == 0 else _INSIDE_WORD,
                                 sum(1 for c in piece if is_cjk(c))))  # fmt: skip
                cut = i
            if math.isfinite(ends[at + i]):
                last_end = ends[at + i]
        piece = atom.text[cut:]
        if cut == 0:
            out.append(atom)
        else:
            out.append(_Atom(piece, False, _INSIDE_WORD, sum(1 for c in piece if is_cjk(c))))
        at += len(atom.text)
    return out


def _atom_times(
    text: str, atoms: list[_Atom], begins: list[float], ends: list[float], start_ms: int, end_ms: int
) -> list[tuple[int, int]]:
    """When each atom of text is spoken, in whole ms inside [start_ms, end_ms], in order and never overlapping:
    from its first timed character's start to its last one's end."""
    out: list[tuple[int, int]] = []
    at = 0
    floor = start_ms
    for atom in atoms:
        at += atom.space_before
        spoken = [t for t in begins[at : at + len(atom.text)] if math.isfinite(t)]
        done = [t for t in ends[at : at + len(atom.text)] if math.isfinite(t)]
        begin = min(max(to_ms(spoken[0]) if spoken else floor, floor), end_ms)
        finish = min(max(to_ms(done[-1]) if done else begin, begin), end_ms)
        out.append((begin, finish))
        floor = finish
        at += len(atom.text)
    return out


def to_ms(seconds: float) -> int:
    """Seconds to the nearest whole millisecond."""
    return round(seconds * 1000)


def subtitle_text(text: str) -> str:
    """A segment's text as one line for re-wrapping: whitespace runs become one space, no "-->".

    Line breaks are only whitespace here; like join_text, a line break between two CJK characters is dropped
    rather than made a space, as those scripts do not put spaces between words.
    """
    lines = (" ".join(line.split()) for line in cue_text(text).split("\n"))
    return join_text(list(lines)).replace(ARROW, ARROW_REPLACEMENT)


def line_limit(text: str) -> int:
    """The line width for a cue's text: MAX_LINE_CHARS_CJK when most of its non-space characters are CJK."""
    counts = Counter(c for c in text if not c.isspace())
    cjk = sum(n for c, n in counts.items() if is_cjk(c))
    return MAX_LINE_CHARS_CJK if 2 * cjk > counts.total() else MAX_LINE_CHARS


def _break_level(before: str, at_space: bool) -> int:
    """The level of a break after the text `before`: from its last character, closing quotes skipped."""
    stripped = before.rstrip(_CLOSER_CHARS)
    last = stripped[-1:] or " "
    if last in SENTENCE_END:
        return _SENTENCE
    if last in CLAUSE_END:
        return _CLAUSE
    return _SPACE if at_space else _CJK


def _atoms(text: str) -> list[_Atom]:
    """The unbreakable pieces of a subtitle_text, each short enough for a line, with the breaks between them."""
    cjk = {char: is_cjk(char) for char in set(text)}  # looked up once per character, not per pair
    atoms: list[_Atom] = []
    for word in text.split(" "):
        # Inside a word, break only next to a CJK character (or after a dash or ellipsis joining two words),
        # and never where it would start a line with punctuation or end one with an opening bracket.
        pieces = [word[0]]
        for prev, char in pairwise(word):
            breakable = (cjk[prev] or cjk[char] or prev in "—…") and not (
                char in _NO_BREAK_BEFORE or prev in _NO_BREAK_AFTER
            )
            if breakable:
                pieces.append(char)
            else:
                pieces[-1] += char
        for n, piece in enumerate(pieces):
            # The first atom of the text has no break before it; its level is never used.
            level = _break_level(atoms[-1].text, at_space=n == 0) if atoms else _SENTENCE
            for k, fragment in enumerate(_fragments(piece)):
                space_before = n == 0 and k == 0 and bool(atoms)
                atoms.append(_Atom(fragment, space_before, level, sum(1 for c in fragment if cjk[c])))
                level = _INSIDE_WORD
    return atoms


def _fragments(piece: str) -> list[str]:
    """A piece of text with no break in it, cut into equal fragments that each fit a line: the last resort."""
    if len(piece) <= MAX_LINE_CHARS_CJK:
        return [piece]  # fits any line
    for limit in (line_limit(piece), MAX_LINE_CHARS_CJK):
        count = -(-len(piece) // limit)
        bounds = [round(k * len(piece) / count) for k in range(count + 1)]
        fragments = [piece[i:j] for i, j in pairwise(bounds)]
        # A fragment is measured by its own characters: one cut from a mostly Latin piece may be mostly CJK,
        # and then the CJK width applies, so cut again at that width.
        if all(len(f) <= line_limit(f) for f in fragments):
            break
    return fragments


def _split(atoms: list[_Atom], times: list[tuple[int, int]]) -> list[tuple[tuple[str, ...], int, int]]:
    """The best split of atoms (spoken at times) into cues: each cue's lines and its first and end atom."""
    n = len(atoms)
    # Prefix sums: characters, CJK characters, spaces between atoms, breaks between words (any level but
    # _INSIDE_WORD).
    chars = [0] * (n + 1)
    cjk = [0] * (n + 1)
    spaces = [0] * (n + 1)
    words = [0] * (n + 1)
    for k, atom in enumerate(atoms):
        chars[k + 1] = chars[k] + len(atom.text)
        cjk[k + 1] = cjk[k] + atom.cjk
        spaces[k + 1] = spaces[k] + (atom.space_before and k > 0)
        words[k + 1] = words[k] + (atom.level != _INSIDE_WORD and k > 0)
    total = chars[n]

    def width(a: int, b: int) -> int:
        """Characters of atoms[a:b] on one line, the spaces between them included."""
        return chars[b] - chars[a] + spaces[b] - spaces[a + 1]

    @cache
    def layout(a: int, b: int, lines: int, limit: int) -> tuple[float, tuple[int, ...]] | None:
        """The cheapest way to lay atoms[a:b] in at most `lines` lines of `limit`: cost and line starts after a."""
        if width(a, b) <= limit:
            return _ONE_LINE  # one line whenever it fits
        best: tuple[float, tuple[int, ...]] | None = None
        if lines == 1:
            return best
        rest_limit = (lines - 1) * (limit + 1) - 1  # the widest text the other lines could hold
        # m is where the second line starts: walked back from b for as long as the rest can still fit.
        for m in range(b - 1, a, -1):
            rest_width = chars[b] - chars[m] + spaces[b] - spaces[m + 1]
            if rest_width > rest_limit:
                break
            first = chars[m] - chars[a] + spaces[m] - spaces[a + 1]
            if first > limit:
                continue
            rest = _ONE_LINE if rest_width <= limit else layout(m, b, lines - 1, limit)
            if rest is None:
                continue
            imbalance = abs(first - rest_width / (lines - 1)) / limit
            cost = _LINE_BREAK_COST[atoms[m].level] + _LINE_IMBALANCE_COST * imbalance + rest[0]
            if first > rest_width:
                cost += _TOP_HEAVY_COST
            if best is None or cost < best[0]:
                best = cost, (m, *rest[1])
        return best

    max_width = MAX_LINES * max(MAX_LINE_CHARS, MAX_LINE_CHARS_CJK) + MAX_LINES - 1
    # best[b]: the cheapest split of atoms[:b], from the cue atoms[start[b]:b] with line starts breaks[b].
    best = [0.0] + [math.inf] * n
    start = [0] * (n + 1)
    breaks: list[tuple[int, ...]] = [()] * (n + 1)
    for b in range(1, n + 1):
        for a in range(b - 1, -1, -1):
            cue_width = chars[b] - chars[a] + spaces[b] - spaces[a + 1]
            if cue_width > max_width:
                break
            cue_chars = chars[b] - chars[a]
            # The line width is the cue's own: CJK when most of its characters are.
            limit = MAX_LINE_CHARS_CJK if 2 * (cjk[b] - cjk[a]) > cue_chars else MAX_LINE_CHARS
            spoken_ms = times[b - 1][1] - times[a][0]
            time_fill = spoken_ms / _SHARE_BUDGET_MS
            if words[b] - words[a + 1] > 0 and time_fill > 1:
                break  # more than one word and too long a time: must be split; a single word is clipped
            if cue_width > MAX_LINES * limit + MAX_LINES - 1:
                continue
            lay = _ONE_LINE if cue_width <= limit else layout(a, b, MAX_LINES, limit)
            if lay is None:
                continue
            fill = min(1.0, max(cue_width / (MAX_LINES * limit), time_fill))
            cue_break = _CUE_BREAK_COST[atoms[a].level] if a else 0.0
            cost = best[a] + cue_break + lay[0] + _EMPTY_CUE_COST * (1 - fill) ** 2
            shown_ms = max(spoken_ms, MIN_CUE_MS)
            if spoken_ms < MIN_CUE_MS:
                cost += _SHORT_CUE_COST * (1 - spoken_ms / MIN_CUE_MS) ** 2
            speed = 1000 * cue_chars / (shown_ms * MAX_CHARS_PER_SECOND)
            if speed > 1:
                cost += _FAST_CUE_COST * (speed - 1) * cue_chars / total
            if cost < best[b]:
                best[b], start[b], breaks[b] = cost, a, lay[1]
    # A single atom always fits one line and is never split for time, so every best[b] is finite.
    out: list[tuple[tuple[str, ...], int, int]] = []
    b = n
    while b:
        a = start[b]
        bounds = (a, *breaks[b], b)
        lines = tuple(_line(atoms[i:j]) for i, j in pairwise(bounds))
        out.append((lines, a, b))
        b = a
    return out[::-1]


def _line(atoms: list[_Atom]) -> str:
    """The text of atoms laid on one line."""
    return "".join((" " if atom.space_before and k else "") + atom.text for k, atom in enumerate(atoms))


def _place(groups: list[tuple[tuple[str, ...], int, int]], times: list[tuple[int, int]], start_ms: int,
           end_ms: int) -> list[Cue]:  # fmt: skip
    """The cues of a segment's groups of atoms: from the first atom's start to the last one's end.

    A cue is held to MIN_CUE_MS when the next one starts later; it lasts at least 1 ms (pushing the next one
    back by as much when words are packed closer than that) and at most MAX_CUE_MS. Each cue leaves 1 ms of
    the segment for every cue after it, so words the aligner piled up at the segment's end (it does so with
    text the audio does not hold) still get their cues, brought forward. Only a segment with fewer
    milliseconds than cues leaves some out: their text cannot move to a neighbour without breaking the line
    limits.
    """
    out: list[Cue] = []
    for k, (lines, a, b) in enumerate(groups):
        latest = end_ms - (len(groups) - k - 1)  # the last end that leaves 1 ms to each cue still to come
        floor = out[-1].end_ms if out else start_ms
        begin = max(min(times[a][0], latest - 1), floor)
        following = times[groups[k + 1][1]][0] if k + 1 < len(groups) else end_ms
        finish = max(times[b - 1][1], min(begin + MIN_CUE_MS, following), begin + 1)
        finish = min(finish, begin + MAX_CUE_MS, latest)
        if finish > begin:
            out.append(Cue(begin, finish, lines))
    return out
