"""The forced aligner beside the model in the one inference worker, on the real tiny checkpoints.

The tiny aligner's weights are random, so its head gives every word much the same bin, which the clip's end then
clamps: every word at one instant, which the service refuses as a failed alignment. What is checked is the
lifecycle (lazy, batched, unloaded with the model), the fallbacks (that refusal, a load failure, an unsupported
language, overlong audio) and that every word the pipeline returns is the transcript's, monotonic and inside its
segment; to follow a usable alignment through the pipeline, `spread` stands in for a trained head.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.backends import (
    MAX_ALIGN_SECONDS,
    Aligner,
    Alignment,
    AlignmentRequest,
    GenerationRequest,
    GenerationResult,
)
from app.checkpoints import DownloadProgress
from app.engine import Engine
from app.pipeline import Pipeline
from app.protocol.native import TranscribeOptions
from app.services import aligner_loader, real_loader
from app.settings import Settings
from app.words import text_words, words_of, written
from tests.integration.test_engine import PARAMS, request, wait_for
from tests.support import JFK, build_tiny

SR = 16000


@pytest.fixture(scope="module")
def tiny_aligner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen3-ForcedAligner checkpoint."""
    return build_tiny(tmp_path_factory.mktemp("tiny-aligner"), "qwen3-aligner")


@pytest.fixture
def settings(tiny_checkpoint: Path, tiny_aligner: Path, tmp_path: Path) -> Settings:
    """The tiny Omni model and the tiny aligner on CPU."""
    return Settings(
        checkpoint_path=str(tiny_checkpoint),
        aligner=str(tiny_aligner),
        local_model=True,
        device="cpu",
        data_dir=str(tmp_path),
    )


class Recorded:
    """Wraps an aligner loader: counts loads, records each batch's size, keeps weak references to the models.

    spread: keep the real aligner's words but space their times evenly over the clip, as a trained head would.
    """

    def __init__(self, inner: Callable[[], Aligner], spread: bool = False) -> None:
        self.inner = inner
        self.spread = spread
        self.loads = 0
        self.batches: list[int] = []
        self.refs: list[weakref.ref[object]] = []

    def __call__(self) -> Aligner:
        self.loads += 1
        aligner = self.inner()
        self.refs.append(weakref.ref(aligner.model))  # type: ignore[attr-defined]
        real = aligner.align

        def align(batch: Sequence[AlignmentRequest]) -> list[Alignment]:
            self.batches.append(len(batch))
            results = real(batch)
            if not self.spread:
                return results
            return [
                None
                if words is None
                else [
                    (w, len(r.samples) / SR * k / len(words), len(r.samples) / SR * (k + 0.8) / len(words))
                    for k, (w, _, _) in enumerate(words)
                ]
                for r, words in zip(batch, results, strict=True)
            ]

        aligner.align = align  # type: ignore[method-assign]
        return aligner


@pytest.fixture
def engine_with(settings: Settings) -> Iterator[Callable[..., Engine]]:
    """engine_with(aligner_loader, idle_timeout): an Engine on the tiny model, stopped after the test."""
    engines: list[Engine] = []

    def make(loader: Callable[[], Aligner] | None, idle_timeout: float = 0) -> Engine:
        engine = Engine(
            real_loader(settings, DownloadProgress()), idle_timeout=idle_timeout, batch_size=4, aligner_loader=loader
        )
        engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Quiet noise standing in for a segment's audio."""
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * 0.05).astype(np.float32)


def test_aligner_loads_lazily_batches_and_unloads_with_the_model(
    settings: Settings, engine_with: Callable[..., Engine]
) -> None:
    loader = Recorded(aligner_loader(settings, DownloadProgress()))  # type: ignore[arg-type]
    engine = engine_with(loader, idle_timeout=1.5)

    # Transcription alone never loads the aligner.
    assert engine.submit([request()])[0].result(timeout=60).tokens <= PARAMS.max_new_tokens
    assert loader.loads == 0 and engine.aligner_status() == {"state": "unloaded", "error": None, "loads": 0}

    texts = ["Hello, world!", "And so, my fellow Americans", "你好世界"]
    clips = [speech(1.0), speech(2.5, 1), speech(0.4, 2)]  # the last is shorter than the aligner's minimum
    # Queued behind a generation, the three are taken as one batch.
    engine.submit([request(3.0)])
    futures = engine.submit_alignments([AlignmentRequest(c, t, "en") for c, t in zip(clips, texts, strict=True)])
    results = [f.result(timeout=60) for f in futures]
    assert loader.loads == 1 and loader.batches == [3]
    for result, text, clip in zip(results, texts, clips, strict=True):
        assert result is not None
        assert [w for w, _, _ in result] == [text[w.start : w.end].strip(",!") for w in text_words(text)]
        times = [t for _, a, b in result for t in (a, b)]
        assert times == sorted(times) and times[0] >= 0 and times[-1] <= len(clip) / SR
    assert engine.aligner_status() == {"state": "loaded", "error": None, "loads": 1}

    # Idle: both go, and nothing keeps the aligner's weights alive.
    assert wait_for(lambda: engine.status()["state"] == "unloaded" and engine.aligner_status()["state"] == "unloaded")
    gc.collect()
    assert loader.refs[0]() is None, "the unloaded aligner is still referenced somewhere"
    # The next alignment loads it again.
    assert engine.submit_alignments([AlignmentRequest(clips[0], "again", "en")])[0].result(timeout=60) is not None
    assert loader.loads == 2


