"""The inference worker on the real tiny checkpoint: lazy load, batching, idle unload and reload, faults."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from app.backends import Backend, BackendOutOfMemory, GenerationParams, GenerationRequest, GenerationResult
from app.checkpoints import DownloadProgress
from app.engine import Engine
from app.errors import InferenceFailed, ModelUnavailable, OutOfMemory
from app.services import real_loader
from app.settings import Settings

PARAMS = GenerationParams(max_new_tokens=8, temperature=0.0, repetition_penalty=1.1)


def request(seconds: float = 2.0, params: GenerationParams = PARAMS) -> GenerationRequest:
    """A segment of quiet noise."""
    rng = np.random.default_rng(0)
    return GenerationRequest((rng.standard_normal(int(seconds * 16000)) * 0.01).astype(np.float32), params)


def wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    """Poll until predicate() is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def tiny_settings(tiny_checkpoint: Path, tmp_path: Path) -> Settings:
    """Settings pointing at the tiny checkpoint on CPU."""
    return Settings(checkpoint_path=str(tiny_checkpoint), local_model=True, device="cpu", data_dir=str(tmp_path))


class CountingLoader:
    """Wraps a loader, counting loads and keeping a weak reference to each backend."""

    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.loads = 0
        self.refs: list[weakref.ref[object]] = []

    def __call__(self) -> Backend:
        self.loads += 1
        backend = self.inner()
        self.refs.append(weakref.ref(backend.model))
        return backend


def test_lazy_load_generate_idle_unload_and_reload(tiny_settings: Settings) -> None:
    """Nothing loads until work arrives; idle unload drops every reference; the next request reloads."""
    loader = CountingLoader(real_loader(tiny_settings, DownloadProgress()))
    engine = Engine(loader, idle_timeout=1.0, batch_size=4)
    engine.start()
    try:
        time.sleep(0.3)
        assert loader.loads == 0 and engine.status()["state"] == "unloaded"

        results = [f.result(timeout=60) for f in engine.submit([request(), request(1.0), request(3.0)])]
        assert len(results) == 3 and all(isinstance(r.text, str) for r in results)
        assert all(0 <= r.tokens <= PARAMS.max_new_tokens for r in results)
        status = engine.status()
        assert status["state"] == "loaded" and status["device"] == "cpu" and loader.loads == 1
        assert 0 < status["seconds_until_unload"] <= 1.0

        assert wait_for(lambda: engine.status()["state"] == "unloaded")
        gc.collect()
        assert loader.refs[0]() is None, "the unloaded model is still referenced somewhere"

        assert isinstance(engine.submit([request()])[0].result(timeout=60).text, str)
        assert loader.loads == 2 and engine.status()["loads"] == 2
    finally:
        engine.stop(timeout=10)


def test_idle_timeout_zero_never_unloads(tiny_settings: Settings) -> None:
    """idle_timeout 0 keeps the model loaded."""
    engine = Engine(real_loader(tiny_settings, DownloadProgress()), idle_timeout=0, batch_size=2)
    try:
        engine.submit([request()])[0].result(timeout=60)
        time.sleep(1.5)
        status = engine.status()
        assert status["state"] == "loaded" and status["seconds_until_unload"] is None
    finally:
        engine.stop(timeout=10)


