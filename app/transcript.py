"""The result of a transcription: its timed segments, with no knowledge of how they were made or are rendered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.text import join_text

# Why generation stopped: eos (the model finished), max_tokens (a limit cut it), repetition (a loop was detected
# and its repeated tail trimmed).
StopReason = Literal["eos", "max_tokens", "repetition"]


@dataclass(frozen=True)
class TranscriptSegment:
    """One segment's text and its position in the audio, in seconds."""

    index: int
    start: float
    end: float
    text: str
    stop_reason: StopReason = "eos"


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
