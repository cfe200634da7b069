"""The one transcription pipeline shared by the sync and async routes: decode, split, generate, assemble."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, InvalidStateError, wait
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from app import audio, vad
from app.backends import (
    IDENTIFY_TOKENS,
    Alignment,
    AlignmentRequest,
    GenerationParams,
    GenerationRequest,
    GenerationResult,
)
from app.engine import Inference
from app.errors import InferenceFailed, NoSpeech, ServiceError
from app.metrics import Metrics
from app.protocol.native import TranscribeOptions
from app.tracing import add_audio
from app.transcript import Transcript, TranscriptSegment
from app.words import from_alignment

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
# Called while a transcription runs, at least every CHECK_SECONDS; it raises to abandon the work (the client
# went away, the job was cancelled, the service is stopping).
Check = Callable[[], None]
CHECK_SECONDS = 0.5
# Segments of one transcription waiting in the engine at once: enough to fill several batches.
MAX_IN_FLIGHT = 64
# Language identification hears this much speech from the start of the file, as Whisper's detection does.
IDENTIFY_SECONDS = 30.0


@dataclass(frozen=True)
class LanguageGuess:
    """The language identified in a file's first speech, the model's probability for it, and how much it heard."""

    language: str
    confidence: float
    seconds: float


class Pipeline:
    """Turns an audio file into a Transcript through the shared inference engine."""

    def __init__(
        self,
        engine: Inference,
        speech: vad.SpeechModel | None = None,
        max_audio_seconds: float | None = None,
        *,
        paced: bool = True,
        metrics: Metrics | None = None,
    ) -> None:
        self.engine = engine
        # Where decode and VAD times and the audio processed are recorded (none: not recorded).
        self.metrics = metrics
        # False for a model whose output does not follow the audio's length (the Captioner): no runaway guard.
        self.paced = paced
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
        align: bool = False,
    ) -> Transcript:
        """Transcribe the file at path; on_progress(done, total) is called as segments finish.

        align: the output needs word times, so each segment's text is timed by the aligner too.
        """
        started = time.monotonic()
        stats = audio.DecodeStats()
        segments = list(self.segments(path, options, on_progress, check, probed=probed, stats=stats, align=align))
        return Transcript(
            segments=segments,
            duration=stats.seconds,
            language=options.language or identified(segments),
            processing_seconds=time.monotonic() - started,
        )

    def identify(
        self, path: str | Path, speech_only: bool, check: Check | None = None, *, probed: bool = False
    ) -> LanguageGuess:
        """The language of the first IDENTIFY_SECONDS of speech in the file (with speech_only, found by the VAD),
        or of audio.

        NoSpeech when there is none to hear; InferenceFailed if the model named no language.
        """
        if not probed:
            self.probe(path)
        samples = self._first_audio(path, speech_only, check)
        if not len(samples):
            raise NoSpeech("no speech was found in the audio, so its language cannot be identified")
        params = GenerationParams(IDENTIFY_TOKENS, 0.0, 1.0)
        future = self.engine.submit([GenerationRequest(samples, params, task="identify")])[0]
        try:
            while True:
                try:
                    result = future.result(timeout=CHECK_SECONDS)
                    break
                except TimeoutError:
                    if check:
                        check()
        finally:
            future.cancel()  # no-op once finished; frees the worker from abandoned work
        if result.language is None or result.confidence is None:
            raise InferenceFailed("the model named no language for this audio")
        # Counted once identified, as a transcription's audio is once transcribed.
        self._count_audio(len(samples) / audio.SAMPLE_RATE)
        return LanguageGuess(result.language, result.confidence, len(samples) / audio.SAMPLE_RATE)

    def _count_audio(self, seconds: float) -> None:
        """Audio decoded for the current request, and for the service's metrics."""
        add_audio(seconds)
        if self.metrics is not None:
            self.metrics.audio_seconds.inc(seconds)

    def _first_audio(self, path: str | Path, speech_only: bool, check: Check | None = None) -> np.ndarray:
        """The first IDENTIFY_SECONDS of the file's speech or audio, joined; ffmpeg stops there (or when check
        raises, between segments)."""
        need = round(IDENTIFY_SECONDS * audio.SAMPLE_RATE)
        if speech_only:
            produced = vad.speech_segments(path, IDENTIFY_SECONDS, self.speech, self.max_audio_seconds)
        else:
            produced = audio.stream_segments(path, IDENTIFY_SECONDS, self.max_audio_seconds)
        kept: list[np.ndarray] = []
        have = 0
        with closing(produced):
            for segment in produced:
                if check:
                    check()
                kept.append(segment.samples[: need - have])
                have += len(kept[-1])
                if have >= need:
                    break
        return np.concatenate(kept) if kept else np.zeros(0, dtype=np.float32)

    def segments(
        self,
        path: str | Path,
        options: TranscribeOptions,
        on_progress: ProgressCallback | None = None,
        check: Check | None = None,
        *,
        probed: bool = False,
        stats: audio.DecodeStats | None = None,
        align: bool = False,
    ) -> Generator[TranscriptSegment, None, None]:
        """Transcribed segments of the file at path, yielded in order as soon as each and those before it finish.

        Segments go to the engine as ffmpeg decodes them, so generation starts before decoding ends; at
        most MAX_IN_FLIGHT of them wait at a time, which bounds the audio held in memory for a long file.
        Closing the iterator early (a client went away), or check() raising, stops ffmpeg and cancels the
        segments still waiting. probed says the caller has already refused what probe() refuses (the file
        is probed once per request); decoding enforces the duration cap either way. With options.vad only
        speech reaches the model (audio without any yields no segment); stats gets the audio's length. With
        align, each segment's text goes to the aligner as soon as it is generated (the engine batches those
        too), and the segment carries the aligner's words; without them (no aligner, an unsupported language)
        the words are estimated where they are needed.
        """
        stats = stats if stats is not None else audio.DecodeStats()
        # Captions describe sounds rather than say words, and a translation's words are not the ones spoken:
        # there is nothing to align (their words are estimated over the speech where needed).
        align = align and self.paced and options.task == "transcribe"
        params = GenerationParams(
            options.max_new_tokens, options.temperature, options.repetition_penalty, paced=self.paced
        )
        # One future per segment, resolved once its text (and, with align, its words) is in.
        futures: list[Future[TranscriptSegment]] = []
        # The engine's own futures, cancelled when the work is abandoned.
        submitted: list[Future[Any]] = []
        pending: set[Future[TranscriptSegment]] = set()
        # Set once the work ends or is abandoned; the lock orders it against alignments being queued.
        closing = threading.Lock()
        abandoned = threading.Event()
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
                on_progress(done_count, len(futures))

        def ready() -> Iterator[TranscriptSegment]:
            """The finished segments not yet yielded that have no unfinished segment before them."""
            nonlocal emitted
            while emitted < len(futures) and futures[emitted].done():
                emitted += 1
                yield futures[emitted - 1].result()

        def follow(segment: audio.Segment, generated: Future[GenerationResult]) -> Future[TranscriptSegment]:
            """The segment's future: its text once generated, then (with align) its words once aligned."""
            out: Future[TranscriptSegment] = Future()
            speech = segment.speech if segment.spans else ()
            samples: np.ndarray | None = segment.samples if align else None

            def on_generated(f: Future[GenerationResult]) -> None:
                # Runs on the inference worker as the result is set (or here, if it already was). A Future
                # swallows what its callbacks raise, which would leave `out` unresolved and its request waiting
                # for ever: whatever goes wrong here fails the segment instead.
                try:
                    generated_text(f)
                except Exception as exc:
                    log.exception("finishing a generated segment failed")
                    _resolve(out, error=InferenceFailed(f"finishing the segment's text failed: {exc}"))

            def generated_text(f: Future[GenerationResult]) -> None:
                if f.cancelled() or f.exception() is not None:
                    _resolve(out, error=f.exception() if not f.cancelled() else None)
                    return
                result = f.result()
                text = to_traditional([result.text])[0] if options.enable_s2t else result.text
                done = TranscriptSegment(
                    segment.index,
                    segment.start,
                    segment.end,
                    text,
                    result.stop_reason,
                    speech,
                    language=result.language,
                )
                if samples is None or not result.text.strip():
                    _resolve(out, done)
                    return
                with closing:
                    if abandoned.is_set():  # the work ended or was given up: nothing more is queued for it
                        _resolve(out)
                        return
                    try:
                        language = options.language or result.language
                        aligned = self.engine.submit_alignments([AlignmentRequest(samples, result.text, language)])
                    except ServiceError:  # shutting down: the text stands, its words are estimated
                        _resolve(out, done)
                        return
                    submitted.append(aligned[0])

                def on_aligned(a: Future[Alignment]) -> None:
                    try:
                        timed = None if a.cancelled() or a.exception() is not None else a.result()
                        words = from_alignment(done, timed, result.text) if timed else None
                    except Exception:  # the text stands; its words are estimated where needed
                        log.exception("placing aligned words failed")
                        words = None
                    _resolve(out, replace(done, words=words) if words else done)

                aligned[0].add_done_callback(on_aligned)

            generated.add_done_callback(on_generated)
            return out

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
                request = GenerationRequest(
                    segment.samples, params, options.language, options.prompt, task=options.task
                )
                generated = self.engine.submit([request])[0]
                submitted.append(generated)
                future = follow(segment, generated)
                futures.append(future)
                pending.add(future)
                if on_progress:
                    on_progress(done_count, len(futures))
                settle(block=len(pending) >= MAX_IN_FLIGHT)
                yield from ready()
            while pending:
                settle(block=True)
                yield from ready()
            self._count_audio(stats.seconds)
            if self.metrics is not None:
                self.metrics.decode.observe(stats.decode_seconds)
                if options.vad:
                    self.metrics.vad.observe(stats.vad_seconds)
        finally:
            produced.close()  # stops ffmpeg at once when the work was abandoned
            with closing:
                # A generation that finishes from now on queues no alignment (the worker checks this flag).
                abandoned.set()
            for future in futures:
                future.cancel()  # no-op for finished ones
            for engine_future in list(submitted):
                engine_future.cancel()  # frees the worker from the rest after a failure


def identified(segments: list[TranscriptSegment]) -> str | None:
    """The language the model identified in most of the audio (by seconds of segments), if it reports any."""
    seconds: dict[str, float] = {}
    for segment in segments:
        if segment.language:
            seconds[segment.language] = seconds.get(segment.language, 0.0) + segment.end - segment.start
    return max(seconds, key=seconds.__getitem__) if seconds else None


def _resolve(
    future: Future[TranscriptSegment], segment: TranscriptSegment | None = None, error: BaseException | None = None
) -> None:
    """Settle a segment's future with its segment, its error, or (neither: its work was cancelled) as cancelled."""
    try:
        if segment is not None:
            future.set_result(segment)
        elif error is not None:
            future.set_exception(error)
        else:
            future.cancel()
    except InvalidStateError:
        pass  # already cancelled by an abandoned transcription


@functools.cache
def _s2t() -> Any:
    """OpenCC's Simplified-to-Traditional converter, built once: segments are converted one at a time."""
    import opencc

    return opencc.OpenCC("s2t")


def to_traditional(texts: list[str]) -> list[str]:
    """Simplified to Traditional Chinese with OpenCC."""
    converter = _s2t()
    return [converter.convert(t) for t in texts]
