"""The pipeline streams segments into the engine: bounded in flight, progress as they finish, clean failures."""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from app.backends import GenerationRequest, GenerationResult
from app.engine import Engine
from app.errors import UnsupportedAudio
from app.pipeline import MAX_IN_FLIGHT, Pipeline
from app.protocol.native import TranscribeOptions
from tests.support import JFK, make_audio


class GatedBackend:
    """Answers instantly once the gate opens; counts segments."""

    device = "cpu"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.seen = 0

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.gate.wait(30)
        self.seen += len(batch)
        return [GenerationResult(f"{len(r.samples)}", "eos", 1) for r in batch]

    def close(self) -> None:
        pass


def test_segments_in_flight_are_bounded_and_progress_is_reported(tmp_path: Path) -> None:
    """A long file never has more than MAX_IN_FLIGHT segments waiting; progress counts up to the total."""
    backend = GatedBackend()
    engine = Engine(lambda: backend, idle_timeout=0, batch_size=4)
    pipeline = Pipeline(engine)
    long = make_audio(tmp_path, 150)
    progress: list[tuple[int, int]] = []
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(
            t=pipeline.transcribe(long, TranscribeOptions(segment_duration=1), lambda d, n: progress.append((d, n)))
        )
    )
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and engine.status()["pending_segments"] < MAX_IN_FLIGHT:
            time.sleep(0.05)
        time.sleep(0.5)  # give the pipeline every chance to overshoot
        assert engine.status()["pending_segments"] == MAX_IN_FLIGHT
    finally:
        backend.gate.set()
        worker.join(60)
        engine.stop(timeout=10)
    transcript = result["t"]
    total = len(transcript.segments)
    assert total > MAX_IN_FLIGHT and backend.seen == total
    assert progress[-1] == (total, total)
    assert all(b[0] >= a[0] and b[1] >= a[1] for a, b in itertools.pairwise(progress))
    assert transcript.duration == pytest.approx(150.0, abs=0.01)
    assert [s.text for s in transcript.segments] == [str(round((s.end - s.start) * 16000)) for s in transcript.segments]


def test_a_file_corrupt_midway_fails_cleanly(tmp_path: Path) -> None:
    """A decode error after some segments were submitted raises 415 and leaves nothing queued."""
    mp3 = tmp_path / "whole.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-stream_loop", "-1", "-i", str(JFK), "-t", "120", str(mp3)],
                   check=True)  # fmt: skip
    data = bytearray(mp3.read_bytes())
    broken = tmp_path / "broken.mp3"
    # Keep the first half intact, then garbage: ffmpeg decodes the start and fails (or stops) later.
    broken.write_bytes(bytes(data[: len(data) // 2]) + b"\x00\xff" * 200_000)
    backend = GatedBackend()
    backend.gate.set()
    engine = Engine(lambda: backend, idle_timeout=0, batch_size=4)
    try:
        try:
            transcript = Pipeline(engine).transcribe(broken, TranscribeOptions(segment_duration=5))
        except UnsupportedAudio:
            pass
        else:  # ffmpeg may also just stop at the garbage: then the intact half is transcribed
            assert 55 <= transcript.duration <= 125
        assert engine.status()["pending_segments"] == 0
    finally:
        engine.stop(timeout=10)


def test_a_failure_finishing_a_segment_fails_the_request_rather_than_hanging_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What runs as a segment's result arrives (here the Traditional Chinese conversion) fails it, clearly."""
    import app.pipeline
    from app.errors import InferenceFailed

    def broken(texts: list[str]) -> list[str]:
        raise RuntimeError("conversion data missing")

    monkeypatch.setattr(app.pipeline, "to_traditional", broken)
    backend = GatedBackend()
    backend.gate.set()
    engine = Engine(lambda: backend, idle_timeout=0, batch_size=4)
    try:
        started = time.monotonic()
        with pytest.raises(InferenceFailed, match="conversion data missing"):
            Pipeline(engine).transcribe(JFK, TranscribeOptions(enable_s2t=True))
        assert time.monotonic() - started < 30
    finally:
        engine.stop()