class RecordingBackend:
    """A fake backend for fault injection and batch inspection."""

    device = "cpu"

    def __init__(
        self, fail_on: int | None = None, gate: threading.Event | None = None, memory_for: int | None = None
    ) -> None:
        self.batches: list[int] = []
        self.fail_on = fail_on
        self.gate = gate
        self.memory_for = memory_for  # largest batch that fits, or None for no limit
        self.entered = threading.Event()

    def generate(self, batch: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append(len(batch))
        if self.fail_on is not None and len(self.batches) == self.fail_on:
            raise RuntimeError("CUDA error: device-side assert triggered")
        if self.memory_for is not None and len(batch) > self.memory_for:
            raise BackendOutOfMemory(f"CUDA out of memory: tried a batch of {len(batch)}")
        return [GenerationResult(f"seg-{len(r.samples)}", "eos", 1) for r in batch]

    def close(self) -> None:
        pass


def test_batches_group_segments_across_requests_up_to_batch_size() -> None:
    """Segments queued while the worker is busy share generate calls, in order, bounded by batch_size."""
    gate = threading.Event()
    backend = RecordingBackend(gate=gate)
    engine = Engine(lambda: backend, idle_timeout=0, batch_size=3)
    try:
        first = engine.submit([request(1.0)])
        assert backend.entered.wait(10)
        rest = engine.submit([request(s) for s in (1.5, 2.0, 2.5, 3.0, 3.5)])
        assert engine.status()["pending_segments"] == 6  # one in the worker's hands, five queued
        gate.set()
        assert first[0].result(timeout=10).text == "seg-16000"
        assert [f.result(timeout=10).text for f in rest] == [f"seg-{int(s * 16000)}" for s in (1.5, 2.0, 2.5, 3.0, 3.5)]
        assert backend.batches == [1, 3, 2]
    finally:
        engine.stop(timeout=10)


def test_segments_with_different_params_are_not_mixed() -> None:
    """A batch holds one set of decoding params."""
    gate = threading.Event()
    backend = RecordingBackend(gate=gate)
    engine = Engine(lambda: backend, idle_timeout=0, batch_size=8)
    other = GenerationParams(max_new_tokens=4, temperature=0.5, repetition_penalty=1.0)
    try:
        blocker = engine.submit([request()])
        assert backend.entered.wait(10)
        mixed = engine.submit([request(), request(params=other), request(), request(params=other)])
        gate.set()
        blocker[0].result(timeout=10)
        [f.result(timeout=10) for f in mixed]
        assert backend.batches == [1, 2, 2]
    finally:
        engine.stop(timeout=10)


def test_load_failure_reports_error_and_next_request_retries() -> None:
    """A failed load fails waiting segments with 503 and the reason; the next submission loads again."""
    attempts = []

    def loader() -> Backend:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("checkpoint not found: /models/missing")
        return RecordingBackend()

    engine = Engine(loader, idle_timeout=0, batch_size=2, load_backoff=(0.0, 0.0))
    try:
        futures = engine.submit([request(), request()])
        for future in futures:
            with pytest.raises(ModelUnavailable, match="checkpoint not found"):
                future.result(timeout=10)
        status = engine.status()
        assert status["state"] == "error" and "checkpoint not found" in status["error"]
        assert engine.submit([request()])[0].result(timeout=10).text == "seg-32000"
        assert engine.status()["state"] == "loaded" and len(attempts) == 2
    finally:
        engine.stop(timeout=10)


def test_load_failure_backs_off_before_trying_again() -> None:
    """Within the backoff, work fails at once with Retry-After; the wait doubles per failure up to its cap."""
    now = [100.0]
    attempts: list[float] = []

    def loader() -> Backend:
        attempts.append(now[0])
        raise OSError("checkpoint not found")

    def fails(expected_attempts: int) -> ModelUnavailable:
        with pytest.raises(ModelUnavailable) as caught:
            engine.submit([request()])[0].result(timeout=10)
        assert len(attempts) == expected_attempts
        return caught.value

    engine = Engine(loader, idle_timeout=0, batch_size=1, clock=lambda: now[0], load_backoff=(2.0, 8.0))
    try:
        assert fails(1).retry_after == 2
        assert engine.status()["retry_load_in"] == 2.0
        now[0] += 1.5
        assert fails(1).retry_after == 1  # still backing off: no new attempt
        for backoff in (4, 8, 8):
            now[0] += 1.0
            assert fails(len(attempts) + 1).retry_after == backoff
            now[0] += backoff
        assert engine.status()["state"] == "error" and "checkpoint not found" in engine.status()["error"]
    finally:
        engine.stop(timeout=10)


def test_backend_exception_fails_that_batch_only() -> None:
    """A generate error fails its own segments; the worker keeps serving."""
    backend = RecordingBackend(fail_on=1)
    engine = Engine(lambda: backend, idle_timeout=0, batch_size=1)
    try:
        with pytest.raises(InferenceFailed, match="device-side assert"):
            engine.submit([request()])[0].result(timeout=10)
        assert engine.submit([request()])[0].result(timeout=10).text == "seg-32000"
    finally:
        engine.stop(timeout=10)


def test_cancelled_segments_are_skipped() -> None:
    """Futures cancelled before the worker reaches them never reach the backend."""
    gate = threading.Event()
    backend = RecordingBackend(gate=gate)
    engine = Engine(lambda: backend, idle_timeout=0, batch_size=8)
    try:
        blocker = engine.submit([request()])
        assert backend.entered.wait(10)
        doomed = engine.submit([request(), request()])
        assert all(f.cancel() for f in doomed)
        gate.set()
        blocker[0].result(timeout=10)
        assert engine.submit([request()])[0].result(timeout=10).text == "seg-32000"
        assert backend.batches == [1, 1]
    finally:
        engine.stop(timeout=10)


def test_out_of_memory_halves_the_batch_and_retries() -> None:
    """A batch that does not fit is split in halves until it does; every segment still gets its result."""
    gate = threading.Event()
    backend = RecordingBackend(gate=gate, memory_for=2)
    engine = Engine(lambda: backend, idle_timeout=0, batch_size=8)
    try:
        blocker = engine.submit([request()])
        assert backend.entered.wait(10)
        seconds = (1.0, 1.5, 2.0, 2.5, 3.0)
        futures = engine.submit([request(s) for s in seconds])
        gate.set()
        blocker[0].result(timeout=10)
        assert [f.result(timeout=10).text for f in futures] == [f"seg-{int(s * 16000)}" for s in seconds]
        # 5 -> 2 + 3 (2 fits) -> 3 -> 1 + 2: results come back in order all the same.
        assert backend.batches == [1, 5, 2, 3, 1, 2]
        assert engine.status()["oom_batch_splits"] == 2
    finally:
        engine.stop(timeout=10)


def test_out_of_memory_on_one_segment_fails_that_request_only() -> None:
    """A segment that does not fit alone gets 503 out_of_memory; the worker keeps serving."""
    backend = RecordingBackend(memory_for=0)
    engine = Engine(lambda: backend, idle_timeout=0, batch_size=4)
    try:
        with pytest.raises(OutOfMemory, match="one segment"):
            engine.submit([request()])[0].result(timeout=10)
        backend.memory_for = None
        assert engine.submit([request()])[0].result(timeout=10).text == "seg-32000"
    finally:
        engine.stop(timeout=10)


def test_token_budget_bounds_the_padded_batch() -> None:
    """Batch size x longest sequence stays within the budget; a lone segment over it still runs."""
    gate = threading.Event()
    backend = RecordingBackend(gate=gate)
    long = request(60.0)  # cost: 40 prompt + 1500 audio + 512 guard = 2052
    engine = Engine(lambda: backend, idle_timeout=0, batch_size=16, token_budget=3 * long.cost)
    try:
        blocker = engine.submit([request()])
        assert backend.entered.wait(10)
        futures = engine.submit([request(60.0) for _ in range(7)])
        gate.set()
        blocker[0].result(timeout=10)
        [f.result(timeout=10) for f in futures]
        assert backend.batches == [1, 3, 3, 1]
    finally:
        engine.stop(timeout=10)
    tiny_budget = Engine(lambda: RecordingBackend(), idle_timeout=0, batch_size=4, token_budget=10)
    try:
        assert tiny_budget.submit([request()])[0].result(timeout=10).text == "seg-32000"
    finally:
        tiny_budget.stop(timeout=10)


def test_token_limit_stops_are_counted(tiny_settings: Settings) -> None:
    """/health's max_tokens_stops counts each segment a limit cut (random weights rarely stop by themselves)."""
    engine = Engine(real_loader(tiny_settings, DownloadProgress()), idle_timeout=0, batch_size=4)
    engine.start()
    try:
        cut = GenerationParams(max_new_tokens=2, temperature=1.0, repetition_penalty=1.0)
        results = [f.result(timeout=60) for f in engine.submit([request(1.0, cut), request(2.0, cut)])]
        status = engine.status()
        assert status["max_tokens_stops"] == sum(r.stop_reason == "max_tokens" for r in results) >= 1
        assert status["repetition_stops"] == sum(r.stop_reason == "repetition" for r in results)
    finally:
        engine.stop()
