"""Pure renderers from a Transcript to the response formats."""

from __future__ import annotations

from datetime import timedelta

import srt
import webvtt

from app import subtitles
from app.transcript import Transcript

# The Content-Type of each text rendering, complete: set as is (werkzeug would append a second charset to a
# text/* mimetype that already names one).
CONTENT_TYPES = {
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}


def render_text(transcript: Transcript) -> str:
    """The whole transcript as plain text, newline-terminated."""
    return transcript.text + "\n"


def render_srt(transcript: Transcript) -> str:
    """SubRip subtitles: the transcript's cues (see app.subtitles), numbered from 1."""
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
