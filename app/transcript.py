"""The result of a transcription: its timed segments, with no knowledge of how they were made or are rendered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.text import join_text

# Why generation stopped: eos (the model finished), max_tokens (a limit cut it), repetition (a loop was detected
# and its repeated tail trimmed).
StopReason = Literal["eos", "max_tokens", "repetition"]


@dataclass(frozen=True)
class Word:
    """One word as written (punctuation attached) and when it is spoken, in seconds of the file."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class TranscriptSegment:
    """One segment's text and its position in the audio, in seconds."""

    index: int
    start: float
    end: float
    text: str
    stop_reason: StopReason = "eos"
    # Where the speech the model heard lies in the file, in seconds, when VAD cut the segment (the pauses
    # between these spans were shortened for the model); empty: the whole of start to end.
    speech: tuple[tuple[float, float], ...] = ()
    # The aligner's word times, when it ran on this segment; empty: none (an estimate stands in where needed).
    words: tuple[Word, ...] = ()
    # The language the model identified in it (a code), for models that report one.
    language: str | None = None

    @property
    def spans(self) -> tuple[tuple[float, float], ...]:
        """The speech spans, or the whole segment as one."""
        return self.speech or ((self.start, self.end),)

    def at(self, fraction: float, *, ending: bool = False) -> float:
        """The file time a fraction of the way through the segment's speech, its pauses skipped.

        A fraction that falls between two spans is the start of the later one, or with ending the end of
        the earlier one: a start never lies in a pause, nor does an end.
        """
        spans = self.spans
        left = min(max(fraction, 0.0), 1.0) * sum(end - start for start, end in spans)
        for start, end in spans:
            length = end - start
            if left < length or (ending and left <= length):
                return start + left
            left -= length
        return spans[-1][1]


@dataclass(frozen=True)
class Transcript:
    """The result of one transcription."""

    segments: list[TranscriptSegment]
    duration: float
    language: str | None
    processing_seconds: float

    @property
    def text(self) -> str:
        """The whole transcript as one string: a space between words, nothing between CJK characters."""
        return join_text([s.text for s in self.segments])
