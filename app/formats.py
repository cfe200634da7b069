"""Pure renderers from a Transcript to the response formats."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import srt
import webvtt

from app.pipeline import Transcript

# The Content-Type of each text rendering, complete: set as is (werkzeug would append a second charset to a
# text/* mimetype that already names one).
CONTENT_TYPES = {
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}

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


def transcript_text(transcript: Transcript) -> str:
    """The whole transcript as one string."""
    return join_text([s.text for s in transcript.segments])


def render_text(transcript: Transcript) -> str:
    """The whole transcript as plain text, newline-terminated."""
    return transcript_text(transcript) + "\n"


def render_srt(transcript: Transcript) -> str:
    """SubRip subtitles: the transcript's cues (see app.subtitles), numbered from 1."""
    from app import subtitles  # here, not at the top: subtitles builds on this module's text helpers

    items = [
        srt.Subtitle(
            index=0,
            start=timedelta(milliseconds=cue.start_ms),
            end=timedelta(milliseconds=cue.end_ms),
            content=cue.text,
        )
        for cue in subtitles.cues(transcript)
    ]
    return str(srt.compose(items, reindex=True, start_index=1))


def render_vtt(transcript: Transcript) -> str:
    """WebVTT subtitles: the transcript's cues (see app.subtitles), text escaped for VTT."""
    from app import subtitles  # here, not at the top: subtitles builds on this module's text helpers

    captions = [
        webvtt.Caption(
            _vtt_timestamp(cue.start_ms), _vtt_timestamp(cue.end_ms), [_vtt_escape(line) for line in cue.lines]
        )
        for cue in subtitles.cues(transcript)
    ]
    return webvtt.WebVTT(captions=captions).content


def _vtt_timestamp(ms: int) -> str:
    """A WebVTT timestamp, HH:MM:SS.mmm (hours grow past two digits when they must)."""
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _vtt_escape(line: str) -> str:
    """Cue text for VTT: & < > escaped, so the text is shown as is and never read as a tag or entity."""
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cue_text(text: str) -> str:
    """Text safe inside a subtitle cue: no carriage returns, no blank lines (a blank line ends a cue)."""
    lines = (line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    return "\n".join(line for line in lines if line)


def segments_json(transcript: Transcript) -> list[dict[str, Any]]:
    """The per-segment view used by the JSON outputs."""
    return [
        {
            "index": s.index,
            "start": round(s.start, 3),
            "end": round(s.end, 3),
            "text": s.text,
            "stop_reason": s.stop_reason,
        }
        for s in transcript.segments
    ]
