"""The one transcription pipeline shared by the sync and async routes: decode, split, generate, assemble."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path

from app import audio
from app.backends import GenerationParams, GenerationRequest, GenerationResult, StopReason
from app.engine import Engine
from app.options import TranscribeOptions

ProgressCallback = Callable[[int, int], None]
# Segments of one transcription waiting in the engine at once: enough to fill several batches.
MAX_IN_FLIGHT = 64


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
        """Transcribe the file at path; on_progress(done, total) is called as segments finish.

        Segments go to the engine as ffmpeg decodes them, so generation starts before decoding ends; at
        most MAX_IN_FLIGHT of them wait at a time, which bounds the audio held in memory for a long file.
        """
        started = time.monotonic()
        params = GenerationParams(options.max_new_tokens, options.temperature, options.repetition_penalty)
        spans: list[tuple[int, float, float]] = []
        futures: list[Future[GenerationResult]] = []
        pending: set[Future[GenerationResult]] = set()
        done_count = 0

        def settle(block: bool) -> None:
            nonlocal pending, done_count
            done, pending = wait(pending, timeout=None if block else 0, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()  # re-raises the first failure
            done_count += len(done)
            if done and on_progress:
                on_progress(done_count, len(spans))

        try:
            for segment in audio.stream_segments(path, options.segment_duration):
                spans.append((segment.index, segment.start, segment.end))
                request = GenerationRequest(segment.samples, params, options.language, options.prompt)
                future = self.engine.submit([request])[0]
                futures.append(future)
                pending.add(future)
                if on_progress:
                    on_progress(done_count, len(spans))
                settle(block=len(pending) >= MAX_IN_FLIGHT)
            while pending:
                settle(block=True)
        finally:
            for future in futures:
                future.cancel()  # no-op for finished ones; frees the worker from the rest after a failure
        results = [f.result() for f in futures]
        texts = [r.text for r in results]
        if options.enable_s2t:
            texts = to_traditional(texts)
        return Transcript(
            segments=[
                TranscriptSegment(index, start, end, text, r.stop_reason)
                for (index, start, end), text, r in zip(spans, texts, results, strict=True)
            ],
            duration=spans[-1][2],
            language=options.language,
            processing_seconds=time.monotonic() - started,
        )


def to_traditional(texts: list[str]) -> list[str]:
    """Simplified to Traditional Chinese with OpenCC."""
    import opencc

    converter = opencc.OpenCC("s2t")
    return [converter.convert(t) for t in texts]