def test_what_the_aligner_cannot_time_resolves_to_none(settings: Settings, engine_with: Callable[..., Engine]) -> None:
    loader = Recorded(aligner_loader(settings, DownloadProgress()))  # type: ignore[arg-type]
    engine = engine_with(loader)
    cases = [
        AlignmentRequest(speech(1.0), "Goedemorgen allemaal", "nl"),  # a language it was not trained on
        AlignmentRequest(speech(1.0), "  ", "en"),  # nothing to time
        AlignmentRequest(np.zeros(int((MAX_ALIGN_SECONDS + 1) * SR), np.float32), "too long", "en"),
        AlignmentRequest(speech(1.0), "fine", None),  # no language given: tried
    ]
    results = [f.result(timeout=60) for f in engine.submit_alignments(cases)]
    assert results[:3] == [None, None, None]
    assert results[3] is not None and [w for w, _, _ in results[3]] == ["fine"]


def test_an_aligner_that_fails_to_load_leaves_the_words_estimated(
    settings: Settings, engine_with: Callable[..., Engine]
) -> None:
    calls = []

    def broken() -> Aligner:
        calls.append(time.monotonic())
        raise OSError("aligner weights unreadable")

    engine = engine_with(broken)
    pipeline = Pipeline(engine)
    transcript = pipeline.transcribe(JFK, TranscribeOptions(max_new_tokens=12, segment_duration=4), align=True)
    assert transcript.segments and len(calls) == 1, "one failed load, not one per segment"
    status = engine.aligner_status()
    assert status is not None and status["state"] == "error" and "unreadable" in status["error"]
    for segment in transcript.segments:
        assert segment.words == ()  # nothing aligned
        words = words_of(segment)  # so the estimate over the segment's speech times them
        assert [w.text for w in words] == [written(segment.text, w) for w in text_words(segment.text)]
        times = [t for w in words for t in (w.start, w.end)]
        assert times == sorted(times)
        assert all(segment.start <= t <= segment.end for t in times)
    # Within the retry window the next request does not try the load again.
    assert engine.submit_alignments([AlignmentRequest(speech(1.0), "x", "en")])[0].result(timeout=60) is None
    assert len(calls) == 1


def test_the_pipeline_aligns_only_when_asked(settings: Settings, engine_with: Callable[..., Engine]) -> None:
    loader = Recorded(aligner_loader(settings, DownloadProgress()), spread=True)  # type: ignore[arg-type]
    engine = engine_with(loader)
    pipeline = Pipeline(engine)
    options = TranscribeOptions(max_new_tokens=16, segment_duration=4, language="en")

    plain = pipeline.transcribe(JFK, options)
    assert loader.loads == 0 and all(s.words == () for s in plain.segments)
    # A translation's English words were never spoken: it is not aligned, whatever the output asks.
    translated = pipeline.transcribe(JFK, options.model_copy(update={"task": "translate"}), align=True)
    assert loader.loads == 0 and all(s.words == () for s in translated.segments)

    aligned = pipeline.transcribe(JFK, options, align=True)
    assert loader.loads == 1 and sum(loader.batches) == sum(1 for s in aligned.segments if text_words(s.text))
    for segment in aligned.segments:
        if not text_words(segment.text):
            continue
        assert segment.words, f"segment {segment.index} was not aligned"
        # Written as in the transcript (punctuation kept), in order, inside the segment.
        assert [w.text for w in segment.words] == [written(segment.text, w) for w in text_words(segment.text)]
        times = [t for w in segment.words for t in (w.start, w.end)]
        assert times == sorted(times)
        assert segment.start - 1e-6 <= times[0] and times[-1] <= segment.end + 1e-6
        # Placed back in the file: the first word starts where the segment's speech does.
        assert segment.words[0].start == pytest.approx(segment.spans[0][0], abs=1e-3)


