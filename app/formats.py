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


def _one_line(text: str) -> str:
    """A segment's text on one line: a newline or tab inside it would start another line or column."""
    return " ".join(text.split())


def render_lines(transcript: Transcript) -> str:
    """whisper-asr-webservice's txt: each segment's text on a line of its own."""
    return "".join(f"{line}\n" for s in transcript.segments if (line := _one_line(s.text)))


def render_tsv(transcript: Transcript) -> str:
    """whisper-asr-webservice's tsv: start and end in integer milliseconds, then the text, a segment per row."""
    rows = ["start\tend\ttext\n"]
    for s in transcript.segments:
        if text := _one_line(s.text):
            rows.append(f"{round(s.start * 1000)}\t{round(s.end * 1000)}\t{text}\n")
    return "".join(rows)
