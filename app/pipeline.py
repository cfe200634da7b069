"""The one transcription pipeline shared by the sync and async routes: decode, split, generate, assemble."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import dataclass
from pathlib import Path

from app import audio
from app.backends import GenerationParams, GenerationRequest, StopReason
from app.engine import Engine
from app.options import TranscribeOptions

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class TranscriptSegment:
    """One segment's text and its position in the audio, in seconds."""

    index: int
    start: float
    end: float
    text: str
    # Why generation stopped: eos (the model finished), max_tokens (a limit cut it), repetition (a loop
    # was detected and its repeated tail trimmed).
    stop_reason: StopReason = "eos"


@dataclass(frozen=True)
class Transcript:
    """The result of one transcription."""

    segments: list[TranscriptSegment]
    duration: float
    language: str | None
    processing_seconds: float


class Pipeline:
    """Turns an audio file into a Transcript through the shared inference engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def transcribe(
        self, path: str | Path, options: TranscribeOptions, on_progress: ProgressCallback | None = None
    ) -> Transcript:
        """Transcribe the file at path; on_progress(done, total) is called as segments finish."""
        started = time.monotonic()
        samples = audio.decode(path)
        segments = audio.split(samples, options.segment_duration)
        params = GenerationParams(options.max_new_tokens, options.temperature, options.repetition_penalty)
        requests = [GenerationRequest(s.samples, params, options.language, options.prompt) for s in segments]
        if on_progress:
            on_progress(0, len(segments))
        futures = self.engine.submit(requests)
        try:
            done_count = 0
            not_done = set(futures)
            while not_done:
                done, not_done = wait(not_done, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()  # re-raises the first failure
                done_count += len(done)
                if on_progress:
                    on_progress(done_count, len(segments))
        finally:
            for future in futures:
                future.cancel()  # no-op for finished ones; frees the worker from the rest after a failure
        results = [f.result() for f in futures]
        texts = [r.text for r in results]
        if options.enable_s2t:
            texts = to_traditional(texts)
        return Transcript(
            segments=[
                TranscriptSegment(s.index, s.start, s.end, text, r.stop_reason)
                for s, text, r in zip(segments, texts, results, strict=True)
            ],
            duration=audio.duration_of(samples),
            language=options.language,
            processing_seconds=time.monotonic() - started,
        )


def to_traditional(texts: list[str]) -> list[str]:
    """Simplified to Traditional Chinese with OpenCC."""
    import opencc

    converter = opencc.OpenCC("s2t")
    return [converter.convert(t) for t in texts]