def test_an_alignment_piled_up_at_one_instant_falls_back_to_the_estimate(
    settings: Settings, engine_with: Callable[..., Engine]
) -> None:
    """The random head's alignment (every word at the clip's end) is refused: the words are estimated instead."""
    loader = Recorded(aligner_loader(settings, DownloadProgress()))  # type: ignore[arg-type]
    pipeline = Pipeline(engine_with(loader))
    options = TranscribeOptions(max_new_tokens=16, segment_duration=4, language="en")
    transcript = pipeline.transcribe(JFK, options, align=True)
    assert loader.batches, "the aligner was asked"
    for segment in transcript.segments:
        if len(text_words(segment.text)) < 2:
            continue
        assert segment.words == ()
        times = [t for w in words_of(segment) for t in (w.start, w.end)]
        assert times == sorted(times) and times[-1] > times[0]
        assert segment.start <= times[0] and times[-1] <= segment.end


def test_with_the_aligner_off_there_is_no_aligner(settings: Settings) -> None:
    off = replace(settings, aligner="none")
    assert not off.aligner_enabled and aligner_loader(off, DownloadProgress()) is None
    engine = Engine(real_loader(off, DownloadProgress()), idle_timeout=0, batch_size=4)
    try:
        assert engine.aligner_status() is None
        assert engine.submit_alignments([AlignmentRequest(speech(1.0), "x", "en")])[0].result(timeout=5) is None
    finally:
        engine.stop()


def test_alignments_go_before_the_generations_queued_ahead_of_them() -> None:
    """A segment is done once its words are timed: its alignment must not wait behind every queued generation."""
    order: list[str] = []
    gate = threading.Event()

    class Backend:
        device = "cpu"

        def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
            gate.wait(30)
            order.append(f"generate {len(batch)}")
            return [GenerationResult("x", "eos", 1) for _ in batch]

        def close(self) -> None:
            pass

    class Timing:
        device = "cpu"
        model = object()

        def align(self, batch: Sequence[AlignmentRequest]) -> list[Alignment]:
            order.append(f"align {len(batch)}")
            return [[("x", 0.0, 0.1)] for _ in batch]

        def close(self) -> None:
            pass

    engine = Engine(Backend, idle_timeout=0, batch_size=2, aligner_loader=Timing)
    try:
        generations = engine.submit([request(0.5) for _ in range(6)])
        time.sleep(0.3)  # the first batch of two is generating, held at the gate; four wait
        alignments = engine.submit_alignments([AlignmentRequest(speech(0.5), "x", "en") for _ in range(2)])
        gate.set()
        assert all(f.result(timeout=30) for f in alignments) and all(f.result(timeout=30) for f in generations)
        assert order == ["generate 2", "align 2", "generate 2", "generate 2"]
    finally:
        engine.stop()


def test_a_downloading_aligner_holds_up_nothing(
    settings: Settings, tiny_aligner: Path, monkeypatch: pytest.MonkeyPatch, engine_with: Callable[..., Engine]
) -> None:
    """The aligner's download runs beside the worker: meanwhile words are estimated and generation goes on."""
    import app.checkpoints
    import app.engine

    gate = threading.Event()
    real_resolve = app.checkpoints.resolve

    def slow_download(own: Settings, progress: DownloadProgress) -> str:
        if own.checkpoint_path != "Qwen/Qwen3-ForcedAligner-0.6B-hf":
            return real_resolve(own, progress)  # the model itself: on disk
        gate.wait(60)  # a download that takes as long as the test wants
        return str(tiny_aligner)

    monkeypatch.setattr(app.checkpoints, "resolve", slow_download)
    monkeypatch.setattr(app.checkpoints, "cached_snapshot", lambda repo_id: None)
    monkeypatch.setattr(app.engine, "ALIGNER_POLL_SECONDS", 0.1)
    hub = replace(settings, aligner="Qwen/Qwen3-ForcedAligner-0.6B-hf", local_model=False)
    engine = engine_with(aligner_loader(hub, DownloadProgress()))

    started = time.monotonic()
    assert engine.submit_alignments([AlignmentRequest(speech(1.0), "hi", "en")])[0].result(timeout=30) is None
    assert engine.submit([request()])[0].result(timeout=60).text is not None
    assert time.monotonic() - started < 30
    status = engine.aligner_status()
    assert status is not None and status["state"] == "loading" and "downloading" in status["error"]

    gate.set()
    aligned = wait_for(
        lambda: engine.submit_alignments([AlignmentRequest(speech(1.0), "hi", "en")])[0].result(timeout=30),
        timeout=30,
    )
    assert aligned is not None and engine.aligner_status() == {"state": "loaded", "error": None, "loads": 1}
