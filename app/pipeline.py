"""The one transcription pipeline shared by the sync and async routes: decode, split, generate, assemble."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

from app import audio, vad
from app.backends import GenerationParams, GenerationRequest, GenerationResult
from app.engine import Engine
from app.protocol.native import TranscribeOptions
from app.transcript import Transcript, TranscriptSegment

ProgressCallback = Callable[[int, int], None]
# Called while a transcription runs, at least every CHECK_SECONDS; it raises to abandon the work (the client
# went away, the job was cancelled, the service is stopping).
Check = Callable[[], None]
CHECK_SECONDS = 0.5
# Segments of one transcription waiting in the engine at once: enough to fill several batches.
MAX_IN_FLIGHT = 64


class Pipeline:
    """Turns an audio file into a Transcript through the shared inference engine."""

    def __init__(
        self, engine: Engine, speech: vad.SpeechModel | None = None, max_audio_seconds: float | None = None
    ) -> None:
        self.engine = engine
        self.speech = speech or vad.SpeechModel(vad.VadSettings())
        # No file decodes (or queues) past this many seconds of audio, whatever its header says.
        self.max_audio_seconds = max_audio_seconds

    def probe(self, path: str | Path) -> None:
        """Refuse what is not plausible audio, or states a duration over the cap, before any work is queued."""
        audio.probe(path, self.max_audio_seconds)

    def transcribe(
        self,
        path: str | Path,
        options: TranscribeOptions,
        on_progress: ProgressCallback | None = None,
        check: Check | None = None,
        *,
        probed: bool = False,
    ) -> Transcript:
        """Transcribe the file at path; on_progress(done, total) is called as segments finish."""
        started = time.monotonic()
        stats = audio.DecodeStats()
        segments = list(self.segments(path, options, on_progress, check, probed=probed, stats=stats))
        return Transcript(
            segments=segments,
            duration=stats.seconds,
            language=options.language,
            processing_seconds=time.monotonic() - started,
        )

    def segments(
        self,
        path: str | Path,
        options: TranscribeOptions,
        on_progress: ProgressCallback | None = None,
        check: Check | None = None,
        *,
        probed: bool = False,
        stats: audio.DecodeStats | None = None,
    ) -> Generator[TranscriptSegment, None, None]:
        """Transcribed segments of the file at path, yielded in order as soon as each and those before it finish.

        Segments go to the engine as ffmpeg decodes them, so generation starts before decoding ends; at
        most MAX_IN_FLIGHT of them wait at a time, which bounds the audio held in memory for a long file.
        Closing the iterator early (a client went away), or check() raising, stops ffmpeg and cancels the
        segments still waiting. probed says the caller has already refused what probe() refuses (the file
        is probed once per request); decoding enforces the duration cap either way. With options.vad only
        speech reaches the model (audio without any yields no segment); stats gets the audio's length.
        """
        params = GenerationParams(options.max_new_tokens, options.temperature, options.repetition_penalty)
        # Each segment's index, start, end and speech spans (empty without VAD), kept without its audio.
        spans: list[tuple[int, float, float, tuple[tuple[float, float], ...]]] = []
        futures: list[Future[GenerationResult]] = []
        pending: set[Future[GenerationResult]] = set()
        done_count = 0
        emitted = 0

        def settle(block: bool) -> None:
            nonlocal pending, done_count
            while True:
                done, pending = wait(pending, timeout=CHECK_SECONDS if block else 0, return_when=FIRST_COMPLETED)
                if done or not block or not pending:
                    break
                if check:
                    check()
            for future in done:
                future.result()  # re-raises the first failure
            done_count += len(done)
            if done and on_progress:
                on_progress(done_count, len(spans))

        def ready() -> Iterator[TranscriptSegment]:
            """The finished segments not yet yielded that have no unfinished segment before them."""
            nonlocal emitted
            while emitted < len(futures) and futures[emitted].done():
                index, start, end, speech = spans[emitted]
                result = futures[emitted].result()
                text = to_traditional([result.text])[0] if options.enable_s2t else result.text
                emitted += 1
                yield TranscriptSegment(index, start, end, text, result.stop_reason, speech)

        # Refuse what is not plausible audio before any of it reaches the engine.
        if not probed:
            self.probe(path)
        if options.vad:
            produced = vad.speech_segments(path, options.segment_duration, self.speech, self.max_audio_seconds, stats)
        else:
            produced = audio.stream_segments(path, options.segment_duration, self.max_audio_seconds, stats)
        try:
            for segment in produced:
                if check:
                    check()
                spans.append((segment.index, segment.start, segment.end, segment.speech if segment.spans else ()))
                request = GenerationRequest(segment.samples, params, options.language, options.prompt)
                future = self.engine.submit([request])[0]
                futures.append(future)
                pending.add(future)
                if on_progress:
                    on_progress(done_count, len(spans))
                settle(block=len(pending) >= MAX_IN_FLIGHT)
                yield from ready()
            while pending:
                settle(block=True)
                yield from ready()
        finally:
            produced.close()  # stops ffmpeg at once when the work was abandoned
            for future in futures:
                future.cancel()  # no-op for finished ones; frees the worker from the rest after a failure


@functools.cache
def _s2t() -> Any:
    """OpenCC's Simplified-to-Traditional converter, built once: segments are converted one at a time."""
    import opencc

    return opencc.OpenCC("s2t")


def to_traditional(texts: list[str]) -> list[str]:
    """Simplified to Traditional Chinese with OpenCC."""
    converter = _s2t()
    return [converter.convert(t) for t in texts]
