"""Text helpers shared by the renderers and the subtitle cues: scripts without spaces, joining, cue-safe text."""

from __future__ import annotations

import zlib

# Scripts written without spaces between words: CJK symbols and punctuation, kana, Han, fullwidth forms.
# Hangul is left out on purpose: Korean separates words with spaces.
_UNSPACED = (
    (0x3000, 0x30FF),  # CJK symbols and punctuation, hiragana, katakana
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFF00, 0xFFEF),  # halfwidth and fullwidth forms
    (0x20000, 0x3FFFF),  # CJK extensions B onwards
)


def is_cjk(char: str) -> bool:
    """Whether char belongs to a script written without spaces between words."""
    code = ord(char)
    return any(low <= code <= high for low, high in _UNSPACED)


def join_text(parts: list[str]) -> str:
    """Join segment texts: a space between words, nothing between CJK characters."""
    out = ""
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if out and not (is_cjk(out[-1]) and is_cjk(part[0])):
            out += " "
        out += part
    return out


def cue_text(text: str) -> str:
    """Text safe inside a subtitle cue: no carriage returns, no blank lines (a blank line ends a cue)."""
    lines = (line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return "\n".join(line for line in lines if line)


def compression_ratio(text: str) -> float | None:
    """Whisper's measure of repetitiveness: text bytes over zlib-compressed bytes (None for empty text)."""
    data = text.encode("utf-8")
    if not data:
        return None
    return round(len(data) / len(zlib.compress(data)), 3)
